"""A zh->en model directory ready to translate: the model, its two tokenizers, decoding.

A model directory of this family holds ``config.json`` (``{"model": MTConfig, ...}``),
``model.safetensors``, ``src_spm.model`` (Chinese, one piece per character) and
``spm.model`` (English). Policies call three things:

- :meth:`Translator.translate`: whole translations of sources (greedy or beam), each
  optionally forced to continue a committed target prefix;
- :meth:`Translator.next_token`: one greedy step on a source prefix (wait-k);
- :meth:`Translator.detokenize`: target ids to text.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from speech.decode import DecodingOptions, RepetitionGuard, search
from speech.model_config import BOS_ID, EOS_ID, PAD_ID
from speech.runtime import onnx_precision, open_model
from speech.tokenizer import Tokenizer
from simul.model import MTModel, load_mt_model

SRC_SPM = "src_spm.model"
TGT_SPM = "spm.model"


class Translator:
    def __init__(self, model_dir: str | Path, model: MTModel | None = None, runtime: str = "torch",
                 onnx_dir: str | Path | None = None, threads: int | None = None):
        """``model`` given: that model; else the directory's, on ``runtime`` (speech.runtime's
        names; an ONNX runtime reads the graphs in ``onnx_dir``, or the directory's export)."""
        self.path = Path(model_dir)
        if model is not None:
            self.config = {}
        elif onnx_precision(runtime) is not None:
            model, self.config = open_model(self.path, runtime, onnx_dir=onnx_dir, threads=threads), {}
        else:
            model, self.config = load_mt_model(self.path)
            model = open_model(self.path, runtime, model)
        self.runtime = runtime
        self.model = model.eval()
        self.src_tok = Tokenizer(self.path / SRC_SPM)
        self.tgt_tok = Tokenizer(self.path / TGT_SPM)
        # Decoding limits, chosen on general dev (BENCHMARKS.md): English pieces are about 0.9
        # per source character, and an undertrained model repeats itself, so a hypothesis
        # may have at most 1.0 x characters + 5 pieces and ends once an n-gram repeats twice
        # in a row ("address address"): +4 BLEU greedy, and the output is no longer twice
        # the reference's length. The guard watches n-grams up to a sentence long (32 pieces),
        # and the repeated copy is dropped from the output: an undertrained model that does not
        # stop after its sentence ("Enter a valid number. Enter a valid number. Enter a ...")
        # returns the sentence once (issue 28).
        self.max_len_a, self.max_len_b, self.repeat_max_times = 1.0, 5, 2
        self.repeat_max_ngram = 32
        self.guard = RepetitionGuard(self.repeat_max_ngram, self.repeat_max_times)

    def encode_sources(self, sources: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded source ids (B, S) and lengths (B,); an empty source is one eos."""
        ids = [self.src_tok.encode(s) or [EOS_ID] for s in sources]
        lens = torch.tensor([len(x) for x in ids], dtype=torch.long)
        out = torch.full((len(ids), int(lens.max())), PAD_ID, dtype=torch.long)
        for i, x in enumerate(ids):
            out[i, : len(x)] = torch.tensor(x)
        return out, lens

    @torch.no_grad()
    def options(self, beam: int = 1, length_penalty: float = 1.0) -> DecodingOptions:
        return DecodingOptions(beam_size=beam, length_penalty=length_penalty, max_len_a=self.max_len_a,
                               max_len_b=self.max_len_b, repeat_max_ngram=self.repeat_max_ngram,
                               repeat_max_times=self.repeat_max_times)

    def translate(self, sources: Sequence[str], beam: int = 1, committed: Sequence[Sequence[int]] | None = None,
                  length_penalty: float = 1.0) -> list[list[int]]:
        """Target ids after each committed prefix (not repeating it), without eos; an output
        the repetition guard ended keeps one copy of its repeated tail."""
        if not sources:
            return []
        committed = committed or [[] for _ in sources]
        src, lens = self.encode_sources(sources)
        states = [self.model.encode(src, lens)]
        opts = self.options(beam, length_penalty)
        out: list[list[int]] = [[] for _ in sources]
        # prefixes of one length decode as one batch
        by_len: dict[int, list[int]] = {}
        for i, c in enumerate(committed):
            by_len.setdefault(len(c), []).append(i)
        for n, rows in by_len.items():
            idx = torch.tensor(rows)
            sub = [tuple(t.index_select(0, idx) for t in states[0])]
            prefix = [[BOS_ID, *committed[i]] for i in rows]
            for i, r in zip(rows, search([self.model], sub, prefix, opts)):
                out[i] = self.guard.trim(r.tokens) if r.stop == "repetition" else list(r.tokens)
        return out

    @torch.no_grad()
    def nbest(self, source: str, beam: int, length_penalty: float = 1.0) -> list[list[int]]:
        """The ``beam`` best translations of ``source`` (ids without eos), best first."""
        src, lens = self.encode_sources([source])
        opts = dataclasses.replace(self.options(beam, length_penalty), nbest=beam)
        (r,) = search([self.model], [self.model.encode(src, lens)], [[BOS_ID]], opts)
        return [self.guard.trim(h.tokens) if h.stop == "repetition" else list(h.tokens) for h in r.nbest]

    @torch.no_grad()
    def next_token(self, source: str, target: Sequence[int]) -> int:
        """The greedy next target id given ``source`` (a prefix) and ``target`` so far."""
        src, lens = self.encode_sources([source])
        enc_out, _, enc_mask = self.model.encode(src, lens)
        tokens = torch.tensor([[BOS_ID, *target]], dtype=torch.long)
        logits = self.model.decoder(tokens, enc_out, enc_mask)[0, -1].float()
        logits[[PAD_ID, BOS_ID]] = -float("inf")
        return int(logits.argmax())

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tgt_tok.decode(ids)

    def words(self, ids: Sequence[int]) -> list[str]:
        return self.detokenize(ids).split()
