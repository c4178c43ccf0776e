"""Metrics against scikit-image and hand computation; masks, per-slice values, error paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medrecon.errors import GeometryError, InputError
from medrecon.metrics import (
    data_range_of,
    evaluate_volumes,
    hfen,
    log_filter,
    nmse,
    psnr,
    relative_residual,
    ssim,
    ssim_map,
)

SHAPE = (20, 17, 14)  # odd, non-cubic: catches axis mix-ups


@pytest.fixture
def pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ref = ndimage.gaussian_filter(rng.random(SHAPE), 2.0) * 3.0 + 1.0
    x = ref + 0.05 * rng.standard_normal(SHAPE)
    return x, ref


def test_psnr_matches_skimage_and_hand(pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, ref = pair
    L = float(ref.max() - ref.min())
    expected = peak_signal_noise_ratio(ref, x, data_range=L)
    assert psnr(x, ref) == pytest.approx(expected, rel=1e-12)
    mse = np.mean((x - ref) ** 2)
    assert psnr(x, ref, data_range=2.0) == pytest.approx(10 * np.log10(4.0 / mse), rel=1e-12)
    assert psnr(ref, ref) == math.inf


def test_ssim_map_matches_skimage_full_map(pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, ref = pair
    L = 3.0
    mssim, smap_sk = structural_similarity(
        x, ref, data_range=L, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, full=True,
    )
    smap = ssim_map(x, ref, L)
    np.testing.assert_allclose(smap, smap_sk, rtol=1e-10, atol=1e-12)
    # scikit-image averages after cropping the 11-tap window's 5-voxel border.
    assert smap[5:-5, 5:-5, 5:-5].mean() == pytest.approx(mssim, rel=1e-10)
    # Ours averages the whole map: a different, documented number.
    assert ssim(x, ref, data_range=L) == pytest.approx(smap.mean(), rel=1e-12)


def test_ssim_identity_and_symmetry(pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, ref = pair
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert ssim(x, ref, data_range=3.0) == pytest.approx(ssim(ref, x, data_range=3.0), rel=1e-12)
    assert ssim(x, ref, data_range=3.0) < 1.0


def test_ssim_constant_images_hand_value() -> None:
    # Constant images: variances vanish, SSIM = (2 a b + C1) / (a^2 + b^2 + C1) everywhere.
    a, b, L = 0.3, 0.5, 1.0
    x = np.full((12, 12, 12), a)
    ref = np.full((12, 12, 12), b)
    c1 = (0.01 * L) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(x, ref, data_range=L) == pytest.approx(expected, rel=1e-10)


def test_nmse_and_hfen_hand(pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, ref = pair
    assert nmse(x, ref) == pytest.approx(np.sum((x - ref) ** 2) / np.sum(ref**2), rel=1e-12)
    assert nmse(2 * ref, ref) == pytest.approx(1.0)
    # HFEN: a dense 15x15x15 LoG kernel (sigma 1.5), zero-sum like MATLAB's fspecial('log').
    t = np.arange(-7, 8, dtype=float)
    r2 = t[:, None, None] ** 2 + t[None, :, None] ** 2 + t[None, None, :] ** 2
    g = np.exp(-r2 / (2 * 1.5**2))
    g /= g.sum()
    # d2/dx2 of the Gaussian, zero-sum along each axis -> Laplacian kernel of zero sum.
    g1 = np.exp(-t**2 / (2 * 1.5**2))
    g1 /= g1.sum()
    d2 = g1 * (t**2 - 1.5**2) / 1.5**4
    d2 -= d2.mean()
    kernel = (d2[:, None, None] * g1[None, :, None] * g1[None, None, :]
              + g1[:, None, None] * d2[None, :, None] * g1[None, None, :]
              + g1[:, None, None] * g1[None, :, None] * d2[None, None, :])
    assert abs(kernel.sum()) < 1e-12
    log = lambda a: ndimage.correlate(a, kernel, mode="reflect")  # noqa: E731
    expected = np.linalg.norm(log(x) - log(ref)) / np.linalg.norm(log(ref))
    assert hfen(x, ref) == pytest.approx(expected, rel=1e-10)
    assert hfen(ref, ref) == 0.0
    # A constant offset has no high frequencies.
    assert hfen(ref + 5.0, ref) < 1e-12


def test_log_filter_is_the_laplacian_on_quadratics() -> None:
    # The LoG of x^2 + 2 y^2 + 3 z^2 (blurred or not) is 2 + 4 + 6 = 12 away from the borders.
    i, j, k = np.meshgrid(*(np.arange(24.0),) * 3, indexing="ij")
    f = i**2 + 2 * j**2 + 3 * k**2
    out = log_filter(f)[8:-8, 8:-8, 8:-8]
    np.testing.assert_allclose(out, 12.0, rtol=1e-3)


def test_masked_metrics_use_only_the_region(pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, ref = pair
    mask = np.zeros(SHAPE, dtype=bool)
    mask[4:15, 3:12, 2:10] = True
    y = x.copy()
    y[~mask] += 100.0  # huge errors outside the region must not matter to PSNR/NMSE
    L = 3.0
    d = (x - ref)[mask]
    assert psnr(y, ref, data_range=L, mask=mask) == pytest.approx(
        10 * np.log10(L**2 / np.mean(d**2)), rel=1e-12)
    assert nmse(y, ref, mask=mask) == pytest.approx(np.sum(d**2) / np.sum(ref[mask] ** 2))
    # Masked SSIM is the mean of the SSIM map over the mask.
    assert ssim(x, ref, data_range=L, mask=mask) == pytest.approx(
        ssim_map(x, ref, L)[mask].mean(), rel=1e-12)


def test_data_range_default_and_errors(pair: tuple[np.ndarray, np.ndarray]) -> None:
    _, ref = pair
    assert data_range_of(ref) == pytest.approx(ref.max() - ref.min())
    assert data_range_of(ref, 7) == 7.0
    with pytest.raises(InputError, match="constant"):
        data_range_of(np.ones((4, 4, 4)))
    with pytest.raises(InputError, match="positive"):
        data_range_of(ref, 0.0)
    with pytest.raises(InputError, match="positive"):
        data_range_of(ref, float("nan"))


def test_input_errors(pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, ref = pair
    with pytest.raises(GeometryError, match="shape"):
        psnr(x[:-1], ref)
    with pytest.raises(GeometryError, match="mask"):
        psnr(x, ref, mask=np.ones((3, 3, 3), bool))
    with pytest.raises(InputError, match="empty"):
        nmse(x, ref, mask=np.zeros(SHAPE, bool))
    with pytest.raises(InputError, match="complex"):
        nmse(x + 1j, ref)
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        evaluate_volumes(bad, ref)


def test_torch_tensors_are_accepted(pair: tuple[np.ndarray, np.ndarray]) -> None:
    import torch

    x, ref = pair
    assert psnr(torch.from_numpy(x), torch.from_numpy(ref)) == pytest.approx(psnr(x, ref))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_evaluate_volumes_per_slice_consistent(
    pair: tuple[np.ndarray, np.ndarray], axis: int
) -> None:
    x, ref = pair
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2:18, 1:16, 3:12] = True
    res = evaluate_volumes(x, ref, mask=mask, data_range=3.0, slice_axis=axis)
    ax = axis % 3
    assert res.slice_axis == ax and len(res.slices) == SHAPE[ax]
    assert res.volume["psnr"] == pytest.approx(psnr(x, ref, 3.0, mask), rel=1e-12)
    assert res.volume["ssim"] == pytest.approx(ssim(x, ref, 3.0, mask), rel=1e-12)
    assert res.volume["nmse"] == pytest.approx(nmse(x, ref, mask), rel=1e-12)
    assert res.volume["hfen"] == pytest.approx(hfen(x, ref, mask), rel=1e-12)
    smap = ssim_map(x, ref, 3.0)
    for s in res.slices:
        k = s["slice"]
        idx = [slice(None)] * 3
        idx[ax] = k
        m = mask[tuple(idx)]
        assert s["voxels"] == int(m.sum())
        if not m.any():
            assert all(math.isnan(s[n]) for n in ("psnr", "ssim", "nmse", "hfen"))
            continue
        d = (x - ref)[tuple(idx)][m]
        assert s["psnr"] == pytest.approx(10 * np.log10(9.0 / np.mean(d**2)), rel=1e-10)
        assert s["ssim"] == pytest.approx(smap[tuple(idx)][m].mean(), rel=1e-10)
        assert s["nmse"] == pytest.approx(np.sum(d**2) / np.sum(ref[tuple(idx)][m] ** 2))
    # Volume SSIM is the voxel-weighted mean of the slice values.
    w = np.array([s["voxels"] for s in res.slices], dtype=float)
    vals = np.nan_to_num(np.array([s["ssim"] for s in res.slices]))
    assert np.sum(w * vals) / w.sum() == pytest.approx(res.volume["ssim"], rel=1e-10)


def test_evaluation_result_serialisation(pair: tuple[np.ndarray, np.ndarray]) -> None:
    import json

    x, ref = pair
    res = evaluate_volumes(ref, ref)  # identical: PSNR is +inf
    d = res.to_dict()
    assert d["volume"]["psnr"] is None  # strict JSON: non-finite -> null
    json.dumps(d, allow_nan=False)
    assert d["data_range"] == pytest.approx(ref.max() - ref.min())
    assert d["data_range_source"] == "reference max - min"
    assert "whole volume" in d["region"]
    rows = res.rows()
    assert len(rows) == SHAPE[2] + 1 and rows[-1]["slice"] == "volume"
    summary = evaluate_volumes(x, ref).slice_summary()
    assert summary["psnr"]["min"] <= summary["psnr"]["median"] <= summary["psnr"]["max"]


def test_relative_residual_numpy_and_torch(rng: np.random.Generator) -> None:
    import torch

    y = rng.standard_normal((6, 5)) + 1j * rng.standard_normal((6, 5))
    e = 0.1 * (rng.standard_normal((6, 5)) + 1j * rng.standard_normal((6, 5)))
    expected = np.linalg.norm(e) / np.linalg.norm(y)
    assert relative_residual(y + e, y) == pytest.approx(expected, rel=1e-12)
    assert relative_residual(torch.from_numpy(y + e), torch.from_numpy(y)) == pytest.approx(
        expected, rel=1e-12)
    mask = rng.random((6, 5)) > 0.5
    em = np.linalg.norm(e * mask) / np.linalg.norm(y * mask)
    assert relative_residual(y + e, y, mask) == pytest.approx(em, rel=1e-12)
    assert relative_residual(torch.from_numpy(y + e), torch.from_numpy(y),
                             torch.from_numpy(mask)) == pytest.approx(em, rel=1e-12)
    assert relative_residual(y, y) == 0.0
    with pytest.raises(GeometryError):
        relative_residual(y[:2], y)


def test_std_map_check_on_gaussian_errors(rng: np.random.Generator) -> None:
    """Errors drawn from N(0, sigma^2) per voxel, sigma varying over the volume: the true sigma
    as the map covers erf(k / sqrt 2) of the voxels (68.3 / 95.4 %) with rms ratio 1, half of
    it is over-confident, twice it too cautious; per-slice values where the region has voxels,
    NaN elsewhere."""
    from medrecon.metrics import std_map_check

    shape = (40, 40, 8)
    sigma = 0.01 + 0.05 * rng.random(shape)
    ref = rng.random(shape)
    rec = ref + sigma * rng.standard_normal(shape)
    mask = np.ones(shape, bool)
    mask[:, :, 0] = False  # one slice outside the region
    exact = std_map_check(rec, sigma, ref, mask)
    v = exact["volume"]
    assert v["coverage_1std"] == pytest.approx(0.683, abs=0.01)
    assert v["coverage_2std"] == pytest.approx(0.954, abs=0.006)
    assert v["std_rms_over_error_rms"] == pytest.approx(1.0, abs=0.02)
    assert exact["expected"]["coverage_2std"] == pytest.approx(0.9545, abs=1e-4)
    assert math.isnan(exact["slices"][0]["coverage_2std"])
    assert all(abs(s["coverage_2std"] - 0.954) < 0.03 for s in exact["slices"][1:])
    narrow = std_map_check(rec, 0.5 * sigma, ref, mask)["volume"]
    wide = std_map_check(rec, 2.0 * sigma, ref, mask)["volume"]
    assert narrow["coverage_2std"] == pytest.approx(0.683, abs=0.01)  # 2 x half = 1 sigma
    assert wide["coverage_1std"] == pytest.approx(0.954, abs=0.006)
    assert wide["std_rms_over_error_rms"] == pytest.approx(2.0, abs=0.04)


def test_std_map_check_refuses_what_is_no_std_map() -> None:
    from medrecon.metrics import std_map_check

    ref = np.zeros((4, 4, 2))
    for bad in (-np.ones((4, 4, 2)), np.full((4, 4, 2), np.nan)):
        with pytest.raises(InputError, match="std map holds negative, NaN or infinite"):
            std_map_check(ref, bad, ref)
    with pytest.raises(GeometryError, match="std map has shape"):
        std_map_check(ref, np.ones((4, 4, 3)), ref)
