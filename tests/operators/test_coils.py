"""Coil maps: simulated sensitivities, ESPIRiT (vs truth and vs BART ecalib), low-res estimate."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from medrecon.errors import GeometryError, InputError
from medrecon.io.cfl import read_cfl, write_cfl
from medrecon.operators import coils
from medrecon.operators.coil_simulation import simulate_coil_maps
from medrecon.operators.coils import (
    detect_calibration,
    espirit,
    espirit_maps,
    estimate_coil_maps,
    lowres_maps,
    rss,
)
from medrecon.operators.functional.fft import fftc, ifftc
from medrecon.operators.masks import make_mask
from medrecon.operators.noise import add_noise
from medrecon.phantoms import ellipsoid_phantom

SHAPE = (14, 26, 22)
N_COILS = 6


def _per_coil_correlation(est: torch.Tensor, true: torch.Tensor, region: torch.Tensor) -> float:
    """Smallest per-coil |normalised correlation| inside ``region`` after removing the common
    voxel-wise phase (the ESPIRiT ambiguity S -> S e^{i phi(r)})."""
    est = est.to(torch.complex128)
    true = true.to(torch.complex128)
    est = est * torch.exp(1j * torch.angle((est.conj() * true).sum(0)))
    out = []
    for c in range(true.shape[0]):
        a, b = est[c][region], true[c][region]
        out.append(float(torch.abs((a.conj() * b).sum()) / (a.norm() * b.norm())))
    return min(out)


@pytest.fixture(scope="module")
def scene() -> dict[str, torch.Tensor]:
    """Phantom with a smooth phase, true maps and fully sampled 3D multi-coil k-space."""
    maps = simulate_coil_maps(SHAPE, N_COILS, dtype=torch.complex128)
    ph = ellipsoid_phantom(SHAPE)
    i = torch.linspace(-1, 1, SHAPE[0], dtype=torch.float64)[:, None, None]
    x = torch.from_numpy(ph) * torch.exp(1j * 0.8 * i)
    kspace = fftc(maps * x, (1, 2, 3))
    return {"maps": maps, "x": x, "kspace": kspace, "object": torch.from_numpy(ph > 0.05)}


# -- simulation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["biot-savart", "birdcage"])
def test_simulated_maps_are_normalised_and_distinct(model: str) -> None:
    maps = simulate_coil_maps((9, 10, 7), 4, model=model, dtype=torch.complex128)
    assert maps.shape == (4, 9, 10, 7) and maps.dtype == torch.complex128
    assert torch.allclose(rss(maps), torch.ones(9, 10, 7, dtype=torch.float64), atol=1e-12)
    flat = maps.reshape(4, -1)
    corr = torch.abs(flat.conj() @ flat.T) / (flat.norm(dim=1)[:, None] * flat.norm(dim=1))
    assert float((corr - torch.eye(4)).abs().max()) < 0.9  # coils see different things
    assert float(torch.angle(maps[0]).std()) > 0.05  # maps carry phase


def test_coils_are_most_sensitive_near_themselves() -> None:
    maps = simulate_coil_maps((32, 32, 8), 8, spacing=(1.0, 1.0, 3.0))
    ii, jj = np.meshgrid(np.arange(32) - 16, np.arange(32) - 16, indexing="ij")
    for c in range(8):
        mag = maps[c, :, :, 4].abs().numpy()
        i, j = np.unravel_index(np.argmax(mag), mag.shape)
        coil_angle = 2 * np.pi * c / 8  # one ring, coil c at this azimuth in the (I, J) plane
        peak_angle = np.arctan2(jj[i, j], ii[i, j])
        assert abs(np.angle(np.exp(1j * (peak_angle - coil_angle)))) < np.pi / 4


def test_many_coils_use_several_rings() -> None:
    maps = simulate_coil_maps((16, 16, 24), 16)
    # coils of different rings differ most along the ring axis (axis 2)
    profile = maps.abs().mean(dim=(1, 2))  # (C, K)
    first_ring_peak = int(profile[0].argmax())
    last_ring_peak = int(profile[-1].argmax())
    assert first_ring_peak < 12 <= last_ring_peak


def test_simulated_maps_options_and_errors() -> None:
    support = torch.zeros(9, 10, 7, dtype=torch.bool)
    support[2:7, 2:8, 1:6] = True
    maps = simulate_coil_maps((9, 10, 7), 3, support=support)
    assert maps.dtype == torch.complex64
    assert torch.all(maps[:, ~support] == 0)
    with pytest.raises(InputError, match="Unknown coil model"):
        simulate_coil_maps((9, 10, 7), 3, model="helmholtz")
    with pytest.raises(InputError, match="at least 1"):
        simulate_coil_maps((9, 10, 7), 0)
    with pytest.raises(GeometryError, match="3D image shape"):
        simulate_coil_maps((9, 10), 2)


# -- ESPIRiT -------------------------------------------------------------------------------------


def _direct_gram(kernels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Reference: every kernel zero-padded to the full grid, (C, C) Gram per voxel (SigPy)."""
    n, c, k1, k2 = kernels.shape
    padded = torch.zeros((n, c, *shape), dtype=kernels.dtype)
    s1, s2 = shape[0] // 2 - k1 // 2, shape[1] // 2 - k2 // 2
    padded[..., s1:s1 + k1, s2:s2 + k2] = kernels
    g = ifftc(padded, (-2, -1))
    return torch.einsum("nalm,nblm->lmab", g, g.conj()) * (shape[0] * shape[1] / (k1 * k2))


@pytest.mark.parametrize("plane", [(26, 22), (9, 10)])
def test_interpolated_gram_equals_direct_computation(plane: tuple[int, int],
                                                     generator: torch.Generator) -> None:
    # The fast path (Gram on a 2k grid, Fourier-interpolated) must equal the direct definition.
    ks = torch.randn((1, 3, *plane), generator=generator, dtype=torch.complex128)
    packed = coils._espirit_gram(ks, (8, 8), (4, 4), threshold=0.02)
    assert packed.shape == (1, *plane, 6)
    aha = coils.unpack_hermitian(packed, 3)
    cal = ks[0][..., coils.calibration_slice(plane[0], 8), coils.calibration_slice(plane[1], 8)]
    mat = cal.unfold(1, 4, 1).unfold(2, 4, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3 * 16)
    _, sv, vh = torch.linalg.svd(mat, full_matrices=False)
    kernels = vh[sv > 0.02 * sv[0]].reshape(-1, 3, 4, 4)
    expected = _direct_gram(kernels, plane)
    assert torch.allclose(aha[0], expected, atol=1e-10 * float(expected.abs().max()))


def test_dominant_eigenpair_matches_eigh(generator: torch.Generator) -> None:
    q, _ = torch.linalg.qr(torch.randn((50, 5, 5), generator=generator, dtype=torch.complex128))
    lam = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0], dtype=torch.float64)
    a = q @ torch.diag_embed(lam.to(torch.complex128)) @ q.mH
    v, val = coils._dominant_eigen(a)
    assert torch.allclose(val, torch.ones(50, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(torch.abs((v.conj() * q[..., 0]).sum(-1)),
                          torch.ones(50, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("fft_dims", [(0, 1, 2), (0, 1)])
def test_espirit_recovers_true_maps(scene: dict[str, torch.Tensor],
                                    fft_dims: tuple[int, ...]) -> None:
    kspace = scene["kspace"] if fft_dims == (0, 1, 2) else ifftc(scene["kspace"], (3,))
    noisy, _ = add_noise(kspace, snr=200.0, generator=0)
    result = espirit(noisy, calibration=14, kernel=5, fft_dims=fft_dims)
    obj = scene["object"]
    assert result.maps.shape == scene["maps"].shape
    assert _per_coil_correlation(result.maps, scene["maps"], obj) > 0.99
    # inside the object the first eigenvalue is ~1 and nothing is cropped ...
    assert float(result.eigenvalues[obj].min()) > 0.95
    assert torch.allclose(rss(result.maps)[obj], torch.ones(int(obj.sum()), dtype=torch.float64),
                          atol=1e-4)
    # ... and the empty corners of the field of view are cropped
    corners = torch.zeros(SHAPE, dtype=torch.bool)
    corners[:, :3, :3] = corners[:, -3:, -3:] = True
    assert float((rss(result.maps)[corners] == 0).float().mean()) > 0.5


def test_espirit_from_undersampled_kspace_uses_only_calibration(
        scene: dict[str, torch.Tensor]) -> None:
    mask = make_mask("poisson", SHAPE, 2.0, calibration=14, seed=0)
    undersampled = scene["kspace"] * torch.from_numpy(mask.mask)
    maps = estimate_coil_maps(undersampled, mask.mask, method="espirit", kernel=5)
    full = espirit_maps(scene["kspace"], calibration=14, kernel=5)
    assert torch.allclose(maps, full, atol=1e-5)
    assert _per_coil_correlation(maps, scene["maps"], scene["object"]) > 0.99


def test_lowres_maps_agree_with_truth(scene: dict[str, torch.Tensor]) -> None:
    maps = lowres_maps(scene["kspace"], calibration=14)
    obj = scene["object"]
    assert _per_coil_correlation(maps, scene["maps"], obj) > 0.99
    assert torch.allclose(rss(maps)[obj], torch.ones(int(obj.sum()), dtype=torch.float64))
    via_entry = estimate_coil_maps(scene["kspace"], method="lowres", calibration=14)
    assert torch.equal(via_entry, maps)


def test_detect_calibration() -> None:
    mask = make_mask("random", (4, 40, 30), 4.0, calibration=12, seed=1).mask
    assert detect_calibration(mask, (4, 40, 30)) >= 12
    lines = make_mask("equispaced", (4, 40, 30), 4.0, calibration=8, dims="2d", seed=0).mask
    found = detect_calibration(lines, (4, 40, 30), fft_dims=(0, 1))
    assert 8 <= found < 40
    empty = np.zeros((1, 40, 30), dtype=bool)
    assert detect_calibration(empty, (4, 40, 30)) == 0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda k: espirit(k, calibration=4, kernel=5), InputError, "larger than the ESPIRiT"),
        (lambda k: espirit(k, calibration=40), InputError, "larger than k-space axis"),
        (lambda k: espirit(k, fft_dims=(1, 2)), InputError, "fft_dims"),
        (lambda k: espirit(k[0]), GeometryError, "shape \\(C, I, J, K\\)"),
        (lambda k: espirit(k.abs()), InputError, "complex"),
        (lambda k: estimate_coil_maps(k, method="sos"), InputError, "Unknown coil-map method"),
        (lambda k: estimate_coil_maps(k, np.zeros((1, 26, 22), bool), calibration=8),
         InputError, "central region of only 0"),
    ],
)
def test_estimation_errors(scene: dict[str, torch.Tensor], call, error, match) -> None:  # noqa: ANN001
    with pytest.raises(error, match=match):
        call(scene["kspace"])


def test_nan_kspace_is_rejected(scene: dict[str, torch.Tensor]) -> None:
    k = scene["kspace"].clone()
    k[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        estimate_coil_maps(k)


# -- peer check: BART ecalib -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bart_maps(scene: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory
              ) -> torch.Tensor:
    """BART ``ecalib`` maps of the scene (one map set, kernel 5, calibration 14, no crop)."""
    if shutil.which("bart") is None:
        pytest.skip("BART is not installed")
    tmp = tmp_path_factory.mktemp("bart")
    # BART dims are (x, y, z, coil); its ecalib calibrates with a 3D kernel on the 3D centre.
    write_cfl(tmp / "kspace", np.moveaxis(scene["kspace"].numpy(), 0, -1))
    subprocess.run(["bart", "ecalib", "-m1", "-k5", "-r14", "-c0", str(tmp / "kspace"),
                    str(tmp / "maps")], check=True, capture_output=True)
    return torch.from_numpy(np.moveaxis(read_cfl(tmp / "maps", 4), -1, 0))


@pytest.mark.parametrize("fft_dims", [(0, 1, 2), (0, 1)])
def test_espirit_agrees_with_bart_ecalib(scene: dict[str, torch.Tensor], bart_maps: torch.Tensor,
                                         fft_dims: tuple[int, ...]) -> None:
    kspace = scene["kspace"]
    ours = espirit_maps(kspace if fft_dims == (0, 1, 2) else ifftc(kspace, (3,)),
                        calibration=14, kernel=5, crop=0.0, fft_dims=fft_dims)
    obj = scene["object"]
    assert _per_coil_correlation(ours, bart_maps, obj) > 0.999
    # both refer the phase to the first principal component: they agree up to one global phase
    rel = torch.angle((ours.conj() * bart_maps.to(ours.dtype)).sum(0)[obj])
    rel = torch.angle(torch.exp(1j * (rel - rel.mean())))
    assert float(rel.std()) < 0.05


def test_cfl_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    a = (rng.standard_normal((3, 4, 5)) + 1j * rng.standard_normal((3, 4, 5))).astype(np.complex64)
    write_cfl(tmp_path / "a.cfl", a)
    assert (tmp_path / "a.hdr").read_text().split("\n")[1].split()[:4] == ["3", "4", "5", "1"]
    np.testing.assert_array_equal(read_cfl(tmp_path / "a"), a)
    np.testing.assert_array_equal(read_cfl(tmp_path / "a", ndim=4)[..., 0], a)
    (tmp_path / "a.cfl").write_bytes(b"\0" * 8)
    with pytest.raises(InputError, match="header says"):
        read_cfl(tmp_path / "a")


@pytest.mark.gpu
def test_espirit_on_cuda_matches_cpu(scene: dict[str, torch.Tensor]) -> None:
    k = scene["kspace"].to(torch.complex64)
    cpu = espirit(k, calibration=14, kernel=5)
    gpu = espirit(k.cuda(), calibration=14, kernel=5)
    assert gpu.maps.device.type == "cuda"
    obj = scene["object"]
    assert _per_coil_correlation(gpu.maps.cpu(), cpu.maps, obj) > 0.9999
    # the first of two sets is the one-set estimate bit for bit on the GPU too (medrecon.guard)
    assert torch.equal(espirit(k.cuda(), calibration=14, kernel=5, sets=2).maps[0], gpu.maps)
    maps = simulate_coil_maps(SHAPE, 4, device="cuda")
    assert maps.device.type == "cuda"
    assert lowres_maps(k.cuda(), calibration=14).device.type == "cuda"


def test_narrow_calibration_gets_a_narrow_kernel_and_the_readout() -> None:
    """8 central lines of 2D multi-slice data: ESPIRiT's default kernel 6 leaves the null space
    undetermined and the maps vanish; the kernel chosen for the width, over a region that
    spans the fully sampled readout, recovers them (no fallback)."""
    import warnings as _w

    from medrecon.operators.coil_simulation import simulate_coil_maps
    from medrecon.operators.coils import default_kernel
    from medrecon.operators.functional.fft import fftc
    from medrecon.phantoms import shepp_logan_3d

    assert [default_kernel(c) for c in (4, 8, 10, 14, 24)] == [2, 3, 4, 6, 6]
    shape = (32, 40, 3)
    truth = simulate_coil_maps(shape, 6)
    x = torch.as_tensor(shepp_logan_3d(shape)).to(torch.complex64) + 0.01
    k = fftc(truth * x, (1, 2))  # (C, I, J, K): the in-plane axes I, J
    mask = np.zeros((1, 40, 1), bool)
    mask[:, 16:24] = True  # the 8 central lines only
    with _w.catch_warnings():
        _w.simplefilter("error")  # a fallback to the low-resolution maps would warn
        est = estimate_coil_maps(k * torch.from_numpy(mask), mask, fft_dims=(0, 1))
    inside = torch.as_tensor(shepp_logan_3d(shape)) > 0
    covered = (est.abs() ** 2).sum(0) > 0.5
    assert float(covered[inside].float().mean()) > 0.8
    assert _per_coil_correlation(est, truth, inside & covered) > 0.98
    raw = espirit(k, calibration=8, kernel=6, fft_dims=(0, 1)).maps
    assert float(((raw.abs() ** 2).sum(0) > 0.5)[inside].float().mean()) < 0.5


def test_espirit_with_a_tiny_calibration_falls_back_to_lowres() -> None:
    """Calibration barely larger than the kernel: ESPIRiT's maps vanish; the estimate must not."""
    import warnings as _w

    from medrecon.operators.coil_simulation import simulate_coil_maps
    from medrecon.operators.coils import estimate_coil_maps
    from medrecon.operators.functional.fft import fftc
    from medrecon.phantoms import shepp_logan_3d

    shape = (24, 24, 8)
    maps = simulate_coil_maps(shape, 4)
    x = torch.as_tensor(shepp_logan_3d(shape)).to(torch.complex64) + 0.01
    k = fftc(maps * x, (0, 1))
    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        est = estimate_coil_maps(k, None, method="espirit", calibration=8, fft_dims=(0, 1),
                                 kernel=6)
    assert any("low-resolution" in str(w.message) for w in caught)
    from medrecon.operators.coils import espirit, lowres_maps

    inside = torch.as_tensor(shepp_logan_3d(shape)) > 0
    raw = espirit(k, calibration=8, fft_dims=(0, 1)).maps
    assert float(((raw.abs() ** 2).sum(0) > 0.5)[inside].float().mean()) < 0.1
    assert float(((est.abs() ** 2).sum(0) > 0.5)[inside].float().mean()) > 0.5
    torch.testing.assert_close(est, lowres_maps(k, calibration=8, fft_dims=(0, 1)))


def _folded_scene() -> dict[str, torch.Tensor]:
    """2D multi-slice k-space of an object wider than the field of view along J (folded over):
    where two parts of the object overlap, two sensitivity vectors are consistent with the
    data, the textbook case for a second ESPIRiT map set (Uecker et al. 2014)."""
    from medrecon.phantoms import shepp_logan_3d

    big, n = (32, 40, 2), 24
    maps = simulate_coil_maps(big, 6)
    x = torch.as_tensor(shepp_logan_3d(big)).to(torch.complex64)
    coil = maps * x
    fold = coil[:, :, :n].clone()
    fold[:, :, :big[1] - n] += coil[:, :, n:]
    overlap = torch.zeros((big[0], n, big[2]), dtype=torch.bool)
    overlap[:, :big[1] - n] = (x[:, :big[1] - n].abs() > 0) & (x[:, n:].abs() > 0)
    return {"kspace": fftc(fold, (1, 2)), "overlap": overlap, "inside": x[:, :n].abs() > 0}


def test_espirit_second_map_set_covers_the_fold_over() -> None:
    scene = _folded_scene()
    k = scene["kspace"]
    one = espirit(k, calibration=(24, 12), kernel=5, fft_dims=(0, 1))
    two = espirit(k, calibration=(24, 12), kernel=5, fft_dims=(0, 1), sets=2)
    assert two.maps.shape == (2, *one.maps.shape) and two.eigenvalues.shape[0] == 2
    # The first set is the one-set estimate bit for bit (deflation comes after it): the
    # guard's l1-wavelet estimate serves diffusion too (medrecon.guard).
    assert torch.equal(two.maps[0], one.maps)
    assert torch.equal(two.eigenvalues[0], one.eigenvalues)
    assert bool((two.eigenvalues[0] >= two.eigenvalues[1] - 1e-5).all())
    overlap, inside = scene["overlap"], scene["inside"]
    # A second consistent sensitivity where the object overlaps itself, none elsewhere.
    assert float(two.eigenvalues[1][overlap].median()) > 0.9
    assert float(two.eigenvalues[1][inside & ~overlap].median()) < 0.5
    power = (two.maps.abs() ** 2).sum(1)  # (M, I, J, K)
    kept2 = power[1] > 0.5
    assert float(kept2[overlap].float().mean()) > 0.95
    assert float(kept2[inside & ~overlap].float().mean()) < 0.3
    assert not bool((kept2 & (power[0] == 0)).any())  # only inside the first set's support
    torch.testing.assert_close(power[1][kept2], torch.ones(int(kept2.sum())), atol=1e-4, rtol=0)
    both = kept2 & (power[0] > 0.5)
    inner = (two.maps[0].conj() * two.maps[1]).sum(0).abs()
    assert float(inner[both].max()) < 1e-2  # eigenvectors of one Hermitian matrix: orthogonal


def test_estimated_map_sets_drop_empty_sets() -> None:
    scene = _folded_scene()
    k = scene["kspace"]
    mask = np.ones((1, 24, 1), dtype=bool)
    est = estimate_coil_maps(k, mask, calibration=12, fft_dims=(0, 1), map_sets=2)
    assert est.shape == (2, 6, 32, 24, 2)
    assert torch.equal(est[0], estimate_coil_maps(k, mask, calibration=12, fft_dims=(0, 1)))
    # A set that the crop empties everywhere is dropped: (1, C, I, J, K), still one image.
    lone = estimate_coil_maps(k, mask, calibration=12, fft_dims=(0, 1), map_sets=2,
                              set_crop=1.5)
    assert lone.shape == (1, 6, 32, 24, 2)
    with pytest.raises(InputError, match="map sets"):
        espirit(k, calibration=(24, 12), kernel=5, fft_dims=(0, 1), sets=7)
