"""Classical MRI reconstructions on small simulated acquisitions, and the method registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.errors import InputError, MeasurementError
from medrecon.io import Volume
from medrecon.io.measurement import Measurement, ReferenceGeometry
from medrecon.io.operator_schema import mri_operator_description
from medrecon.phantoms import shepp_logan_3d
from medrecon.recon.classical import (
    ReconOptions,
    ReconOutput,
    available_methods,
    get_method,
    register_method,
    resolve_device,
)
from medrecon.recon.mri import data_residual, kspace_tensor, measurement_operator
from medrecon.simulate import MRISettings, SimulationConfig, simulate

SHAPE = (20, 18, 16)  # odd, non-cubic: exposes axis and fftshift mistakes
CPU = torch.device("cpu")


def psnr(img: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(ref.max() ** 2 / np.mean((img - ref) ** 2)))


@pytest.fixture(scope="module")
def reference() -> Volume:
    return Volume(shepp_logan_3d(SHAPE), np.diag([1.5, 1.2, 2.0, 1.0]), modality="MR")


def _simulate(ref: Volume, **kw: object) -> Measurement:
    settings = {"coils": 4, "acceleration": 3.0, "calibration": 6, "snr": 40.0, **kw}
    return simulate(ref, SimulationConfig(mri=MRISettings(**settings)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def meas3d(reference: Volume) -> Measurement:
    return _simulate(reference)


def test_registry_lists_mri_methods_and_rejects_unknown() -> None:
    assert {"zero-filled", "cg-sense", "l1-wavelet", "tv"} <= set(available_methods("MR"))
    assert get_method("mri", "CG-SENSE") is get_method("MR", "cg-sense")
    with pytest.raises(InputError, match="Unknown reconstruction method 'fbp' for MR"):
        get_method("MR", "fbp")
    with pytest.raises(InputError, match="Unknown modality"):
        get_method("PET", "tv")


def test_register_method_refuses_a_second_function_under_a_taken_name() -> None:
    def other(m: Measurement, o: ReconOptions, d: torch.device) -> ReconOutput:
        raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        register_method("MR", "tv")(other)


def test_recon_options_validation_and_devices() -> None:
    with pytest.raises(InputError, match="iterations"):
        ReconOptions(iterations=0)
    with pytest.raises(InputError, match="regularisation"):
        ReconOptions(lam=-1.0)
    with pytest.raises(InputError, match="tolerance"):
        ReconOptions(tol=float("nan"))
    assert resolve_device("cpu") == CPU
    with pytest.raises(InputError, match="Unknown device"):
        resolve_device("tpu:what")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device("auto") == CPU


def test_fully_sampled_noiseless_recovers_complex_image(reference: Volume) -> None:
    # R = 1, no noise: zero-filled SENSE (A^H y) and CG-SENSE reproduce |x| and the data.
    m = _simulate(reference, acceleration=1.0, snr=None, noise_sigma=0.0, calibration=0)
    assert m.acquisition["acceleration"] == pytest.approx(1.0)
    zf = get_method("MR", "zero-filled")(m, ReconOptions(), CPU)
    assert np.allclose(zf.image, reference.data, atol=1e-4)
    assert zf.residual < 1e-5
    cg = get_method("MR", "cg-sense")(m, ReconOptions(lam=0.0, tol=1e-8), CPU)
    assert np.allclose(cg.image, reference.data, atol=1e-4)
    assert cg.residual < 1e-4 and cg.iterations <= 3


def test_rss_without_maps_matches_magnitude(reference: Volume) -> None:
    m = _simulate(reference, acceleration=1.0, snr=None, noise_sigma=0.0, calibration=0)
    m.coil_maps = None
    out = get_method("MR", "zero-filled")(m, ReconOptions(), CPU)
    assert out.info["combine"] == "rss"
    assert np.allclose(out.image, reference.data, atol=1e-4)  # sum |S|^2 = 1 makes RSS = |x|
    assert out.residual < 1e-5


@pytest.mark.parametrize("method", ["cg-sense", "l1-wavelet", "tv"])
def test_classical_methods_beat_zero_filled(meas3d: Measurement, reference: Volume,
                                            method: str) -> None:
    zf = get_method("MR", "zero-filled")(meas3d, ReconOptions(), CPU)
    out = get_method("MR", method)(meas3d, ReconOptions(), CPU)
    assert out.image.shape == SHAPE and out.image.dtype == np.float32
    gain = psnr(out.image, reference.data) - psnr(zf.image, reference.data)
    assert gain > 2.0, (method, gain)
    # Iterative methods fit the data far better than the zero-filled image does.
    assert out.residual < 0.5 * zf.residual
    assert out.iterations >= 1 and "lam" in out.info


def test_residual_definition(meas3d: Measurement) -> None:
    op = measurement_operator(meas3d, CPU)
    y = kspace_tensor(meas3d, CPU)
    out = get_method("MR", "cg-sense")(meas3d, ReconOptions(iterations=5), CPU)
    assert out.iterations == 5
    assert 0.0 < out.residual < 1.0
    assert data_residual(op, torch.zeros(SHAPE, dtype=torch.complex64), y) == pytest.approx(1.0)


def test_lam_trades_data_fit_for_regularity(meas3d: Measurement) -> None:
    weak = get_method("MR", "l1-wavelet")(meas3d, ReconOptions(lam=1e-5, iterations=40), CPU)
    strong = get_method("MR", "l1-wavelet")(meas3d, ReconOptions(lam=0.05, iterations=40), CPU)
    assert strong.residual > 2 * weak.residual
    assert weak.info["lam"] == 1e-5 and not weak.info["lam_default"]
    tv_weak = get_method("MR", "tv")(meas3d, ReconOptions(lam=1e-5, iterations=40), CPU)
    tv_strong = get_method("MR", "tv")(meas3d, ReconOptions(lam=0.05, iterations=40), CPU)
    assert tv_strong.residual > 2 * tv_weak.residual


def test_two_d_multislice(reference: Volume) -> None:
    m = _simulate(reference, dims="2d", mask="random", acceleration=2.5, calibration=4)
    assert m.fft_dims == (0, 1) and m.mask.shape == (1, SHAPE[1], 1)
    zf = get_method("MR", "zero-filled")(m, ReconOptions(), CPU)
    cg = get_method("MR", "cg-sense")(m, ReconOptions(), CPU)
    tv = get_method("MR", "tv")(m, ReconOptions(), CPU)
    assert tv.info["tv_axes"] == [0, 1]
    assert psnr(cg.image, reference.data) > psnr(zf.image, reference.data) + 1.0
    assert psnr(tv.image, reference.data) > psnr(zf.image, reference.data) + 1.0


def test_missing_maps_are_estimated(reference: Volume) -> None:
    full = _simulate(reference, calibration=12, acceleration=2.0)
    m = Measurement("MR", full.data, full.mask, full.reference, coil_maps=None,
                    operator=full.operator, acquisition=dict(full.acquisition))
    out = get_method("MR", "cg-sense")(m, ReconOptions(), CPU)
    assert out.info["coil_maps"].startswith("estimated")
    assert m.coil_maps is not None and m.coil_maps.shape == full.data.shape
    zf = get_method("MR", "zero-filled")(full, ReconOptions(), CPU)
    assert psnr(out.image, reference.data) > psnr(zf.image, reference.data) + 2.0


def test_mri_method_refuses_ct_measurement() -> None:
    ref = ReferenceGeometry(np.eye(4), (4, 4, 2), "CT", "HU")
    ct = Measurement("CT", np.zeros((3, 2, 4), np.float32), None, ref,
                     operator={"kind": "ct"})
    with pytest.raises(MeasurementError, match="need MR k-space"):
        get_method("MR", "cg-sense")(ct, ReconOptions(), CPU)


def test_single_coil_without_maps() -> None:
    ref = shepp_logan_3d((12, 10, 8))
    mask = np.ones((1, 10, 8), np.uint8)
    mask[:, ::2, 1::2] = 0
    k = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(ref), norm="ortho"))[None] * mask
    m = Measurement("MR", k.astype(np.complex64), mask,
                    ReferenceGeometry(np.eye(4), ref.shape, "MR"),
                    operator=mri_operator_description(ref.shape, 1, "3d"))
    zf = get_method("MR", "zero-filled")(m, ReconOptions(), CPU)
    ifft = np.abs(np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(k[0]), norm="ortho")))
    assert np.allclose(zf.image, ifft, atol=1e-5)
    cg = get_method("MR", "cg-sense")(m, ReconOptions(lam=0.0), CPU)
    assert cg.residual < 1e-3


@pytest.mark.gpu
def test_cuda_matches_cpu(meas3d: Measurement) -> None:
    cpu = get_method("MR", "cg-sense")(meas3d, ReconOptions(iterations=10), CPU)
    gpu = get_method("MR", "cg-sense")(meas3d, ReconOptions(iterations=10), torch.device("cuda"))
    assert np.allclose(cpu.image, gpu.image, atol=1e-4 * float(cpu.image.max()))
