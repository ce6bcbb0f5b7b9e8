"""Scores of translations and transcriptions: one rule for training, evaluation and benchmarks.

BLEU and chrF are sacrebleu's corpus scores with their signatures (tokenizer ``zh`` for
Chinese, ``ja-mecab`` for Japanese when mecab-python3 and ipadic are importable, else
``char``, ``13a`` otherwise); WER is jiwer's over texts lower-cased and without
punctuation, as the S2T recipes score ASR. Nothing here decodes: training computes its
dev scores without the inference stack.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from typing import Any, Sequence

from sacrebleu.metrics import BLEU, CHRF

_PUNCT = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")
WER_NORMALIZATION = "lower-cased, punctuation removed (apostrophes inside words kept), empty references left out"


def asr_normalize(text: str) -> str:
    """As the S2T recipes score ASR: lower case, punctuation removed, spaces collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def word_error_rate(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus WER in percent over the normalized texts; utterances with an empty reference are left out."""
    import jiwer  # noqa: PLC0415 - only transcription needs it

    pairs = [(asr_normalize(r), asr_normalize(h)) for r, h in zip(refs, hyps)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return 0.0
    return 100 * jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])


def mecab_available() -> bool:
    return find_spec("MeCab") is not None and find_spec("ipadic") is not None


def bleu_tokenizer(lang: str) -> tuple[str, str | None]:
    """(sacrebleu tokenizer for ``lang``, a note when it is a fallback)."""
    if lang == "zh":
        return "zh", None
    if lang == "ja":
        if mecab_available():
            return "ja-mecab", None
        return "char", "ja: BLEU tokenized by characters (tok:char); install mecab-python3 and ipadic for ja-mecab"
    return "13a", None


def score_translation(lang: str, hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu) with their signatures and, if any, a tokenizer note."""
    tokenize, note = bleu_tokenizer(lang)
    bleu, chrf = BLEU(tokenize=tokenize), CHRF()
    b = bleu.corpus_score(list(hyps), [list(refs)])
    c = chrf.corpus_score(list(hyps), [list(refs)])
    scores: dict[str, Any] = {"bleu": b.score, "bleu_signature": str(bleu.get_signature()),
                              "chrf": c.score, "chrf_signature": str(chrf.get_signature())}
    if note:
        scores["note"] = note
    return scores


def score_hypotheses(lang: str, hyps: list[str], refs: list[str]) -> dict[str, float]:
    """Training's dev scores: ``{"wer_en": ...}`` for English, else ``{"bleu_XX": ...}``, to 2 decimals."""
    if lang == "en":
        return {"wer_en": round(word_error_rate(hyps, refs), 2)}
    tokenize, _ = bleu_tokenizer(lang)
    return {f"bleu_{lang}": round(BLEU(tokenize=tokenize).corpus_score(hyps, [refs]).score, 2)}


def jiwer_version() -> str:
    try:
        return version("jiwer")
    except PackageNotFoundError:
        return "unknown"
