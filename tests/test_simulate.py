"""``medrecon.simulate``: the MRI acquisition model, reproducibility, settings and CT delegation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.config import ConfigError, from_dict
from medrecon.errors import InputError
from medrecon.io import Volume
from medrecon.operators.functional.fft import ifftc
from medrecon.phantoms import shepp_logan_3d
from medrecon.simulate import (
    CTSettings,
    MRISettings,
    SimulationConfig,
    simulate,
    smooth_phase,
)

SHAPE = (20, 18, 16)


@pytest.fixture(scope="module")
def volume() -> Volume:
    affine = np.diag([1.5, 1.2, 2.0, 1.0])
    return Volume(100.0 * shepp_logan_3d(SHAPE), affine, modality="MR",
                  series_description="phantom", meta={"source": "ph.nii.gz"})


def _cfg(**mri: object) -> SimulationConfig:
    base: dict[str, object] = {"coils": 4, "acceleration": 3.0, "calibration": 6}
    base.update(mri)
    return SimulationConfig(mri=MRISettings(**base))  # type: ignore[arg-type]


def test_measurement_contents(volume: Volume) -> None:
    m = simulate(volume, _cfg())
    assert m.modality == "MR" and m.data.shape == (4, *SHAPE) and m.data.dtype == np.complex64
    assert m.mask.shape == (1, 18, 16) and m.mask.dtype == np.uint8
    assert m.coil_maps.shape == (4, *SHAPE)
    assert np.allclose((np.abs(m.coil_maps) ** 2).sum(0), 1.0, atol=1e-4)
    # Nothing is stored where nothing was acquired.
    assert np.all(m.data[:, :, m.mask[0] == 0] == 0)
    assert m.acquisition["acceleration"] == pytest.approx(3.0, rel=0.05)
    assert m.acquisition["seed"] == 0 and m.acquisition["mask"] == "poisson"
    assert m.acquisition["reference_source"] == "ph.nii.gz"
    assert m.operator["fft_dims"] == [0, 1, 2] and m.operator["kind"] == "sense"
    assert m.reference.shape == SHAPE and np.array_equal(m.reference.affine, volume.affine)
    assert m.reference.series_description == "phantom"


def test_noiseless_fully_sampled_inverts_to_reference_times_phase(volume: Volume) -> None:
    m = simulate(volume, _cfg(acceleration=1.0, snr=None, noise_sigma=0.0, calibration=0))
    coil_images = ifftc(torch.from_numpy(m.data), (-3, -2, -1)).numpy()
    x = np.sum(np.conj(m.coil_maps) * coil_images, axis=0)  # SENSE combination
    assert np.allclose(np.abs(x), volume.data, atol=1e-3)
    inside = volume.data > 10
    phase = np.angle(x[inside])
    expected = smooth_phase(SHAPE, np.pi, 0)[inside]
    assert np.allclose(np.angle(np.exp(1j * (phase - expected))), 0.0, atol=1e-3)


def test_phase_model(volume: Volume) -> None:
    phi = smooth_phase(SHAPE, 2.0, seed=5)
    assert phi.max() - phi.min() == pytest.approx(2.0)
    assert not np.allclose(phi, smooth_phase(SHAPE, 2.0, seed=6))
    # Smooth: neighbouring voxels differ by a small fraction of the range.
    assert np.abs(np.diff(phi, axis=0)).max() < 0.5
    m = simulate(volume, _cfg(acceleration=1.0, snr=None, noise_sigma=0.0, phase="none",
                              calibration=0))
    x = np.sum(np.conj(m.coil_maps) * ifftc(torch.from_numpy(m.data), (-3, -2, -1)).numpy(), 0)
    assert np.abs(x.imag).max() < 1e-3 * np.abs(x).max()


def test_noise_level_from_snr_and_sigma(volume: Volume) -> None:
    clean = simulate(volume, _cfg(acceleration=1.0, snr=None, noise_sigma=0.0, calibration=0))
    noisy = simulate(volume, _cfg(acceleration=1.0, snr=20.0, calibration=0))
    sigma = noisy.noise["sigma"]
    rms = np.sqrt(np.mean(np.abs(clean.data) ** 2))
    assert sigma == pytest.approx(rms / 20.0, rel=1e-4)
    measured = np.std(noisy.data - clean.data) * np.sqrt(1.0)  # complex std: E|n|^2 = sigma^2
    assert measured == pytest.approx(sigma, rel=0.05)
    fixed = simulate(volume, _cfg(snr=None, noise_sigma=0.5))
    assert fixed.noise["sigma"] == 0.5 and "snr" not in fixed.noise


def test_reproducible_and_seeded(volume: Volume) -> None:
    a = simulate(volume, _cfg())
    b = simulate(volume, _cfg())
    c = simulate(volume, SimulationConfig(seed=1, mri=MRISettings(coils=4, acceleration=3.0,
                                                                  calibration=6)))
    assert np.array_equal(a.data, b.data) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask)


def test_two_d_multislice(volume: Volume) -> None:
    m = simulate(volume, _cfg(dims="2d", mask="equispaced", acceleration=3.0, calibration=4))
    assert m.operator["fft_dims"] == [0, 1] and m.mask.shape == (1, 18, 1)
    assert m.acquisition["dims"] == "2d"
    # Coil sensitivities vary in-plane (I, J) for multi-slice.
    s = np.abs(m.coil_maps[0, :, :, 8])
    assert s.std() > 0.05


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="either snr or noise_sigma"):
        MRISettings(snr=10.0, noise_sigma=0.1)
    with pytest.raises(ValueError, match="use --dims 2d, or --mask poisson"):
        MRISettings(mask="random")
    with pytest.raises(ValueError, match="use --dims 3d, or --mask random"):
        MRISettings(dims="2d", mask="poisson")
    with pytest.raises(ValueError, match="mask must be one of"):
        MRISettings(mask="spiral")
    with pytest.raises(ConfigError, match="coils"):
        from_dict(SimulationConfig, {"mri": {"coils": 0}})
    cfg = from_dict(SimulationConfig, {"modality": "ct", "ct": {"geometry": "fan", "views": 30}})
    assert cfg.ct.geometry == "fan" and cfg.ct.views == 30 and cfg.mri == MRISettings()


def test_nan_reference_is_refused(volume: Volume) -> None:
    bad = volume.with_data(np.where(volume.data > 50, np.nan, volume.data))
    with pytest.raises(InputError, match="NaN"):
        simulate(bad, _cfg())


def test_ct_branch_delegates_to_the_projector() -> None:
    hu = np.full((16, 16, 2), -1000.0, np.float32)
    hu[4:12, 4:12] = 0.0  # water block in air
    vol = Volume(hu, np.diag([1.0, 1.0, 2.0, 1.0]), modality="CT", units="HU")
    cfg = SimulationConfig(modality="ct", ct=CTSettings(geometry="parallel", views=12,
                                                            dose_i0=None))
    m = simulate(vol, cfg)
    assert m.modality == "CT" and m.data.dtype == np.float32 and m.data.shape[0] == 12
    assert m.operator["kind"] == "ct" and m.acquisition["views"] == 12
    # Line integrals through 8 mm of water (mu = 0.0193 / mm) reach about 0.15.
    assert 0.1 < float(m.data.max()) < 0.25
    assert float(m.data.min()) >= -1e-6


def test_calibration_larger_than_the_plane_names_the_fix() -> None:
    vol = Volume(np.ones((8, 16, 12), dtype=np.float32), np.eye(4))
    with pytest.raises(InputError, match=r"phase-encode plane \(16, 12\); use --calibration 12 "
                                         r"or less\.$"):
        simulate(vol, _cfg(calibration=24))
    with pytest.raises(InputError, match=r"than the 16 phase-encode lines; use --calibration 16"):
        simulate(vol, _cfg(calibration=20, dims="2d", mask="random"))


def test_mri_simulation_of_a_ct_volume_warns(volume: Volume) -> None:
    ct = Volume(1000.0 * volume.data - 1000.0, volume.affine, modality="CT", units="HU")
    with pytest.warns(UserWarning, match=r"^The reference is a CT volume \(HU\), but MRI "
                                         r"simulation uses the magnitude"):
        simulate(ct, _cfg(calibration=4, acceleration=2))
    unlabelled = Volume(ct.data, ct.affine)  # a NIfTI from elsewhere: modality unknown
    with pytest.warns(UserWarning, match=r"likely CT in HU \(values down to -1000\)"):
        simulate(unlabelled, _cfg(calibration=4, acceleration=2))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an MR volume, or CT simulated as CT: no warning
        simulate(volume, _cfg(calibration=4, acceleration=2))
