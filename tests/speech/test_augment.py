"""SpecAugment masks and the waveform perturbations, measured on synthetic signals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speech.augment import (POLICIES, SpecAugmentConfig, WaveAugmentConfig, add_noise, augment_waveform,
                            spec_augment, speed_perturb, telephone)

SR = 16000


def feats(frames: int = 300, bins: int = 80, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, bins, generator=torch.Generator().manual_seed(seed)) + 2.0


def runs(flags: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    out, n = [], 0
    for f in flags.tolist() + [False]:
        if f:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


def masks(x: torch.Tensor, out: torch.Tensor) -> tuple[list[int], list[int]]:
    """(freq mask runs, time mask runs): bins or frames set wholly to the mean of ``x``."""
    hit = out == x.mean()
    return runs(hit.all(dim=0)), runs(hit.all(dim=1))


def test_policies_are_fairseqs():
    assert (POLICIES["LB"].freq_mask_F, POLICIES["LB"].freq_mask_N, POLICIES["LB"].time_mask_T,
            POLICIES["LB"].time_mask_N, POLICIES["LB"].time_mask_p) == (27, 1, 100, 1, 1.0)
    assert (POLICIES["LD"].freq_mask_N, POLICIES["LD"].time_mask_N) == (2, 2)
    assert (POLICIES["SM"].freq_mask_F, POLICIES["SM"].time_mask_T, POLICIES["SM"].time_mask_p) == (15, 70, 0.2)
    assert all(p.time_warp_W == 0 for p in POLICIES.values())


@pytest.mark.parametrize("name", ["LB", "LD", "SM", "SS"])
def test_masks_stay_within_bounds(name):
    cfg = POLICIES[name]
    x = feats()
    max_t = min(cfg.time_mask_T, math.floor(len(x) * cfg.time_mask_p))
    for seed in range(40):
        out = spec_augment(x, cfg, torch.Generator().manual_seed(seed))
        f_runs, t_runs = masks(x, out)
        assert len(f_runs) <= cfg.freq_mask_N and sum(f_runs) <= cfg.freq_mask_N * (cfg.freq_mask_F - 1)
        assert len(t_runs) <= cfg.time_mask_N and sum(t_runs) <= cfg.time_mask_N * (max_t - 1)
        unmasked = (out != x.mean())
        assert torch.equal(out[unmasked], x[unmasked])  # the rest is untouched


def test_lb_draws_one_mask_of_each_kind_ld_two():
    x = feats()
    counts = {}
    for name in ("LB", "LD"):
        f_counts, t_counts, masked = [], [], 0.0
        for seed in range(60):
            out = spec_augment(x, POLICIES[name], torch.Generator().manual_seed(seed))
            f_runs, t_runs = masks(x, out)
            f_counts.append(len(f_runs))
            t_counts.append(len(t_runs))
            masked += float((out == x.mean()).float().mean())
        counts[name] = (max(f_counts), max(t_counts), masked / 60)
    assert counts["LB"][:2] == (1, 1)
    assert counts["LD"][:2] == (2, 2)
    assert counts["LD"][2] > 1.5 * counts["LB"][2]


def test_reproducible_and_input_untouched():
    x = feats()
    before = x.clone()
    a = spec_augment(x, POLICIES["LD"], torch.Generator().manual_seed(7))
    b = spec_augment(x, POLICIES["LD"], torch.Generator().manual_seed(7))
    c = spec_augment(x, POLICIES["LD"], torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)


def test_time_mask_capped_by_p():
    x = feats(frames=50)  # SM: p = 0.2 -> at most 10 frames per mask, whatever T says
    widest = 0
    for seed in range(80):
        _, t_runs = masks(x, spec_augment(x, POLICIES["SM"], torch.Generator().manual_seed(seed)))
        widest = max([widest] + t_runs)
    assert 5 <= widest <= 2 * 9


def test_time_warp_keeps_shape_and_is_reproducible():
    x = feats(frames=200)
    cfg = SpecAugmentConfig(time_warp_W=40)
    a = spec_augment(x, cfg, torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    assert torch.equal(a, spec_augment(x, cfg, torch.Generator().manual_seed(1)))
    assert torch.equal(a[0], x[0]) and torch.allclose(a[-1], x[-1])  # warping moves the middle only
    assert not torch.equal(a, x)
    short = feats(frames=60)
    assert torch.equal(spec_augment(short, cfg, torch.Generator().manual_seed(1)), short)  # 2W >= frames


def test_empty_and_bad_input():
    assert spec_augment(torch.zeros(0, 80), POLICIES["LD"]).shape == (0, 80)
    with pytest.raises(ValueError, match="time_mask_p"):
        spec_augment(feats(), SpecAugmentConfig(time_mask_p=1.5))


def sine(freq: float, n: int = SR, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * len(x)))
    return float(np.fft.rfftfreq(8 * len(x), 1 / SR)[spectrum.argmax()])


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1])
def test_speed_perturb_scales_length_and_pitch(factor):
    x = sine(1000.0, n=16001)
    y = speed_perturb(x, factor)
    assert y.dtype == np.float32 and len(y) == round(16001 / factor)
    assert abs(peak_hz(y) - 1000.0 * factor) < 2.0
    assert y is not x


@pytest.mark.parametrize("n_noise", [5000, 40000])  # tiled, cropped
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 23.5])
def test_add_noise_meets_the_snr(n_noise, snr_db):
    rng = np.random.default_rng(0)
    x = sine(440.0, n=16000)
    noise = rng.standard_normal(n_noise).astype(np.float32)
    y = add_noise(x, noise, snr_db, np.random.default_rng(1))
    assert y.shape == x.shape and y.dtype == np.float32
    residual = y.astype(np.float64) - x
    got = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(residual ** 2))
    assert abs(got - snr_db) < 0.1
    assert np.array_equal(y, add_noise(x, noise, snr_db, np.random.default_rng(1)))


def test_add_noise_refuses_silent_noise():
    with pytest.raises(ValueError, match="silent"):
        add_noise(sine(440.0), np.zeros(100, dtype=np.float32), 10.0)


def band_energy(x: np.ndarray, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    return float(power[(freqs >= low) & (freqs < high)].sum())


def test_telephone_cuts_the_high_band_and_keeps_length():
    x = (0.1 * np.random.default_rng(0).standard_normal(16001)).astype(np.float32)
    y = telephone(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert band_energy(x, 3400, 8000) / band_energy(x, 0, 8000) > 0.5  # white noise: most is up there
    assert band_energy(y, 3400, 8000) / band_energy(y, 0, 8000) < 0.01
    assert band_energy(y, 4000, 8000) < 1e-4 * band_energy(x, 4000, 8000)  # -40 dB past the 8 kHz Nyquist
    kept = band_energy(y, 500, 3000) / band_energy(x, 500, 3000)
    assert 0.5 < kept < 1.5  # the voice band passes (mu-law noise included)


def test_augment_waveform_is_reproducible():
    x = sine(300.0, n=8000)
    cfg = WaveAugmentConfig(noise_p=1.0, snr_db=(10.0, 10.0), telephone_p=0.5)
    a = augment_waveform(x, cfg, np.random.default_rng(5))
    assert np.array_equal(a, augment_waveform(x, cfg, np.random.default_rng(5)))
    fast = augment_waveform(x, WaveAugmentConfig(speeds=(1.1,)), np.random.default_rng(0))
    assert len(fast) == round(8000 / 1.1)
    lengths = {len(augment_waveform(x, WaveAugmentConfig(), np.random.default_rng(s))) for s in range(30)}
    assert lengths == {round(8000 / f) for f in (0.9, 1.0, 1.1)}
    with pytest.raises(ValueError, match="noise_p"):
        augment_waveform(x, WaveAugmentConfig(noise_p=2.0), np.random.default_rng(0))
