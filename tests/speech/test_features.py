"""Kaldi-style fbank against kaldi-native-fbank on synthetic signals, and utterance CMVN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speech.features import FbankConfig, fbank, num_frames, utterance_cmvn

knf = pytest.importorskip("kaldi_native_fbank")

SR = 16000
# Both sides compute in float32: the FFT's rounding error in a bin is about float32 eps
# times the frame's strongest amplitude, so a bin E dB below the strongest has a log
# error of about 2.4e-7 * 10^(E/20): 2.4e-4 at 60 dB, 2.4e-3 at 80 dB. Speech and noise
# keep every bin within ~70 dB (measured: max difference 8e-5 to 2.3e-4); a pure tone
# leaves bins 100+ dB down, where both sides are rounding noise (see test_pure_chirp).
TOL = 1e-3
WITHIN_DB = 60.0


def speech_like(n: int, seed: int = 0) -> np.ndarray:
    """A voiced sound: 30 harmonics of a gliding 90-150 Hz pitch, a syllable envelope, breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 120 + 30 * np.sin(2 * np.pi * 2 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 31))
    envelope = (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    return (0.3 * envelope * voiced + 0.003 * rng.standard_normal(n)).astype(np.float32)


def chirp(n: int) -> np.ndarray:
    """A linear sweep from 100 Hz to 7.9 kHz."""
    t = np.arange(n) / SR
    return (0.5 * np.sin(2 * np.pi * (100 * t + (7800 / (2 * t[-1])) * t ** 2))).astype(np.float32)


def white(n: int, seed: int = 1) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def kaldi_fbank(x: np.ndarray, cfg: FbankConfig) -> np.ndarray:
    """kaldi-native-fbank on the int16-scale samples of ``x``: (frames, num_mel_bins)."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = cfg.sample_rate
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = cfg.snip_edges
    opts.frame_opts.window_type = cfg.window
    opts.frame_opts.frame_length_ms = cfg.frame_length_ms
    opts.frame_opts.frame_shift_ms = cfg.frame_shift_ms
    opts.frame_opts.preemph_coeff = cfg.preemphasis
    opts.frame_opts.remove_dc_offset = cfg.remove_dc_offset
    opts.frame_opts.round_to_power_of_two = cfg.round_to_power_of_two
    opts.mel_opts.num_bins = cfg.num_mel_bins
    opts.mel_opts.low_freq = cfg.low_freq
    opts.mel_opts.high_freq = cfg.high_freq
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(cfg.sample_rate, (x.astype(np.float64) * 32768).tolist())
    fb.input_finished()
    if fb.num_frames_ready == 0:
        return np.zeros((0, cfg.num_mel_bins), dtype=np.float32)
    return np.stack([np.asarray(fb.get_frame(i)) for i in range(fb.num_frames_ready)])


def ours(x: np.ndarray, cfg: FbankConfig) -> np.ndarray:
    out = fbank(torch.from_numpy(x), cfg)
    assert out.dtype == torch.float32
    return out.numpy()


@pytest.mark.parametrize("signal", [speech_like(19753), white(20037)], ids=["speech", "white"])
@pytest.mark.parametrize("cfg", [FbankConfig(), FbankConfig(window="hamming", snip_edges=False),
                                 FbankConfig(window="hanning", num_mel_bins=40, low_freq=60, high_freq=-400),
                                 FbankConfig(window="rectangular", round_to_power_of_two=False)],
                         ids=["default", "hamming-nosnip", "hanning-40", "rect-nopow2"])
def test_matches_kaldi_native_fbank(signal, cfg):
    a, b = ours(signal, cfg), kaldi_fbank(signal, cfg)
    assert a.shape == b.shape == (num_frames(len(signal), cfg), cfg.num_mel_bins)
    assert np.abs(a - b).max() < TOL


def test_matches_at_8khz():
    cfg = FbankConfig(sample_rate=8000, num_mel_bins=40, high_freq=3800)
    x = speech_like(9999)[::2].copy()
    a, b = ours(x, cfg), kaldi_fbank(x, cfg)
    assert a.shape == b.shape == (1 + (len(x) - 200) // 80, 40)
    assert np.abs(a - b).max() < TOL


@pytest.mark.parametrize("window, share", [("povey", 0.05), ("hamming", 0.5)])
def test_pure_chirp(window, share):
    """A noise-free sweep leaves bins 100+ dB below the frame's peak (more with the povey
    window's low side lobes): there both float32 computations are rounding noise and
    differ by up to ~1.3; on the bins within 60 dB they agree."""
    cfg = FbankConfig(window=window)
    x = chirp(19381)
    a, b = ours(x, cfg), kaldi_fbank(x, cfg)
    assert a.shape == b.shape
    within = b >= b.max(axis=1, keepdims=True) - WITHIN_DB / 10 * np.log(10)
    assert within.mean() > share
    assert np.abs(a - b)[within].max() < TOL


def test_frame_count_and_short_input():
    x = white(2000)
    for n in (0, 1, 399, 400, 401, 559, 560, 1999):
        expected = 0 if n < 400 else 1 + (n - 400) // 160
        assert num_frames(n) == expected
        assert fbank(torch.from_numpy(x[:n])).shape == (expected, 80)
        nosnip = FbankConfig(snip_edges=False)
        assert num_frames(n, nosnip) == (n + 80) // 160 == len(kaldi_fbank(x[:n], nosnip))
    empty = fbank(torch.zeros(0))
    assert empty.shape == (0, 80) and empty.dtype == torch.float32


def test_batch_equals_one_by_one():
    x = torch.from_numpy(np.stack([speech_like(8000), white(8000)]))
    batch = fbank(x)
    assert batch.shape == (2, 48, 80)
    for i in range(2):
        assert torch.allclose(batch[i], fbank(x[i]), atol=1e-5)


def test_dither_is_reproducible_and_only_when_asked():
    x = torch.from_numpy(speech_like(4000))
    cfg = FbankConfig(dither=1.0)
    a = fbank(x, cfg, torch.Generator().manual_seed(3))
    b = fbank(x, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, fbank(x))
    assert torch.equal(fbank(x, FbankConfig(), torch.Generator().manual_seed(3)), fbank(x))


def test_digital_silence_hits_the_log_floor():
    feats = fbank(torch.zeros(1000))
    assert torch.allclose(feats, torch.full_like(feats, float(np.log(np.finfo(np.float32).eps))))


@pytest.mark.parametrize("bad, field", [(dict(window="blackman"), "window"), (dict(high_freq=9000), "high_freq"),
                                        (dict(num_mel_bins=1), "num_mel_bins")])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        fbank(torch.zeros(1000), FbankConfig(**bad))
    with pytest.raises(ValueError, match="samples"):
        fbank(torch.zeros(2, 3, 1000))


def test_utterance_cmvn():
    feats = fbank(torch.from_numpy(speech_like(16123)))
    feats[:, 5] = 3.0  # a constant bin
    out = utterance_cmvn(feats)
    assert out.shape == feats.shape
    mask = torch.ones(80, dtype=torch.bool)
    mask[5] = False
    assert out.mean(dim=0).abs().max() < 1e-5
    assert (out[:, mask].std(dim=0, correction=0) - 1).abs().max() < 1e-4
    assert torch.equal(out[:, 5], torch.zeros(len(feats)))
    assert utterance_cmvn(torch.zeros(0, 80)).shape == (0, 80)
    batch = utterance_cmvn(torch.stack([feats, 2 * feats]))
    assert torch.allclose(batch[0], out, atol=1e-5) and torch.allclose(batch[1], out, atol=1e-5)


@pytest.mark.parametrize("sample_rate, n_fft, n_mels", [(16000, 400, 80), (16000, 400, 128), (8000, 256, 40),
                                                        (22050, 1024, 64)])
def test_slaney_mel_filters_are_librosas(sample_rate, n_fft, n_mels):
    """Whisper's mel filters, computed without importing librosa, are librosa's."""
    librosa = pytest.importorskip("librosa")
    from speech.features import slaney_mel_filters

    want = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
    got = slaney_mel_filters(sample_rate, n_fft, n_mels)
    assert got.dtype == torch.float32 and tuple(got.shape) == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-7)
