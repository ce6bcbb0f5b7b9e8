"""The audio-language model (LALM), in Qwen2-Audio's shape.

    waveform -> the project's speech encoder (frozen; Whisper base by default)
             -> states averaged over ``pool`` frames (20 ms -> 40 ms)      (T, encoder_dim)
             [-> with ``level``: each frame's level in dB, one more column  (T, encoder_dim + 1)]
             -> Projector: strided Conv1d (``stride`` frames per token), GELU, Linear
             -> audio embeddings (ceil(T / stride), hidden_size)
             -> spliced at the ``<|AUDIO|>`` placeholders of the chat prompt
             -> Qwen2ForCausalLM (transformers' classes, a small config trained here)

The chat template is Qwen2-Audio's, with single spaces where it has newlines::

    <|im_start|>user <|audio_bos|><|AUDIO|>...<|AUDIO|><|audio_eos|>QUESTION<|im_end|>
    <|im_start|>assistant ANSWER<|im_end|>

one ``<|AUDIO|>`` per audio embedding. The level column is there because the frozen encoder
blurs level: a linear probe of its states recovers an event's RMS level within 4.0 dB,
the frame energies within 0.2 dB (test scenes, isolated events), and "which sound is the
loudest?" turns on gaps of 3 dB. (The one model trained with it so far ignored it: BENCHMARKS.md,
issue 24, "Louder/longer pairs and a level column".) A model directory holds ``config.json`` (this
config, the encoder it hears through, the recipe), ``model.safetensors`` (projector and
LM; the encoder is named, not copied: ``whisper-base`` is imported from its pinned
package on first use; a model with an encoder of its own, ``ear``, a pruned and distilled
copy made by :mod:`audio_align.compressing`, keeps it there too), ``spm.model`` (the
specials are user-defined pieces) and a card.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from compress.errors import UserError
from compress.files import atomic_path, write_json_atomic
from speech.config import ConfigError
from speech.tokenizer import PAD_ID, Tokenizer, TokenizerError

log = logging.getLogger(__name__)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
AUDIO_BOS, AUDIO, AUDIO_EOS = "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"
SPECIALS = (IM_START, IM_END, AUDIO_BOS, AUDIO, AUDIO_EOS)
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "spm.model"
FAMILY = "lalm"
IGNORE = -100


class LalmError(UserError, ValueError):
    """A model directory, audio or question the LALM cannot use; the message names it."""


@dataclass
class LalmConfig:
    """The architecture of one LALM (config.json's ``lalm`` section)."""

    audio_encoder: str = "whisper-base"  # a speech model directory or name whose encoder hears
    encoder_dim: int = 512  # that encoder's d_model
    pool: int = 2  # encoder frames averaged into one (Whisper: 20 ms -> 40 ms)
    stride: int = 4  # pooled frames per audio token (40 ms -> 160 ms)
    projector_dim: int = 512
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 1024
    vocab_size: int = 0  # set from the tokenizer
    max_positions: int = 2048
    rope_theta: float = 10000.0
    dropout: float = 0.0  # attention dropout in the LM
    # trainable embeddings put before every sequence (STA's steering token, audio_align.align);
    # 0: none. Their weights are "prefix" in model.safetensors.
    prefix_tokens: int = 0
    # the projector also hears each frame's level (frame_levels): one more input column
    level: bool = False
    # an encoder of the model's own instead of ``audio_encoder``'s (a pruned copy of it, distilled
    # to give its states: ``interpres train lalm`` stage ``ear``): {"model": speech ModelConfig
    # fields, "features": its config.json "features"}; its weights are "ear.*" in
    # model.safetensors. {}: hear through ``audio_encoder``
    ear: dict = field(default_factory=dict)

    @property
    def audio_dim(self) -> int:
        """Columns of the audio features the projector takes."""
        return self.encoder_dim + int(bool(self.level))

    def __post_init__(self) -> None:
        for name in ("encoder_dim", "pool", "stride", "projector_dim", "hidden_size", "layers", "heads",
                     "kv_heads", "intermediate_size", "max_positions"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"LalmConfig: '{name}' must be at least 1, got {getattr(self, name)}")
        if self.hidden_size % self.heads or self.heads % self.kv_heads:
            raise ConfigError(f"LalmConfig: hidden_size {self.hidden_size} must divide by heads {self.heads}, "
                              f"and heads by kv_heads {self.kv_heads}")
        if self.ear and (not isinstance(self.ear, dict) or not isinstance(self.ear.get("model"), dict)
                         or not isinstance(self.ear.get("features"), dict)):
            raise ConfigError("LalmConfig: 'ear' must hold 'model' (ModelConfig fields) and 'features'")

    def ear_model_config(self) -> Any:
        """The speech ModelConfig of the model's own encoder (``ear``)."""
        from speech.model_config import ModelConfig

        try:
            return ModelConfig(**self.ear["model"])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"LalmConfig: bad 'ear.model' ({e})") from None

    def audio_tokens(self, frames: int) -> int:
        """Audio embeddings for ``frames`` pooled encoder frames."""
        return max(1, math.ceil(frames / self.stride))

    def qwen2(self) -> Any:
        from transformers import Qwen2Config

        return Qwen2Config(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            max_position_embeddings=self.max_positions, rope_theta=self.rope_theta, tie_word_embeddings=True,
            attention_dropout=self.dropout, pad_token_id=PAD_ID, bos_token_id=None, eos_token_id=None,
            use_cache=True)


class Projector(nn.Module):
    """Pooled encoder states (B, T, encoder_dim) -> audio embeddings (B, ceil(T/stride), hidden)."""

    def __init__(self, cfg: LalmConfig):
        super().__init__()
        self.stride = cfg.stride
        self.conv = nn.Conv1d(cfg.audio_dim, cfg.projector_dim, cfg.stride, stride=cfg.stride)
        self.act = nn.GELU()
        self.out = nn.Linear(cfg.projector_dim, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        pad = (-x.shape[1]) % self.stride  # kernel == stride: padding never mixes into a valid token
        x = nn.functional.pad(x, (0, 0, 0, pad))
        return self.out(self.act(self.conv(x.transpose(1, 2)).transpose(1, 2)))


class AudioLanguageModel(nn.Module):
    def __init__(self, cfg: LalmConfig, audio_id: int):
        super().__init__()
        from transformers import Qwen2ForCausalLM

        self.cfg = cfg
        self.audio_id = audio_id
        self.projector = Projector(cfg)
        self.lm = Qwen2ForCausalLM(cfg.qwen2())
        self.prefix = nn.Parameter(torch.zeros(cfg.prefix_tokens, cfg.hidden_size)) if cfg.prefix_tokens else None
        self.ear: nn.Module | None = None  # the encoder of its own (cfg.ear); forward takes its states, not audio
        if cfg.ear:
            from speech.model import AudioEncoder

            self.ear = AudioEncoder(cfg.ear_model_config())

    def _prefixed(self, emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Put the prefix embeddings before every row (before a left-padded row's padding)."""
        if self.prefix is None:
            return emb, mask
        b = emb.shape[0]
        pre = self.prefix.to(emb.dtype)[None].expand(b, -1, -1)
        return torch.cat([pre, emb], 1), torch.cat([torch.ones_like(mask[:, :1]).expand(b, pre.shape[1]), mask], 1)

    def embed(self, input_ids: Tensor, audio: Tensor, audio_lens: Tensor) -> Tensor:
        """input_ids (B, L) with ``audio_tokens(audio_lens[b])`` placeholders in row b, audio
        (B, T, encoder_dim) -> inputs_embeds (B, L, hidden) with the audio spliced in."""
        emb = self.lm.get_input_embeddings()(input_ids)
        slots = input_ids == self.audio_id
        n = torch.div(audio_lens + self.cfg.stride - 1, self.cfg.stride, rounding_mode="floor").clamp(min=1)
        if not torch.equal(slots.sum(1), n):
            raise LalmError(f"audio placeholders per row {slots.sum(1).tolist()} != audio tokens {n.tolist()}")
        a = self.projector(audio.to(emb.dtype))
        valid = torch.arange(a.shape[1], device=a.device)[None, :] < n[:, None]
        return emb.masked_scatter(slots[..., None], a[valid].to(emb.dtype))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, audio: Tensor, audio_lens: Tensor) -> Tensor:
        """-> logits (B, L, vocab)"""
        emb, mask = self._prefixed(self.embed(input_ids, audio, audio_lens), attention_mask)
        logits = self.lm(inputs_embeds=emb, attention_mask=mask, use_cache=False).logits
        return logits[:, self.cfg.prefix_tokens:]

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        """Summed NLL of the answer tokens (labels != IGNORE) and their count."""
        return answer_nll(self(batch["input_ids"], batch["attention_mask"], batch["audio"], batch["audio_lens"]),
                          batch["labels"])

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], audio: Tensor, audio_lens: Tensor, eos_id: int,
                 max_new_tokens: int = 48, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> list[list[int]]:
        """Continuation of each prompt (left-padded into one batch, KV-cached) until ``eos_id``:
        greedy, or sampled at ``temperature`` > 0 (drawn from ``generator``, on the CPU)."""
        device = audio.device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), PAD_ID, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, device=device)
            mask[i, width - len(p):] = 1
        emb, mask = self._prefixed(self.embed(ids, audio, audio_lens), mask)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.lm(inputs_embeds=emb, attention_mask=mask, position_ids=positions, use_cache=True)
        past = _cache_of(out)
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        result: list[list[int]] = [[] for _ in prompts]
        logits = out.logits[:, -1]
        for _ in range(max_new_tokens):
            if temperature > 0:
                probs = torch.softmax(logits.float().cpu() / temperature, -1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0].to(device)
            else:
                nxt = logits.argmax(-1)
            for i in range(len(prompts)):
                if not done[i]:
                    if int(nxt[i]) == eos_id:
                        done[i] = True
                    else:
                        result[i].append(int(nxt[i]))
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
            out = self.lm(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions,
                          use_cache=True, **{_cache_argument(): past})
            past = _cache_of(out)
            logits = out.logits[:, -1]
        return result


def answer_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, int]:
    """logits (B, L, V), labels (B, L) with IGNORE where no loss is taken -> (summed NLL of
    predicting labels[:, 1:] from positions [:, :-1], the number of such tokens)."""
    target = labels[:, 1:]
    nll = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                      ignore_index=IGNORE, reduction="sum")
    return nll, int((target != IGNORE).sum())


def sequence_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: the summed log-probability of the labelled tokens (labels[:, 1:] from
    positions [:, :-1], IGNORE elsewhere) and their count."""
    target = labels[:, 1:]
    mask = target != IGNORE
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return (lp * mask).sum(1), mask.sum(1)


@functools.cache
def _cache_argument() -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; take whichever it has. Asked on
    first use, not at import: importing transformers takes 3 s, and every ``interpres`` command
    imports this module to declare its options."""
    import inspect

    from transformers import Qwen2ForCausalLM

    return "cache" if "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters else "past_key_values"



def _cache_of(out: Any) -> Any:
    return out.cache if hasattr(out, "cache") else out.past_key_values


# ---------------------------------------------------------------- chat template

class ChatTokenizer:
    """The spm tokenizer with the chat specials resolved to ids."""

    def __init__(self, path: str | Path):
        self.tok = Tokenizer(path)
        ids = {s: self.tok.sp.piece_to_id(s) for s in SPECIALS}
        missing = [s for s, i in ids.items() if i == self.tok.unk_id]
        if missing:
            raise LalmError(f"{path}: the tokenizer lacks the chat pieces {', '.join(missing)}")
        self.im_start, self.im_end = ids[IM_START], ids[IM_END]
        self.audio_bos, self.audio, self.audio_eos = ids[AUDIO_BOS], ids[AUDIO], ids[AUDIO_EOS]
        self._user, self._assistant = self.tok.encode("user"), self.tok.encode("assistant")

    @property
    def vocab_size(self) -> int:
        return self.tok.vocab_size

    def user_turn(self, question: str, n_audio: int = 0) -> list[int]:
        audio = [self.audio_bos] + [self.audio] * n_audio + [self.audio_eos] if n_audio else []
        return [self.im_start, *self._user, *audio, *self.tok.encode(question), self.im_end,
                self.im_start, *self._assistant]

    def prompt(self, question: str, n_audio: int) -> list[int]:
        """The prompt of a one-turn chat about one audio, up to where the answer starts."""
        return self.user_turn(question, n_audio)

    def conversation(self, turns: Sequence[tuple[str, str]], n_audio: int) -> tuple[list[int], list[int]]:
        """(input ids, labels) of a chat: the audio in the first user turn; labels are the
        answer tokens and their closing ``<|im_end|>``, IGNORE elsewhere."""
        ids: list[int] = []
        labels: list[int] = []
        for j, (q, a) in enumerate(turns):
            user = self.user_turn(q, n_audio if j == 0 else 0)
            answer = self.tok.encode(a) + [self.im_end]
            ids += user + answer
            labels += [IGNORE] * len(user) + answer
        return ids, labels

    def decode(self, ids: Sequence[int]) -> str:
        keep = [i for i in ids if i not in (self.im_start, self.im_end, self.audio, self.audio_bos, self.audio_eos)]
        return self.tok.decode(keep).strip()


def train_chat_tokenizer(texts: Sequence[str], path: Path, vocab_size: int) -> ChatTokenizer:
    from speech.tokenizer import train_tokenizer

    train_tokenizer(list(texts) + ["user", "assistant"], path, vocab_size, user_defined_symbols=SPECIALS)
    return ChatTokenizer(path)


# ---------------------------------------------------------------- the ear

LEVEL_FLOOR_DB = -100.0  # the level of digital silence
LEVEL_OFFSET_DB, LEVEL_SCALE_DB = 40.0, 20.0  # level column = (dB + offset) / scale: -60 dB -> -1, -20 dB -> 1


def frame_levels(wave: np.ndarray, frames: int) -> Tensor:
    """The level of ``wave`` in ``frames`` equal spans (the pooled encoder frames: 640 samples,
    40 ms, for Whisper at pool 2), in dB re full scale (mean power), as the (frames, 1) column
    the projector hears: (dB + 40) / 20."""
    w = np.asarray(wave, dtype=np.float64)
    edges = np.linspace(0, len(w), frames + 1).round().astype(int)
    energy = np.concatenate([[0.0], np.cumsum(w * w)])
    power = (energy[edges[1:]] - energy[edges[:-1]]) / np.maximum(1, np.diff(edges))
    db = np.maximum(LEVEL_FLOOR_DB, 10.0 * np.log10(np.maximum(power, 1e-30)))
    return torch.from_numpy((db + LEVEL_OFFSET_DB) / LEVEL_SCALE_DB).float()[:, None]


class AudioFrontEnd:
    """The frozen speech encoder the LALM hears through: waveforms -> pooled states (T, D),
    with ``level`` the frame levels as one more column (T, D + 1). The encoder is a speech
    model's (``name``: a directory or ``whisper-base``), or a model's own (``ear``: an
    AudioEncoder, ``ear_features`` its config.json "features"; ``name`` then keys its cache)."""

    def __init__(self, name: str, pool: int, device: str | torch.device = "cpu", level: bool = False,
                 ear: nn.Module | None = None, ear_features: dict | None = None):
        self.name = name
        self.level = bool(level)
        self.device = torch.device(device)
        self.pool = pool
        if ear is None:
            from speech.translate import load_translator

            translator = load_translator(name)
            self.encoder = translator.models[0].encoder
            self.feature_cfg = translator.feature_cfg
            self.max_seconds = translator.max_segment_s
        else:
            from speech.features import feature_config

            self.encoder = ear
            self.feature_cfg = feature_config(ear_features, f"{name}: ear.features",
                                              ear.subsample.conv_layers[0].in_channels)
            self.max_seconds = (ear.max_source_positions - 1) * self.feature_cfg.frame_shift_ms / 1000.0
        self.encoder.to(self.device).eval()
        self.dim = int(self.encoder.layer_norm.normalized_shape[0])

    @classmethod
    def of(cls, cfg: LalmConfig, device: str | torch.device = "cpu", ear: nn.Module | None = None) -> "AudioFrontEnd":
        """The front end a model of ``cfg`` hears through (``ear``: the model's own encoder,
        which ``cfg.ear`` asks for; its cache is keyed by its weights)."""
        if cfg.ear:
            if ear is None:
                raise LalmError("this model hears through an encoder of its own (config 'ear'): pass the model's ear")
            return cls(ear_cache_name(ear), cfg.pool, device=device, level=cfg.level, ear=ear,
                       ear_features=cfg.ear["features"])
        return cls(cfg.audio_encoder, cfg.pool, device=device, level=cfg.level)

    def __call__(self, waves: Sequence[np.ndarray]) -> list[Tensor]:
        return [self.with_level(s, w) for s, w in zip(self.encode(waves), waves)]

    def with_level(self, states: Tensor, wave: np.ndarray) -> Tensor:
        """Encoder states (T, D) of ``wave`` -> the features this front end gives: (T, D + 1) with ``level``."""
        if not self.level:
            return states
        return torch.cat([states.float(), frame_levels(wave, states.shape[0])], 1)

    @torch.no_grad()
    def encode(self, waves: Sequence[np.ndarray]) -> list[Tensor]:
        """The pooled encoder states alone (what audio_align.encoded caches)."""
        for w in waves:
            if len(w) / 16000 > self.max_seconds:
                raise LalmError(f"audio of {len(w) / 16000:.1f} s: the encoder hears at most {self.max_seconds:.0f} s")
        x, lens = self.features(waves)
        enc, enc_lens, _ = self.encoder(x.to(self.device), lens.to(self.device))
        return [pooled.cpu() for pooled in pool_states(enc, enc_lens, self.pool)]

    def features(self, waves: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
        """The encoder's input features of ``waves``, padded into a batch, and their lengths."""
        from speech.dataset import pad_features
        from speech.features import features_of

        # no padding to Whisper's 30 s window: a 10 s scene costs a third of the compute, and the
        # projector is trained on the states of unpadded audio, as it hears them at inference
        cfg = self.feature_cfg
        if getattr(cfg, "pad_to_s", 0):
            cfg = dataclasses.replace(cfg, pad_to_s=0.0)
        return pad_features([features_of(torch.as_tensor(w, dtype=torch.float32), cfg) for w in waves])


def pool_states(enc: Tensor, enc_lens: Tensor, pool: int) -> list[Tensor]:
    """Encoder output (B, T, D) and lengths -> each row's valid frames averaged over ``pool``
    frames (the last frame repeated to fill the last group): a list of (ceil(n / pool), D)."""
    out = []
    for e, n in zip(enc, enc_lens.tolist()):
        e = e[: max(1, n)].float()
        t = math.ceil(e.shape[0] / pool)
        e = torch.cat([e, e[-1:].expand(t * pool - e.shape[0], -1)])
        out.append(e.view(t, pool, -1).mean(1))
    return out


def ear_cache_name(ear: nn.Module) -> str:
    """The name an own encoder's cached states go under: a digest of its weights."""
    import hashlib

    h = hashlib.sha1()
    for k, v in sorted(ear.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to(torch.float32).cpu().numpy().tobytes())
    return f"ear-{h.hexdigest()[:12]}"


def give_own_ear(model: AudioLanguageModel) -> AudioLanguageModel:
    """A model that hears through ``audio_encoder`` -> the same model with a copy of that
    encoder as its own (``ear``), which structured pruning can then cut (``ear.layers``, its
    attentions and feed-forward blocks); its states are the same until it is changed."""
    if model.ear is not None:
        return model
    import copy

    from speech.translate import load_translator

    translator = load_translator(model.cfg.audio_encoder)
    speech_model = translator.models[0]
    ear = copy.deepcopy(speech_model.encoder).float()
    model.cfg = dataclasses.replace(model.cfg, ear={"model": dataclasses.asdict(speech_model.cfg),
                                                    "features": dataclasses.asdict(translator.feature_cfg)})
    model.ear = ear
    sync_ear_config(model)
    return model


def sync_ear_config(model: AudioLanguageModel) -> None:
    """Write the sizes of ``model.ear``'s layers (after pruning) into ``model.cfg.ear``."""
    if model.ear is None:
        return
    layers = list(model.ear.layers)
    dims = {layer.self_attn.head_dim for layer in layers}
    if len(dims) > 1:
        raise LalmError(f"the ear's attention head sizes differ between layers ({sorted(dims)})")
    sizes = {"encoder_layers": len(layers), "head_dim": dims.pop() if dims else 0,
             "encoder_layout": [[layer.self_attn.heads, layer.ffn.fc1.out_features] for layer in layers]}
    model.cfg = dataclasses.replace(model.cfg, ear={**model.cfg.ear, "model": {**model.cfg.ear["model"], **sizes}})


def pad_audio(states: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    lens = torch.tensor([s.shape[0] for s in states])
    x = torch.zeros(len(states), int(lens.max()), states[0].shape[1], dtype=states[0].dtype)
    for i, s in enumerate(states):
        x[i, : s.shape[0]] = s
    return x, lens


# ---------------------------------------------------------------- model directories

def save_lalm_dir(model: AudioLanguageModel, tokenizer_path: Path, out: str | Path,
                  extra: dict[str, Any] | None = None, card: str | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in model.state_dict().items()
             if k != "lm.lm_head.weight"}  # tied to the input embeddings
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    if Path(tokenizer_path).resolve() != (out / TOKENIZER_FILE).resolve():
        with atomic_path(out / TOKENIZER_FILE) as tmp:
            tmp.write_bytes(Path(tokenizer_path).read_bytes())
    write_json_atomic(out / CONFIG_FILE, {"family": FAMILY, "lalm": dataclasses.asdict(model.cfg), **(extra or {})})
    if card is not None:
        with atomic_path(out / "README.md") as tmp:
            tmp.write_text(card)
    return out


def read_lalm_config(path: Path) -> dict[str, Any]:
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise LalmError(f"{path}: not a LALM model directory ({CONFIG_FILE} not found)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise LalmError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("family") != FAMILY or not isinstance(config.get("lalm"), dict):
        raise LalmError(f"{cfg_path}: not a LALM config (expected \"family\": \"{FAMILY}\" and a \"lalm\" section)")
    return config


def load_lalm_dir(path: str | Path, device: str | torch.device = "cpu") -> tuple[AudioLanguageModel, ChatTokenizer, dict]:
    path = Path(path)
    config = read_lalm_config(path)
    try:
        cfg = LalmConfig(**config["lalm"])
    except TypeError as e:
        raise LalmError(f"{path / CONFIG_FILE}: bad 'lalm' section ({e})") from None
    try:
        tok = ChatTokenizer(path / TOKENIZER_FILE)
    except TokenizerError as e:
        raise LalmError(str(e)) from None
    if tok.vocab_size != cfg.vocab_size:
        raise LalmError(f"{path}: spm.model has {tok.vocab_size} pieces, config.json says vocab_size {cfg.vocab_size}")
    model = AudioLanguageModel(cfg, tok.audio)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise LalmError(f"{weights}: not found")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise LalmError(f"{weights}: not a readable safetensors file ({e})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm.lm_head.weight"]
    if missing or unexpected:
        raise LalmError(f"{weights}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.lm.tie_weights()
    model.to(device).eval()
    return model, tok, config
