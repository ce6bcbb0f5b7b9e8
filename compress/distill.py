"""Knowledge distillation: word-level KD, selective KD masks, target truncation, and the
sequence-level KD corpus.

Word-level KD (Hinton et al. 2015; Kim & Rush 2016 for NMT) mixes two per-token terms,

    loss = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE_label(student)

where ``p^T`` is the softmax at temperature ``T`` (the T^2 keeps gradient sizes
comparable across temperatures). The same function serves encoder-decoder models
(logits over target positions) and causal models (logits over the whole sequence,
with the prompt masked out): both pass logits (B, U, V) and targets (B, U).

Selective KD chooses which target positions carry the KD term with a boolean mask:
:func:`prefix_mask` (the first x% of each target, for encoder-decoder models) and
:func:`section_mask` (the prompt / reasoning / answer sections of a causal model's
sequence). :func:`truncate_targets` instead trains on only the first x% of each target
(positions past it carry no loss at all), which also cuts the decoder's compute.

Sequence-level KD: the teacher translates the training sources and the student learns
those outputs; :class:`SeqKDCorpus` is the cache of that regenerated corpus: JSON lines
appended batch by batch, so a killed regeneration resumes where it stopped. Which of the
teacher's beam hypotheses becomes the target is ``select``: ``best`` (its top one, Kim & Rush
2016's Seq-KD) or ``closest`` (the one of its n-best nearest the reference by sentence chrF,
their sequence-level interpolation, Seq-Inter: :func:`closest_to_reference`). A weak
teacher's top hypothesis is often a degenerate string where another beam entry is close to
the reference; Seq-Inter keeps the teacher's distribution while dropping those.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from compress.errors import UserError


@dataclass
class KDConfig:
    alpha: float = 0.5  # weight of the KD term; 1 - alpha is the label loss's
    temperature: float = 1.0
    label_smoothing: float = 0.1
    prefix: float = 1.0  # selective KD: the first x of each target carries the KD term
    truncate: float = 1.0  # train on the first x of each target only

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"kd: 'alpha' must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"kd: 'temperature' must be positive, got {self.temperature}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"kd: 'label_smoothing' must be in [0, 1), got {self.label_smoothing}")
        for name in ("prefix", "truncate"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"kd: '{name}' is a fraction in (0, 1], got {getattr(self, name)}")


def _kept_lengths(lengths: Tensor, fraction: float) -> Tensor:
    """ceil(fraction * length), at least 1 for a non-empty target."""
    kept = torch.ceil(lengths.double() * fraction - 1e-9).long()
    return torch.where(lengths > 0, kept.clamp(min=1), kept)


def prefix_mask(valid: Tensor, fraction: float) -> Tensor:
    """valid (B, U) bool (True at real target tokens, left-aligned) -> (B, U) bool: True at
    the first ``ceil(fraction * length)`` tokens of each row."""
    lengths = valid.sum(1)
    pos = torch.arange(valid.shape[1], device=valid.device)[None, :]
    return valid & (pos < _kept_lengths(lengths, fraction)[:, None])


def section_mask(sections: Tensor, keep: Sequence[int]) -> Tensor:
    """sections (B, U) int (a section id per position, e.g. 0 prompt, 1 reasoning, 2 answer,
    -1 padding) -> (B, U) bool: True where the section is one of ``keep``."""
    if not keep:
        raise ValueError("section_mask: no section kept")
    out = torch.zeros_like(sections, dtype=torch.bool)
    for s in keep:
        out |= sections == s
    return out


def truncate_targets(prev: Tensor, target: Tensor, fraction: float, pad_id: int) -> tuple[Tensor, Tensor]:
    """Teacher-forcing inputs and targets (B, U) cut to the first ``ceil(fraction * length)``
    target tokens of each row (the rest become padding); the batch is narrowed to the
    longest kept row. fraction 1 returns the inputs unchanged."""
    if fraction >= 1.0:
        return prev, target
    valid = target != pad_id
    keep = prefix_mask(valid, fraction)
    u = max(1, int(keep.sum(1).max()))
    return prev.masked_fill(~keep, pad_id)[:, :u], target.masked_fill(~keep, pad_id)[:, :u]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor, cfg: KDConfig,
            pad_id: int, kd_mask: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Summed word-level KD loss over the non-pad targets, and its parts.

    student_logits, teacher_logits (B, U, V); target (B, U) with ``pad_id`` at padding;
    kd_mask (B, U) bool or None: where the KD term applies (selective KD), within the
    non-pad targets; elsewhere only the label term counts. ``teacher_logits`` None or
    ``alpha`` 0 gives the plain label-smoothed cross-entropy. Returns (loss, {"kd", "nll",
    "tokens"}) with sums (divide by tokens for a per-token mean).
    """
    if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
        raise ValueError(f"kd_loss: teacher logits {tuple(teacher_logits.shape)} and student logits "
                         f"{tuple(student_logits.shape)} differ (one vocabulary, one target)")
    valid = target != pad_id
    lprobs = F.log_softmax(student_logits.float(), dim=-1)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smooth = -lprobs.sum(-1)
    eps = cfg.label_smoothing
    eps_i = eps / (lprobs.shape[-1] - 1)  # fairseq's label_smoothed_nll_loss, term for term
    label = ((1.0 - eps - eps_i) * nll + eps_i * smooth).masked_fill(~valid, 0.0)
    kd_term = torch.zeros((), device=student_logits.device)
    alpha = cfg.alpha if teacher_logits is not None else 0.0
    if alpha > 0:
        where = valid if kd_mask is None else valid & kd_mask
        t = cfg.temperature
        s_lp = F.log_softmax(student_logits.float() / t, dim=-1)
        t_lp = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
        kl = (t_lp.exp() * (t_lp - s_lp)).sum(-1)  # KL(teacher || student) per position
        kd_term = (t * t) * kl.masked_fill(~where, 0.0).sum()
        # positions outside the KD mask keep their full label weight
        label_w = torch.where(where, 1.0 - alpha, 1.0).masked_fill(~valid, 0.0)
        loss = alpha * kd_term + (label_w * label).sum()
    else:
        loss = label.sum()
    stats = {"kd": float(kd_term.detach()), "nll": float(nll.detach().masked_fill(~valid, 0.0).sum()),
             "tokens": int(valid.sum())}
    return loss, stats


# --------------------------------------------------------------------------- sequence-level KD


class SeqKDError(UserError, ValueError):
    """The cached corpus is unreadable or belongs to other settings; the message names the file."""


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class SeqKDCorpus:
    """The teacher's outputs for a list of training items, cached as JSON lines.

    The first line is ``{"settings": ..., "fingerprint": ...}`` (teacher, decoding, data);
    each following line is ``{"id": ..., "tokens": [...]}``. :meth:`build` appends a line
    per item, a batch at a time, flushed and fsynced, and skips items already there, so
    it resumes after a kill (a torn last line is dropped). Another fingerprint is an error,
    not a silent reuse.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any]):
        self.path = Path(path)
        self.settings = settings
        self.fp = fingerprint(settings)

    def read(self) -> dict[str, list[int]]:
        if not self.path.is_file():
            return {}
        out: dict[str, list[int]] = {}
        with self.path.open("r", encoding="utf-8") as f:
            lines = f.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        elif lines:
            lines.pop()  # torn by a kill mid-write
        for n, line in enumerate(lines, 1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SeqKDError(f"{self.path}:{n}: invalid JSON ({e.msg})") from e
            if n == 1:
                if obj.get("fingerprint") != self.fp:
                    raise SeqKDError(f"{self.path}: made with other settings ({obj.get('settings')}); "
                                     "remove it or use another output folder")
                continue
            if not isinstance(obj.get("id"), str) or not isinstance(obj.get("tokens"), list):
                raise SeqKDError(f"{self.path}:{n}: a line needs 'id' (string) and 'tokens' (list)")
            out[obj["id"]] = obj["tokens"]
        return out

    def build(self, ids: Sequence[str], translate: Callable[[list[str]], list[list[int]]], batch_size: int = 32,
              progress: Callable[[int, int], None] | None = None) -> dict[str, list[int]]:
        """Translate every id not yet cached with ``translate(ids) -> token lists``; return all."""
        done = self.read()
        if len(set(ids)) != len(ids):
            raise SeqKDError(f"{self.path}: the item ids are not unique")
        todo = [i for i in ids if i not in done]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_torn_tail()
        fresh = not self.path.is_file() or self.path.stat().st_size == 0
        with self.path.open("a", encoding="utf-8") as f:
            if fresh:
                f.write(json.dumps({"settings": self.settings, "fingerprint": self.fp}) + "\n")
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                outs = translate(chunk)
                if len(outs) != len(chunk):
                    raise SeqKDError(f"{self.path}: the teacher returned {len(outs)} outputs for {len(chunk)} items")
                for i, toks in zip(chunk, outs):
                    toks = [int(t) for t in toks]
                    f.write(json.dumps({"id": i, "tokens": toks}) + "\n")
                    done[i] = toks
                f.flush()
                os.fsync(f.fileno())
                if progress is not None:
                    progress(len(ids) - len(todo) + start + len(chunk), len(ids))
        return {i: done[i] for i in ids}

    def _truncate_torn_tail(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(cut)


SEQ_KD_SELECT = ("best", "closest")
_CHRF: Any = None


def check_seq_kd_select(value: Any) -> str:
    if value not in SEQ_KD_SELECT:
        raise ValueError(f"seq_kd_select must be one of {', '.join(SEQ_KD_SELECT)}, got {value!r}")
    return value


def sentence_chrf(hypothesis: str, reference: str) -> float:
    """chrF (sacrebleu's defaults: character 6-grams, beta 2) of one sentence, 0-100."""
    global _CHRF
    if _CHRF is None:
        from sacrebleu.metrics import CHRF  # noqa: PLC0415

        _CHRF = CHRF()
    return float(_CHRF.sentence_score(hypothesis, [reference]).score)


def closest_to_reference(candidates: Sequence[str], reference: str) -> int:
    """The index of the candidate with the highest sentence chrF against ``reference`` (the
    earliest, i.e. the teacher's better-ranked one, on ties): Seq-Inter's target choice."""
    if not candidates:
        raise ValueError("closest_to_reference: no candidates")
    scores = [sentence_chrf(c, reference) for c in candidates]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def degenerate(tokens: Sequence[int], n: int = 3, times: int = 3) -> bool:
    """Whether some ``n``-gram occurs ``times`` times or more in ``tokens``: the runaway
    repetition of a weak teacher ("la la la ..."), which a sequence-level KD corpus without
    references to choose by should not teach."""
    if n < 1 or times < 2:
        raise ValueError(f"degenerate: n must be >= 1 and times >= 2, got n={n}, times={times}")
    seen: dict[tuple[int, ...], int] = {}
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        seen[gram] = seen.get(gram, 0) + 1
        if seen[gram] >= times:
            return True
    return False


def targets_from_outputs(references: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]],
                         filter_loops: bool = True) -> tuple[list[list[int]], int]:
    """Sequence-level KD targets: each teacher output between its reference's first token
    (bos or a language tag) and last (eos); with ``filter_loops`` the reference itself where
    the output is :func:`degenerate`, so the student does not learn the loop. Returns the
    targets and how many kept their reference."""
    targets, kept = [], 0
    for ref, out in zip(references, outputs, strict=True):
        if filter_loops and degenerate(out):
            targets.append(list(ref))
            kept += 1
        else:
            targets.append([ref[0], *out, ref[-1]])
    return targets, kept


def teacher_log_probs(teachers: Sequence[torch.nn.Module], forward: Callable[[torch.nn.Module], Tensor]) -> Tensor | None:
    """The teachers' log-probabilities (B, U, V) for one batch: ``forward(teacher)`` gives a
    teacher's logits; an ensemble is the log of the mean probability. None without teachers."""
    if not teachers:
        return None
    with torch.no_grad():
        lps = [F.log_softmax(forward(t).float(), dim=-1) for t in teachers]
    if len(lps) == 1:
        return lps[0]
    return torch.logsumexp(torch.stack(lps), dim=0) - math.log(len(lps))


def batch_kd_mask(target: Tensor, pad_id: int, cfg: KDConfig) -> Tensor | None:
    """The selective-KD mask of an encoder-decoder batch (None when every token carries KD)."""
    if cfg.prefix >= 1.0:
        return None
    return prefix_mask(target != pad_id, cfg.prefix)


def mean_per_token(stats: Iterable[dict[str, float]]) -> dict[str, float]:
    stats = list(stats)
    tokens = sum(s["tokens"] for s in stats) or 1
    return {k: sum(s[k] for s in stats) / tokens for k in ("kd", "nll")} | {
        "ppl": math.exp(min(50.0, sum(s["nll"] for s in stats) / tokens))}
