"""Kaldi-style log-mel filterbank features in torch, and utterance CMVN.

:func:`fbank` computes what Kaldi's ``compute-fbank-feats`` (and kaldi-native-fbank,
the reference the tests compare against) computes with the same options: frames cut
with ``snip_edges``, per-frame DC removal, optional dither, per-frame pre-emphasis, a
povey / hamming / hanning / rectangular window, zero-padding to a power of two, the
power spectrum, an HTK-mel triangular filterbank laid out in the mel domain, and the
log of ``max(energy, float32 epsilon)``. There is no energy column (Kaldi's
``use_energy=false``), so Kaldi's ``energy_floor`` has nothing to act on and is not
an option here.

Scale: waveforms here are floats in [-1, 1] (what :func:`speech.audio.load_audio`
returns), but Kaldi works on int16-scale samples. :func:`fbank` multiplies by 32768
first, so its features equal Kaldi's on the int16 samples of the same audio (a
constant ``2 * ln(32768)`` above features of the [-1, 1] floats, except where the
log floor bites). ``dither`` is therefore in int16 units too, as in Kaldi.

    wave = torch.from_numpy(load_audio("talk.wav"))  # (samples,)
    feats = utterance_cmvn(fbank(wave))                # (frames, 80)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from speech.config import ConfigError

INT16_SCALE = 32768.0  # [-1, 1] floats -> Kaldi's int16-scale samples
LOG_FLOOR = float(torch.finfo(torch.float32).eps)  # Kaldi floors mel energies here before the log
WINDOWS = ("povey", "hamming", "hanning", "rectangular")


@dataclass
class FbankConfig:
    """Options of :func:`fbank`, named and defaulted as Kaldi's ``compute-fbank-feats``.

    ``high_freq`` <= 0 means Nyquist + ``high_freq`` (Kaldi's convention). ``dither``
    is the standard deviation of Gaussian noise added to every sample of every frame,
    in int16 units; keep it 0 for evaluation, it is for training only.
    """

    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    dither: float = 0.0
    remove_dc_offset: bool = True
    window: str = "povey"
    low_freq: float = 20.0
    high_freq: float = 0.0
    round_to_power_of_two: bool = True
    snip_edges: bool = True
    sample_rate: int = 16000

    @property
    def frame_length(self) -> int:
        """Samples per frame (400 at 16 kHz and 25 ms)."""
        return int(self.sample_rate * 0.001 * self.frame_length_ms)

    @property
    def frame_shift(self) -> int:
        """Samples between frame starts (160 at 16 kHz and 10 ms)."""
        return int(self.sample_rate * 0.001 * self.frame_shift_ms)

    @property
    def fft_size(self) -> int:
        """The frame length zero-padded to the next power of two (512 at 400 samples)."""
        n = self.frame_length
        return 1 << (n - 1).bit_length() if self.round_to_power_of_two else n

    def check(self) -> None:
        """Raise ValueError naming the first field that makes no filterbank."""
        nyquist = 0.5 * self.sample_rate
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        if self.sample_rate <= 0:
            raise ValueError(f"FbankConfig.sample_rate must be > 0, got {self.sample_rate}")
        if self.num_mel_bins < 3:
            raise ValueError(f"FbankConfig.num_mel_bins must be >= 3, got {self.num_mel_bins}")
        if self.frame_length < 2:
            raise ValueError(f"FbankConfig.frame_length_ms gives {self.frame_length} samples per frame; need >= 2")
        if self.frame_shift < 1:
            raise ValueError(f"FbankConfig.frame_shift_ms gives {self.frame_shift} samples; need >= 1")
        if self.window not in WINDOWS:
            raise ValueError(f"FbankConfig.window must be one of {', '.join(WINDOWS)}, got {self.window!r}")
        if not 0.0 <= self.preemphasis <= 1.0:
            raise ValueError(f"FbankConfig.preemphasis must be in [0, 1], got {self.preemphasis}")
        if self.dither < 0:
            raise ValueError(f"FbankConfig.dither must be >= 0, got {self.dither}")
        if not (0.0 <= self.low_freq < nyquist and 0.0 < high <= nyquist and high > self.low_freq):
            raise ValueError(f"FbankConfig.low_freq={self.low_freq} and high_freq={self.high_freq} give the band "
                             f"[{self.low_freq}, {high}] Hz; need 0 <= low < high <= Nyquist ({nyquist} Hz)")


def num_frames(num_samples: int, cfg: FbankConfig = FbankConfig()) -> int:
    """Frames :func:`fbank` makes of ``num_samples`` samples (Kaldi's ``NumFrames``).

    With ``snip_edges``: ``1 + (n - frame_length) // frame_shift``, or 0 when shorter
    than one frame. Without: ``(n + frame_shift // 2) // frame_shift``.
    """
    shift, length = cfg.frame_shift, cfg.frame_length
    if cfg.snip_edges:
        return 0 if num_samples < length else 1 + (num_samples - length) // shift
    return (num_samples + shift // 2) // shift


def _mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(freq / 700.0)


@lru_cache(maxsize=16)
def mel_banks(num_bins: int, fft_size: int, sample_rate: int, low_freq: float, high_freq: float) -> torch.Tensor:
    """Kaldi's triangular mel filters: shape (num_bins, fft_size // 2 + 1), float32.

    Triangles are equally spaced in HTK mel (``1127 ln(1 + f / 700)``) from ``low_freq``
    to ``high_freq`` (<= 0: Nyquist + high_freq) and weight each FFT bin by its mel
    distance from the triangle's edges. As in Kaldi, the Nyquist bin gets no weight.
    The result is cached; do not modify it.
    """
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    mel_low, mel_high = _mel(torch.tensor([low_freq, high], dtype=torch.float64))
    delta = (mel_high - mel_low) / (num_bins + 1)
    edges = mel_low + delta * torch.arange(num_bins + 2, dtype=torch.float64)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (num_bins, 1)
    mel = _mel(sample_rate / fft_size * torch.arange(fft_size // 2, dtype=torch.float64))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = torch.where(mel <= center, up, down)
    weights = torch.where((mel > left) & (mel < right), weights, torch.zeros(()))
    return F.pad(weights, (0, 1)).to(torch.float32)  # the Nyquist bin: zero weight


@lru_cache(maxsize=16)
def window(kind: str, length: int) -> torch.Tensor:
    """Kaldi's analysis window of ``length`` samples: shape (length,), float32."""
    if kind == "rectangular":
        return torch.ones(length)
    a = 2 * math.pi / (length - 1)
    n = torch.arange(length, dtype=torch.float64)
    if kind == "hamming":
        w = 0.54 - 0.46 * torch.cos(a * n)
    else:
        w = 0.5 - 0.5 * torch.cos(a * n)
        if kind == "povey":  # a Hann window to the power 0.85: like Hamming, but zero at the edges
            w = w.pow(0.85)
        elif kind != "hanning":
            raise ValueError(f"unknown window {kind!r} (known: {', '.join(WINDOWS)})")
    return w.to(torch.float32)


def _frames(x: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    """Cut (..., samples) into (..., frames, frame_length) as Kaldi's ``ExtractWindow``."""
    n, length, shift = x.shape[-1], cfg.frame_length, cfg.frame_shift
    m = num_frames(n, cfg)
    if cfg.snip_edges:
        return x.unfold(-1, length, shift)  # a view: no copy until the arithmetic below
    # frames centred on i * shift + shift / 2, the signal mirrored at both ends
    # (sample -1 is sample 0, sample n is sample n - 1), as often as a short signal needs
    idx = (torch.arange(m) * shift + shift // 2 - length // 2)[:, None] + torch.arange(length)[None, :]
    period = 2 * n
    idx = torch.remainder(idx, period)
    idx = torch.where(idx >= n, period - 1 - idx, idx)
    return x[..., idx]


def fbank(waveform: torch.Tensor, cfg: FbankConfig = FbankConfig(),
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Log-mel filterbank features, equal to Kaldi's on the int16 samples of ``waveform``.

    Args:
        waveform: (samples,) or (batch, samples), float in [-1, 1] at ``cfg.sample_rate``.
        cfg: the options; the defaults are Kaldi's, with 80 bins and no dither.
        generator: the source of the dither noise (used only if ``cfg.dither > 0``).

    Returns:
        (frames, num_mel_bins) or (batch, frames, num_mel_bins), float32, with
        ``frames = num_frames(samples, cfg)``; (0, num_mel_bins) for a signal shorter
        than one frame.
    """
    cfg.check()
    if waveform.dim() not in (1, 2):
        raise ValueError(f"fbank: waveform must be (samples,) or (batch, samples), got shape {tuple(waveform.shape)}")
    if waveform.is_complex() or not waveform.is_floating_point():
        raise ValueError(f"fbank: waveform must be float in [-1, 1], got {waveform.dtype}")
    x = waveform.to(torch.float32) * INT16_SCALE
    m = num_frames(x.shape[-1], cfg)
    if m == 0:
        return x.new_zeros(*x.shape[:-1], 0, cfg.num_mel_bins)

    frames = _frames(x, cfg)  # (..., m, length)
    if cfg.dither > 0:
        noise = torch.randn(frames.shape, generator=generator, dtype=frames.dtype, device=frames.device)
        frames = frames + cfg.dither * noise
    if cfg.remove_dc_offset:
        frames = frames - frames.mean(dim=-1, keepdim=True)
    if cfg.preemphasis != 0:
        # x[i] -= p * x[i-1], and x[0] -= p * x[0]: each frame on its own, as Kaldi does
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - cfg.preemphasis * previous
    frames = frames * window(cfg.window, cfg.frame_length).to(frames.device)
    spectrum = torch.fft.rfft(frames, n=cfg.fft_size, dim=-1)  # zero-pads each frame to fft_size
    power = spectrum.real.square() + spectrum.imag.square()  # (..., m, fft_size // 2 + 1)
    banks = mel_banks(cfg.num_mel_bins, cfg.fft_size, cfg.sample_rate, cfg.low_freq, cfg.high_freq)
    mel = power @ banks.to(power.device).T  # (..., m, num_mel_bins)
    return mel.clamp_min(LOG_FLOOR).log()


def utterance_cmvn(feats: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalize each bin to zero mean and unit variance over the frames of one utterance.

    Args:
        feats: (frames, bins) or (batch, frames, bins); statistics are taken over frames.
        eps: the smallest standard deviation divided by (a constant bin stays 0).

    Returns:
        ``(feats - mean) / max(std, eps)``, same shape; 0 frames are returned as they are.
    """
    if feats.shape[-2] == 0:
        return feats.clone()
    mean = feats.mean(dim=-2, keepdim=True)
    std = feats.std(dim=-2, correction=0, keepdim=True).clamp_min(eps)
    return (feats - mean) / std


# --------------------------------------------------------------------------- Whisper's log-mel


@dataclass
class LogMelConfig:
    """Whisper's features (``whisper.audio.log_mel_spectrogram``): a centred 400-point STFT
    with a Hann window every 160 samples, the power of each bin through librosa's Slaney
    mel filters, log10 floored at 1e-10 and at 8 below the utterance's maximum, then
    ``(x + 4) / 4``. One frame per 10 ms (the STFT's last frame is dropped, as Whisper does).

    ``pad_to_s`` > 0 pads every input with digital silence to that length first, as Whisper
    was trained (30 s windows); 0 feeds the audio as it is (the encoder's positions sliced).
    """

    type: str = "log_mel"  # how config.json's "features" tells this from an FbankConfig
    num_mel_bins: int = 80
    n_fft: int = 400
    hop_length: int = 160
    sample_rate: int = 16000
    pad_to_s: float = 0.0

    @property
    def frame_shift_ms(self) -> float:
        return 1000.0 * self.hop_length / self.sample_rate

    def check(self) -> None:
        if self.type != "log_mel":
            raise ValueError(f"LogMelConfig.type must be 'log_mel', got {self.type!r}")
        for name in ("num_mel_bins", "n_fft", "hop_length", "sample_rate"):
            if getattr(self, name) < 1:
                raise ValueError(f"LogMelConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.pad_to_s <= 3600.0:
            raise ValueError(f"LogMelConfig.pad_to_s must be in [0, 3600] seconds, got {self.pad_to_s}")

    def num_frames(self, num_samples: int) -> int:
        """Frames :func:`log_mel` makes of ``num_samples`` samples."""
        return max(num_samples, round(self.pad_to_s * self.sample_rate)) // self.hop_length


# Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz, logarithmic above
_MEL_HZ_STEP, _MIN_LOG_HZ = 200.0 / 3, 1000.0
_MIN_LOG_MEL, _LOG_STEP = _MIN_LOG_HZ / _MEL_HZ_STEP, math.log(6.4) / 27.0


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    mel = hz / _MEL_HZ_STEP
    high = hz >= _MIN_LOG_HZ
    mel[high] = _MIN_LOG_MEL + np.log(hz[high] / _MIN_LOG_HZ) / _LOG_STEP
    return mel


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    hz = mel * _MEL_HZ_STEP
    high = mel >= _MIN_LOG_MEL
    hz[high] = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel[high] - _MIN_LOG_MEL))
    return hz


@lru_cache(maxsize=4)
def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1): librosa's Slaney-normalised mel filters
    (``librosa.filters.mel(sr=, n_fft=, n_mels=)``, which Whisper's ``mel_filters.npz``
    holds), computed here in numpy: importing librosa costs a command 0.9 s."""
    fft_hz = np.linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
    edges = _slaney_mel_to_hz(np.linspace(*_hz_to_slaney_mel(np.array([0.0, sample_rate / 2])), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney: each filter's area is constant
    return torch.from_numpy(weights.astype(np.float32))


def log_mel(waveform: torch.Tensor, cfg: LogMelConfig = LogMelConfig()) -> torch.Tensor:
    """waveform (samples,) float in [-1, 1] -> (frames, num_mel_bins) float32."""
    x = waveform.to(torch.float32)
    pad = round(cfg.pad_to_s * cfg.sample_rate) - x.shape[-1]
    if pad > 0:
        x = F.pad(x, (0, pad))
    if x.shape[-1] < cfg.hop_length:
        return torch.zeros(0, cfg.num_mel_bins)
    stft = torch.stft(x, cfg.n_fft, cfg.hop_length, window=torch.hann_window(cfg.n_fft, device=x.device),
                      return_complex=True)
    power = stft[..., :-1].abs().square()  # (bins, frames)
    mel = slaney_mel_filters(cfg.sample_rate, cfg.n_fft, cfg.num_mel_bins).to(x.device) @ power
    log_spec = mel.clamp_min(1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).T.contiguous()


FeatureConfig = FbankConfig | LogMelConfig


def features_of(waveform: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """What a model takes of a waveform: fbank then utterance CMVN, or Whisper's log-mel."""
    if isinstance(cfg, LogMelConfig):
        return log_mel(waveform, cfg)
    return utterance_cmvn(fbank(waveform, cfg))


def frames_of(num_samples: int, cfg: FeatureConfig) -> int:
    """Frames :func:`features_of` makes of ``num_samples`` samples."""
    return cfg.num_frames(num_samples) if isinstance(cfg, LogMelConfig) else num_frames(num_samples, cfg)


def model_features(config: dict, where: str) -> FeatureConfig:
    """The features a model directory was trained on, from its config.json (``config``, read
    from ``where``): its "features", for the model's ``n_mels``."""
    return feature_config(config.get("features"), where, int(config.get("model", {}).get("n_mels", 80)))


def feature_config(data: object, where: str, n_mels: int) -> FeatureConfig:
    """config.json's "features": FbankConfig fields, or LogMelConfig's with ``type: log_mel``."""
    if data is None:
        cfg: FeatureConfig = FbankConfig(num_mel_bins=n_mels)
    else:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: 'features' must be a mapping of FbankConfig or LogMelConfig fields")
        cls = LogMelConfig if data.get("type") == "log_mel" else FbankConfig
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise ConfigError(f"{where}: unknown key 'features.{key}' (known keys: {', '.join(known)})")
        try:
            cfg = cls(**data)
            cfg.check()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: 'features': {e}") from e
    if cfg.num_mel_bins != n_mels:
        raise ConfigError(f"{where}: 'features.num_mel_bins' is {cfg.num_mel_bins} but the model takes {n_mels}")
    if isinstance(cfg, FbankConfig) and cfg.dither:
        cfg = dataclasses.replace(cfg, dither=0.0)  # dither is for training
    return cfg
