"""``interpres data speech``: English speech for the text splits, in the MuST-C layout.

For each target language XX (and for ``asr``, English sentences with no
translation) it writes, under ``<home>/speech/<name>/``::

    en-XX/data/{train,dev,tst-COMMON,tst-VOICE}/wav/<talk>.wav
    en-XX/data/{split}/txt/{split}.yaml   one entry per utterance: duration, offset,
                                          speaker_id, wav (as MuST-C)
    en-XX/data/{split}/txt/{split}.en     line i belongs to YAML entry i
    en-XX/data/{split}/txt/{split}.XX

As in MuST-C, a wav is a "talk": several utterances of one speaker (one voice) with
pauses between them. train, dev and tst-COMMON are spoken by the training voices;
tst-VOICE holds the same sentences as tst-COMMON spoken by held-out voices that
appear in no other split, so the two test sets differ in the voice alone.

Every choice (which sentences, which voice, tempo, pitch, pauses) comes from a keyed
hash of the English text and the seed, so a build is deterministic and the same
English sentence sounds the same in every language pair: utterances are synthesized
once into a cache shared by all pairs and sizes, and talks are assembled from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from tqdm import tqdm

from compress.files import atomic_path, write_json_atomic, write_text_atomic
from speech.config import ConfigError, config_to_dict
from speech.data import tts
from speech.data.cache import interpres_home
from speech.data.text import TARGET_LANGS, TextCorpusConfig, build_text_corpus, read_tsv, split_key

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "tst-COMMON", "tst-VOICE")
TEXT_SPLIT = {"train": "train", "dev": "dev", "tst-COMMON": "test", "tst-VOICE": "test"}

TRAIN_VOICES = [
    "espeak:en-us+m1", "espeak:en-us+f3", "espeak:en-gb+m3", "espeak:en-gb+f2",
    "espeak:en-gb-x-rp+m4", "espeak:en-gb-x-gbclan+f4", "espeak:en-gb-x-gbcwmd+m5",
    "espeak:en-029+f1", "espeak:en-us+klatt2",
    "flite:kal16", "flite:slt", "flite:rms",
    "festival:kal_diphone", "festival:cmu_us_slt_arctic_hts",
]
HELDOUT_VOICES = [
    "espeak:en-gb-scotland+m7", "espeak:en-us-nyc+f5", "flite:awb", "festival:ked_diphone",
]
_SPEAKABLE = re.compile(r"^[A-Za-z0-9 ,.;:!?'\"()\-]+$")


@dataclass
class SpeechCorpusConfig:
    """Sizes, voices and variation of one speech corpus (speech/configs/data_speech_*.yaml)."""

    name: str = "small"  # folder under <home>/speech/
    langs: list[str] = field(default_factory=lambda: list(TARGET_LANGS))
    train_per_lang: int = 5000
    dev_per_lang: int = 100
    test_per_lang: int = 150  # tst-COMMON and tst-VOICE each
    asr_train: int = 4000  # English sentences in en-asr/ (0: no ASR corpus)
    asr_dev: int = 200
    asr_test: int = 200
    min_words: int = 2  # catalog strings shorter than this are not spoken
    train_voices: list[str] = field(default_factory=lambda: list(TRAIN_VOICES))
    heldout_voices: list[str] = field(default_factory=lambda: list(HELDOUT_VOICES))
    tempo: list[float] = field(default_factory=lambda: [0.9, 1.1])  # min, max
    pitch_cents: list[float] = field(default_factory=lambda: [-100.0, 100.0])
    pause: list[float] = field(default_factory=lambda: [0.2, 0.8])  # seconds between utterances
    utterances_per_talk: int = 8
    seed: int = 1
    workers: int = 0  # 0: one per core
    batch: int = 32  # utterances handed to one synthesis call

    def __post_init__(self) -> None:
        for lang in self.langs:
            if lang not in TARGET_LANGS + ["ar", "tr", "fa", "vi"]:
                raise ConfigError(f"langs: unknown language '{lang}'")
        try:
            train = {tts.Voice.parse(v).id for v in self.train_voices}
            held = {tts.Voice.parse(v).id for v in self.heldout_voices}
        except tts.SynthesisError as e:
            raise ConfigError(f"train_voices/heldout_voices: {e}") from e
        if not train or not held:
            raise ConfigError("train_voices and heldout_voices must both name at least one voice")
        if train & held:
            raise ConfigError(f"heldout_voices must not be training voices: {sorted(train & held)}")
        for name in ("tempo", "pitch_cents", "pause"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ConfigError(f"{name} must be [min, max], got {lo_hi}")
        if self.tempo[0] <= 0 or self.pause[0] < 0:
            raise ConfigError("tempo must be positive and pause non-negative")
        if self.utterances_per_talk < 1 or self.batch < 1:
            raise ConfigError("utterances_per_talk and batch must be at least 1")


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) from a keyed hash: the builder's only randomness."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def _seconds(samples: int, sr: int) -> str:
    """Seconds in fixed-point notation: YAML reads ``1e-05`` as a string, not a number."""
    text = f"{samples / sr:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def speakable(en: str, min_words: int) -> bool:
    return bool(_SPEAKABLE.match(en)) and len(en.split()) >= min_words and any(c.isalpha() for c in en)


@dataclass
class Utt:
    en: str
    tgt: str | None
    voice: tts.Voice
    tempo: float
    pitch: float
    wav: Path  # cached utterance


def _select(rows: list[tuple[str, str | None]], n: int, seed: int, min_words: int) -> list[tuple[str, str | None]]:
    """The ``n`` speakable rows of lowest hash rank, in their original order.

    Ranking by the English text alone makes the chosen English sets of different
    languages overlap as much as possible, so the synthesis cache is shared.
    """
    ok = [(i, r) for i, r in enumerate(rows) if speakable(r[0], min_words)]
    ok.sort(key=lambda ir: _unit("select", seed, split_key(ir[1][0])))
    return [r for _, r in sorted(ok[:n], key=lambda ir: ir[0])]


class SpeechCorpusBuilder:
    def __init__(self, cfg: SpeechCorpusConfig, home: Path):
        self.cfg = cfg
        self.home = home
        self.root = home / "speech" / cfg.name
        self.cache = home / "speech" / "utterances"
        self.train_voices = [tts.Voice.parse(v) for v in cfg.train_voices]
        self.heldout_voices = [tts.Voice.parse(v) for v in cfg.heldout_voices]

    def _utt(self, en: str, tgt: str | None, split: str) -> Utt:
        cfg = self.cfg
        voices = self.heldout_voices if split == "tst-VOICE" else self.train_voices
        key = split_key(en) or en
        voice = voices[int(_unit("voice", cfg.seed, key) * len(voices))]
        tempo = cfg.tempo[0] + (cfg.tempo[1] - cfg.tempo[0]) * _unit("tempo", cfg.seed, key, voice.id)
        pitch = cfg.pitch_cents[0] + (cfg.pitch_cents[1] - cfg.pitch_cents[0]) * _unit("pitch", cfg.seed, key, voice.id)
        tempo, pitch = round(tempo, 3), round(pitch, 1)
        digest = hashlib.sha1(f"{voice.id}\x1f{tempo}\x1f{pitch}\x1f{en}".encode("utf-8")).hexdigest()
        return Utt(en, tgt, voice, tempo, pitch, self.cache / digest[:2] / f"{digest}.wav")

    def plan(self) -> dict[str, dict[str, list[Utt]]]:
        """pair -> split -> utterances, with no audio made yet."""
        cfg = self.cfg
        text = self.home / "text"
        plan: dict[str, dict[str, list[Utt]]] = {}
        sizes = {"train": cfg.train_per_lang, "dev": cfg.dev_per_lang,
                 "tst-COMMON": cfg.test_per_lang, "tst-VOICE": cfg.test_per_lang}
        for lang in cfg.langs:
            pair = f"en-{lang}"
            plan[pair] = {}
            for split in SPLITS:
                path = text / pair / f"{TEXT_SPLIT[split]}.tsv"
                if not path.exists():
                    raise ConfigError(f"{path}: missing; the text corpus has no {pair} (build it with 'interpres data text langs=[...]')")
                rows = [(en, tgt) for en, tgt, _, _ in read_tsv(path)]
                chosen = _select(rows, sizes[split], cfg.seed, cfg.min_words)
                plan[pair][split] = [self._utt(en, tgt, split) for en, tgt in chosen]
        if cfg.asr_train > 0:
            plan["en-asr"] = {}
            asr_sizes = {"train": cfg.asr_train, "dev": cfg.asr_dev, "tst-COMMON": cfg.asr_test, "tst-VOICE": cfg.asr_test}
            for split in SPLITS:
                path = text / "en" / f"{TEXT_SPLIT[split]}.txt"
                rows = [(ln, None) for ln in path.read_text(encoding="utf-8").splitlines() if ln]
                chosen = _select(rows, asr_sizes[split], cfg.seed, 1)
                plan["en-asr"][split] = [self._utt(en, None, split) for en, _ in chosen]
        return plan

    def synthesize(self, utts: list[Utt]) -> tuple[int, int]:
        """Make every missing cached utterance; return (made, found in cache)."""
        todo: dict[Path, Utt] = {}
        for u in utts:
            if not u.wav.exists():
                todo.setdefault(u.wav, u)
        cached = len({u.wav for u in utts}) - len(todo)
        if not todo:
            return 0, cached
        tts.check_engines(list({u.voice for u in todo.values()}))
        # group by voice so a festival batch holds one voice; keep batches small for progress
        by_voice: dict[tts.Voice, list[Utt]] = {}
        for u in todo.values():
            by_voice.setdefault(u.voice, []).append(u)
        batches = [group[i:i + self.cfg.batch] for group in by_voice.values()
                   for i in range(0, len(group), self.cfg.batch)]
        workers = self.cfg.workers if self.cfg.workers > 0 else (os.cpu_count() or 1)
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            with tqdm(total=len(todo), desc="synthesis", unit="utt", disable=None) as bar:
                futures = {pool.submit(tts.synthesize, [tts.Job(u.en, u.voice, u.tempo, u.pitch, u.wav) for u in b]): len(b)
                           for b in batches}
                for fut in as_completed(futures):
                    fut.result()
                    bar.update(futures[fut])
        finally:
            # on an error or Ctrl-C, start no new batch; finished utterances stay cached
            pool.shutdown(wait=True, cancel_futures=True)
        return len(todo), cached

    def write_split(self, pair: str, split: str, utts: list[Utt]) -> dict:
        """Assemble talks from cached utterances and write the split; skip if complete."""
        cfg = self.cfg
        base = self.root / pair / "data" / split
        txt = base / "txt"
        yaml_path = txt / f"{split}.yaml"
        tgt_lang = pair.split("-", 1)[1]
        if yaml_path.exists():  # the YAML is written last: its presence means done
            entries = yaml.load(yaml_path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or []
            return {"utterances": len(entries), "talks": len({e["wav"] for e in entries}),
                    "hours": round(sum(float(e["duration"]) for e in entries) / 3600, 4)}

        # talks: utterances of one voice, in corpus order, utterances_per_talk at a time
        by_voice: dict[str, list[int]] = {}
        for i, u in enumerate(utts):
            by_voice.setdefault(u.voice.id, []).append(i)
        talks = [idx[k:k + cfg.utterances_per_talk] for _, idx in sorted(by_voice.items())
                 for k in range(0, len(idx), cfg.utterances_per_talk)]
        talks.sort(key=lambda t: t[0])
        entries: list[dict] = [{} for _ in utts]
        sr = tts.SAMPLE_RATE
        for t, idx in enumerate(talks):
            name = f"{pair}_{split}_{t:05d}.wav"
            pieces, pos = [], 0
            for j, i in enumerate(idx):
                u = utts[i]
                pause = cfg.pause[0] + (cfg.pause[1] - cfg.pause[0]) * _unit("pause", cfg.seed, pair, split, t, j)
                gap = np.zeros(int(round(pause * sr)), dtype=np.int16)
                audio, file_sr = sf.read(u.wav, dtype="int16")
                if file_sr != sr:
                    raise tts.SynthesisError(f"{u.wav}: cached utterance at {file_sr} Hz, expected {sr}")
                pieces += [gap, audio]
                pos += len(gap)
                entries[i] = {"duration": _seconds(len(audio), sr), "offset": _seconds(pos, sr),
                              "speaker_id": u.voice.slug, "wav": name}
                pos += len(audio)
            pieces.append(np.zeros(int(0.3 * sr), dtype=np.int16))
            with atomic_path(base / "wav" / name) as tmp:
                sf.write(tmp, np.concatenate(pieces), sr, subtype="PCM_16", format="WAV")
        # as in MuST-C: entries talk by talk, in time order, one flow-style mapping a line
        order = [i for idx in talks for i in idx]
        write_text_atomic(txt / f"{split}.en", "".join(utts[i].en + "\n" for i in order))
        if tgt_lang != "asr":
            write_text_atomic(txt / f"{split}.{tgt_lang}", "".join(f"{utts[i].tgt}\n" for i in order))
        lines = ["- {" + ", ".join(f"{k}: {v}" for k, v in entries[i].items()) + "}" for i in order]
        write_text_atomic(yaml_path, "\n".join(lines) + "\n")
        return {"utterances": len(utts), "talks": len(talks),
                "hours": round(sum(float(e["duration"]) for e in entries) / 3600, 4)}


def build_speech_corpus(cfg: SpeechCorpusConfig, home: Path | None = None) -> dict:
    """Build the speech corpus (building the text corpus first if there is none)."""
    home = home or interpres_home()
    t0 = time.perf_counter()
    if not (home / "text" / "summary.json").exists():
        log.info("no text corpus yet: building it with the default config")
        build_text_corpus(TextCorpusConfig(), home=home)
    builder = SpeechCorpusBuilder(cfg, home)
    # a corpus folder belongs to one config: resuming with another would mix them
    stamp = builder.root / "build.json"
    cfg_dict = config_to_dict(cfg)
    cfg_dict.pop("workers")
    cfg_dict.pop("batch")
    if stamp.exists():
        old = json.loads(stamp.read_text(encoding="utf-8"))
        if old != cfg_dict:
            changed = sorted(k for k in cfg_dict if old.get(k) != cfg_dict[k])
            raise ConfigError(f"{stamp}: corpus '{cfg.name}' was built with another config (differs in "
                              f"{', '.join(changed)}); choose another name= or delete {builder.root}")
    else:
        write_json_atomic(stamp, cfg_dict)
    plan = builder.plan()
    all_utts = [u for splits in plan.values() for utts in splits.values() for u in utts]
    log.info("%d utterances planned in %d pairs", len(all_utts), len(plan))
    made, cached = builder.synthesize(all_utts)
    t_synth = time.perf_counter() - t0
    splits: dict[str, dict[str, dict]] = {}
    for pair, by_split in tqdm(plan.items(), desc="talks", unit="pair", disable=None):
        splits[pair] = {split: builder.write_split(pair, split, utts) for split, utts in by_split.items()}
    summary = {
        "root": str(builder.root),
        "config": config_to_dict(cfg),
        "splits": splits,
        "hours_all_pairs": {split: round(sum(s[split]["hours"] for s in splits.values()), 3) for split in SPLITS},
        "synthesized": made,
        "cached": cached,
        "seconds": round(time.perf_counter() - t0, 1),
        "seconds_synthesis": round(t_synth, 1),
    }
    write_json_atomic(builder.root / "summary.json", summary)
    return summary
