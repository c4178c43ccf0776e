"""Nothing where the data cannot see: coil maps of partial support (issue 13, item 4).

Outside the support of the coil maps ``A x`` does not depend on x. Reconstructions must hold
the minimum-norm value there (0), not what a prior or a regulariser draws, and the std map
must mark the region instead of reading 0 (certainty).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medrecon.operators.mri import SenseOperator
from medrecon.problem import measurement_problem, operator_support
from medrecon.sampling import LinearProblem, SamplerOptions, posterior_sample, sample_problem


def _box(shape: tuple[int, int, int]) -> np.ndarray:
    """Support: a box that leaves a 2-voxel rim of every in-plane face (and all slices)."""
    s = np.zeros(shape, dtype=bool)
    s[2:-2, 2:-2, :] = True
    return s


def _partial(m):  # the measurement with its coil maps cropped to _box (as ESPIRiT crops)
    maps = np.asarray(m.coil_maps) * _box(m.image_shape)
    return dataclasses.replace(m, coil_maps=maps.astype(np.complex64))


@pytest.fixture(scope="module")
def tiny_prior(tiny_prior_path):
    from medrecon.priors import load_prior

    return load_prior(tiny_prior_path)


def test_problem_support_is_where_the_maps_are(mr_measurement) -> None:
    m, _ = mr_measurement
    assert measurement_problem(m, "cpu").support is None  # simulated maps: everywhere
    p = measurement_problem(_partial(m), "cpu")
    assert p.support is not None
    assert np.array_equal(p.support.numpy(), _box(m.image_shape))
    assert p.info["unsupported_fraction"] == pytest.approx(1 - _box(m.image_shape).mean(),
                                                           abs=1e-4)
    # Round-off is not reach; nothing reached at all is left to the solvers.
    assert operator_support(torch.tensor([1.0, 1e-9, 0.5])).tolist() == [True, False, True]
    assert operator_support(torch.zeros(3)) is None


def _inventing(value: float = 1.0):
    """A 'prior' that draws structure everywhere: x0_hat = value, whatever it is shown."""

    def d(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return 0.0 * x + value  # differentiable in x, for DPS

    return d


@pytest.mark.parametrize("sampler", ["dds", "pc", "dps", "diffpir"])
def test_samplers_draw_nothing_outside_the_support(sampler: str) -> None:
    g = torch.Generator().manual_seed(0)
    shape = (8, 8, 3)
    support = torch.from_numpy(_box(shape))
    maps = torch.randn((2, *shape), generator=g, dtype=torch.complex64) * support
    mask = (torch.rand(1, 8, 1, generator=g) < 0.6).float()
    op = SenseOperator(maps, mask, fft_dims=(0, 1), image_shape=shape)
    y = op(torch.rand(shape, generator=g).to(torch.complex64) + 0.5)
    kw = {"sampler": sampler, "steps": 4, "samples": 2, "seed": 0,
          "options": SamplerOptions(cg_iters=3), "keep_samples": True}
    prob = LinearProblem(op, y, noise_std=0.01, complex_image=True, support=support)
    res = sample_problem(_inventing(), prob, shape, **kw)
    outside = res.samples[:, ~support]
    assert float(outside.abs().max()) == 0.0
    assert float(res.samples[:, support].abs().mean()) > 0.1  # the data are fitted inside
    # Without the support the invented value survives there: the check above can fail.
    free = sample_problem(_inventing(), dataclasses.replace(prob, support=None), shape, **kw)
    assert float(free.samples[:, ~support].abs().mean()) > 0.5


def test_posterior_std_marks_the_unsupported_region(mr_measurement, tiny_prior) -> None:
    m, _ = mr_measurement
    pm = _partial(m)
    res = posterior_sample(pm, tiny_prior, steps=3, samples=2, seed=0, device="cpu")
    box = _box(m.image_shape)
    assert np.all(res.mean[~box] == 0.0)
    scale = res.info["scale"]
    # The prior's own spread sigma_data (model units) in the reference's units, not 0.
    assert np.allclose(res.std[~box], tiny_prior.sigma_data * scale, rtol=1e-5)
    assert float(np.median(res.std[box])) < tiny_prior.sigma_data * scale
    assert res.info["unsupported_fraction"] == pytest.approx(1 - box.mean(), abs=1e-4)


@pytest.mark.parametrize("method", ["l1-wavelet", "tv", "cg-sense"])
def test_classical_methods_keep_zero_outside_the_support(mr_measurement, method: str) -> None:
    from medrecon.methods import get_method
    from medrecon.recon.base import ReconOptions

    m, _ = mr_measurement
    box = _box(m.image_shape)
    opts = ReconOptions(lam=1.0, iterations=20, tol=0.0)
    out = get_method("MR", method)(_partial(m), opts, torch.device("cpu"))
    assert np.all(out.image[~box] == 0.0)
    assert float(out.image[box].mean()) > 10.0  # the object (values ~100) is reconstructed
    assert out.info["unsupported_fraction"] == pytest.approx(1 - box.mean(), abs=1e-4)


# --- CT air carved out by the data (issue 13: the default diffusion at a wide field of view) --
def _disc_ct(shape: tuple[int, int, int] = (32, 32, 2), radius: float = 7.0,
             air_hu: float = -1000.0, dose: float | None = None):
    """A water disc (0 HU, ``radius`` voxels of 2 mm) in the middle of a wide grid of air.
    Much smaller discs have chords of a few mm at their jagged edges, which the carving's
    3 mm of water then takes for air."""
    from medrecon.io.volume import Volume
    from medrecon.simulate import CTSettings, SimulationConfig, simulate

    i, j = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape[:2]], indexing="ij")
    disc = np.repeat((np.hypot(i, j) <= radius)[:, :, None], shape[2], axis=2)
    hu = np.where(disc, 0.0, air_hu).astype(np.float32)
    vol = Volume(hu, np.diag([2.0, 2.0, 2.0, 1.0]), modality="CT", units="HU")
    cfg = SimulationConfig(modality="ct", seed=3, ct=CTSettings(views=12, dose_i0=dose))
    return simulate(vol, cfg), disc


@pytest.mark.parametrize("air_hu, dose", [(-1000.0, None), (-1000.0, 1e5), (-997.0, 1e5)])
def test_ct_problem_carves_the_air_around_the_object(air_hu: float, dose: float | None) -> None:
    from scipy.ndimage import binary_dilation

    m, disc = _disc_ct(air_hu=air_hu, dose=dose)
    assert measurement_problem(m, "cpu").empty is None  # asked for by the sampler alone
    empty = measurement_problem(m, "cpu", empty_space=True).empty
    assert empty is not None
    e = empty.numpy()
    # Never the object or the voxels next to it (the 2-voxel band less the projector's
    # 1-voxel interpolation reach); all of the far air.
    assert not e[binary_dilation(disc, iterations=1)].any()
    far = ~binary_dilation(disc, iterations=6)
    assert e[far].all()
    # An object that fills the grid leaves no ray without attenuation: nothing is carved.
    full, _ = _disc_ct(shape=(12, 12, 2), radius=20.0)
    assert measurement_problem(full, "cpu", empty_space=True).empty is None


def test_empty_threshold_is_a_few_mm_of_water_and_at_most_two_voxels() -> None:
    from medrecon.operators.empty_space import empty_threshold

    mu = 0.02
    assert empty_threshold(mu, 0.0, (2.0, 2.0, 2.0)) == pytest.approx(3.0 * mu)
    assert empty_threshold(mu, 0.01, (2.0, 2.0, 2.0)) == pytest.approx(3.0 * mu + 0.04)
    # fine grids: a 1.5 mm object at 0.25 mm is 6 voxels, not air
    assert empty_threshold(mu, 0.0, (0.25, 0.25, 1.0)) == pytest.approx(0.5 * mu)


def test_tiled_denoiser_holds_air_where_empty_and_skips_empty_tiles() -> None:
    from medrecon.sampling.tiling import TiledDenoiser

    seen = []

    def tissue(x: torch.Tensor, sigma: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        seen.append(x.shape[0])
        return torch.full_like(x, 0.3)  # a prior that fills everything with tissue

    shape = (32, 32, 8)
    empty = torch.ones(shape, dtype=torch.bool)
    empty[12:20, 12:20] = False
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))
    out = {}
    for mask in (None, empty):
        seen.clear()
        den = TiledDenoiser(tissue, (8, 8, 8), mode="fit", size_multiple=8, min_tile=8,
                            generator=torch.Generator().manual_seed(1), empty=mask,
                            empty_value=-0.25)
        out[mask is None] = (den(x, torch.tensor([1.0])), sum(seen))
    masked, n_masked = out[False]
    assert torch.all(masked[:, empty] == -0.25)
    assert torch.all(masked[:, ~empty] == 0.3)
    assert n_masked < out[True][1] / 2  # the tiles wholly in the air: no network call


def test_posterior_sample_keeps_carved_air_empty(tiny_prior, monkeypatch) -> None:
    """A prior that fills every patch with tissue (as the default one does with pure air) must
    not put it into the air that the data carve out; without the carving 12 views leave much
    of it there."""
    from medrecon.sampling import denoiser as dn

    def tissue_fn(*args, **kwargs):
        return lambda x, sigma, pos: torch.full_like(x, 1 / 3)  # model space: water

    monkeypatch.setattr(dn, "_patch_function", tissue_fn)
    m, disc = _disc_ct(dose=1e5)
    empty = measurement_problem(m, "cpu", empty_space=True).empty.numpy()
    res = posterior_sample(m, tiny_prior, steps=4, samples=1, seed=0, device="cpu",
                           precision="fp32")
    assert res.info["empty_fraction"] == pytest.approx(empty.mean(), abs=1e-4)
    # Mean absolute errors in HU; without the carving they were 449 (air) and 353 (disc).
    assert float(np.abs(res.mean[empty] + 1000.0).mean()) < 100.0
    assert float(np.abs(res.mean[disc]).mean()) < 200.0
