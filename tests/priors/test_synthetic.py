"""Tests of the held-out synthetic head volumes (``generate_head``) and their patch dataset."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from medrecon.errors import ConfigError
from medrecon.priors.synthetic import (
    CONTRASTS,
    MODALITY_IDS,
    SPLITS,
    SyntheticHeadDataset,
    anatomy,
    generate_head,
    load_atlas,
    preview_figure,
    split_seeds,
    volumes,
)

# Small grids: 32^3 voxels of 6 mm hold the head (192 mm) and render in well under 0.1 s.
SHAPE = (32, 32, 32)
SP = 6.0


def test_atlas_loads_from_package_data_without_nilearn() -> None:
    atlas = load_atlas()
    assert "nilearn" not in sys.modules
    shape = atlas["brain"].shape
    for name in ("gm", "wm", "csf", "brain"):
        assert atlas[name].shape == shape and atlas[name].dtype == np.float32
        assert 0.0 <= atlas[name].min() and atlas[name].max() <= 1.0
    # Tissue probabilities partition the brain mask (up to uint8 rounding).
    parts = atlas["gm"] + atlas["wm"] + atlas["csf"]
    assert np.abs(parts - atlas["brain"]).max() < 0.02
    np.testing.assert_allclose(np.diag(atlas["affine"])[:3], 2.0)
    # MNI-space brain volume: 1.5-2.2 litres (the template is larger than native brains).
    litres = atlas["brain"].sum() * 8.0 / 1e6
    assert 1.5 < litres < 2.2
    # The MNI origin (anterior commissure) lies inside the brain.
    ijk = np.round(np.linalg.inv(atlas["affine"]) @ [0, 0, 0, 1]).astype(int)[:3]
    assert atlas["brain"][tuple(ijk)] > 0.9


def test_same_seed_same_volume_and_different_seeds_differ() -> None:
    a = generate_head(SHAPE, SP, "MR", "T1", seed=3)
    b = generate_head(SHAPE, SP, "MR", "T1", seed=3)
    c = generate_head(SHAPE, SP, "MR", "T1", seed=4)
    np.testing.assert_array_equal(a.data, b.data)
    assert a.meta == b.meta
    assert np.abs(a.data - c.data).mean() > 0.02


def test_volume_geometry_and_units() -> None:
    mr = generate_head((36, 40, 44), 5.0, "MR", "PD", seed=1)
    ct = generate_head((36, 40, 44), 5.0, "CT", seed=1)
    assert mr.shape == (36, 40, 44) and mr.data.dtype == np.float32
    assert mr.orientation == "RAS" and mr.spacing == (5.0, 5.0, 5.0)
    assert (mr.modality, mr.units, ct.modality, ct.units) == ("MR", "a.u.", "CT", "HU")
    assert mr.same_geometry(ct)
    assert mr.meta["contrast"] == "PD" and ct.meta["contrast"] is None


def _central(vol: np.ndarray, half: int) -> np.ndarray:
    c = [s // 2 for s in vol.shape]
    return vol[c[0] - half : c[0] + half, c[1] - half : c[1] + half, c[2] - half : c[2] + half]


def test_ct_values_in_hounsfield_units() -> None:
    for seed in (0, 1, 2):
        v = generate_head((40, 40, 40), SP, "CT", seed=seed, lesions=False, noise=False)
        d = v.data  # a 240 mm field of view holds the whole head
        assert d[0, 0, 0] == pytest.approx(-1000.0)  # air in the corner
        assert d[:, :, -1].max() < -900  # nothing above the vertex
        brain = _central(d, 3)  # 36 mm cube around the head centre: brain and ventricles
        assert 20.0 <= np.median(brain) <= 45.0
        assert brain.min() > -5.0 and brain.max() < 50.0
        # The skull: bone voxels above 300 HU, up to cortical bone (1300-1900 HU plus texture).
        assert (d > 300).sum() > 200
        assert 1000.0 < d.max() <= 2300.0
        assert d.min() >= -1000.0


def test_ct_noise_level_matches_meta() -> None:
    clean = generate_head(SHAPE, SP, "CT", seed=5, noise=False).data
    noisy = generate_head(SHAPE, SP, "CT", seed=5, noise=True)
    sigma = noisy.meta["noise_std_hu"]
    assert 2.0 <= sigma <= 10.0
    brain = _central(noisy.data - clean, 4)
    assert brain.std() == pytest.approx(sigma, rel=0.25)


def test_mr_scaled_to_unit_range_with_rician_background() -> None:
    clean = generate_head(SHAPE, SP, "MR", "T2", seed=6, noise=False)
    assert clean.data.min() >= 0.0
    assert np.quantile(clean.data, 0.999) == pytest.approx(1.0, abs=0.05)
    assert clean.data.max() < 1.6
    assert clean.data[:3, :3, -3:].max() == 0.0  # air outside the head
    noisy = generate_head(SHAPE, SP, "MR", "T2", seed=6, noise=True)
    sigma = 1.0 / noisy.meta["snr"]
    corner = noisy.data[:6, :6, -6:]
    # Magnitude of pure complex Gaussian noise is Rayleigh: mean sigma * sqrt(pi / 2).
    assert corner.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.2)


def _tissue_means(modality: str, contrast: str, seed: int) -> dict[str, float]:
    """Mean rendered intensity over voxels that are > 90 % one tissue (noise and lesions off)."""
    fr, _, _ = volumes.volume_fractions((48, 48, 48), 4.0, seed, False)
    img = generate_head((48, 48, 48), 4.0, modality, contrast, seed, lesions=False, noise=False)
    flat = img.data.reshape(-1)
    return {t: float(flat[(fr[t] > 0.9).numpy()].mean()) for t in ("gm", "wm", "csf", "fat")}


@pytest.mark.parametrize(
    ("modality", "contrast", "order"),
    [
        ("MR", "T1", ("wm", "gm", "csf")),
        ("MR", "T2", ("csf", "gm", "wm")),
        ("MR", "PD", ("gm", "wm")),
        ("CT", "T1", ("gm", "wm", "csf", "fat")),
    ],
)
def test_tissue_contrast_order(modality: str, contrast: str, order: tuple[str, ...]) -> None:
    means = _tissue_means(modality, contrast, seed=11)
    values = [means[t] for t in order]
    assert values == sorted(values, reverse=True), means


def test_tissue_fractions_are_physical() -> None:
    fr, lesions, _ = volumes.volume_fractions((32, 36, 40), 6.0, 12, True)
    total = sum(fr.values()) + lesions.sum(0)
    assert all(float(f.min()) >= -1e-6 and float(f.max()) <= 1 + 1e-6 for f in fr.values())
    assert float(total.max()) <= 1.0 + 1e-5
    assert float(total.min()) >= 0.0
    # Every tissue class occurs somewhere in a whole head.
    for name, f in fr.items():
        assert float(f.sum()) > 1.0, name


def test_anatomy_is_shared_across_modalities() -> None:
    ct = generate_head(SHAPE, SP, "CT", seed=8, noise=False)
    mr = generate_head(SHAPE, SP, "MR", "PD", seed=8, noise=False)
    head_ct = ct.data > -500
    head_mr = mr.data > 0.25
    iou = (head_ct & head_mr).sum() / (head_ct | head_mr).sum()
    assert iou > 0.85


def test_lesions_change_only_the_brain() -> None:
    seed = next(s for s in range(50) if generate_head((8, 8, 8), 24.0, seed=s).meta["lesions"])
    with_l = generate_head(SHAPE, SP, "CT", seed=seed, lesions=True, noise=False)
    without = generate_head(SHAPE, SP, "CT", seed=seed, lesions=False, noise=False)
    assert without.meta["lesions"] == []
    diff = np.abs(with_l.data - without.data)
    assert diff.max() > 5.0
    # Lesions replace brain tissue: changed voxels are brain (partial volume with the skull at
    # the cortex allowed), never air.
    changed = diff > 1e-3
    assert without.data[changed].min() > -20
    assert 0.0 < np.median(without.data[changed]) < 50.0


def test_random_contrast_is_seeded() -> None:
    picked = {generate_head((8, 8, 8), 24.0, "MR", "random", seed=s).meta["contrast"]
              for s in range(12)}  # fmt: skip
    assert picked <= set(CONTRASTS) and len(picked) >= 2
    a = generate_head((8, 8, 8), 24.0, "MR", "random", seed=5)
    b = generate_head((8, 8, 8), 24.0, "MR", a.meta["contrast"], seed=5)
    np.testing.assert_array_equal(a.data, b.data)


def test_invalid_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        generate_head(SHAPE, SP, "PET")
    with pytest.raises(ConfigError):
        generate_head(SHAPE, SP, "MR", "FLAIR")
    with pytest.raises(ConfigError):
        generate_head((4, 4), SP)
    with pytest.raises(ConfigError):
        generate_head(SHAPE, 0.0)
    with pytest.raises(ConfigError):
        generate_head(SHAPE, SP, seed=-1)
    with pytest.raises(ConfigError):
        split_seeds("holdout")


def test_split_seed_ranges_are_disjoint() -> None:
    names = list(SPLITS)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert set(range(SPLITS[a].start, SPLITS[a].stop, 997)).isdisjoint(SPLITS[b])
            assert SPLITS[a].stop <= SPLITS[b].start or SPLITS[b].stop <= SPLITS[a].start


def test_dataset_patches() -> None:
    ds = SyntheticHeadDataset(
        "val", n_volumes=2, patch_size=16, patches_per_volume=3, shape=(24, 28, 32),
        spacing_mm=8.0,
    )  # fmt: skip
    assert len(ds) == 6
    seeds = set()
    for idx in range(len(ds)):
        item = ds[idx]
        seed = int(item["seed"])
        seeds.add(seed)
        assert item["image"].shape == (1, 16, 16, 16) and item["image"].dtype == torch.float32
        pos = item["position"]
        assert pos.shape == (3,) and float(pos.abs().max()) <= 1.0
        assert int(item["modality"]) == MODALITY_IDS[ds.modality_of(seed)]
        # The position locates the patch inside its volume.
        vol = ds.volume(seed)
        centre = (pos.double() + 1) / 2 * (torch.tensor(ds.shape, dtype=torch.float64) - 1)
        corner = [int(round(c - 7.5)) for c in centre.tolist()]
        sl = tuple(slice(c0, c0 + 16) for c0 in corner)
        torch.testing.assert_close(item["image"][0], vol[sl])
    assert seeds <= set(SPLITS["val"]) and len(seeds) == 2
    # Both modalities appear when cycling over two seeds.
    assert {ds.modality_of(s) for s in seeds} == {"MR", "CT"}
    # A fresh instance gives the same items (deterministic per index).
    ds2 = SyntheticHeadDataset(
        "val", n_volumes=2, patch_size=16, patches_per_volume=3, shape=(24, 28, 32),
        spacing_mm=8.0, cache_size=0,
    )  # fmt: skip
    for idx in (0, 4):
        torch.testing.assert_close(ds[idx]["image"], ds2[idx]["image"])
        torch.testing.assert_close(ds[idx]["position"], ds2[idx]["position"])


def test_dataset_transform_and_errors() -> None:
    seen: list[str] = []

    def transform(x: torch.Tensor, modality: str) -> torch.Tensor:
        seen.append(modality)
        return x * 0 + MODALITY_IDS[modality]

    ds = SyntheticHeadDataset([7], patch_size=8, patches_per_volume=1, shape=(16, 16, 16),
                              spacing_mm=12.0, modalities=("CT",), transform=transform)  # fmt: skip
    assert float(ds[0]["image"].mean()) == 1.0 and seen == ["CT"]
    with pytest.raises(IndexError):
        ds[1]
    with pytest.raises(ConfigError):
        SyntheticHeadDataset("train", patch_size=64, shape=(32, 32, 32))
    with pytest.raises(ConfigError):
        SyntheticHeadDataset([], shape=(32, 32, 32), patch_size=8)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    cpu, _ = volumes.generate_head_tensor(SHAPE, SP, "MR", "T1", seed=2, device="cpu")
    gpu, _ = volumes.generate_head_tensor(SHAPE, SP, "MR", "T1", seed=2, device="cuda")
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=0)


def test_preview_figure_writes_png(tmp_path) -> None:
    out = tmp_path / "preview.png"
    preview_figure(str(out), seeds=[3], shape=(16, 16, 16), spacing_mm=12.0, dpi=20)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "preview.png"]  # no temp files left


def test_template_structures_have_plausible_proportions() -> None:
    tpl = anatomy._template()
    gm, wm, sd_icv, sd_head, sd_eye, sd_orbit, sd_wall, sd_air, sd_vert, disc = tpl.maps
    vox_ml = 8e-3  # 2 mm voxels
    # Vertebral bodies: discs take about a quarter of the column's height.
    assert 0.15 < disc[sd_vert < 0].mean() < 0.35
    # Intracranial volume (MNI space, before the 0.9 shrink) of 1.7-2.4 litres.
    assert 1700 < (sd_icv < 0).sum() * vox_ml < 2400
    # Eyes (two globes of radius 12 mm, ~7 ml each) lie outside the cranial cavity.
    assert 12 < (sd_eye < 0).sum() * vox_ml < 17
    assert sd_icv[sd_eye < 0].min() > 0.0
    # The head outline (skin at sd_head ~ 8.5 mm for average thicknesses) holds the brain deep
    # inside, the globes under a few mm of lid and the air spaces (nostrils reach the surface).
    assert sd_head[(gm + wm) > 0.5].max() < 0
    assert sd_head[sd_eye < 0].max() < 4.0 and sd_head[sd_air < 0].max() < 8.0


def test_nifti_round_trip_keeps_geometry(tmp_path) -> None:
    from medrecon.io import load_volume, save_volume

    vol = generate_head((24, 28, 32), 8.0, "CT", seed=9)
    path = tmp_path / "head.nii.gz"
    save_volume(vol, path)
    back = load_volume(path)
    assert back.same_geometry(vol) and back.orientation == "RAS"
    np.testing.assert_allclose(back.data, vol.data, atol=1e-3)


def test_slab_rendering_has_no_seams(monkeypatch: pytest.MonkeyPatch) -> None:
    whole, _ = volumes.generate_head_tensor((20, 24, 28), 8.0, "MR", "T2", seed=13, noise=False)
    monkeypatch.setattr(volumes, "_SLAB_VOXELS", 1)  # one plane per slab
    planes, _ = volumes.generate_head_tensor((20, 24, 28), 8.0, "MR", "T2", seed=13, noise=False)
    torch.testing.assert_close(planes, whole, atol=1e-5, rtol=0)
