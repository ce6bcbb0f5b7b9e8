"""Decoding S2T models: greedy and beam search, ensembles, and the rules they share.

The search is built of small parts, each swappable on its own:

- :class:`Ensemble` runs one decoder step of every model (each with its own encoder
  states and KV cache) and combines their log-probabilities;
- :class:`LogitFilter` objects ban tokens at a step (:class:`SuppressTokens`,
  :class:`MinLength`, :class:`NoRepeatNGram`);
- :class:`RepetitionGuard` says which hypotheses must end now;
- :class:`CTCPrefixScorer` adds the CTC head's prefix scores (joint CTC/attention decoding);
- :func:`greedy_search` and :func:`beam_search` drive them.

Shapes. ``B`` utterances, beam ``K``: the search runs ``B * K`` hypotheses as one batch,
utterance ``b`` in rows ``b * K .. b * K + K - 1``; :meth:`DecoderCache.reorder` moves the
cache along when beams are re-ranked, and finished utterances leave the batch.

    states = encode(models, features, feat_lens)       # one (enc_out, enc_lens, enc_mask) per model
    prefix = [tok.prefix("de"), tok.prefix("fr")]      # the forced start of each utterance
    results = beam_search(models, states, prefix, DecodingOptions(beam_size=5))
    text = tok.decode(results[0].tokens)                 # the best; results[0].nbest has the rest

Rules (each decided once, here):

- **Ensembles** average probabilities, as fairseq does: ``logsumexp_m(lprobs_m) - log M``,
  the log of the mean of the models' probabilities. An ensemble of a model with itself is
  the model.
- **Length.** At most ``max_len = min(max_len_a * enc_len + max_len_b,
  max_target_positions - len(prefix))`` tokens before eos, with ``enc_len`` the source
  frames after subsampling (of the first model). At step ``max_len`` only eos is allowed,
  so every hypothesis ends with eos and the bound always holds.
- **Scores** (fairseq): ``log_prob`` sums the log-probabilities of the output tokens and
  the eos; ``score = log_prob / (len(tokens) + 1) ** length_penalty`` ranks hypotheses.
  Beam search stops an utterance once it has ``beam_size`` finished hypotheses, taking
  eos from the top ``beam_size`` of the ``2 * beam_size`` candidates of a step. One
  difference from fairseq: a hypothesis *forced* to end (length bound, repetition guard)
  is finished whatever its rank, since eos is its only continuation; fairseq would drop
  it when it ranks low, and beam search could then lose what greedy search returns.
- **Repetition guard.** A hypothesis whose last tokens are one n-gram (n = 1 ..
  ``repeat_max_ngram``, default 4) repeated ``repeat_max_times`` times in a row (default
  4; e.g. ``a a a a`` or ``a b a b a b a b``) may only emit eos next: it ends there, scored
  with the model's own eos probability, and competes with the other finished hypotheses
  on that score. No output holds more than ``repeat_max_times`` copies of a short n-gram
  in a row.
- **Joint CTC/attention** (``ctc_weight`` λ > 0, ESPnet's decoding of Watanabe et al.
  2017, "Hybrid CTC/Attention Architecture for End-to-End Speech Recognition"): a token's
  score is ``(1 - λ) * attention log-prob + λ * (CTC prefix score of the hypothesis with
  the token - without it)``, and eos gets the CTC probability of the whole hypothesis.
  CTC scores only the ``ctc_pre_beam`` tokens the attention ranks best in a row (and
  eos); the rest are out of the search. The CTC head predicts the encoder's transcript,
  so this is for transcription, not translation; the prefix (language tag) is not part of
  the CTC sequence. An ensemble averages the heads' probabilities frame by frame.
- Pad, bos and ``suppress_tokens`` (the language tags, set by the translator) are never
  emitted; eos is banned before ``min_len`` tokens unless the length bound or the guard
  forces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from speech.model import DecoderCache, S2TModel

EncoderStates = tuple[Tensor, Tensor, Tensor]  # enc_out (B, S, D), enc_lens (B,), enc_mask (B, S) True at padding
STOP_REASONS = ("eos", "repetition", "max_len")  # why a hypothesis ended: the model's eos, or a forced one


@dataclass
class DecodingOptions:
    """How to search. ``beam_size`` 1 is greedy search."""

    beam_size: int = 5
    length_penalty: float = 1.0  # fairseq's lenpen: score / len ** lenpen; 0 = raw log-probability
    max_len_a: float = 0.0  # max output length = a * source frames after subsampling + b
    max_len_b: int = 200
    min_len: int = 1
    no_repeat_ngram_size: int = 0  # > 0: never repeat an n-gram of this size (fairseq)
    repetition_guard: bool = True
    repeat_max_ngram: int = 4  # the guard watches n-grams of 1 .. this many tokens
    repeat_max_times: int = 4  # ... and ends a hypothesis once one repeats this often in a row
    nbest: int = 1  # hypotheses returned per utterance (at most beam_size)
    suppress_tokens: tuple[int, ...] = field(default_factory=tuple)  # never emitted (language tags)
    ctc_weight: float = 0.0  # joint CTC/attention decoding: the CTC prefix score's weight (0: attention only)
    ctc_pre_beam: int = 0  # tokens per row that CTC scores; 0: 1.5 x beam_size (ESPnet), at least 4

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"DecodingOptions.beam_size must be >= 1, got {self.beam_size}")
        if not 1 <= self.nbest <= self.beam_size:
            raise ValueError(f"DecodingOptions.nbest must be in [1, beam_size={self.beam_size}], got {self.nbest}")
        if self.max_len_a < 0 or self.max_len_b < 0:
            raise ValueError(f"DecodingOptions.max_len_a and max_len_b must be >= 0, "
                             f"got {self.max_len_a} and {self.max_len_b}")
        if self.min_len < 0 or self.no_repeat_ngram_size < 0:
            raise ValueError("DecodingOptions.min_len and no_repeat_ngram_size must be >= 0")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"DecodingOptions.ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.ctc_pre_beam < 0:
            raise ValueError(f"DecodingOptions.ctc_pre_beam must be >= 0, got {self.ctc_pre_beam}")
        if self.repeat_max_ngram < 1 or self.repeat_max_times < 2:
            raise ValueError(f"DecodingOptions: the repetition guard needs repeat_max_ngram >= 1 and "
                             f"repeat_max_times >= 2, got {self.repeat_max_ngram} and {self.repeat_max_times}")


@dataclass
class Hypothesis:
    """One output: ``tokens`` without the prefix and the eos."""

    tokens: list[int]
    score: float  # log_prob / (len(tokens) + 1) ** length_penalty: what ranks hypotheses
    log_prob: float  # sum of the log-probabilities of the tokens and the eos
    stop: str  # one of STOP_REASONS


@dataclass
class DecodingResult:
    """One utterance's output: the best hypothesis (``tokens``, ``score``, ...) and the n-best list."""

    nbest: list[Hypothesis]  # best first; empty only if nothing could be finished

    @property
    def best(self) -> Hypothesis:
        return self.nbest[0] if self.nbest else Hypothesis([], -math.inf, -math.inf, "eos")

    @property
    def tokens(self) -> list[int]:
        return self.best.tokens

    @property
    def score(self) -> float:
        return self.best.score

    @property
    def log_prob(self) -> float:
        return self.best.log_prob

    @property
    def stop(self) -> str:
        return self.best.stop


# --------------------------------------------------------------------------- models


@torch.no_grad()
def encode(models: Sequence[S2TModel], features: Tensor, feat_lens: Tensor) -> list[EncoderStates]:
    """Run every model's encoder: features (B, T, n_mels), feat_lens (B,) -> one state per model."""
    return [m.encode(features, feat_lens) for m in models]


def repeat_states(states: Sequence[EncoderStates], n: int) -> list[EncoderStates]:
    """Each utterance ``n`` times in a row (e.g. once per target language)."""
    return [tuple(t.repeat_interleave(n, dim=0) for t in s) for s in states]  # type: ignore[misc]


class Ensemble:
    """Models decoding side by side: each keeps its own encoder states and KV cache."""

    def __init__(self, models: Sequence[S2TModel], states: Sequence[EncoderStates]):
        if not models or len(models) != len(states):
            raise ValueError(f"decode: {len(models)} models but {len(states)} encoder states")
        vocab = {m.cfg.vocab_size for m in models}
        if len(vocab) > 1:
            raise ValueError(f"decode: the models of an ensemble need one vocabulary, got sizes {sorted(vocab)}")
        self.models = list(models)
        self.enc_out = [s[0] for s in states]
        self.enc_mask = [s[2] for s in states]
        self.caches: list[DecoderCache] = [m.decoder.new_cache() for m in models]
        # the encoder row of each decoder row: beams of one utterance share it, and a reorder
        # that keeps every row's source (beams swapping places) copies no encoder state
        self.source_rows = torch.arange(self.enc_out[0].shape[0], device=self.enc_out[0].device)
        self.vocab_size = vocab.pop()
        self.eos_id = models[0].cfg.eos_id
        self.max_target_positions = min(m.cfg.max_target_positions for m in models)

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """tokens (N, U) every token so far -> log-probabilities of the next one (N, V), float32."""
        lprobs = []
        for model, enc_out, enc_mask, cache in zip(self.models, self.enc_out, self.enc_mask, self.caches):
            logits = model.decoder(tokens, enc_out, enc_mask, cache)[:, -1]
            lprobs.append(F.log_softmax(logits.float(), dim=-1))
        if len(lprobs) == 1:
            return lprobs[0]
        # fairseq's ensemble: the log of the mean probability
        return torch.logsumexp(torch.stack(lprobs), dim=0) - math.log(len(lprobs))

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index`` (N',) in this order: surviving beams, unfinished utterances."""
        source_rows = self.source_rows.index_select(0, index)
        same = torch.equal(source_rows, self.source_rows)
        self.source_rows = source_rows
        for i, cache in enumerate(self.caches):
            cache.reorder(index, cross=not same)
            if not same:
                self.enc_out[i] = self.enc_out[i].index_select(0, index)
                self.enc_mask[i] = self.enc_mask[i].index_select(0, index)


# --------------------------------------------------------------------------- joint CTC


class CTCPrefixScorer:
    """CTC prefix scores of growing hypotheses, for joint CTC/attention decoding.

    For a prefix ``g`` it keeps the forward variables ``r[t] = (r_n, r_b)``: the log
    probability that the first ``t + 1`` frames read ``g``, ending in its last token or
    in blank, and ``psi``: the log probability of all frame sequences that start with
    ``g`` (the prefix score). Extending ``g`` by ``c`` costs one pass over the frames
    for every candidate of every row at once (the recursion of Watanabe et al. 2017,
    Algorithm 2, as ESPnet's ``CTCPrefixScoreTH`` batches it); eos scores the whole of
    ``g``: ``log(r_n[T-1] + r_b[T-1])``. Frames past an utterance's end read blank with
    probability 1, so one time loop serves a padded batch.
    """

    def __init__(self, lprobs: Tensor, lens: Tensor, blank: int, eos_id: int):
        """lprobs (N, T, V) CTC log-probabilities, lens (N,) frames of each row."""
        self.blank, self.eos_id = blank, eos_id
        n, t, _ = lprobs.shape
        past_end = torch.arange(t, device=lprobs.device)[None, :] >= lens[:, None]  # (N, T)
        x = lprobs.float().masked_fill(past_end[..., None], -math.inf)
        x[..., blank] = x[..., blank].masked_fill(past_end, 0.0)
        self.x = x.transpose(0, 1).contiguous()  # (T, N0, V): never copied per row or step
        self.src = torch.arange(n, device=x.device)  # the row of x each hypothesis reads
        # the empty prefix: no frame emits a token; the frames so far are all blank
        r_b = self.x[:, :, self.blank].cumsum(0)
        self.r = torch.stack([torch.full_like(r_b, -math.inf), r_b], dim=1)  # (T, 2, N)
        self.psi = torch.zeros(n, device=x.device)  # log P(prefix...) of the empty prefix: 0
        self.last = torch.full((n,), -1, dtype=torch.long, device=x.device)  # -1: empty prefix
        self._cand: Tensor | None = None
        self._r_new: Tensor | None = None
        self._psi_new: Tensor | None = None

    @classmethod
    def for_models(cls, models: Sequence[S2TModel], states: Sequence[EncoderStates], eos_id: int
                   ) -> "CTCPrefixScorer":
        """The CTC heads of ``models`` on their encoder states (an ensemble: mean probabilities)."""
        heads = [getattr(m, "ctc_head", None) for m in models]
        if any(h is None for h in heads):
            raise ValueError("decode: ctc_weight > 0 needs a CTC head on every model")
        lprobs = [F.log_softmax(h(s[0]).float(), dim=-1) for h, s in zip(heads, states)]  # (N, T, V) each
        if len({lp.shape for lp in lprobs}) > 1:
            raise ValueError("decode: the CTC heads of an ensemble must give the same frames and vocabulary")
        x = lprobs[0] if len(lprobs) == 1 else torch.logsumexp(torch.stack(lprobs), 0) - math.log(len(lprobs))
        return cls(x, states[0][1], models[0].cfg.blank_id, eos_id)

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index`` (N',) as they are (e.g. one row per beam at the start)."""
        self.src = self.src[index]
        self.r = self.r.index_select(2, index)
        self.psi, self.last = self.psi[index], self.last[index]

    def score(self, cand: Tensor) -> Tensor:
        """cand (N, C) token ids -> (N, C): log P_ctc(prefix + c...) - log P_ctc(prefix...),
        for eos log P_ctc(prefix) - log P_ctc(prefix...). Remembered for :meth:`advance`."""
        x, r = self.x, self.r
        frames = x.shape[0]
        xc = x[:, self.src[:, None], cand]  # (T, N, C)
        xb = x[:, self.src, self.blank][..., None]  # (T, N, 1)
        both = torch.logaddexp(r[:, 0], r[:, 1])[..., None].expand_as(xc)  # (T, N, C)
        # a repeated token needs a blank between: only the paths ending in blank continue
        phi = torch.where(cand[None] == self.last[None, :, None], r[:, 1][..., None], both)
        r_new = torch.full((frames, 2) + tuple(cand.shape), -math.inf, device=x.device)
        r_new[0, 0] = torch.where(self.last[:, None] < 0, xc[0], torch.full_like(xc[0], -math.inf))
        for t in range(1, frames):
            r_new[t, 0] = torch.logaddexp(r_new[t - 1, 0], phi[t - 1]) + xc[t]
            r_new[t, 1] = torch.logaddexp(r_new[t - 1, 0], r_new[t - 1, 1]) + xb[t]
        # prefix score: the candidate's first frame is any t (after phi at t - 1, or t = 0)
        starts = torch.cat([r_new[:1, 0], phi[:-1] + xc[1:]], dim=0)  # (T, N, C)
        psi = torch.logsumexp(starts, dim=0)
        whole = torch.logaddexp(r[-1, 0], r[-1, 1])[:, None].expand_as(psi)
        psi = torch.where(cand == self.eos_id, whole, psi)
        self._cand, self._r_new, self._psi_new = cand, r_new, psi
        return psi - self.psi[:, None]

    def advance(self, rows: Tensor, tokens: Tensor) -> None:
        """The hypotheses go on as row ``rows[i]`` of the last :meth:`score` extended by
        ``tokens[i]`` (one of that row's candidates)."""
        assert self._cand is not None and self._r_new is not None and self._psi_new is not None
        j = (self._cand[rows] == tokens[:, None]).int().argmax(dim=1)
        self.r = self._r_new[:, :, rows, j]
        self.psi = self._psi_new[rows, j]
        self.last = tokens.clone()
        self.src = self.src[rows]

    def joint(self, lprobs: Tensor, weight: float, pre_beam: int) -> Tensor:
        """Attention log-probs (N, V), filtered -> joint scores (N, V): the ``pre_beam``
        best tokens of each row and eos, -inf elsewhere."""
        k = min(pre_beam, lprobs.shape[1])
        top = lprobs.topk(k, dim=1).indices
        eos = torch.full((lprobs.shape[0], 1), self.eos_id, dtype=torch.long, device=lprobs.device)
        cand = torch.cat([top, eos], dim=1)
        ctc = self.score(cand)
        att = lprobs.gather(1, cand)
        # a banned token (-inf attention) stays banned, even at weight 1; so does one CTC cannot read
        both = torch.where(torch.isfinite(att), (1.0 - weight) * att + weight * ctc, att)
        return torch.full_like(lprobs, -math.inf).scatter_(1, cand, both)


# --------------------------------------------------------------------------- rules


class LogitFilter:
    """Bans tokens at a step by setting their log-probabilities to -inf, in place."""

    def apply(self, lprobs: Tensor, tokens: Tensor, step: int) -> None:
        """lprobs (N, V); tokens (N, step) the tokens generated so far (no prefix)."""
        raise NotImplementedError


class SuppressTokens(LogitFilter):
    def __init__(self, ids: Sequence[int]):
        self.ids = sorted(set(ids))
        self._index = torch.tensor(self.ids, dtype=torch.long)

    def apply(self, lprobs: Tensor, tokens: Tensor, step: int) -> None:
        if self.ids:
            if self._index.device != lprobs.device:
                self._index = self._index.to(lprobs.device)
            lprobs.index_fill_(1, self._index, -math.inf)


class MinLength(LogitFilter):
    def __init__(self, min_len: int, eos_id: int):
        self.min_len, self.eos_id = min_len, eos_id

    def apply(self, lprobs: Tensor, tokens: Tensor, step: int) -> None:
        if step < self.min_len:
            lprobs[:, self.eos_id] = -math.inf


class NoRepeatNGram(LogitFilter):
    """fairseq's ``--no-repeat-ngram-size``: a token that would complete an n-gram already in
    the hypothesis is banned."""

    def __init__(self, n: int):
        self.n = n

    def apply(self, lprobs: Tensor, tokens: Tensor, step: int) -> None:
        n = self.n
        if step < n:  # need n - 1 tokens of context and one earlier n-gram
            return
        for row, toks in enumerate(tokens.tolist()):
            context = tuple(toks[step - n + 1:])
            banned = [toks[i + n - 1] for i in range(step - n + 1) if tuple(toks[i:i + n - 1]) == context]
            if banned:
                lprobs[row, banned] = -math.inf


class RepetitionGuard:
    """Rows whose last ``max_times * n`` tokens are one n-gram repeated ``max_times`` times
    in a row, for some n in 1 .. ``max_ngram``: they must end now."""

    def __init__(self, max_ngram: int = 4, max_times: int = 4):
        self.max_ngram, self.max_times = max_ngram, max_times

    def must_stop(self, tokens: Tensor) -> Tensor:
        """tokens (N, t) generated so far -> (N,) bool"""
        return torch.tensor(self.rows_to_stop(tokens), dtype=torch.bool, device=tokens.device)

    def rows_to_stop(self, tokens: Tensor) -> list[bool]:
        """:meth:`must_stop` as a list. The tails are a few tokens per row, so plain Python
        lists check them faster than a dozen tiny tensor operations at every step."""
        rows, times = tokens.shape[0], self.max_times
        if tokens.shape[1] < times:  # not even one token repeated ``times`` times yet
            return [False] * rows
        span = min(tokens.shape[1], self.max_ngram * times)
        stop = []
        for tail in tokens[:, -span:].tolist():
            stop.append(any(tail[-n * times:] == tail[-n * times:-n * times + n] * times
                            for n in range(1, self.max_ngram + 1) if n * times <= span))
        return stop

    def trim(self, tokens: Sequence[int]) -> list[int]:
        """``tokens`` (an output the guard ended) with the extra copies of its repeated tail
        dropped: ``a b c . a b c .`` -> ``a b c .`` (the smallest repeating n wins). An
        output whose tail is not a repeat comes back unchanged."""
        tokens, times = list(tokens), self.max_times
        for n in range(1, self.max_ngram + 1):
            if len(tokens) >= n * times and tokens[-n * times:] == tokens[-n:] * times:
                return tokens[: len(tokens) - n * (times - 1)]
        return tokens


class _Rules:
    """Everything that shapes the next-token distribution besides the models."""

    def __init__(self, opts: DecodingOptions, model: S2TModel):
        cfg = model.cfg
        self.eos_id = cfg.eos_id
        self.filters: list[LogitFilter] = [SuppressTokens([cfg.pad_id, cfg.bos_id, *opts.suppress_tokens]),
                                           MinLength(opts.min_len, cfg.eos_id)]
        if opts.no_repeat_ngram_size > 0:
            self.filters.append(NoRepeatNGram(opts.no_repeat_ngram_size))
        self.guard = RepetitionGuard(opts.repeat_max_ngram, opts.repeat_max_times) if opts.repetition_guard else None

    def apply(self, lprobs: Tensor, tokens: Tensor, step: int, max_lens: Sequence[int]) -> list[int]:
        """Filter ``lprobs`` (N, V) in place; rows that must end keep only the model's eos.
        tokens (N, step) generated so far, max_lens the N rows' length bounds -> per row, an
        index into STOP_REASONS (0 for a row free to go on). The decisions are made on Python
        lists: at batch 1 a decoding step is a handful of tiny operations, and each tensor
        one costs more than its arithmetic."""
        stop = self.guard.rows_to_stop(tokens) if self.guard is not None else [False] * lprobs.shape[0]
        maxed = [m <= step for m in max_lens]
        reason = [2 if m else 1 if r else 0 for r, m in zip(stop, maxed)]  # max_len wins over repetition
        forced = [i for i, r in enumerate(reason) if r]
        eos_lprobs = lprobs[forced, self.eos_id] if forced else None  # the model's own, before any filter
        for f in self.filters:
            f.apply(lprobs, tokens, step)
        if forced:
            lprobs[forced] = -math.inf
            lprobs[forced, self.eos_id] = eos_lprobs
        return reason


# --------------------------------------------------------------------------- search


def _as_prefix(prefix: Sequence[Sequence[int]] | Tensor, batch: int, device: torch.device) -> Tensor:
    p = torch.as_tensor(prefix, dtype=torch.long, device=device) if not isinstance(prefix, Tensor) else prefix
    if p.dim() != 2 or p.shape[0] != batch or p.shape[1] < 1:
        raise ValueError(f"decode: prefix must be (batch={batch}, length >= 1) token ids, got shape {tuple(p.shape)}")
    return p.to(device=device, dtype=torch.long)


def max_lengths(enc_lens: Tensor, opts: DecodingOptions, limit: int) -> Tensor:
    """Per utterance: at most this many tokens before eos. enc_lens (B,) -> (B,) long."""
    lens = torch.floor(opts.max_len_a * enc_lens.double() + opts.max_len_b).long()
    return lens.clamp(min=0, max=max(limit, 0))


def _setup(models: Sequence[S2TModel], states: Sequence[EncoderStates], prefix, opts: DecodingOptions):
    if not models:
        raise ValueError("decode: no models")
    batch = states[0][0].shape[0] if states else 0
    ens = Ensemble(models, states)
    p = _as_prefix(prefix, batch, states[0][0].device)
    max_lens = max_lengths(states[0][1], opts, ens.max_target_positions - p.shape[1])
    ctc = CTCPrefixScorer.for_models(models, states, ens.eos_id) if opts.ctc_weight > 0 else None
    return ens, p, max_lens, _Rules(opts, models[0]), ctc


def _pre_beam(opts: DecodingOptions) -> int:
    return opts.ctc_pre_beam or max(int(1.5 * opts.beam_size), 4)


def _hypothesis(tokens: list[int], log_prob: float, lenpen: float, reason: int) -> Hypothesis:
    return Hypothesis(tokens, log_prob / (len(tokens) + 1) ** lenpen, log_prob, STOP_REASONS[reason])


@torch.no_grad()
def greedy_search(models: Sequence[S2TModel], enc_states: Sequence[EncoderStates],
                  prefix: Sequence[Sequence[int]] | Tensor, opts: DecodingOptions = DecodingOptions()
                  ) -> list[DecodingResult]:
    """The most probable token at each step, for B utterances at once.

    models: one or more (an ensemble); enc_states: one (enc_out, enc_lens, enc_mask) per
    model, each of batch B; prefix: (B, P) forced start tokens (the language tag).
    Returns per utterance a :class:`DecodingResult` with one hypothesis.
    """
    ens, tokens, max_lens, rules, ctc = _setup(models, enc_states, prefix, opts)
    batch, plen = tokens.shape
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]
    rows = list(range(batch))  # the utterance of each live row
    row_max = max_lens.tolist()  # the length bound of each live row
    log_probs = [0.0] * batch  # float64 sums, as Python floats are
    for step in range(max(row_max) + 1 if batch else 0):
        lprobs = ens.step(tokens)
        reason = rules.apply(lprobs, tokens[:, plen:], step, row_max)
        if ctc is not None:
            lprobs = ctc.joint(lprobs, opts.ctc_weight, _pre_beam(opts))
        best_t, token = lprobs.max(dim=1)
        best = best_t.tolist()
        ended = [tok == rules.eos_id or math.isinf(b) for tok, b in zip(token.tolist(), best)]
        keep = []
        for i, (b, end) in enumerate(zip(best, ended)):
            log_probs[i] += b
            if end:
                gen = tokens[i, plen:].tolist()
                results[rows[i]].append(_hypothesis(gen, log_probs[i], opts.length_penalty, reason[i]))
            else:
                keep.append(i)
        if not keep:
            break
        index = torch.tensor(keep, device=tokens.device)
        if ctc is not None:
            ctc.advance(index, token[index])
        if len(keep) < len(rows):
            ens.reorder(index)
            tokens, token = tokens[index], token[index]
            rows, log_probs, row_max = [rows[i] for i in keep], [log_probs[i] for i in keep], [row_max[i] for i in keep]
        tokens = torch.cat([tokens, token[:, None]], dim=1)
    return [DecodingResult(hyps) for hyps in results]


@torch.no_grad()
def beam_search(models: Sequence[S2TModel], enc_states: Sequence[EncoderStates],
                prefix: Sequence[Sequence[int]] | Tensor, opts: DecodingOptions = DecodingOptions()
                ) -> list[DecodingResult]:
    """fairseq's beam search for B utterances at once, ``B * beam_size`` rows in one batch.

    Arguments as :func:`greedy_search`. Returns per utterance a :class:`DecodingResult`
    holding its ``opts.nbest`` best hypotheses, best first (fewer only if the search could
    finish fewer).
    """
    ens, prefix_t, max_lens, rules, ctc = _setup(models, enc_states, prefix, opts)
    batch, plen = prefix_t.shape
    k, vocab, device = opts.beam_size, ens.vocab_size, prefix_t.device
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    if batch == 0:
        return []
    ens.reorder(torch.arange(batch, device=device).repeat_interleave(k))
    if ctc is not None:
        ctc.reorder(torch.arange(batch, device=device).repeat_interleave(k))
    tokens = prefix_t.repeat_interleave(k, dim=0)  # (B * K, P)
    # every beam starts as the same prefix: only the first may extend it at step 0
    scores = torch.full((batch, k), -math.inf, dtype=torch.float64, device=device)
    scores[:, 0] = 0.0
    scores = scores.flatten()
    sents = list(range(batch))  # the utterance of each live group of k rows
    max_len = max_lens.tolist()
    for step in range(max(max_len) + 1):
        live = len(sents)
        lprobs = ens.step(tokens)
        reason = rules.apply(lprobs, tokens[:, plen:], step, [max_len[s] for s in sents for _ in range(k)])
        if ctc is not None:
            lprobs = ctc.joint(lprobs, opts.ctc_weight, _pre_beam(opts))
        cand = (scores[:, None] + lprobs.double()).view(live, k * vocab)
        cand_scores, cand_index = cand.topk(2 * k, dim=1)  # (live, 2K), best first
        # The rest of the step works on the 2K candidates of each group as Python lists: a
        # few dozen numbers, for which tensor operations cost more than the arithmetic.
        top_scores, top_index = cand_scores.tolist(), cand_index.tolist()

        # Hypotheses that end now: an eos among the top K candidates (fairseq), and every row
        # forced to end, whatever its rank (its eos is its only continuation).
        ending: list[tuple[float, int, int]] = []  # (score, group, row)
        nexts: list[list[tuple[float, int, int]]] = []  # per group: the K (score, beam, token) that go on
        for g in range(live):
            go_on, eos = [], []
            for j, (score, index) in enumerate(zip(top_scores[g], top_index[g])):
                beam, token = divmod(index, vocab)
                if token == rules.eos_id:
                    eos.append((score, beam, token))
                    row = g * k + beam
                    if j < k and math.isfinite(score) and not reason[row]:
                        ending.append((score, g, row))
                else:
                    go_on.append((score, beam, token))
            # the K best candidates that are not eos go on (eos ones fill up, as fairseq's ranks do)
            nexts.append((go_on + eos)[:k])
        if any(reason):
            forced_scores = (scores + lprobs[:, rules.eos_id].double()).tolist()
            for row, r in enumerate(reason):
                if r and math.isfinite(forced_scores[row]):
                    ending.append((forced_scores[row], row // k, row))
        for score, g, row in sorted(ending, key=lambda e: -e[0]):
            hyps = finished[sents[g]]
            if len(hyps) < k:  # K per utterance at most, the best first
                hyps.append(_hypothesis(tokens[row, plen:].tolist(), score, opts.length_penalty, reason[row]))

        keep = [g for g in range(live) if len(finished[sents[g]]) < k and max_len[sents[g]] > step
                and any(math.isfinite(score) for score, _, _ in nexts[g])]
        if not keep:
            break
        rows = torch.tensor([g * k + beam for g in keep for _, beam, _ in nexts[g]], device=device)
        next_token = torch.tensor([token for g in keep for _, _, token in nexts[g]], device=device)
        ens.reorder(rows)
        if ctc is not None:
            ctc.advance(rows, next_token)
        tokens = torch.cat([tokens[rows], next_token[:, None]], dim=1)
        scores = torch.tensor([score for g in keep for score, _, _ in nexts[g]], dtype=torch.float64, device=device)
        sents = [sents[g] for g in keep]

    # sorted is stable: the order of finishing breaks ties
    return [DecodingResult(sorted(hyps, key=lambda h: -h.score)[: opts.nbest]) for hyps in finished]


def search(models: Sequence[S2TModel], enc_states: Sequence[EncoderStates],
           prefix: Sequence[Sequence[int]] | Tensor, opts: DecodingOptions = DecodingOptions()
           ) -> list[DecodingResult]:
    """:func:`greedy_search` for ``beam_size`` 1, else :func:`beam_search`."""
    if opts.beam_size == 1:
        return greedy_search(models, enc_states, prefix, opts)
    return beam_search(models, enc_states, prefix, opts)
