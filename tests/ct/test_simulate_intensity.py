"""HU <-> attenuation mapping, CT noise models and sinogram simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medrecon.errors import InputError
from medrecon.intensity import HU_AIR, MU_WATER_PER_MM, hu_to_mu, looks_like_hu, mu_to_hu
from medrecon.io.volume import Volume
from medrecon.operators.ct_geometry import CTGeometry, default_geometry
from medrecon.operators.ct_projector import make_projector
from medrecon.simulate import add_ct_noise, simulate_sinogram


def test_hu_mu_round_trip_and_anchors() -> None:
    assert hu_to_mu(0.0) == pytest.approx(MU_WATER_PER_MM)
    assert hu_to_mu(HU_AIR) == 0.0
    assert hu_to_mu(1000.0) == pytest.approx(2 * MU_WATER_PER_MM)
    assert hu_to_mu(-3024.0) == 0.0  # padding below air is clipped, not negative
    assert hu_to_mu(-3024.0, clip_air=False) < 0
    hu = np.array([-1000.0, -500.0, 0.0, 40.0, 1500.0])
    np.testing.assert_allclose(mu_to_hu(hu_to_mu(hu)), hu, atol=1e-9)
    t = torch.tensor([-2000.0, 0.0, 100.0])
    assert torch.equal(hu_to_mu(t) >= 0, torch.tensor([True, True, True]))
    assert mu_to_hu(hu_to_mu(t, mu_water=0.02), mu_water=0.02)[2] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        hu_to_mu(0.0, mu_water=0.0)


def _cylinder_volume(shape: tuple[int, int, int] = (31, 29, 3)) -> Volume:
    x = np.arange(shape[0]) - (shape[0] - 1) / 2
    y = np.arange(shape[1]) - (shape[1] - 1) / 2
    r = np.sqrt(x[:, None] ** 2 + y[None, :] ** 2)
    hu = np.where(r < 10, 0.0, -1000.0)[:, :, None].repeat(shape[2], axis=2)
    return Volume(hu, np.diag([1.0, 1.0, 2.0, 1.0]), modality="CT", units="HU")


def test_looks_like_hu_needs_air_and_bone() -> None:
    rng = np.random.default_rng(0)
    head = np.full((40, 40, 4), -1024.0)
    head[8:32, 8:32] = 40.0 + 10.0 * rng.standard_normal((24, 24, 4))
    head[8:32, 8:10] = 1400.0
    assert looks_like_hu(head)
    padded = head.copy()
    padded[:4] = -3024.0  # padding outside the scan circle
    assert looks_like_hu(padded)
    assert not looks_like_hu(np.minimum(head, 80.0))  # no bone
    assert looks_like_hu(np.minimum(head, 80.0), need_bone=False)  # air is enough for warnings
    t1 = np.abs(head)  # magnitude-like, a few ringing voxels below zero
    t1.ravel()[::997] = -700.0
    assert not looks_like_hu(t1) and not looks_like_hu(t1, need_bone=False)
    phase = rng.uniform(-4096, 4095, size=(40, 40, 4))  # Siemens phase: not HU
    assert not looks_like_hu(phase)
    assert not looks_like_hu(np.full((3, 3, 3), np.nan))


def test_simulate_noiseless_matches_projector() -> None:
    vol = _cylinder_volume()
    sino, gdict, noise = simulate_sinogram(vol, "fan", 12, None, None, 0.0, 0, "cpu")
    g = CTGeometry.from_dict(gdict)
    assert sino.shape == g.sinogram_shape == (12, 3, g.detector_cols)
    assert sino.dtype == np.float32
    assert noise["model"] == "none" and noise["seed"] == 0
    assert gdict["mu_water_per_mm"] == MU_WATER_PER_MM
    assert math.degrees(g.angles[-1]) == pytest.approx(330.0)  # fan default: 360 deg
    expected = make_projector(g, vol.shape, vol.spacing)(torch.from_numpy(hu_to_mu(vol.data)))
    np.testing.assert_allclose(sino, expected.numpy(), rtol=1e-5, atol=1e-6)
    # The central ray crosses the 19 water voxels x = -9..9 mm (r < 10): their linear
    # interpolant integrates to 19 mm of water.
    assert sino[0, 1].max() == pytest.approx(19 * MU_WATER_PER_MM, rel=0.005)


def test_poisson_noise_statistics_and_seed() -> None:
    p = torch.full((200, 50), 2.0, dtype=torch.float64)
    i0 = 1e4
    noisy, meta = add_ct_noise(p, i0, 0.0, torch.Generator().manual_seed(3))
    assert meta["model"] == "poisson" and meta["i0"] == i0
    assert meta["electronic_sigma_counts"] == 0.0
    # -log(N / I0) has mean ~p and variance ~ 1 / (I0 exp(-p)) (delta method).
    assert float(noisy.mean()) == pytest.approx(2.0, abs=0.005)
    assert float(noisy.var()) == pytest.approx(math.exp(2.0) / i0, rel=0.1)
    again, _ = add_ct_noise(p, i0, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(noisy, again)
    other, _ = add_ct_noise(p, i0, 0.0, torch.Generator().manual_seed(4))
    assert not torch.equal(noisy, other)
    # Electronic noise adds variance; photon starvation is clipped, never infinite.
    noisy_e, meta_e = add_ct_noise(p, i0, 30.0, torch.Generator().manual_seed(3))
    assert float(noisy_e.var()) > float(noisy.var())
    starved, meta_s = add_ct_noise(torch.full((100,), 20.0), 10.0, 1.0,
                                   torch.Generator().manual_seed(0))
    assert torch.isfinite(starved).all() and meta_s["clipped_counts"] > 0


def test_gaussian_line_integral_noise_and_errors() -> None:
    p = torch.zeros(100, 100)
    noisy, meta = add_ct_noise(p, None, 0.0, torch.Generator().manual_seed(0),
                               line_integral_sigma=0.05)
    assert meta == {"model": "gaussian", "sigma_line_integral": 0.05}
    assert float(noisy.std()) == pytest.approx(0.05, rel=0.05)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(InputError, match="needs a dose"):
        add_ct_noise(p, None, 5.0, gen)
    with pytest.raises(InputError):
        add_ct_noise(p, -1.0, 0.0, gen)
    with pytest.raises(InputError, match="not both"):
        add_ct_noise(p, 1e4, 0.0, gen, line_integral_sigma=0.1)


def test_simulate_dose_is_seeded_and_rejects_non_hu() -> None:
    vol = _cylinder_volume()
    a, _, na = simulate_sinogram(vol, "parallel", 8, 180.0, 1e4, 0.0, 7, "cpu")
    b, _, _ = simulate_sinogram(vol, "parallel", 8, 180.0, 1e4, 0.0, 7, "cpu")
    clean, _, _ = simulate_sinogram(vol, "parallel", 8, 180.0, None, 0.0, 7, "cpu")
    assert np.array_equal(a, b) and na["model"] == "poisson" and na["seed"] == 7
    assert 0 < np.abs(a - clean).mean() < 0.05
    mr = Volume(np.zeros((5, 5, 5)), np.eye(4), modality="MR", units="a.u.")
    with pytest.raises(InputError, match="HU"):
        simulate_sinogram(mr, "parallel", 4)
    bad = _cylinder_volume()
    bad.data[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        simulate_sinogram(bad, "parallel", 4)


def test_default_geometry_in_cone_simulation_covers_volume() -> None:
    vol = _cylinder_volume((21, 19, 9))
    sino, gdict, _ = simulate_sinogram(vol, "cone", 6, None, None, 0.0, 0, "cpu")
    g = CTGeometry.from_dict(gdict)
    assert g == default_geometry(vol.shape, vol.spacing, "cone", 6)
    assert sino[:, 0].max() == 0.0 and sino[:, -1].max() == 0.0  # rows beyond the volume
    assert sino.max() > 0.3
