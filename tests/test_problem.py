"""``medrecon.problem``: one Measurement -> Problem map for MR and CT (operator, data, weights,
noise, unit maps), without touching the measurement."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from medrecon.errors import InputError, MeasurementError
from medrecon.intensity import hu_to_mu
from medrecon.io import Volume
from medrecon.io.measurement import Measurement
from medrecon.priors.normalisation import Normalisation
from medrecon.problem import kspace_tensor, measurement_problem
from medrecon.simulate import CTSettings, MRISettings, SimulationConfig, simulate

CPU = torch.device("cpu")


def _ball(shape: tuple[int, int, int]) -> np.ndarray:
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(i**2 + j**2 + k**2)
    return ((r < 0.8) * (1.0 + 0.5 * (np.sqrt((i - 0.2) ** 2 + j**2 + k**2) < 0.3))).astype(
        np.float32)


@pytest.fixture(scope="module")
def mr() -> tuple[Measurement, Volume]:
    vol = Volume(_ball((14, 16, 12)) * 100.0, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR")
    cfg = SimulationConfig(modality="mri", seed=1, mri=MRISettings(
        coils=3, acceleration=2.0, calibration=8, snr=40.0, phase="none"))
    return simulate(vol, cfg), vol


@pytest.fixture(scope="module")
def ct() -> tuple[Measurement, Volume]:
    vol = Volume(_ball((12, 12, 3)) * 1000.0 - 1000.0, np.diag([2.0, 2.0, 2.0, 1.0]),
                 modality="CT", units="HU")
    cfg = SimulationConfig(modality="ct", seed=2, ct=CTSettings(views=16, dose_i0=None))
    return simulate(vol, cfg), vol


def test_mr_problem_from_the_file(mr: tuple[Measurement, Volume]) -> None:
    m, vol = mr
    p = measurement_problem(m, CPU)
    assert p.modality == "MR" and p.image_shape == vol.shape and p.op.oshape == m.data.shape
    assert torch.equal(p.y, kspace_tensor(m, CPU))
    # per real part: the simulator's RMS complex sigma / sqrt 2
    assert p.noise_std == pytest.approx(m.noise["sigma"] / np.sqrt(2.0))
    assert p.info["coil_maps"] == "file"
    assert "noise_estimated" not in p.info and p.spacing_mm == (2.0, 2.0, 2.0)
    # No model: model space is the image itself; the reference is its magnitude.
    assert (p.units.scale, p.units.offset) == (1.0, 0.0)
    x = torch.from_numpy(vol.data).to(torch.complex64)
    assert p.residual(x) < 0.1 < p.residual(torch.zeros_like(x)) == pytest.approx(1.0)
    torch.testing.assert_close(p.units.to_reference(-x), torch.from_numpy(vol.data))


@pytest.mark.filterwarnings("ignore:ESPIRiT maps cover")  # a tiny grid: the lowres fallback
def test_mr_without_maps_estimates_them_and_leaves_the_measurement_alone(
        mr: tuple[Measurement, Volume]) -> None:
    m, vol = mr
    bare = copy.deepcopy(m)
    bare.coil_maps = None
    bare.noise = {}
    before = copy.deepcopy(bare)
    p = measurement_problem(bare, CPU)
    assert p.info["coil_maps"].startswith("estimated (espirit, threshold ") and p.info["noise_estimated"] is True
    assert bare.coil_maps is None and bare.acquisition == before.acquisition
    assert bare.noise == {} and np.array_equal(bare.data, before.data)
    # The estimated maps explain the data about as well as the true ones.
    assert 0.0 < p.noise_std < 10 * m.noise["sigma"]
    lowres = measurement_problem(bare, CPU, maps_method="lowres", noise_std=0.5)
    assert lowres.info["coil_maps"] == "estimated (lowres)" and lowres.noise_std == 0.5
    assert "noise_estimated" not in lowres.info


def test_map_sets_in_the_file_are_used_up_to_map_sets(mr: tuple[Measurement, Volume]) -> None:
    """File maps with sets (M, C, I, J, K): up to ``map_sets`` of them, as when estimated;
    one set (the default, and the diffusion path's) is the first set's plain maps."""
    m, _ = mr
    sets = np.stack([m.coil_maps, 0.5 * m.coil_maps, 0.25 * m.coil_maps])
    soft = copy.deepcopy(m)
    soft.coil_maps = sets
    one = measurement_problem(soft, CPU)
    assert one.op.sets is None and one.info["coil_maps"] == "file (first map set)"
    assert torch.equal(one.op.maps, torch.from_numpy(m.coil_maps))
    two = measurement_problem(soft, CPU, map_sets=2)
    assert two.op.sets == 2 and two.info["coil_maps"] == "file (2 map sets)"
    assert two.op.ishape == (2, *m.image_shape)
    torch.testing.assert_close(two.op.maps, torch.from_numpy(sets[:2]))


def test_single_coil_without_maps(mr: tuple[Measurement, Volume]) -> None:
    m, _ = mr
    one = Measurement("MR", m.data[:1], m.mask, m.reference, noise=m.noise,
                      operator=m.operator)
    p = measurement_problem(one, CPU)
    assert p.info["coil_maps"] == "none (single coil)" and p.op.oshape == one.data.shape


def test_mr_coil_compression_option(mr: tuple[Measurement, Volume]) -> None:
    m, vol = mr
    full = measurement_problem(m, CPU, model=Normalisation())
    assert "virtual_coils" not in full.info
    for energy in (None, 1.0):  # all coils, unchanged
        same = measurement_problem(m, CPU, model=Normalisation(), coil_energy=energy)
        assert "virtual_coils" not in same.info and torch.equal(same.y, full.y)
    small = measurement_problem(m, CPU, model=Normalisation(), coil_energy=0.5)
    v = small.info["virtual_coils"]
    assert v == 1 < m.data.shape[0] and small.op.oshape == (v, *vol.shape)
    assert small.y.shape == (v, *vol.shape) and 0.5 <= small.info["coil_energy_kept"] < 1
    # Scale, noise and support stay those of all coils; the true image still fits the data.
    assert (small.units.scale, small.noise_std) == (full.units.scale, full.noise_std)
    x = torch.from_numpy(vol.data).to(torch.complex64)
    assert small.residual(x) < 0.1
    high = measurement_problem(m, CPU, coil_energy=0.999999)
    assert high.info["virtual_coils"] == m.data.shape[0]


def test_mr_model_scale(mr: tuple[Measurement, Volume]) -> None:
    m, vol = mr
    norm = Normalisation()
    p = measurement_problem(m, CPU, model=norm)
    assert p.units.scale == pytest.approx(norm.mr_scale(vol.data), rel=0.3)
    z = torch.rand(2, *vol.shape)
    x = p.units.to_physical(z)
    torch.testing.assert_close(p.units.model_to_reference(z), x.abs())


def test_ct_problem_units_reproduce_the_sinogram(ct: tuple[Measurement, Volume]) -> None:
    m, vol = ct
    norm = Normalisation()
    p = measurement_problem(m, CPU, model=norm, empty_space=True)
    assert p.modality == "CT" and p.weights is None and p.geometry is not None
    # empty_fraction: the air that rays without attenuation carve out (empty_space, asked for
    # by the sampler; not computed for the classical methods)
    assert measurement_problem(m, CPU, model=norm).empty is None
    assert p.info == {"mu_water_per_mm": p.units.mu_water, "geometry": "parallel", "views": 16,
                      "empty_fraction": pytest.approx(float(p.empty.float().mean()), abs=1e-4)}
    assert not bool(p.empty[torch.from_numpy(np.asarray(vol.data) > -900.0)].any())
    assert p.noise_std == 0.0  # noiseless simulation
    z = torch.as_tensor(norm.to_model(vol.data, "CT"))
    mu = p.units.to_physical(z)
    torch.testing.assert_close(mu, torch.as_tensor(hu_to_mu(vol.data, p.units.mu_water)),
                               rtol=1e-5, atol=1e-7)
    assert p.residual(mu) < 1e-4
    torch.testing.assert_close(p.units.model_to_reference(z), torch.as_tensor(vol.data),
                               rtol=1e-5, atol=1e-3)
    # Without a model the unknown is attenuation in units of water.
    plain = measurement_problem(m, CPU)
    assert (plain.units.scale, plain.units.offset) == (plain.units.mu_water, 0.0)
    torch.testing.assert_close(plain.units.to_reference(mu), torch.as_tensor(vol.data),
                               rtol=1e-5, atol=1e-2)


def test_ct_view_mask_and_pixel_weights(ct: tuple[Measurement, Volume]) -> None:
    m, _ = ct
    mask = np.ones(16, np.float32)
    mask[::4] = 0
    views = measurement_problem(Measurement("CT", m.data, mask, m.reference, noise=m.noise,
                                            operator=m.operator), CPU)
    assert views.op.oshape[0] == 12 and views.info["views"] == 12 and views.weights is None
    assert torch.equal(views.y, torch.as_tensor(m.data[mask > 0]))
    w = np.random.default_rng(0).uniform(0.5, 1.0, m.data.shape).astype(np.float32)
    weighted = measurement_problem(Measurement("CT", m.data, w, m.reference, noise=m.noise,
                                               operator=m.operator), CPU)
    plain = measurement_problem(m, CPU)
    wt = torch.as_tensor(w)
    assert torch.equal(weighted.weights, wt) and torch.equal(weighted.y, wt * plain.y)
    x = torch.rand(weighted.image_shape)
    r = torch.randn(weighted.op.oshape)
    torch.testing.assert_close(weighted.op(x), wt * plain.op(x))
    torch.testing.assert_close(weighted.op.adjoint(r), plain.op.adjoint(wt * r))


def test_ct_noise_models(ct: tuple[Measurement, Volume]) -> None:
    m, _ = ct
    gauss = Measurement("CT", m.data, None, m.reference, operator=m.operator,
                        noise={"model": "gaussian", "sigma_line_integral": 0.02})
    assert measurement_problem(gauss, CPU).noise_std == 0.02
    poisson = Measurement("CT", m.data, None, m.reference, operator=m.operator,
                          noise={"model": "poisson", "i0": 1e4})
    expected = float(np.sqrt(np.mean(np.exp(m.data.astype(np.float64)) / 1e4)))
    assert measurement_problem(poisson, CPU).noise_std == pytest.approx(expected, rel=1e-6)


def test_problem_errors(ct: tuple[Measurement, Volume]) -> None:
    m, _ = ct
    bad = Measurement("CT", m.data[:, :, :-1], None, m.reference, operator=m.operator)
    with pytest.raises(MeasurementError, match="does not match its geometry"):
        measurement_problem(bad)
    with pytest.raises(MeasurementError, match="selects no views"):
        measurement_problem(Measurement("CT", m.data, np.zeros(16), m.reference,
                                        operator=m.operator))
    odd = copy.copy(m)
    object.__setattr__(odd, "modality", "PET")
    with pytest.raises(InputError, match="MR and CT"):
        measurement_problem(odd)


def test_problem_is_frozen(ct: tuple[Measurement, Volume]) -> None:
    p = measurement_problem(ct[0], CPU)
    with pytest.raises(AttributeError):
        p.noise_std = 1.0  # type: ignore[misc]
