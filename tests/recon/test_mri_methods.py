"""Classical MRI reconstructions on small simulated acquisitions, and the method registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.errors import ConfigError, InputError, MeasurementError
from medrecon.io import Volume
from medrecon.io.measurement import Measurement, ReferenceGeometry
from medrecon.io.operator_schema import mri_operator_description
from medrecon.methods import available_methods, get_method
from medrecon.phantoms import shepp_logan_3d
from medrecon.problem import measurement_problem
from medrecon.recon.base import ReconOptions
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


def test_method_options_are_typed_and_checked_before_any_work(meas3d: Measurement) -> None:
    cases = [
        ("l1-wavelet", {"wavelet": "xyz"}, "l1-wavelet options: unknown wavelet 'xyz'"),
        ("l1-wavelet", {"levels": 0}, "key 'levels' must be >= 1"),
        ("tv", {"tv_axes": [7]}, "tv_axes must list distinct image axes"),
        ("tv", {"wavelt": "db4"}, "unknown key 'wavelt'"),
        ("zero-filled", {"combine": "max"}, "key 'combine' must be one of 'rss', 'sense'"),
        ("cg-sense", {"maps_method": "magic"}, "key 'maps_method' must be one of"),
    ]
    for method, extra, fragment in cases:
        with pytest.raises(ConfigError) as exc:
            get_method("MR", method)(meas3d, ReconOptions(extra=extra), CPU)
        assert fragment in str(exc.value), (method, str(exc.value))
    out = get_method("MR", "l1-wavelet")(
        meas3d, ReconOptions(iterations=2, extra={"wavelet": "haar", "levels": 1}), CPU)
    assert (out.info["wavelet"], out.info["levels"]) == ("haar", 1)


def test_recon_options_validation() -> None:
    with pytest.raises(InputError, match="iterations"):
        ReconOptions(iterations=0)
    with pytest.raises(InputError, match="regularisation"):
        ReconOptions(lam=-1.0)
    with pytest.raises(InputError, match="tolerance"):
        ReconOptions(tol=float("nan"))


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
    problem = measurement_problem(meas3d, CPU)
    out = get_method("MR", "cg-sense")(meas3d, ReconOptions(iterations=5), CPU)
    assert out.iterations == 5
    assert 0.0 < out.residual < 1.0
    assert problem.residual(torch.zeros(SHAPE, dtype=torch.complex64)) == pytest.approx(1.0)


def test_lam_trades_data_fit_for_regularity(meas3d: Measurement) -> None:
    weak = get_method("MR", "l1-wavelet")(meas3d, ReconOptions(lam=1e-5, iterations=40), CPU)
    strong = get_method("MR", "l1-wavelet")(meas3d, ReconOptions(lam=0.05, iterations=40), CPU)
    assert strong.residual > 2 * weak.residual
    assert weak.info["lam"] == 1e-5 and not weak.info["lam_default"]
    tv_weak = get_method("MR", "tv")(meas3d, ReconOptions(lam=1e-5, iterations=40), CPU)
    tv_strong = get_method("MR", "tv")(meas3d, ReconOptions(lam=0.05, iterations=40), CPU)
    assert tv_strong.residual > 2 * tv_weak.residual
    # voxels of 1.5 x 1.2 x 2 mm: TV's differences in physical units (h_min / h per axis)
    assert tv_weak.info["tv_axis_weights"] == pytest.approx([0.8, 1.0, 0.6])


def test_two_d_multislice(reference: Volume) -> None:
    m = _simulate(reference, dims="2d", mask="random", acceleration=2.5, calibration=4)
    assert m.fft_dims == (0, 1) and m.mask.shape == (1, SHAPE[1], 1)
    zf = get_method("MR", "zero-filled")(m, ReconOptions(), CPU)
    cg = get_method("MR", "cg-sense")(m, ReconOptions(), CPU)
    tv = get_method("MR", "tv")(m, ReconOptions(), CPU)
    assert tv.info["tv_axes"] == [0, 1]
    assert tv.info["tv_axis_weights"] == pytest.approx([0.8, 1.0])  # in-plane only
    assert psnr(cg.image, reference.data) > psnr(zf.image, reference.data) + 1.0
    assert psnr(tv.image, reference.data) > psnr(zf.image, reference.data) + 1.0


def test_missing_maps_are_estimated(reference: Volume) -> None:
    full = _simulate(reference, calibration=12, acceleration=2.0)
    m = Measurement("MR", full.data, full.mask, full.reference, coil_maps=None,
                    operator=full.operator, acquisition=dict(full.acquisition))
    out = get_method("MR", "cg-sense")(m, ReconOptions(), CPU)
    assert out.info["coil_maps"].startswith("estimated")
    assert m.coil_maps is None  # estimated for the problem, not written into the measurement
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


def test_combine_sets_is_rss_with_the_first_sets_phase() -> None:
    from medrecon.recon.mri import combine_sets

    x = torch.tensor([[3j, 0.0, -2.0], [4.0, 2j, 0.0]], dtype=torch.complex64).reshape(2, 3, 1, 1)
    out = combine_sets(x)
    assert out.shape == (3, 1, 1)
    torch.testing.assert_close(out.abs().flatten(), torch.tensor([5.0, 2.0, 2.0]))
    # the phase of set 1 (i, and -1), or of set 2 where set 1 is zero (i)
    torch.testing.assert_close(out.flatten(), torch.tensor([5j, 2j, -2.0], dtype=torch.complex64))
    plain = torch.ones((3, 1, 1), dtype=torch.complex64)
    assert combine_sets(plain) is plain


def test_two_map_sets_reconstruct_a_folded_object() -> None:
    """An object wider than the field of view: with one ESPIRiT map set the overlap cannot be
    fitted; two sets (soft SENSE, the default for estimated maps) fit the data and the RSS over
    the sets gives the overlapping parts' combined magnitude. The diffusion path's problem keeps
    one set."""
    from medrecon.recon.mri import combine_sets
    from tests.operators.test_coils import _folded_scene

    scene = _folded_scene()
    big, n = (32, 40, 2), 24
    x = shepp_logan_3d(big)
    truth = np.sqrt(x[:, :n] ** 2 + np.pad(x[:, n:], ((0, 0), (0, 2 * n - big[1]), (0, 0))) ** 2)
    ref = Volume(truth.astype(np.float32), np.eye(4), modality="MR")
    sim = _simulate(ref, coils=6, acceleration=2.0, calibration=12, snr=1000.0, dims="2d",
                    mask="equispaced")
    data = (scene["kspace"].numpy() * np.asarray(sim.mask)).astype(np.complex64)
    m = Measurement("MR", data, sim.mask, sim.reference, coil_maps=None, operator=sim.operator,
                    acquisition=dict(sim.acquisition))
    l1 = get_method("MR", "l1-wavelet")
    one = l1(m, ReconOptions(lam=1e-4, extra={"map_sets": 1}), CPU)
    two = l1(m, ReconOptions(lam=1e-4), CPU)
    assert "map_sets" not in one.info and two.info["map_sets"] == 2
    assert two.info["coil_maps"].startswith("estimated (espirit, 2 map sets, threshold ")
    # the solution is what the operator acts on, the sets; the image their combination
    assert two.solution is not None and two.solution.shape == (2, *truth.shape)
    np.testing.assert_allclose(two.image, combine_sets(two.solution).abs().numpy(), rtol=1e-6)
    assert two.residual < 0.5 * one.residual
    assert psnr(two.image, truth) > psnr(one.image, truth) + 1.0
    tv = get_method("MR", "tv")
    tv1 = tv(m, ReconOptions(lam=1e-4, iterations=50, extra={"map_sets": 1}), CPU)
    tv2 = tv(m, ReconOptions(lam=1e-4, iterations=50), CPU)
    assert tv2.info["map_sets"] == 2 and tv2.residual < 0.8 * tv1.residual
    assert measurement_problem(m, "cpu").op.sets is None  # type: ignore[attr-defined]
    assert measurement_problem(m, "cpu", map_sets=2).op.ishape == (2, *truth.shape)
