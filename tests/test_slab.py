"""The slab of a separable MR measurement (medrecon.slab) is its exact sub-problem, and the
classical methods' self-tuning on it (medrecon.recon.mri) ends in one all-data solve."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medrecon.io import Volume
from medrecon.io.measurement import Measurement
from medrecon.problem import measurement_problem
from medrecon.recon import mri
from medrecon.recon.base import ReconOptions
from medrecon.simulate import Dims, MaskKind, MRISettings, SimulationConfig, simulate
from medrecon.slab import measurement_slab, min_rows, slab_axis

CPU = torch.device("cpu")


def _object(shape: tuple[int, int, int], rows: slice, axis: int = 0) -> np.ndarray:
    """A smooth blob whose signal lies in ``rows`` of ``axis`` (air elsewhere)."""
    x = np.zeros(shape, np.float32)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    blob = np.exp(-2.0 * (grids[1] ** 2 + grids[2] ** 2 + grids[0] ** 2)).astype(np.float32)
    index = [slice(None)] * 3
    index[axis] = rows
    x[tuple(index)] = 1.0 + blob[tuple(index)]
    return x


def _mr(shape: tuple[int, int, int], rows: slice, *, dims: Dims = Dims.THREE_D,
        seed: int = 1) -> Measurement:
    axis = 0 if dims == Dims.THREE_D else 2
    vol = Volume(_object(shape, rows, axis), np.diag([2.0, 1.5, 3.0, 1.0]), modality="MR")
    vol.affine[:3, 3] = (-10.0, 5.0, 7.0)
    mask = MaskKind.POISSON if dims == Dims.THREE_D else MaskKind.RANDOM
    return simulate(vol, SimulationConfig(seed=seed, mri=MRISettings(
        coils=4, acceleration=3.0, calibration=4, snr=20.0, dims=dims, mask=mask)))


@pytest.mark.parametrize("dims", [Dims.THREE_D, Dims.TWO_D])
def test_slab_is_the_exact_sub_problem(dims: Dims) -> None:
    """The slab's zero-filled image A^H y equals the full one's rows (float error), the
    forward operator of an image zero outside the slab gives the slab's k-space of its
    rows, the noise model and mask are unchanged and the geometry is the slab's."""
    shape = (26, 12, 10) if dims == Dims.THREE_D else (12, 18, 26)
    m = _mr(shape, slice(12, 22), dims=dims)
    axis = slab_axis(m)
    assert axis == (0 if dims == Dims.THREE_D else 2)
    found = measurement_slab(m, CPU, rows=8)
    assert found is not None
    sub, slab = found
    assert (slab.axis, slab.stop - slab.start, slab.length) == (axis, 8, 26)
    assert 12 <= slab.start and slab.stop <= 22  # on the object, not in air
    full_p, sub_p = measurement_problem(m, CPU), measurement_problem(sub, CPU)
    zf_full, zf_sub = full_p.op.adjoint(full_p.y), sub_p.op.adjoint(sub_p.y)
    assert zf_sub.shape == slab.take(zf_full).shape
    scale = float(zf_full.abs().max())
    assert float((zf_sub - slab.take(zf_full)).abs().max()) < 1e-5 * scale
    # forward: A_slab x_slab is the slab transform of A x for x zero outside the slab
    x = torch.zeros(shape, dtype=torch.complex64)
    gen = torch.Generator().manual_seed(0)
    index = [slice(None)] * 3
    index[axis] = slice(slab.start, slab.stop)
    x[tuple(index)] = torch.randn(sub.image_shape, dtype=torch.complex64, generator=gen)
    lifted = dataclasses.replace(m, data=full_p.op.forward(x).numpy())
    sub2, slab2 = measurement_slab(lifted, CPU, rows=8) or (None, None)
    assert sub2 is not None and slab2 is not None
    # the pick follows the energy (the image's rows), so it is the same slab here
    assert (slab2.start, slab2.stop) == (slab.start, slab.stop)
    expect = sub_p.op.forward(x[tuple(index)])
    got = torch.from_numpy(sub2.data)
    assert float((got - expect).abs().max()) < 1e-5 * float(expect.abs().max())
    assert sub.noise_std == m.noise_std and sub_p.noise_std == full_p.noise_std
    assert np.array_equal(np.asarray(sub.mask), np.asarray(m.mask))
    assert sub.image_shape == tuple(slab.take(np.zeros(shape)).shape)
    origin = m.reference.affine @ np.array([*(slab.start if a == axis else 0
                                                for a in range(3)), 1.0])
    assert np.allclose(sub.reference.affine[:, 3], origin)
    assert sub.acquisition["slab"]["text"] == slab.text


def test_slab_keeps_white_noise_white_with_the_same_sigma() -> None:
    """Pure complex white noise on the sampled columns: after the slab transform the sampled
    samples have the same std per real part (orthonormal FFTs), uncorrelated along the axis."""
    m = _mr((64, 12, 10), slice(0, 64))
    gen = np.random.default_rng(0)
    sigma = 0.3
    noise = sigma * (gen.standard_normal(m.data.shape) + 1j * gen.standard_normal(m.data.shape))
    noisy = dataclasses.replace(m, data=(noise * (np.asarray(m.mask) > 0)).astype(np.complex64))
    sub, _ = measurement_slab(noisy, CPU, rows=24) or (None, None)
    assert sub is not None
    sampled = np.broadcast_to(np.asarray(sub.mask) > 0, sub.data.shape[1:])
    vals = sub.data[:, sampled]
    parts = np.concatenate([vals.real.ravel(), vals.imag.ravel()])
    assert np.std(parts) == pytest.approx(sigma, rel=0.03)
    # neighbouring rows of the slab's k-space are uncorrelated
    a, b = sub.data[:, :-1][:, sampled[:-1]], sub.data[:, 1:][:, sampled[1:]]
    assert abs(np.mean(a * b.conj())) < 0.05 * sigma ** 2 * 2


def test_no_slab_where_the_volume_is_short_or_not_separable() -> None:
    """Up to 1.5x the slab's rows, ``rows`` 0, a mask varying along the axis: None."""
    m = _mr((26, 12, 10), slice(0, 26))
    assert min_rows(8) == 12 and min_rows(64) == 96
    assert measurement_slab(m, CPU, rows=18) is None  # 26 <= 27
    assert measurement_slab(m, CPU, rows=0) is None
    assert measurement_slab(m, CPU, rows=17) is not None  # 26 > 25
    full_mask = np.broadcast_to(np.asarray(m.mask), m.image_shape).copy()
    assert slab_axis(dataclasses.replace(m, mask=full_mask)) is None


@pytest.mark.parametrize("method", ["l1-wavelet", "tv"])
def test_classical_weight_chosen_on_the_slab_then_one_all_data_solve(method: str) -> None:
    """Self-tuned l1-wavelet / tv on a long volume: the weight is the one chosen on the
    slab's measurement alone (its own tuning, same maps), info says which rows, and the
    image is the all-data solve at that weight; ``tune_slab=0`` tunes on the whole."""
    m = _mr((30, 12, 10), slice(8, 24))
    fn = mri.l1_wavelet if method == "l1-wavelet" else mri.total_variation
    extra = {"tune_slab": 12, "map_sets": 1, "sure": False}
    opts = ReconOptions(iterations=6, extra=extra)
    out = fn(m, opts, CPU)
    slab = out.info["tune_slab"]
    assert slab["stop"] - slab["start"] == 12 and out.image.shape == m.image_shape
    assert f"weight chosen on {slab['text']}" in out.info["autotune_line"]
    sub, _ = measurement_slab(m, CPU, rows=12) or (None, None)
    assert sub is not None
    on_slab = fn(sub, ReconOptions(iterations=6, extra={**extra, "tune_slab": 0}), CPU)
    assert out.info["lam"] == pytest.approx(on_slab.info["lam"], rel=1e-6)
    fixed = fn(m, ReconOptions(iterations=6, lam=out.info["lam"], extra=extra), CPU)
    assert np.allclose(out.image, fixed.image, rtol=0, atol=1e-6 * float(fixed.image.max()))
    whole = fn(m, ReconOptions(iterations=6, extra={**extra, "tune_slab": 0}), CPU)
    assert "tune_slab" not in whole.info and "weight chosen on" not in whole.info[
        "autotune_line"]
