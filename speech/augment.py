"""Training-time augmentation: SpecAugment on features, and waveform perturbations.

SpecAugment (Park et al. 2019, "SpecAugment: A Simple Data Augmentation Method for
ASR") masks bands of mel bins and stretches of frames of one utterance's features;
:data:`POLICIES` are the paper's policies as fairseq's S2T recipes set them (time
warping off). It runs in torch and is reproducible given a ``torch.Generator``.

The waveform side works on numpy arrays as :func:`speech.audio.load_audio` returns
them, and draws from a ``numpy.random.Generator``: speed perturbation (Kaldi/ESPnet's
``sox speed``: faster and higher, or slower and lower), additive noise at a given
SNR, and a narrowband telephone channel (300-3400 Hz, 8 kHz, 8-bit mu-law).

    wave = augment_waveform(load_audio(path), WaveAugmentConfig(noise_p=0.3), rng)
    feats = spec_augment(utterance_cmvn(fbank(torch.from_numpy(wave))), POLICIES["LD"], gen)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from speech.audio import SAMPLE_RATE, resample

log = logging.getLogger(__name__)


# --- SpecAugment ---------------------------------------------------------------------------

@dataclass
class SpecAugmentConfig:
    """SpecAugment's parameters, named as in fairseq's ``config.yaml`` (``specaugment:``).

    A mask's width is drawn uniformly from ``[0, F)`` mel bins or ``[0, T')`` frames,
    where ``T' = min(T, floor(time_mask_p * frames))`` (as fairseq draws them); each of
    the ``N`` masks of a kind is placed uniformly and independently, so masks may overlap.
    ``time_warp_W`` > 0 also warps time around a random frame by up to W frames.
    """

    freq_mask_F: int = 0
    freq_mask_N: int = 0
    time_mask_T: int = 0
    time_mask_N: int = 0
    time_mask_p: float = 1.0
    time_warp_W: int = 0

    def check(self) -> None:
        """Raise ValueError naming the first field out of range."""
        for name in ("freq_mask_F", "freq_mask_N", "time_mask_T", "time_mask_N", "time_warp_W"):
            if getattr(self, name) < 0:
                raise ValueError(f"SpecAugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.time_mask_p <= 1.0:
            raise ValueError(f"SpecAugmentConfig.time_mask_p must be in [0, 1], got {self.time_mask_p}")


POLICIES: dict[str, SpecAugmentConfig] = {
    # LibriSpeech basic / double, Switchboard mild / strong (Park et al. 2019, Table 1),
    # without time warping, as fairseq's S2T data prep writes them
    "LB": SpecAugmentConfig(freq_mask_F=27, freq_mask_N=1, time_mask_T=100, time_mask_N=1, time_mask_p=1.0),
    "LD": SpecAugmentConfig(freq_mask_F=27, freq_mask_N=2, time_mask_T=100, time_mask_N=2, time_mask_p=1.0),
    "SM": SpecAugmentConfig(freq_mask_F=15, freq_mask_N=2, time_mask_T=70, time_mask_N=2, time_mask_p=0.2),
    "SS": SpecAugmentConfig(freq_mask_F=27, freq_mask_N=2, time_mask_T=70, time_mask_N=2, time_mask_p=0.2),
}


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform in [low, high)."""
    return int(torch.randint(low, high, (1,), generator=generator).item())


def _time_warp(feats: torch.Tensor, w_max: int, generator: torch.Generator | None) -> torch.Tensor:
    """Move frame w0 to w0 + w, stretching the frames on one side and squeezing the other; the ends stay."""
    frames = feats.shape[0]
    w0 = _randint(w_max, frames - w_max, generator)
    w = _randint(-w_max + 1, w_max, generator)
    if w == 0:
        return feats

    def stretch(part: torch.Tensor, size: int) -> torch.Tensor:  # (n, bins) -> (size, bins), linear
        return F.interpolate(part.T[None], size=size, mode="linear", align_corners=True)[0].T

    return torch.cat([stretch(feats[:w0], w0 + w), stretch(feats[w0:], frames - w0 - w)])


def spec_augment(feats: torch.Tensor, cfg: SpecAugmentConfig,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A SpecAugmented copy of one utterance's features.

    Args:
        feats: (frames, bins), e.g. CMVN-normalized log-mel features.
        cfg: the masks to draw (see :data:`POLICIES`).
        generator: the source of randomness; the same seed gives the same masks.

    Returns:
        (frames, bins): ``feats`` warped (if ``time_warp_W``), then with ``freq_mask_N``
        bands of bins and ``time_mask_N`` stretches of frames set to the mean of
        ``feats`` (0 after CMVN). ``feats`` itself is not changed.
    """
    cfg.check()
    if feats.dim() != 2:
        raise ValueError(f"spec_augment: feats must be (frames, bins), got shape {tuple(feats.shape)}")
    out = feats.clone()
    frames, bins = feats.shape
    if frames == 0 or bins == 0:
        return out
    mask_value = feats.mean()

    if cfg.time_warp_W > 0 and 2 * cfg.time_warp_W < frames:
        out = _time_warp(out, cfg.time_warp_W, generator)

    max_f = min(cfg.freq_mask_F, bins)
    if max_f >= 1:
        for _ in range(cfg.freq_mask_N):
            f = _randint(0, max_f, generator)
            f0 = _randint(0, bins - f + 1, generator)
            out[:, f0:f0 + f] = mask_value

    max_t = min(cfg.time_mask_T, math.floor(frames * cfg.time_mask_p))
    if max_t >= 1:
        for _ in range(cfg.time_mask_N):
            t = _randint(0, max_t, generator)
            t0 = _randint(0, frames - t + 1, generator)
            out[t0:t0 + t, :] = mask_value
    return out


# --- waveform augmentation ------------------------------------------------------------------

def speed_perturb(wave: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``wave`` played ``factor`` times faster: shorter and higher-pitched for factor > 1.

    As Kaldi's and ESPnet's speed perturbation (``sox speed``): the samples are taken
    to be at ``sample_rate * factor`` and resampled to ``sample_rate`` (soxr), so every
    frequency is multiplied by ``factor``.

    Args:
        wave: (samples,) float.
        factor: > 0; 0.9, 1.0 and 1.1 in the usual recipe.

    Returns:
        (round(samples / factor),) float32.
    """
    if not factor > 0:
        raise ValueError(f"speed_perturb: factor must be > 0, got {factor}")
    if factor == 1.0:
        return np.array(wave, dtype=np.float32)  # a copy, as for any other factor
    return resample(wave, sample_rate * factor, sample_rate)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0


def _cover(noise: np.ndarray, n: int, offset: int) -> np.ndarray:
    """``n`` samples of ``noise`` from ``offset`` on, wrapping around: tiles and crops in one step."""
    return noise[(offset + np.arange(n)) % len(noise)]


def add_noise(wave: np.ndarray, noise: np.ndarray, snr_db: float,
              generator: np.random.Generator | None = None) -> np.ndarray:
    """``wave`` plus ``noise`` scaled so that the signal-to-noise ratio is ``snr_db``.

    Args:
        wave: (samples,) float.
        noise: (noise_samples,) float, not silent; tiled if shorter than ``wave``, and
            read from a random offset (drawn from ``generator``; 0 without one).
        snr_db: ``10 log10(mean(wave^2) / mean(scaled_noise^2))`` of the result.

    Returns:
        (samples,) float32, not clipped (so the SNR is exact). A silent ``wave`` has no
        SNR to meet and is returned unchanged.
    """
    wave = np.asarray(wave, dtype=np.float32)
    noise = np.asarray(noise, dtype=np.float32)
    if noise.ndim != 1 or wave.ndim != 1:
        raise ValueError(f"add_noise: wave and noise must be 1-D, got shapes {wave.shape} and {noise.shape}")
    if len(noise) == 0:
        raise ValueError("add_noise: noise is empty")
    p_noise_all = _power(noise)
    if p_noise_all == 0.0:
        raise ValueError("add_noise: noise is silent")
    p_signal = _power(wave)
    if p_signal == 0.0:
        log.debug("add_noise: silent wave, no noise added")
        return wave.copy()
    offset = int(generator.integers(len(noise))) if generator is not None else 0
    segment = _cover(noise, len(wave), offset)
    p_noise = _power(segment)
    if p_noise == 0.0 and offset != 0:  # a silent stretch of a noise that is not silent everywhere
        segment = _cover(noise, len(wave), 0)
        p_noise = _power(segment)
    if p_noise == 0.0:
        raise ValueError(f"add_noise: the noise is silent over the {len(wave)} samples it covers")
    scale = math.sqrt(p_signal / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (wave + scale * segment).astype(np.float32)


TELEPHONE_BAND = (300.0, 3400.0)  # Hz, the ITU-T G.712 voice band
TELEPHONE_RATE = 8000


def _band_pass(x: np.ndarray, sample_rate: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt  # scipy comes with librosa

    sos = butter(6, TELEPHONE_BAND, btype="bandpass", fs=sample_rate, output="sos")
    return sosfilt(sos, x)


def telephone(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``wave`` as heard through a narrowband telephone line, back at ``sample_rate``.

    Band-limits to 300-3400 Hz (6th-order Butterworth band-pass, causal as a line is),
    resamples to 8 kHz, encodes and decodes with 8-bit mu-law (G.711, mu = 255; samples
    beyond [-1, 1] clip), band-limits again (the receiving end's filter), and resamples
    back. Nothing is left above 4 kHz, and little between 3.4 and 4 kHz.

    Args:
        wave: (samples,) float in [-1, 1] at ``sample_rate``.

    Returns:
        (samples,) float32.
    """
    import librosa  # slow to import; only augmentation needs it here

    wave = np.asarray(wave, dtype=np.float32)
    if len(wave) == 0:
        return wave.copy()
    narrow = resample(_band_pass(wave, sample_rate), sample_rate, TELEPHONE_RATE)
    coded = librosa.mu_compress(np.clip(narrow, -1.0, 1.0), mu=255, quantize=True)
    decoded = _band_pass(librosa.mu_expand(coded, mu=255, quantize=True), TELEPHONE_RATE)
    out = resample(decoded.astype(np.float32), TELEPHONE_RATE, sample_rate)
    return librosa.util.fix_length(out, size=len(wave)).astype(np.float32)


@dataclass
class WaveAugmentConfig:
    """What :func:`augment_waveform` draws from, for one utterance at a time.

    ``speeds``: one is picked uniformly (1.0 leaves the speed). ``noise_p``: the
    probability of adding noise at an SNR drawn uniformly from ``snr_db`` (low, high).
    ``telephone_p``: the probability of passing through :func:`telephone`.
    """

    speeds: tuple[float, ...] = (0.9, 1.0, 1.1)
    noise_p: float = 0.0
    snr_db: tuple[float, float] = (5.0, 20.0)
    telephone_p: float = 0.0
    sample_rate: int = SAMPLE_RATE

    def check(self) -> None:
        """Raise ValueError naming the first field out of range."""
        if not self.speeds or any(not s > 0 for s in self.speeds):
            raise ValueError(f"WaveAugmentConfig.speeds must be a non-empty list of factors > 0, got {self.speeds}")
        for name in ("noise_p", "telephone_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"WaveAugmentConfig.{name} must be in [0, 1], got {p}")
        if len(self.snr_db) != 2 or self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"WaveAugmentConfig.snr_db must be [low, high] with low <= high, got {self.snr_db}")


def augment_waveform(wave: np.ndarray, cfg: WaveAugmentConfig, rng: np.random.Generator,
                     noises: Sequence[np.ndarray] = ()) -> np.ndarray:
    """One random draw of speed, noise and channel for ``wave``, in that order.

    Args:
        wave: (samples,) float at ``cfg.sample_rate``.
        cfg: the choices and probabilities.
        rng: the source of every random choice; the same seed gives the same result.
        noises: recordings to draw noise from, each (noise_samples,) at
            ``cfg.sample_rate``; without any, the noise is white Gaussian.

    Returns:
        (round(samples / speed),) float32.
    """
    cfg.check()
    # the four choices are drawn up front in a fixed order, whatever the probabilities
    speed = float(cfg.speeds[int(rng.integers(len(cfg.speeds)))])
    with_noise = rng.random() < cfg.noise_p
    snr = float(rng.uniform(*cfg.snr_db))
    with_phone = rng.random() < cfg.telephone_p

    out = speed_perturb(wave, speed, cfg.sample_rate)
    if with_noise:
        noise = noises[int(rng.integers(len(noises)))] if len(noises) else rng.standard_normal(len(out))
        out = add_noise(out, noise, snr, rng)
    if with_phone:
        out = telephone(out, cfg.sample_rate)
    log.debug("augment_waveform: speed %.2f, noise %s, telephone %s", speed,
              f"at {snr:.1f} dB" if with_noise else "no", with_phone)
    return out
