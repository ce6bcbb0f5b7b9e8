"""``interpres data scenes``: sound scenes with exact ground truth, for the audio-language model.

A scene is a few seconds of a quiet background (pink or brown noise, or a sonic-pi
ambience) with 1-5 foreground events placed on it: recorded sounds from Debian's sound
packages, sounds synthesized here (beeps, sirens, chirps, clicks, noise bursts, alarm
trills), English sentences spoken by the TTS voices and single words spoken by people.
Because the mix is made here, what is in it is known exactly: which classes, how many
times, in what order, when, how loud. Under ``<home>/scenes/<name>/``::

    manifest.json               config, classes, held-out sources (and sentences, synth
                                bands), rules, split sizes
    {split}/wav/{scene_id}.wav  16 kHz mono PCM_16
    {split}/scenes.jsonl        one JSON object per scene, sorted by id

A scene object::

    {"id": "test-000017", "split": "test", "wav": "wav/test-000017.wav", "duration": 9.84,
     "background": {"source": "pink noise", "gain_db": -28.0},
     "prior": "breaking", "prior_rule": "phone ringing->speech",
     "events": [{"class": "bell", "source": "sound-theme-freedesktop:bell.oga",
                 "onset": 1.23, "offset": 2.05, "gain_db": -6.0, "level_db": -23.4,
                 "text": null, "voice": null}, ...]}        # sorted by onset

Times sit on a 10 ms grid, so the two decimals are exact: ``offset - onset`` is the
length of the event's signal, which was trimmed of leading and trailing silence.
``gain_db`` is the gain applied to the peak-normalized source (1.0 peak) and
``level_db`` the RMS of the event's own signal in the mix, in dB re full scale (a
full-scale square wave is 0 dB, a full-scale sine -3 dB). The background is no event:
its gain (on the peak-normalized background as well) puts its RMS ``background_db``
(-30..-20 dB) below the RMS level of the scene's quietest event, so every event stays
audible. All gains already include the one scale-down a mix gets if its peak would
pass 0.99, so the wav is exactly (up to the 16-bit rounding) the background plus the
events at the recorded gains (:func:`mix_scene`).

Co-occurrence priors (:data:`RULES`): in train and dev a rule's consequent follows its
trigger within ``within`` seconds in ``rule_probability`` of the scenes that hold the
trigger; in test half of them break it (the consequent is absent, or comes before the
trigger). ``prior`` says which, judged from the events themselves
(:func:`scene_prior`). Trigger classes occur only in these rule scenes (once each), a
scene holds at most one of them, and a rule scene at most one event of its consequent.
Which scenes are rule scenes, and which of them break, is spread evenly over the
indices, so the shares are exact even in a tiny corpus.

Held out for test: about a quarter of the files of every class with at least three, a
quarter of the sentences (test speaks only those), one TTS voice, a quarter of the
spoken words, and a parameter band of every synthesized sound. A test event takes
held-out material with probability ``test_heldout_prob``; train and dev never do.

Every draw comes from numpy Generators seeded by a hash of (seed, split, index), so a
build is deterministic; scenes are written one by one and atomically, and a rerun
skips the wavs that exist (recomputing their ground truth, which is cheap) and writes
the jsonl again, so a killed build resumes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from compress.errors import UserError
from compress.files import atomic_path, write_json_atomic, write_text_atomic
from speech.audio import SAMPLE_RATE, resample
from speech.config import config_to_dict
from speech.data import tts
from speech.data.cache import interpres_home
from speech.data.packages import fetch_apt

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
VERSION = 1  # of the mixing code: wavs made by another version are not resumed from
TICK = 0.01  # every onset, length and duration is a whole number of 10 ms ticks
HOP = SAMPLE_RATE // 100  # samples in a tick
PEAK = 0.99  # a mix whose peak would pass this is scaled down as a whole

# Where each package keeps its sounds, below its unpacked root.
PACKAGE_DIRS = {
    "sound-theme-freedesktop": "usr/share/sounds/freedesktop/stereo",
    "oxygen-sounds": "usr/share/sounds",
    "sonic-pi-samples": "usr/share/sonic-pi/samples",
    "ktuberling-data": "usr/share/ktuberling/sounds/en",
}
FD, OX, SP = "sound-theme-freedesktop:", "oxygen-sounds:", "sonic-pi-samples:"


def _sp(*stems: str) -> list[str]:
    return [f"{SP}{s}.flac" for s in stems]


# Event classes and their sources: "PACKAGE:FILE" (a recorded file), "synth:KIND" (made
# here, see _SYNTH), "tts" (a sentence from SENTENCES in a TTS voice) or
# "ktuberling-data:*.ogg" (single English words spoken by people). Chosen by name and
# checked by duration; files that are links to or copies of another are left out.
CLASSES: dict[str, list[str]] = {
    "alarm": [f"{FD}alarm-clock-elapsed.oga", "synth:alarm"],
    "beep": ["synth:beep"],
    "bell": [f"{FD}bell.oga", *_sp("perc_bell", "perc_bell2", "elec_bell", "drum_cowbell")],
    "camera shutter": [f"{FD}camera-shutter.oga"],
    "chime": [*_sp("elec_chime"), f"{FD}complete.oga", f"{FD}message-new-instant.oga",
              f"{FD}service-login.oga", f"{FD}service-logout.oga", f"{OX}Oxygen-Im-New-Mail.ogg",
              f"{OX}Oxygen-Sys-App-Positive.ogg", f"{OX}Oxygen-K3B-Finish-Success.ogg"],
    "chirp": ["synth:chirp"],
    "clicks": ["synth:clicks"],
    "crow": _sp("misc_crow"),
    "cymbal": _sp("drum_cymbal_closed", "drum_cymbal_hard", "drum_cymbal_open", "drum_cymbal_soft",
                  "drum_splash_hard", "drum_splash_soft", "elec_cymbal"),
    "door": _sp("perc_door"),
    "drum": _sp("drum_bass_hard", "drum_bass_soft", "drum_heavy_kick", "drum_snare_hard", "drum_snare_soft",
                "drum_tom_hi_hard", "drum_tom_mid_hard", "drum_tom_lo_hard", "drum_tom_lo_soft", "drum_roll",
                "sn_dub", "sn_generic", "bd_808", "bd_klub"),
    "explosion": _sp("misc_cineboom", "perc_impact1", "perc_impact2", "bd_boom"),
    "finger snap": _sp("perc_snap", "perc_snap2"),
    "guitar": _sp("guit_e_fifths", "guit_e_slide", "guit_em9", "guit_harmonics"),
    "noise burst": ["synth:noise burst"],
    "phone ringing": [f"{FD}phone-incoming-call.oga", f"{FD}phone-outgoing-calling.oga",
                      f"{OX}Oxygen-Im-Phone-Ring.ogg",
                      *_sp("mehackit_phone1", "mehackit_phone2", "mehackit_phone3", "mehackit_phone4")],
    "robot voice": _sp("glitch_robot1", "glitch_robot2", *(f"mehackit_robot{i}" for i in range(1, 8))),
    "siren": ["synth:siren"],
    "speech": ["tts", "ktuberling-data:*.ogg"],
    "tabla": _sp(*(f"tabla_ghe{i}" for i in range(1, 9)), "tabla_na_o", "tabla_tun1", "tabla_tun2",
                 "tabla_tun3", "tabla_tas3", "loop_tabla"),
    "trash being emptied": [f"{FD}trash-empty.oga", f"{OX}Oxygen-Sys-Trash-Emptied.ogg"],
    "vinyl scratch": _sp("vinyl_scratch", "vinyl_backspin", "vinyl_rewind"),
    "warning sound": [f"{FD}dialog-warning.oga", f"{FD}suspend-error.oga", f"{OX}Oxygen-Sys-Warning.ogg",
                      f"{OX}Oxygen-Sys-App-Error.ogg", f"{OX}Oxygen-Sys-App-Error-Serious.ogg",
                      f"{OX}Oxygen-Sys-App-Error-Critical.ogg", f"{OX}Oxygen-Sys-App-Negative.ogg",
                      f"{OX}Oxygen-K3B-Finish-Error.ogg", f"{OX}Oxygen-Im-Internal-Error.ogg"],
    "whoosh": _sp("perc_swoosh", "perc_swash", "ambi_swoosh", "ambi_dark_woosh"),
}


@dataclass(frozen=True)
class Rule:
    """In train and dev, ``consequent`` follows ``trigger`` within ``within`` seconds."""

    trigger: str
    consequent: str
    within: float = 2.0  # seconds from the trigger's offset to the consequent's onset

    @property
    def name(self) -> str:
        return f"{self.trigger}->{self.consequent}"


# Consequents are never triggers, so rules do not chain.
RULES = (
    Rule("phone ringing", "speech"),  # someone answers the phone
    Rule("bell", "door"),  # a doorbell, then the door opens
    Rule("explosion", "siren"),  # a blast, then the emergency services
    Rule("alarm", "speech"),  # the alarm clock wakes someone up
)

# Synthesized sounds: the parameter shown in the source name ("synth:beep:880Hz") is drawn
# from the train bands, or in test (held out) from the held-out band.
_SYNTH: dict[str, dict] = {
    "beep": {"unit": "Hz", "train": [(400, 1000), (1600, 3000)], "heldout": [(1000, 1600)], "seconds": (0.15, 0.6)},
    "siren": {"unit": "Hz", "train": [(550, 850)], "heldout": [(850, 1100)], "seconds": (1.5, 4.0)},
    "chirp": {"unit": "Hz", "train": [(250, 600)], "heldout": [(600, 900)], "seconds": (0.1, 0.4)},
    "clicks": {"unit": "Hz", "train": [(3, 7), (14, 25)], "heldout": [(7, 14)], "seconds": (0.5, 2.0)},
    "noise burst": {"unit": "Hz", "train": [(300, 1500), (3000, 6000)], "heldout": [(1500, 3000)],
                    "seconds": (0.2, 1.0)},
    "alarm": {"unit": "Hz", "train": [(1400, 2100)], "heldout": [(2100, 2800)], "seconds": (1.0, 3.0)},
}

BACKGROUNDS = ("pink noise", "brown noise", "sonic-pi:ambi_drone", "sonic-pi:vinyl_hiss",
               "sonic-pi:ambi_haunted_hum", "sonic-pi:ambi_glass_hum")

SENTENCES = (
    "Please close the door.", "The train leaves at noon.", "Where did you put my keys?",
    "It is raining again today.", "Can you call me back later?", "The meeting starts in five minutes.",
    "I will be home by six.", "Turn off the lights, please.", "Dinner is ready.",
    "The coffee is still hot.", "Do you want some tea?", "We need more milk.",
    "The bus is running late.", "Open the window, please.", "Hello, who is speaking?",
    "I can hear you now.", "Let me check my calendar.", "See you tomorrow morning.",
    "The store closes at nine.", "My phone battery is low.", "Watch out for the step.",
    "Thank you very much.", "The package arrived this morning.", "Please wait here for a moment.",
    "Is anybody home?", "The dog wants to go out.", "I left my umbrella at work.",
    "We are almost there.", "Could you repeat that, please?", "The kettle is boiling.",
    "Take the second street on the left.", "Your table is ready.", "The printer is out of paper.",
    "The soup needs more salt.", "I am on my way.", "The show starts at eight.",
    "Please take a seat.", "The water is too cold.", "Lunch is on the table.",
    "Put the box on the shelf.", "The baby is sleeping.", "Do not forget your coat.",
    "It is a beautiful day.", "The elevator is out of order.", "We should leave now.",
    "Hold the line, please.", "I found your wallet.", "The car needs fuel.",
    "Everyone, please be quiet.", "The flight has been delayed.", "Happy birthday to you.",
    "Can I help you?", "The music is too loud.", "Let's meet at the station.",
    "The oven is still on.", "Please sign here.", "Good night, sleep well.",
    "The shop opens at ten.", "Wash your hands before dinner.", "The last train has left.",
)
# ktuberling names a word's file after its scene and the word; a few need spelling out.
_WORD_FIX = {"palmtree": "palm tree", "fallingstar": "falling star", "broccolli": "broccoli", "sphynx": "sphinx"}

TRAIN_VOICES = ["espeak:en-us+m1", "espeak:en-gb+f2", "espeak:en-us+f3", "flite:slt", "flite:rms"]
HELDOUT_VOICE = "flite:awb"


class SceneError(UserError, ValueError):
    """A scene config or source is wrong; the message names the field or the file."""


@dataclass
class SceneCorpusConfig:
    """Sizes, mixing ranges and held-out material of one scene corpus (audio_align/configs/data_scenes*.yaml)."""

    name: str = "default"  # folder under <home>/scenes/
    train_scenes: int = 3000  # scenes in train
    dev_scenes: int = 200  # scenes in dev (train material, train priors)
    test_scenes: int = 500  # scenes in test (held-out material, priors broken)
    min_duration: float = 4.0  # seconds; a scene whose events need more is made longer, up to max_duration
    max_duration: float = 20.0  # seconds
    min_events: int = 1  # foreground events in a scene, repeats included (a rule pair may add one)
    max_events: int = 5
    repeat_prob: float = 0.25  # chance that a class, once drawn, occurs 2..max_repeats times
    max_repeats: int = 4
    overlap_prob: float = 0.15  # chance that an event starts before the previous one ends
    gain_db: list[float] = field(default_factory=lambda: [-12.0, -1.0])  # [min, max] gain of a peak-1 event
    background_db: list[float] = field(default_factory=lambda: [-30.0, -20.0])  # [min, max] RMS re the quietest event
    max_event_seconds: float = 4.0  # longer sources (loops, long decays) are cut with a fade-out
    rule_fraction: float = 0.3  # train and dev scenes that hold a rule's trigger
    rule_probability: float = 0.9  # in train and dev, the share of those where the consequent follows
    test_rule_fraction: float = 0.4  # test scenes that hold a rule's trigger
    test_breaking_fraction: float = 0.5  # of those, the share that break the rule
    heldout_fraction: float = 0.25  # files, sentences and words of a class held out for test
    test_heldout_prob: float = 0.5  # chance that a test event takes held-out material where its class has some
    word_share: float = 0.3  # share of speech events that are single recorded words, not TTS sentences
    text_sentences: int = 0  # English sentences of 4-8 words from the text corpus ('interpres data text') spoken
    # besides the 60 built-in ones, a heldout_fraction of them in test only: with hundreds of sentences a model
    # must read 'what was said' off the options, not recall one of the few it heard
    voices: list[str] = field(default_factory=lambda: list(TRAIN_VOICES))  # TTS voices of every split
    heldout_voice: str = HELDOUT_VOICE  # a TTS voice heard in test only
    seed: int = 1
    workers: int = 2  # threads for synthesis and mixing (0: one)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise SceneError(f"name: '{self.name}' is not a folder name")
        for key in ("train_scenes", "dev_scenes", "test_scenes"):
            if getattr(self, key) < 0:
                raise SceneError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if self.min_duration <= 0:
            raise SceneError(f"min_duration: must be positive, got {self.min_duration}")
        if self.min_duration > self.max_duration:
            raise SceneError(f"min_duration ({self.min_duration}) must not exceed max_duration ({self.max_duration})")
        if self.max_event_seconds < 0.2:
            raise SceneError(f"max_event_seconds: must be at least 0.2, got {self.max_event_seconds}")
        if self.max_duration < 2 * self.max_event_seconds + 2:  # a rule pair of the longest events must fit
            raise SceneError(f"max_duration ({self.max_duration}) must be at least 2 * max_event_seconds + 2 "
                             f"({2 * self.max_event_seconds + 2})")
        if not 1 <= self.min_events <= self.max_events:
            raise SceneError(f"min_events/max_events: need 1 <= min_events <= max_events, "
                             f"got {self.min_events}, {self.max_events}")
        if self.max_repeats < 2:
            raise SceneError(f"max_repeats: must be at least 2, got {self.max_repeats}")
        for key in ("gain_db", "background_db"):
            lo_hi = getattr(self, key)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1] or lo_hi[1] > 0:
                raise SceneError(f"{key}: must be [min, max] with min <= max <= 0, got {lo_hi}")
        for key in ("repeat_prob", "overlap_prob", "rule_fraction", "rule_probability", "test_rule_fraction",
                    "test_breaking_fraction", "heldout_fraction", "test_heldout_prob", "word_share"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise SceneError(f"{key}: must be in [0, 1], got {getattr(self, key)}")
        try:
            voices = [tts.Voice.parse(v).id for v in self.voices]
            held = tts.Voice.parse(self.heldout_voice).id
        except tts.SynthesisError as e:
            raise SceneError(f"voices/heldout_voice: {e}") from e
        if not voices:
            raise SceneError("voices: name at least one TTS voice")
        if held in voices:
            raise SceneError(f"heldout_voice: '{held}' is also in voices")
        if self.text_sentences < 0:
            raise SceneError(f"text_sentences: must be >= 0, got {self.text_sentences}")
        if self.workers < 0:
            raise SceneError(f"workers: must be >= 0, got {self.workers}")


# --------------------------------------------------------------------------- mixing


class Mix(NamedTuple):
    """A mixed scene: ``wave`` (samples,) float64; per event the final ``gain_db`` and the
    measured ``level_db``; the final ``background_gain_db``; ``scale_db`` (<= 0) taken off
    every gain to keep the peak at or below 0.99."""

    wave: np.ndarray
    level_db: list[float]
    gain_db: list[float]
    background_gain_db: float | None
    scale_db: float


def level_db(signal: np.ndarray) -> float:
    """RMS level in dB re full scale (a full-scale square wave is 0 dB)."""
    rms = float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))) if len(signal) else 0.0
    return 20.0 * math.log10(max(rms, 1e-10))


def mix_scene(events: Sequence[tuple[np.ndarray, float, float]], background: tuple[np.ndarray, float] | None,
              duration_s: float, sr: int = SAMPLE_RATE, peak: float = PEAK) -> Mix:
    """Mix ``events`` (signal, onset in seconds, gain in dB) over ``background`` (signal, gain in dB).

    The wave is ``10**(g_b/20) * background[:n] + sum_i 10**(g_i/20) * signal_i`` placed at
    ``round(onset_i * sr)``, with ``n = round(duration_s * sr)``; if its peak passes ``peak``
    the whole wave, and so every gain, is scaled down by the same factor. ``level_db`` is
    the RMS level of each event's own scaled signal over its onset..offset.
    """
    n = int(round(duration_s * sr))
    wave = np.zeros(n, dtype=np.float64)
    bg_gain = None
    if background is not None:
        bg, bg_gain = background
        if len(bg) < n:
            raise SceneError(f"background of {len(bg)} samples is shorter than the scene ({n})")
        wave += 10.0 ** (bg_gain / 20.0) * np.asarray(bg[:n], dtype=np.float64)
    for k, (sig, onset, gain) in enumerate(events):
        start = int(round(onset * sr))
        if start < 0 or start + len(sig) > n:
            raise SceneError(f"event {k} ({onset:.2f} s + {len(sig) / sr:.2f} s) does not fit in {duration_s:.2f} s")
        wave[start:start + len(sig)] += 10.0 ** (gain / 20.0) * np.asarray(sig, dtype=np.float64)
    top = float(np.abs(wave).max()) if n else 0.0
    scale = peak / top if top > peak else 1.0
    if scale != 1.0:
        wave *= scale
    scale_db = 20.0 * math.log10(scale)
    gains = [g + scale_db for _, _, g in events]
    levels = [level_db(10.0 ** (g / 20.0) * np.asarray(sig, dtype=np.float64)) for (sig, _, _), g in zip(events, gains)]
    return Mix(wave, levels, gains, None if bg_gain is None else bg_gain + scale_db, scale_db)


# --------------------------------------------------------------------------- sources


def _fade(sig: np.ndarray, sr: int, fade_in: float = 0.005, fade_out: float = 0.005) -> np.ndarray:
    """``sig`` with raised-cosine fades of ``fade_in`` and ``fade_out`` seconds."""
    sig = sig.copy()
    n_in, n_out = (min(int(s * sr), len(sig) // 2) for s in (fade_in, fade_out))
    if n_in > 0:
        sig[:n_in] *= 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n_in))
    if n_out > 0:
        sig[-n_out:] *= 0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, n_out))
    return sig


def prepare(sig: np.ndarray, name: str, max_seconds: float, sr: int = SAMPLE_RATE,
            floor_db: float = -40.0) -> np.ndarray:
    """An event signal from a mono 16 kHz source: leading and trailing silence (10 ms frames
    more than ``-floor_db`` dB below the loudest) trimmed, cut to ``max_seconds`` with a 50 ms
    fade-out if longer, cut to whole 10 ms ticks, peak-normalized to 1."""
    sig = np.asarray(sig, dtype=np.float64)
    frames = len(sig) // HOP
    if frames == 0 or float(np.abs(sig).max()) < 1e-4:
        raise SceneError(f"{name}: silent or shorter than 10 ms")
    rms = np.sqrt(np.mean(sig[:frames * HOP].reshape(frames, HOP) ** 2, axis=1))
    loud = np.nonzero(rms > rms.max() * 10.0 ** (floor_db / 20.0))[0]
    sig = sig[loud[0] * HOP:(loud[-1] + 1) * HOP]
    limit = int(round(max_seconds / TICK)) * HOP
    if len(sig) > limit:
        sig = _fade(sig[:limit], sr, fade_in=0.0, fade_out=0.05)
    if len(sig) < 5 * HOP:
        raise SceneError(f"{name}: less than 50 ms of sound")
    return sig / float(np.abs(sig).max())


def _read_mono(path: Path) -> np.ndarray:
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        raise SceneError(f"{path}: not a readable audio file ({e})") from e
    return resample(audio.mean(axis=1), sr, SAMPLE_RATE)


def _hz(lo_hi: tuple[float, float], rng: np.random.Generator) -> float:
    return float(rng.uniform(*lo_hi))


def synthesize(kind: str, param: int, seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A synthesized event of ``seconds`` (a whole number of ticks; clicks end with their last
    click), peak 1; ``param`` is the frequency (beep, siren centre, chirp start, noise-burst
    centre, alarm tone) or the click rate."""
    n = int(round(seconds / TICK)) * HOP
    t = np.arange(n) / sr
    if kind == "beep":
        sig = np.sin(2 * np.pi * param * t)
    elif kind == "siren":  # a wail: the pitch sweeps slowly up and down, with the buzz of harmonics
        rate = _hz((0.4, 1.0), rng)
        f = param * (1.0 + 0.35 * np.sin(2 * np.pi * rate * t - np.pi / 2))
        phase = 2 * np.pi * np.cumsum(f) / sr
        sig = np.sin(phase) + 0.4 * np.sin(2 * phase) + 0.2 * np.sin(3 * phase)
    elif kind == "chirp":  # a fast exponential sweep up
        f1 = min(param * _hz((4.0, 8.0), rng), 7000.0)
        f = param * (f1 / param) ** (t / max(seconds, 1e-3))
        sig = np.sin(2 * np.pi * np.cumsum(f) / sr)
    elif kind == "clicks":  # short decaying impulses at a steady rate; the sound ends with the last
        click = np.exp(-np.arange(int(0.003 * sr)) / (0.0006 * sr)) * rng.choice([-1.0, 1.0], int(0.003 * sr))
        period = sr / param
        count = max(1, int((n - len(click)) / period) + 1)
        n = -(-(int((count - 1) * period) + len(click)) // HOP) * HOP
        sig = np.zeros(n)
        for k in range(count):
            sig[int(k * period):int(k * period) + len(click)] += click
    elif kind == "noise burst":  # white noise band-passed to an octave around the centre
        spec = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / sr)
        spec[(freqs < param / np.sqrt(2)) | (freqs > param * np.sqrt(2))] = 0
        sig = np.fft.irfft(spec, n)
    elif kind == "alarm":  # an electronic alarm-clock trill between two tones
        trill = _hz((8.0, 12.0), rng)
        f = np.where(np.sin(2 * np.pi * trill * t) >= 0, param, param * 1.25)
        sig = np.sign(np.sin(2 * np.pi * np.cumsum(f) / sr)) * 0.5 + 0.5 * np.sin(2 * np.pi * np.cumsum(f) / sr)
    else:
        raise SceneError(f"synth:{kind}: unknown synthesized sound")
    if kind != "clicks":
        sig = _fade(sig, sr, 0.005, 0.01)
    return sig / max(float(np.abs(sig).max()), 1e-9)


def _noise(color: str, n: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Pink (1/f power) or brown (1/f^2) noise of ``n`` samples, peak 1, above 20 Hz."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    shape = np.zeros_like(freqs)
    ok = freqs >= 20.0
    shape[ok] = freqs[ok] ** (-0.5 if color == "pink noise" else -1.0)
    sig = np.fft.irfft(spec * shape, n)
    return sig / float(np.abs(sig).max())


def _loop(sig: np.ndarray, n: int, start: int, sr: int = SAMPLE_RATE, xfade: float = 0.25) -> np.ndarray:
    """``n`` samples of ``sig`` looped with crossfades, from ``start``, peak 1."""
    m = min(int(xfade * sr), len(sig) // 4)
    out = sig.copy()
    ramp = np.linspace(0.0, 1.0, m)
    while len(out) < n + start:
        head = out[:-m] if m else out
        tail = out[-m:] * np.sqrt(1 - ramp) + sig[:m] * np.sqrt(ramp) if m else np.zeros(0)
        out = np.concatenate([head, tail, sig[m:]])
    seg = out[start:start + n]
    return seg / max(float(np.abs(seg).max()), 1e-9)


class Library:
    """The sound files and cached TTS sentences, read and prepared once."""

    def __init__(self, home: Path, cfg: SceneCorpusConfig, pkgs: dict[str, Path]):
        self.home = home
        self.cfg = cfg
        self.pkgs = pkgs
        self.tts_dir = home / "scenes" / "tts"
        self._signals: dict[str, np.ndarray] = {}

    def path(self, source: str) -> Path:
        pkg, _, name = source.partition(":")
        if pkg == "sonic-pi":  # a background, named as "sonic-pi:ambi_drone"
            pkg, name = "sonic-pi-samples", name + ".flac"
        return self.pkgs[pkg] / PACKAGE_DIRS[pkg] / name

    def tts_path(self, voice: str, text: str) -> Path:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
        return self.tts_dir / tts.Voice.parse(voice).slug / f"{digest}.wav"

    def files(self, spec: str) -> list[str]:
        """The sources a spec of CLASSES stands for (a glob expands to the files it finds)."""
        if "*" not in spec:
            return [spec]
        pkg, _, pattern = spec.partition(":")
        base = self.pkgs[pkg] / PACKAGE_DIRS[pkg]
        return [f"{pkg}:{Path(p).name}" for p in sorted(glob.glob(str(base / pattern)))]

    def load(self, key: str, path: Path, cut: bool = True) -> None:
        if key not in self._signals:
            raw = _read_mono(path)
            self._signals[key] = prepare(raw, str(path), self.cfg.max_event_seconds) if cut else raw

    def signal(self, key: str) -> np.ndarray:
        return self._signals[key]


def word_text(source: str) -> str:
    """The word a ktuberling file speaks: ``ktuberling-data:pizzeria_tomato.ogg`` -> ``tomato``."""
    stem = Path(source.partition(":")[2]).stem.rsplit("_", 1)[-1]
    return _WORD_FIX.get(stem, stem)


# --------------------------------------------------------------------------- planning


def _unit(*parts: object) -> float:
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def _rng(*parts: object) -> np.random.Generator:
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(h, "big"))


def _every(i: int, fraction: float) -> bool:
    """True for ``ceil(n * fraction)`` of the first n indices, spread evenly (exact shares)."""
    f = round(fraction * 10**6)
    return -(-(i + 1) * f // 10**6) > -(-i * f // 10**6)


def _ticks(seconds: float) -> int:
    return int(round(seconds / TICK))


@dataclass
class Event:
    cls: str
    source: str  # as written in the ground truth
    key: str  # the library key of the signal ("" for synthesized ones)
    gain_db: float
    text: str | None = None
    voice: str | None = None
    synth: tuple[str, int, float] | None = None  # kind, parameter, seconds
    role: str | None = None  # "trigger" / "consequent" of the scene's rule
    group: int = 0  # events of one draw (a class and its repeats) share a group


@dataclass
class Content:
    """What a scene holds, before its layout: drawn without knowing any signal."""

    split: str
    index: int
    duration: float
    background: str
    background_db: float  # the background's RMS relative to the quietest event's
    events: list[Event]
    rule: Rule | None
    mode: str  # "none", "consistent", "absent", "before"


def text_sentences(home: Path, n: int, seed: int) -> list[str]:
    """``n`` English sentences of 4-8 words (about 1-3 s spoken) from the text corpus's
    training sentences (``interpres data text``), chosen by ``seed``; none of the built-in ones."""
    path = home / "text" / "en" / "train.txt"
    if not path.is_file():
        raise SceneError(f"text_sentences: {path} not found; build the text corpus first ('interpres data text')")
    builtin = set(SENTENCES)
    pool = sorted({s for s in path.read_text(encoding="utf-8").splitlines()
                   if 4 <= len(s.split()) <= 8 and s not in builtin})
    if len(pool) < n:
        raise SceneError(f"text_sentences: {n} asked, but {path} holds only {len(pool)} sentences of 4-8 words")
    return sorted(pool, key=lambda s: _unit("text-sentences", seed, s))[:n]


class Planner:
    """Draws scene contents and layouts; the held-out split of the material lives here."""

    def __init__(self, cfg: SceneCorpusConfig, library: Library):
        self.cfg = cfg
        self.lib = library
        seed = cfg.seed
        self.pools: dict[str, dict[str, list[str]]] = {}  # class -> {"train": [...], "heldout": [...]}
        for cls, specs in CLASSES.items():
            files = [f for spec in specs if spec not in ("tts",) and not spec.startswith("synth:")
                     for f in library.files(spec)]
            files = [f for f in files if library.path(f).exists()]
            held = self._hold_out(files, ("files", seed, cls)) if len(files) >= 3 else []
            self.pools[cls] = {"train": [f for f in files if f not in held], "heldout": held}
        missing = [c for c, p in self.pools.items() if not p["train"] and not self._generated(c)]
        if missing:
            raise SceneError(f"no source files found for classes {missing}; is the package cache complete?")
        # the built-in sentences are held out as they always were; text-corpus ones on their own key
        self.sentences = {"heldout": self._hold_out(list(SENTENCES), ("sentences", seed))}
        self.sentences["train"] = [s for s in SENTENCES if s not in self.sentences["heldout"]]
        if cfg.text_sentences:
            extra = text_sentences(library.home, cfg.text_sentences, seed)
            held = self._hold_out(extra, ("text-sentences", seed))
            self.sentences["heldout"] += held
            self.sentences["train"] += [s for s in extra if s not in held]
        self.voices = {"train": [tts.Voice.parse(v).id for v in cfg.voices],
                       "heldout": [tts.Voice.parse(cfg.heldout_voice).id]}
        self.triggers = {r.trigger for r in RULES}

    def _hold_out(self, items: list[str], key: tuple) -> list[str]:
        n = max(1, round(len(items) * self.cfg.heldout_fraction)) if self.cfg.heldout_fraction > 0 else 0
        return sorted(sorted(items, key=lambda s: _unit(*key, s))[:n])

    @staticmethod
    def _generated(cls: str) -> bool:
        return any(s == "tts" or s.startswith("synth:") for s in CLASSES[cls])

    def heldout_sources(self) -> list[str]:
        files = [f for p in self.pools.values() for f in p["heldout"]]
        return sorted(files) + [f"tts:{v}" for v in self.voices["heldout"]]

    def heldout_synth(self) -> dict[str, list[list[int]]]:
        return {k: [list(b) for b in v["heldout"]] for k, v in _SYNTH.items()}

    # ---- content

    def _source(self, cls: str, split: str, rng: np.random.Generator, gain: float) -> Event:
        """One event of ``cls``: held-out material only in test, with test_heldout_prob."""
        held = split == "test" and self.cfg.heldout_fraction > 0 and rng.random() < self.cfg.test_heldout_prob
        pool = "heldout" if held else "train"
        specs = CLASSES[cls]
        if cls == "speech":
            words = self.pools[cls][pool] or self.pools[cls]["train"]
            if words and rng.random() < self.cfg.word_share:
                src = words[rng.integers(len(words))]
                return Event(cls, src, src, gain, text=word_text(src))
            texts = self.sentences["heldout" if split == "test" and self.sentences["heldout"] else "train"]
            text = texts[rng.integers(len(texts))]
            voice = self.voices[pool][rng.integers(len(self.voices[pool]))]
            return Event(cls, f"tts:{voice}", f"tts:{voice}|{text}", gain, text=text, voice=voice)
        files = self.pools[cls][pool] or self.pools[cls]["train"]
        synths = [s.partition(":")[2] for s in specs if s.startswith("synth:")]
        # a class with files and a synthesized sound draws each source alike
        k = int(rng.integers(len(files) + len(synths)))
        if k < len(files):
            return Event(cls, files[k], files[k], gain)
        kind = synths[k - len(files)]
        bands = _SYNTH[kind]["heldout" if held else "train"]
        widths = np.array([hi - lo for lo, hi in bands], dtype=float)
        lo, hi = bands[int(rng.choice(len(bands), p=widths / widths.sum()))]
        param = int(rng.integers(lo, hi))
        seconds = _ticks(float(rng.uniform(*_SYNTH[kind]["seconds"]))) * TICK
        return Event(cls, f"synth:{kind}:{param}Hz", "", gain, synth=(kind, param, seconds))

    def content(self, split: str, index: int, rule_index: int | None) -> Content:
        """The events of scene ``index``; ``rule_index`` counts this split's rule scenes (None: no rule)."""
        cfg = self.cfg
        rng = _rng("content", cfg.seed, split, index)
        duration = _ticks(float(rng.uniform(cfg.min_duration, cfg.max_duration))) * TICK
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        bg_rel = round(float(rng.uniform(*cfg.background_db)), 1)
        rule, mode = None, "none"
        if rule_index is not None:
            # rules change every second rule scene, so the breaking ones (every 1/frac-th,
            # from the first on) fall on every rule alike; the two ways of breaking alternate
            rule = RULES[(rule_index // 2) % len(RULES)]
            frac = cfg.test_breaking_fraction if split == "test" else 1.0 - cfg.rule_probability
            earlier = -(-rule_index * round(frac * 10**6) // 10**6)  # breaking scenes before this one
            if _every(rule_index, frac):
                mode = "absent" if earlier % 2 == 0 else "before"
            else:
                mode = "consistent"

        def gain() -> float:
            return round(float(rng.uniform(*cfg.gain_db)), 1)

        events: list[Event] = []
        if rule is not None:
            events.append(self._source(rule.trigger, split, rng, gain()))
            events[-1].role = "trigger"
            if mode != "absent":
                events.append(self._source(rule.consequent, split, rng, gain()))
                events[-1].role, events[-1].group = "consequent", 1
        n = max(int(rng.integers(cfg.min_events, cfg.max_events + 1)), len(events))
        # a scene holds at most one trigger class, and no fill event of its consequent class
        banned = set(self.triggers) | ({rule.consequent} if rule else set())
        choices = [c for c in CLASSES if c not in banned]
        group = len(events)
        while len(events) < n and choices:
            cls = choices.pop(int(rng.integers(len(choices))))
            times = 1
            if rng.random() < cfg.repeat_prob and n - len(events) >= 2:
                times = int(rng.integers(2, min(cfg.max_repeats, n - len(events)) + 1))
            first = self._source(cls, split, rng, gain())
            first.group = group
            events.append(first)
            for _ in range(times - 1):  # the same sound again, a little louder or softer
                g = float(np.clip(first.gain_db + rng.uniform(-2.0, 2.0), *cfg.gain_db))
                events.append(Event(first.cls, first.source, first.key, round(g, 1), first.text, first.voice,
                                    first.synth, None, group))
            group += 1
        return Content(split, index, duration, background, bg_rel, events, rule, mode)

    # ---- layout

    def event_signal(self, content: Content, k: int) -> np.ndarray:
        ev = content.events[k]
        if ev.synth is not None:
            kind, param, seconds = ev.synth
            # a repeat sounds the same: its noise is seeded by its group, not its position
            rng = _rng("synth", self.cfg.seed, content.split, content.index, ev.group)
            return synthesize(kind, param, seconds, rng)
        return self.lib.signal(ev.key)

    def layout(self, content: Content) -> tuple[list[tuple[Event, int, np.ndarray]], int]:
        """(event, onset in ticks, signal) of every event that fits, sorted by onset, and
        the scene's length in ticks.

        Events follow one another in a random order with short gaps; now and then one
        starts before the previous one ends (never two in a row, never within a class or
        across a "before" rule pair); the time left to the drawn duration is spread over
        the gaps. A consistent rule pair moves as one unit, the consequent 0.1-1.5 s
        after the trigger. A scene too long for max_duration loses its last events that
        belong to no rule."""
        cfg, events = self.cfg, content.events
        rng = _rng("layout", cfg.seed, content.split, content.index)
        signals = [self.event_signal(content, k) for k in range(len(events))]
        lengths = [len(sig) // HOP for sig in signals]
        pair = content.mode == "consistent"
        units = [[k] for k, e in enumerate(events) if not (pair and e.role == "consequent")]
        if pair:
            trigger = next(u for u in units if events[u[0]].role == "trigger")
            trigger.append(next(k for k, e in enumerate(events) if e.role == "consequent"))
        order = [units[i] for i in rng.permutation(len(units))]
        if content.mode == "before":  # the consequent comes first
            t = next(i for i, u in enumerate(order) if events[u[0]].role == "trigger")
            c = next(i for i, u in enumerate(order) if events[u[0]].role == "consequent")
            if c > t:
                order[c], order[t] = order[t], order[c]
        inner = int(rng.integers(10, _ticks(min(content.rule.within, 1.5)) + 1)) if pair else 0
        draws = rng.random((len(order), 3))  # per unit: overlap?, how much, gap
        lead, tail = int(rng.integers(10, 51)), int(rng.integers(10, 51))

        def unit_len(u: list[int]) -> int:
            return sum(lengths[k] for k in u) + (inner if len(u) == 2 else 0)

        while True:
            gaps = [lead]  # gaps[i]: ticks from the end of unit i-1 to the start of unit i
            for i in range(1, len(order)):
                a, b = events[order[i - 1][-1]], events[order[i][0]]
                shorter = min(lengths[order[i - 1][-1]], lengths[order[i][0]])
                may = (gaps[-1] >= 0 and a.cls != b.cls
                       and not (content.mode == "before" and {a.role, b.role} == {"trigger", "consequent"}))
                if may and draws[i, 0] < cfg.overlap_prob:
                    gaps.append(-max(1, int((0.2 + 0.5 * draws[i, 1]) * shorter)))
                else:
                    gaps.append(10 + int(draws[i, 2] * 50))
            needed = sum(gaps) + sum(unit_len(u) for u in order) + tail
            if needed <= _ticks(cfg.max_duration):
                break
            drop = next((i for i in reversed(range(len(order))) if events[order[i][0]].role is None), None)
            if drop is None:
                raise SceneError(f"scene {content.split}-{content.index}: the rule pair does not fit in max_duration")
            del order[drop]
            draws = np.delete(draws, drop, axis=0)

        duration = max(_ticks(content.duration), needed)
        # the slack goes to the lead, the gaps that do not overlap, and the tail
        open_gaps = [i for i, g in enumerate(gaps) if g >= 0]
        share = rng.multinomial(duration - needed, np.full(len(open_gaps) + 1, 1.0 / (len(open_gaps) + 1)))
        for i, extra in zip(open_gaps, share):
            gaps[i] += int(extra)
        placed, pos = [], 0
        for gap, u in zip(gaps, order):
            pos += gap
            for j, k in enumerate(u):
                if j:
                    pos += inner
                placed.append((events[k], pos, signals[k]))
                pos += lengths[k]
        placed.sort(key=lambda p: p[1])  # stable: a pair's order is kept
        return placed, duration

    def background(self, content: Content, n: int) -> np.ndarray:
        rng = _rng("background", self.cfg.seed, content.split, content.index)
        if content.background.endswith("noise"):
            return _noise(content.background, n, rng)
        sig = self.lib.signal(content.background)
        return _loop(sig, n, int(rng.integers(len(sig))))


def scene_prior(events: Sequence[dict], rules: Sequence[Rule] = RULES) -> tuple[str, str | None]:
    """("consistent" | "breaking" | "none", rule name) of a scene's events (ground-truth dicts).

    consistent: the first trigger event is followed by a consequent event whose onset lies
    within ``rule.within`` seconds of the trigger's offset; breaking: no consequent event
    starts at or after the trigger's onset. The layout never makes the case between.
    """
    for rule in rules:
        trig = [e for e in events if e["class"] == rule.trigger]
        if not trig:
            continue
        t = min(trig, key=lambda e: e["onset"])
        cons = [e for e in events if e["class"] == rule.consequent]
        if any(t["offset"] - 1e-6 <= e["onset"] <= t["offset"] + rule.within + 1e-6 for e in cons):
            return "consistent", rule.name
        if not any(e["onset"] >= t["onset"] for e in cons):
            return "breaking", rule.name
        raise SceneError(f"rule {rule.name}: a consequent follows the trigger, but later than {rule.within} s")
    return "none", None


# --------------------------------------------------------------------------- building


class SceneCorpusBuilder:
    def __init__(self, cfg: SceneCorpusConfig, home: Path):
        self.cfg = cfg
        self.home = home
        self.root = home / "scenes" / cfg.name
        pkgs = fetch_apt(list(PACKAGE_DIRS), home, workers=max(1, cfg.workers))
        lost = [p for p in PACKAGE_DIRS if p not in pkgs]
        if lost:
            raise SceneError(f"apt packages {lost} could not be fetched (needed for the scene sounds)")
        self.lib = Library(home, cfg, pkgs)
        self.planner = Planner(cfg, self.lib)

    def sizes(self) -> dict[str, int]:
        return {"train": self.cfg.train_scenes, "dev": self.cfg.dev_scenes, "test": self.cfg.test_scenes}

    def contents(self) -> dict[str, list[Content]]:
        out: dict[str, list[Content]] = {}
        for split, n in self.sizes().items():
            frac = self.cfg.test_rule_fraction if split == "test" else self.cfg.rule_fraction
            rule_scenes, items = 0, []
            for i in range(n):
                has_rule = _every(i, frac)
                items.append(self.planner.content(split, i, rule_scenes if has_rule else None))
                rule_scenes += has_rule
            out[split] = items
        return out

    def load_sources(self, contents: list[Content]) -> None:
        """Read every file source the scenes use, and synthesize the TTS sentences they need."""
        files = {e.key for c in contents for e in c.events if e.key and not e.key.startswith("tts:")}
        backgrounds = {c.background for c in contents if not c.background.endswith("noise")}
        sentences = {e.key for c in contents for e in c.events if e.key.startswith("tts:")}
        jobs = []
        for key in sorted(sentences):
            voice, _, text = key[4:].partition("|")
            out = self.lib.tts_path(voice, text)
            if not out.exists():
                jobs.append(tts.Job(text, tts.Voice.parse(voice), 1.0, 0.0, out))
        if jobs:
            tts.check_engines(list({j.voice for j in jobs}))
            by_voice: dict[tts.Voice, list[tts.Job]] = {}
            for j in jobs:
                by_voice.setdefault(j.voice, []).append(j)
            batches = [g[i:i + 16] for g in by_voice.values() for i in range(0, len(g), 16)]
            with ThreadPoolExecutor(max_workers=max(1, self.cfg.workers)) as pool, \
                    tqdm(total=len(jobs), desc="scene speech", unit="utt", disable=None) as bar:
                futures = {pool.submit(tts.synthesize, b): len(b) for b in batches}
                for fut in as_completed(futures):
                    fut.result()
                    bar.update(futures[fut])
        todo = [(k, self.lib.path(k), True) for k in sorted(files)]
        todo += [(k, self.lib.path(k), False) for k in sorted(backgrounds)]
        todo += [(k, self.lib.tts_path(*k[4:].split("|", 1)), True) for k in sorted(sentences)]
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.workers)) as pool:
            list(pool.map(lambda kpc: self.lib.load(*kpc), todo))

    def scene(self, content: Content) -> tuple[dict, np.ndarray]:
        """The ground truth and the wave of one scene."""
        placed, ticks = self.planner.layout(content)
        bg = self.planner.background(content, ticks * HOP)
        # every event stays well audible: the background sits below the quietest one
        quietest = min(ev.gain_db + level_db(sig) for ev, _, sig in placed)
        bg_gain = min(0.0, quietest + content.background_db - level_db(bg))
        mix = mix_scene([(sig, onset * TICK, ev.gain_db) for ev, onset, sig in placed], (bg, bg_gain), ticks * TICK)
        sid = f"{content.split}-{content.index:06d}"
        events = []
        for (ev, onset, sig), g, lvl in zip(placed, mix.gain_db, mix.level_db):
            events.append({"class": ev.cls, "source": ev.source,
                           "onset": round(onset * TICK, 2), "offset": round((onset + len(sig) // HOP) * TICK, 2),
                           "gain_db": round(g, 2), "level_db": round(lvl, 2), "text": ev.text, "voice": ev.voice})
        prior, rule = scene_prior(events)
        expected = {"absent": "breaking", "before": "breaking"}.get(content.mode, content.mode)
        if prior != expected:
            raise SceneError(f"scene {sid}: planned {content.mode} but the events say {prior}")
        truth = {"id": sid, "split": content.split, "wav": f"wav/{sid}.wav", "duration": round(ticks * TICK, 2),
                 "background": {"source": content.background, "gain_db": round(mix.background_gain_db, 2)},
                 "prior": prior, "prior_rule": rule, "events": events}
        return truth, mix.wave

    def write_scene(self, content: Content) -> dict:
        truth, wave = self.scene(content)
        path = self.root / content.split / truth["wav"]
        if not path.exists():
            with atomic_path(path) as tmp:
                sf.write(tmp, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        return truth

    def write_split(self, split: str, contents: list[Content]) -> dict:
        truths: list[dict | None] = [None] * len(contents)
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.workers)) as pool, \
                tqdm(total=len(contents), desc=f"scenes {split}", unit="scene", disable=None) as bar:
            futures = {pool.submit(self.write_scene, c): i for i, c in enumerate(contents)}
            try:
                for fut in as_completed(futures):
                    truths[futures[fut]] = fut.result()
                    bar.update(1)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        lines = [json.dumps(t, ensure_ascii=False) for t in truths]
        write_text_atomic(self.root / split / "scenes.jsonl", "".join(ln + "\n" for ln in lines))
        return {"scenes": len(truths), "hours": round(sum(t["duration"] for t in truths) / 3600, 4),
                "events": sum(len(t["events"]) for t in truths)}


def _content_config(cfg: SceneCorpusConfig) -> dict:
    d = config_to_dict(cfg)
    d.pop("workers")
    return d


def build_scene_corpus(cfg: SceneCorpusConfig, home: Path | None = None) -> dict:
    """Build (or finish) the scene corpus ``cfg.name``; return a summary of what is there."""
    home = home or interpres_home()
    t0 = time.perf_counter()
    builder = SceneCorpusBuilder(cfg, home)
    manifest_path = builder.root / "manifest.json"
    # a corpus folder belongs to one config: resuming with another would mix two corpora
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8")).get("config", {})
        except json.JSONDecodeError as e:
            raise SceneError(f"{manifest_path}: not valid JSON ({e})") from e
        old.pop("workers", None)
        new = _content_config(cfg)
        defaults = _content_config(SceneCorpusConfig())
        for key in new.keys() - old.keys():  # a key added since: the corpus was built with its default
            old[key] = defaults[key]
        version = json.loads(manifest_path.read_text(encoding="utf-8")).get("version")
        if version != VERSION:
            raise SceneError(f"{manifest_path}: corpus '{cfg.name}' was made by scenes version {version}, this is "
                             f"{VERSION}; delete {builder.root} (or choose another name=) to build it again")
        if old != new:
            changed = sorted(k for k in new if old.get(k) != new[k])
            raise SceneError(f"{manifest_path}: corpus '{cfg.name}' was built with another config (differs in "
                             f"{', '.join(changed) or 'its keys'}); choose another name= or delete {builder.root}")
    manifest = {
        "version": VERSION,
        "config": config_to_dict(cfg),
        "classes": sorted(CLASSES),
        "heldout_sources": builder.planner.heldout_sources(),
        "heldout_sentences": builder.planner.sentences["heldout"],
        "heldout_synth": builder.planner.heldout_synth(),
        "rules": [{"name": r.name, "trigger": r.trigger, "consequent": r.consequent, "within": r.within}
                  for r in RULES],
        "splits": builder.sizes(),
    }
    write_json_atomic(manifest_path, manifest)
    contents = builder.contents()
    builder.load_sources([c for items in contents.values() for c in items])
    log.info("sources ready after %.1f s", time.perf_counter() - t0)
    splits = {split: builder.write_split(split, items) for split, items in contents.items()}
    return {"root": str(builder.root), "splits": splits, "seconds": round(time.perf_counter() - t0, 1),
            "classes": sorted(CLASSES)}


def read_scenes(root: str | Path, split: str) -> list[dict]:
    """The ground truth of one split of a built corpus (``root`` = ``<home>/scenes/<name>``)."""
    path = Path(root) / split / "scenes.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SceneError(f"{path}: no such file; build the corpus with 'interpres data scenes'") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SceneError(f"{path}:{n}: not valid JSON ({e})") from e
    return out


def corpus_root(name: str | Path, home: Path | None = None) -> Path:
    """A scene corpus by name (``<home>/scenes/NAME``) or by path (a folder holding manifest.json)."""
    path = Path(name)
    if (path / "manifest.json").is_file():
        return path
    root = (home or interpres_home()) / "scenes" / str(name)
    if not (root / "manifest.json").is_file():
        raise SceneError(f"{root}: no scene corpus '{name}' (manifest.json not found); build it with "
                         f"'interpres data scenes'" + (" --size tiny" if str(name) == "tiny" else ""))
    return root


def manifest_rules(manifest: dict) -> list[Rule]:
    """The co-occurrence rules a manifest records (its ``rules``), as :class:`Rule` objects."""
    return [Rule(r["trigger"], r["consequent"], float(r.get("within", 2.0))) for r in manifest.get("rules", [])]


def read_manifest(root: str | Path) -> dict:
    """A corpus's manifest.json (config, classes, rules, held-out material)."""
    path = Path(root) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneError(f"{path}: no such file; build the corpus with 'interpres data scenes'") from None
    except json.JSONDecodeError as e:
        raise SceneError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("classes"), list):
        raise SceneError(f"{path}: not a scene corpus manifest (no 'classes' list)")
    return manifest
