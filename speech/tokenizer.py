"""SentencePiece tokenizers: training them, and the token-id conventions of our models.

Fixed ids, in every ``spm.model`` trained here (and in :class:`speech.model_config.ModelConfig`):

    <pad> 0    <unk> 1    <s> (bos) 2    </s> (eos) 3    then the user-defined symbols

A joint speech-translation vocabulary (:func:`train_st_tokenizer`) adds one tag per target
language, ``<lang:xx>``, as a user-defined symbol: always a single token, with ids 4, 5, ...
in sorted language order (``<lang:en>`` is always there, so one model can also transcribe).

The decoder's first input is the start token: the language tag (forced at inference),
or bos for a vocabulary without tags. A training example is one sequence

    seq = target_ids(text, lang) = [<lang:xx>, p1, ..., pn, </s>]
    prev_tokens = seq[:-1]      (decoder input:  <lang:xx> p1 ... pn)
    target      = seq[1:]       (what it predicts: p1 ... pn </s>)

so the tag is never predicted, only given; decoding starts from ``prefix(lang)``.

Training is deterministic (one thread, sentences read in order, the first
``input_sentence_size`` kept), so the same texts give a byte-identical ``spm.model``.
The normalisation defaults to ``identity``: NFKC would rewrite the full-width
punctuation of Chinese and Japanese (，？！：) into ASCII, and a translation must come
out with the reference's characters. Normalising text is the data builders' job.
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import sentencepiece as spm

from compress.errors import UserError

log = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_LANG_TAG = re.compile(r"^<lang:([A-Za-z0-9_-]+)>$")
_CJK = {"ja", "zh"}  # scripts with thousands of characters: leave the rarest to <unk>


class TokenizerError(UserError, ValueError):
    """A tokenizer cannot be trained, loaded or asked for something it lacks."""


def lang_tag_piece(lang: str) -> str:
    """The piece of a language tag: ``de`` -> ``<lang:de>``."""
    piece = f"<lang:{lang}>"
    if not _LANG_TAG.match(piece):
        raise TokenizerError(f"'{lang}' is not a language code (letters, digits, '-' or '_')")
    return piece


def _lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        text = text.strip()
        if text:
            yield text


def _interleave(groups: Sequence[Iterable[str]]) -> Iterator[str]:
    """One line of each group in turn, so a size cap keeps every language."""
    iterators = [iter(g) for g in groups]
    while iterators:
        alive = []
        for it in iterators:
            line = next(it, None)
            if line is not None:
                alive.append(it)
                yield line
        iterators = alive


def train_tokenizer(
    texts: Iterable[str],
    out_path: str | Path,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    user_defined_symbols: Sequence[str] = (),
    normalization_rule_name: str = "identity",
    input_sentence_size: int = 1_000_000,
    byte_fallback: bool = False,
    add_dummy_prefix: bool = True,
) -> "Tokenizer":
    """Train a SentencePiece model on ``texts`` (one sentence each) and write it to ``out_path``.

    ``vocab_size`` is an upper bound (``hard_vocab_limit=False``): a tiny corpus gets
    the vocabulary it can fill. Use ``character_coverage=0.9995`` when the texts mix in
    Japanese or Chinese. ``add_dummy_prefix=False`` with ``model_type="char"`` gives one
    token per character (a space is the piece ``▁``). The file is written to a temporary
    name, then renamed.
    """
    out_path = Path(out_path)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(texts),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            user_defined_symbols=list(user_defined_symbols),
            normalization_rule_name=normalization_rule_name,
            byte_fallback=byte_fallback,
            add_dummy_prefix=add_dummy_prefix,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
            hard_vocab_limit=False,
            # determinism: one thread, sentences in the order given
            num_threads=1,
            shuffle_input_sentence=False,
            input_sentence_size=input_sentence_size,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TokenizerError(f"{out_path}: sentencepiece training failed: {e}") from e
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(model.getvalue())
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    tok = Tokenizer(out_path)
    log.info("trained %s: %d pieces (%s)", out_path, tok.vocab_size, model_type)
    return tok


def train_st_tokenizer(
    texts_by_lang: Mapping[str, Iterable[str]],
    out_path: str | Path,
    vocab_size: int,
    always_langs: Sequence[str] = ("en",),
    character_coverage: float | None = None,
    **kwargs,
) -> "Tokenizer":
    """A joint vocabulary for multilingual ST: target texts by language, plus a tag each.

    ``texts_by_lang`` maps a language to its target texts (``"en"`` to the transcripts
    when the model also does ASR). Every language there and in ``always_langs`` gets a
    ``<lang:xx>`` tag. ``character_coverage`` defaults to 0.9995 when Japanese or Chinese
    is among the languages, else 1.0. Other arguments go to :func:`train_tokenizer`.
    """
    langs = sorted(set(texts_by_lang) | set(always_langs))
    tags = [lang_tag_piece(lang) for lang in langs]
    extra = [s for s in kwargs.pop("user_defined_symbols", ()) if s not in tags]
    if character_coverage is None:
        cjk = any(lang.split("-")[0].lower() in _CJK for lang in langs)
        character_coverage = 0.9995 if cjk else 1.0
    texts = _interleave([texts_by_lang[lang] for lang in sorted(texts_by_lang)])
    return train_tokenizer(texts, out_path, vocab_size, character_coverage=character_coverage,
                           user_defined_symbols=tags + extra, **kwargs)


TOKENIZER_FILE = "spm.model"
WHISPER_TOKENIZER_FILE = "tokenizer.json"  # a model directory with "tokenizer": "whisper" (speech.whisper)


def tokenizer_file(config: dict) -> str:
    """The tokenizer file a model directory's config.json names: spm.model, or Whisper's."""
    return WHISPER_TOKENIZER_FILE if config.get("tokenizer") == "whisper" else TOKENIZER_FILE


class Tokenizer:
    """A trained ``spm.model`` (a protobuf, no pickle) with our id conventions."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise TokenizerError(f"{self.path}: tokenizer model not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{self.path}: not a sentencepiece model ({e})") from e
        ids = {"pad": self.sp.pad_id(), "unk": self.sp.unk_id(), "bos": self.sp.bos_id(), "eos": self.sp.eos_id()}
        want = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
        if ids != want:
            raise TokenizerError(f"{self.path}: special ids are {ids}, expected {want} "
                                 "(train it with speech.tokenizer.train_tokenizer)")
        self._lang_ids: dict[str, int] = {}
        for i in range(self.sp.get_piece_size()):
            m = _LANG_TAG.match(self.sp.id_to_piece(i))
            if m:
                self._lang_ids[m.group(1)] = i
        self._dropped = {PAD_ID, BOS_ID, *self._lang_ids.values()}

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def languages(self) -> list[str]:
        """The languages that have a tag, sorted."""
        return sorted(self._lang_ids)

    @property
    def suppress_ids(self) -> tuple[int, ...]:
        """Ids a decoder never emits: the language tags (pad and bos are the model's own rule)."""
        return tuple(self._lang_ids[lang] for lang in self.languages)

    def lang_tag(self, lang: str) -> int:
        """The id of ``<lang:xx>``."""
        try:
            return self._lang_ids[lang]
        except KeyError:
            known = ", ".join(self.languages) or "none"
            raise TokenizerError(f"{self.path}: no tag for language '{lang}' (known: {known})") from None

    def encode(self, text: str) -> list[int]:
        """The pieces of ``text``: no start token, no eos."""
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first eos, without pad, bos and language tags."""
        kept = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in self._dropped:
                kept.append(i)
        return self.sp.decode(kept)

    def prefix(self, lang: str | None = None) -> list[int]:
        """The forced start of the decoder: ``[<lang:xx>]``, or ``[bos]`` without a language."""
        return [BOS_ID] if lang is None else [self.lang_tag(lang)]

    def target_ids(self, text: str, lang: str | None = None) -> list[int]:
        """``prefix(lang) + encode(text) + [eos]``: inputs are ``[:-1]``, targets ``[1:]``."""
        return self.prefix(lang) + self.encode(text) + [EOS_ID]

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, languages={self.languages})"
