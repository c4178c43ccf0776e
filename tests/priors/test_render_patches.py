"""Tests of the training-patch renderer (``render_patches``) and its voxel-size distribution."""

from __future__ import annotations

import pytest
import torch

from medrecon.errors import ConfigError
from medrecon.priors.normalisation import Normalisation
from medrecon.priors.synthetic import render_patches, rendering, sample_spacings


def _render(modality: str, spacing: list[list[float]], patch: tuple[int, int, int], seed: int,
            **kw: float) -> object:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    return render_patches(modality, len(spacing), torch.tensor(spacing), patch, g, **kw)


def _scan(r: object, b: int) -> torch.Tensor:
    """The part of patch b that is the scan itself (the patch holds the whole scan)."""
    ni, nj, nk = (int(v) for v in r.scan_shape[b])
    assert int(r.origin[b].abs().sum()) == 0
    return r.image[b, :ni, :nj, :nk]


def test_sample_spacings_cover_the_training_range() -> None:
    sp = sample_spacings(4000, torch.Generator().manual_seed(0))
    assert sp.shape == (4000, 3) and sp.dtype == torch.float32
    inplane = sp.sort(dim=1).values[:, :2]
    assert float(inplane.min()) >= 0.4 - 1e-5 and float(inplane.max()) <= 4.0 + 1e-5
    assert float(sp.max()) <= 6.0 + 1e-5 and float(sp.max()) > 5.0
    aniso = sp.max(dim=1).values / sp.min(dim=1).values
    assert 0.2 < float((aniso < 1.0001).float().mean()) < 0.4  # isotropic share
    assert float((aniso > 2.0).float().mean()) > 0.2
    # The slice (largest) axis is any of the three.
    counts = torch.bincount(torch.argmax(sp[aniso > 1.5], dim=1), minlength=3)
    assert int(counts.min()) > 0.2 * int(counts.sum())
    # Deterministic from the generator.
    again = sample_spacings(4000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(sp, again, rtol=0, atol=0)


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_shapes_positions_and_determinism(modality: str) -> None:
    spacing = [[0.5, 0.6, 3.0], [2.0, 2.0, 2.0], [4.0, 5.5, 4.0]]
    a = _render(modality, spacing, (12, 10, 8), seed=3)
    b = _render(modality, spacing, (12, 10, 8), seed=3)
    c = _render(modality, spacing, (12, 10, 8), seed=4)
    assert a.image.shape == (3, 12, 10, 8) and a.image.dtype == torch.float32
    assert a.position.shape == (3, 3) and float(a.position.abs().max()) <= 1.0
    torch.testing.assert_close(a.spacing, torch.tensor(spacing))
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=0)
    torch.testing.assert_close(a.position, b.position, rtol=0, atol=0)
    assert float((a.image - c.image).abs().mean()) > 0
    # The position is the patch centre in the tiling's convention: 2 (o + P // 2) / (N - 1) - 1.
    half = torch.tensor([6, 5, 4])
    expect = 2.0 * (a.origin + half) / (a.scan_shape - 1).clamp_min(1) - 1.0
    torch.testing.assert_close(a.position, expect.float().clamp(-1, 1))
    assert bool(((a.origin >= 0) & (a.origin <= (a.scan_shape - 1).clamp_min(0))).all())
    assert bool(torch.isfinite(a.image).all())


def test_spacing_is_honoured() -> None:
    # The same heads and scans (same generator state) at 4 and 8 mm: the whole scan fits into
    # the patch, and the head occupies the same volume in mm^3, so 8 times more voxels at 4 mm.
    kw = {"noise_prob": 0.0, "body_fraction": 0.0}
    fine = _render("CT", [[4.0, 4.0, 4.0]] * 2, (96, 96, 96), seed=5, **kw)
    coarse = _render("CT", [[8.0, 8.0, 8.0]] * 2, (96, 96, 96), seed=5, **kw)
    for b in range(2):
        fov_fine = (fine.scan_shape[b].double() * 4).prod()
        fov_coarse = (coarse.scan_shape[b].double() * 8).prod()
        assert float(fov_fine / fov_coarse) == pytest.approx(1.0, rel=0.35)  # rounding of N
        head_fine = float((_scan(fine, b) > -500).sum()) * 4.0**3
        head_coarse = float((_scan(coarse, b) > -500).sum()) * 8.0**3
        assert head_fine > 1e5  # > 0.1 l of head and neck in the field of view
        assert head_fine == pytest.approx(head_coarse, rel=0.15)


def test_ct_units_air_bone_and_reconstruction_circle() -> None:
    r = _render("CT", [[6.0, 6.0, 6.0]] * 3, (64, 64, 64), seed=6, noise_prob=0.0)
    for b in range(3):
        scan = _scan(r, b)
        assert float(scan.min()) == -1024.0  # outside the reconstruction circle
        assert float(scan.max()) > 600.0  # bone (partial volume with marrow at 6 mm)
        assert int((scan > 300).sum()) > 50
        assert int((scan == -1000.0).sum()) > 100  # air inside the circle
        assert float(scan.max()) <= 3071.0


@pytest.mark.parametrize("body_fraction", [0.0, 1.0])
def test_mr_scale_of_whole_scan_is_near_one(body_fraction: float) -> None:
    # Heads (0) and trunks (1): the patch holds the whole scan, whose scale must be ~1.
    r = _render("MR", [[6.0, 6.0, 6.0]] * 4, (80, 80, 80), seed=7, noise_prob=0.0,
                body_fraction=body_fraction)
    norm = Normalisation()
    for b in range(4):
        scan = _scan(r, b)
        assert float(scan.min()) >= 0.0
        assert norm.mr_scale(scan) == pytest.approx(1.0, abs=0.15)


def test_trunks_have_spine_soft_tissue_and_air_spaces() -> None:
    r = _render("CT", [[5.0, 5.0, 5.0]] * 3, (100, 100, 100), seed=11, noise_prob=0.0,
                body_fraction=1.0)
    for b in range(3):
        scan = _scan(r, b)
        body = scan > -500
        assert float(body.float().sum()) * 125.0 > 2e6  # a trunk, not a head (> 2 litres)
        assert int((scan > 300).sum()) > 30  # vertebrae (and ribs in a chest)
        soft = (scan > -150) & (scan < 120)
        assert int(soft.sum()) > 0.3 * int(body.sum())
        # Lungs or bowel gas inside the body: air-like voxels surrounded by tissue.
        inner = scan[body.any(dim=(1, 2))][:, body.any(dim=(0, 2))]
        assert int(((inner > -1000) & (inner < -500)).sum()) > 20


def test_thick_slices_are_averaged_across_their_thickness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same patches with a 6 mm slice sampled at its centre only (max_subsamples=1) or
    # averaged across the slab: averaging blurs oblique edges, so in-plane gradients shrink.
    # Sub-millimetre detail is switched off: how much of it survives depends on the sampling.
    def no_detail(p, heads, ramp, vox, texture_mm):  # noqa: ANN001, ANN202
        zero = p.new_zeros(p.shape[:2])
        return rendering.Detail(zero, zero, zero, zero), zero, zero

    monkeypatch.setattr(rendering, "_detail", no_detail)
    spacing = [[1.5, 1.5, 6.0], [6.0, 1.5, 1.5]]
    thin = _render("CT", spacing, (32, 32, 16), seed=8, noise_prob=0.0, max_subsamples=1)
    thick = _render("CT", spacing, (32, 32, 16), seed=8, noise_prob=0.0, max_subsamples=4)

    def energy(x: torch.Tensor, axes: tuple[int, int]) -> float:
        return sum(float(x.diff(dim=a).abs().mean()) for a in axes)

    for b, inplane in enumerate([(0, 1), (1, 2)]):
        assert energy(thick.image[b], inplane) < 0.95 * energy(thin.image[b], inplane)
        # Averaging only mixes values that the thin rendering has near the slice.
        assert float(thick.image[b].min()) >= float(thin.image[b].min()) - 1e-3


def test_ct_noise_went_through_filtered_back_projection() -> None:
    # The noise texture: ramp-filtered in each slice (no power at zero frequency, rising with
    # frequency up to the kernel's cut-off) and independent across slices.
    noise = rendering._ct_noise((40, 48, 48), 0, 0.8, torch.Generator().manual_seed(0),
                                torch.device("cpu"))  # fmt: skip
    assert float(noise.std()) == pytest.approx(1.0, rel=1e-3)
    nps = (torch.fft.fft2(noise).abs() ** 2).mean(0)  # (48, 48) in-plane power spectrum
    k = torch.fft.fftfreq(48).abs() * 2
    radial = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    low = float(nps[radial < 0.1].mean())
    mid = float(nps[(radial > 0.3) & (radial < 0.5)].mean())
    assert float(nps[0, 0]) < 1e-6 * mid and low < 0.3 * mid
    across = torch.corrcoef(torch.stack([noise[:-1].reshape(-1), noise[1:].reshape(-1)]))
    assert abs(float(across[0, 1])) < 0.05
    # In rendered patches: noise on (same draws otherwise) adds FBP-like noise in the head.
    spacing = [[1.0, 1.0, 1.0]] * 2
    clean = _render("CT", spacing, (32, 32, 32), seed=9, noise_prob=0.0)
    noisy = _render("CT", spacing, (32, 32, 32), seed=9, noise_prob=1.0)
    inside = (clean.image > -900) & (clean.image < 1000)
    assert int(inside.sum()) > 1000
    assert 3.0 < float((noisy.image - clean.image)[inside].std()) < 100.0


def test_short_scan_axes_are_reflected_like_the_tiling_pads() -> None:
    # 6 mm slices over at most 220 mm: at most 37 slices, so a 48-voxel patch is reflected.
    r = _render("MR", [[6.0, 6.0, 6.0]], (48, 48, 48), seed=10, noise_prob=1.0)
    n = int(r.scan_shape[0, 0])
    assert n < 48
    img = r.image[0]
    for j in range(min(4, 48 - n)):
        torch.testing.assert_close(img[n + j], img[n - 2 - j], rtol=0, atol=0)


def test_invalid_arguments_raise_config_error() -> None:
    g = torch.Generator()
    with pytest.raises(ConfigError):
        render_patches("PET", 1, torch.ones(1, 3), (8, 8, 8), g)
    with pytest.raises(ConfigError):
        render_patches("MR", 2, torch.ones(1, 3), (8, 8, 8), g)
    with pytest.raises(ConfigError):
        render_patches("MR", 1, torch.zeros(1, 3), (8, 8, 8), g)
    with pytest.raises(ConfigError):
        render_patches("CT", 1, torch.ones(1, 3), (8, 8), g)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    spacing = torch.tensor([[0.8, 0.8, 3.0], [2.0, 2.0, 2.0]])
    cpu = render_patches("MR", 2, spacing, (16, 16, 16), torch.Generator().manual_seed(1),
                         noise_prob=0.0)  # fmt: skip
    gpu = render_patches("MR", 2, spacing, (16, 16, 16), torch.Generator().manual_seed(1),
                         device="cuda", noise_prob=0.0)  # fmt: skip
    assert gpu.image.is_cuda
    torch.testing.assert_close(gpu.image.cpu(), cpu.image, atol=2e-3, rtol=0)


def test_preview_patches_writes_png(tmp_path) -> None:  # noqa: ANN001
    from medrecon.priors.synthetic import preview_patches

    out = tmp_path / "patches.png"
    preview_patches(str(out), size=8, dpi=20)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["patches.png"]  # no temp files left
