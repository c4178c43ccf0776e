"""Training data: discovery, manifests, splits, resampling, normalisation, caching, patches."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from medrecon.errors import InputError
from medrecon.io import Volume, save_volume
from medrecon.priors.config import DataConfig
from medrecon.priors.data import (
    PatchSampler,
    build_pools,
    discover_studies,
    load_training_volume,
    resample_to_spacing,
    split_train_val,
)
from medrecon.priors.normalisation import Normalisation


def _write(tmp: Path, name: str, modality: str, shape=(20, 18, 10), spacing=(1.0, 1.0, 2.0),
           seed: int = 0) -> Path:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    data = rng.uniform(0, 100, shape).astype(np.float32)
    if modality == "CT":
        data = data * 20 - 1000
    vol = Volume(data, np.diag([*spacing, 1.0]), modality=modality)
    return save_volume(vol, tmp / name)


def test_normalisation_maps_are_linear_and_invertible() -> None:
    n = Normalisation()
    hu = np.array([-1000.0, 0.0, 2000.0])
    assert np.allclose(n.to_model(hu, "CT"), [0.0, 1 / 3, 1.0])
    assert np.allclose(n.from_model(n.to_model(hu, "CT"), "CT"), hu)
    rng = np.random.default_rng(0)
    mr = rng.uniform(0, 500, (10, 10, 10))
    s = n.mr_scale(mr)
    fg = mr[mr > 0.05 * mr.max()]
    assert s == pytest.approx(np.percentile(fg, 99.5))
    y = n.to_model(mr, "MR", s)
    assert np.allclose(n.from_model(y, "MR", s), mr)
    t = torch.tensor(mr)
    assert torch.allclose(n.to_model(t, "MR", s), torch.tensor(y))
    with pytest.raises(InputError):
        n.to_model(mr, "PT")


def test_discovery_manifest_and_split(tmp_path: Path) -> None:
    d = tmp_path / "studies"
    a = _write(d / "sub1", "a.nii.gz", "MR")
    b = _write(d / "sub2", "b.nii", "CT")
    found = discover_studies([d])
    assert sorted(p for p, _ in found) == sorted([a, b])
    man = tmp_path / "list.csv"
    man.write_text("path,modality\nstudies/sub1/a.nii.gz,MR\nstudies/sub2/b.nii,\n")
    rows = discover_studies([man])
    assert rows == [(a, "MR"), (b, None)]
    (tmp_path / "bad.txt").write_text("missing.nii\n")
    with pytest.raises(InputError, match="does not exist"):
        discover_studies([tmp_path / "bad.txt"])
    with pytest.raises(InputError, match="No NIfTI"):
        (tmp_path / "empty").mkdir()
        discover_studies([tmp_path / "empty"])
    items = [(tmp_path / f"s{i}.nii", None) for i in range(10)]
    tr, va = split_train_val(items, 0.3)
    assert len(va) >= 1 and set(tr).isdisjoint(va) and len(tr) + len(va) == 10
    assert split_train_val(list(reversed(items)), 0.3) == (tr, va)  # order-independent


def test_load_resamples_normalises_and_caches(tmp_path: Path) -> None:
    p = _write(tmp_path, "ct.nii.gz", "CT", shape=(20, 18, 10), spacing=(1.0, 1.0, 2.0))
    cfg = DataConfig(spacing_mm=(2.0, 2.0, 2.0))
    cache = tmp_path / "cache"
    tv = load_training_volume(p, None, cfg, Normalisation(), cache)
    assert tv.data.shape == (10, 9, 10) and tv.modality == 1
    assert 0.0 <= tv.data.min() and tv.data.max() <= 1.0
    assert len(list(cache.glob("*.npy"))) == 1
    again = load_training_volume(p, None, cfg, Normalisation(), cache)
    assert np.array_equal(again.data, tv.data)
    # a different target spacing is a different cache entry
    load_training_volume(p, None, dataclasses.replace(cfg, spacing_mm=(1.0, 1.0, 1.0)),
                         Normalisation(), cache)
    assert len(list(cache.glob("*.npy"))) == 2
    with pytest.raises(InputError, match="configured for MR only"):
        load_training_volume(p, None, dataclasses.replace(cfg, modalities=("MR",)),
                             Normalisation(), None)


def test_resample_keeps_constant_fields_and_field_of_view() -> None:
    x = np.full((10, 10, 10), 3.0, np.float32)
    y = resample_to_spacing(x, (1.0, 1.0, 1.0), (2.0, 2.0, 0.5))
    assert y.shape == (5, 5, 20) and np.allclose(y, 3.0)


def _path_hash(p: Path) -> float:
    """The split's hash of a path (as in :func:`split_train_val`)."""
    return int(hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:12], 16) / 16**12


def test_file_pools_are_sharded_by_rank(tmp_path: Path) -> None:
    # names chosen so that the hash split holds out exactly one of the four studies (a random
    # tmp_path could otherwise hold out three and leave rank 1 without a training study)
    names = [f"v{i}.nii" for i in range(200)]
    held = [n for n in names if _path_hash(tmp_path / "d" / n) < 0.25][:1]
    kept = [n for n in names if _path_hash(tmp_path / "d" / n) >= 0.25][:3]
    for i, name in enumerate(held + kept):
        _write(tmp_path / "d", name, "MR", seed=i)
    cfg = DataConfig(val_fraction=0.25, modalities=("MR",))
    tr0, va0 = build_pools(cfg, Normalisation(), [tmp_path / "d"], None, 0, 2)
    tr1, va1 = build_pools(cfg, Normalisation(), [tmp_path / "d"], None, 1, 2)
    assert len(va0) >= 1 and va1 == []  # validation: rank 0 only
    s0, s1 = {v.source for v in tr0}, {v.source for v in tr1}
    assert s0 and s1 and s0.isdisjoint(s1)  # disjoint shards ...
    assert len(s0 | s1) + len(va0) == 4  # ... covering every training study once
    assert not (s0 | s1) & {v.source for v in va0}


def test_patches_are_deterministic_per_step_and_positions_are_normalised() -> None:
    cfg = DataConfig(source="phantom", synthetic_shape=(24, 24, 24), patch_size=(8, 8, 8),
                     train_volumes=2, val_volumes=1)
    tr, _ = build_pools(cfg, Normalisation())
    s = PatchSampler(tr, cfg, seed=0, rank=0)
    a, b = s.batch(5, 4), s.batch(5, 4)
    assert torch.equal(a.x, b.x) and torch.equal(a.position, b.position)
    assert a.x.shape == (4, 1, 8, 8, 8)
    assert not torch.equal(a.x, s.batch(6, 4).x)
    assert not torch.equal(a.x, PatchSampler(tr, cfg, seed=0, rank=1).batch(5, 4).x)
    assert float(a.position.abs().max()) <= 1.0
    assert set(a.modality.tolist()) <= {0, 1}


def test_affine_augmentation_with_zero_angle_is_a_plain_crop() -> None:
    base = DataConfig(source="phantom", synthetic_shape=(32, 32, 32), patch_size=(16, 16, 16),
                      train_volumes=1, val_volumes=1, intensity=0.0, flip_axes=())
    tr, _ = build_pools(base, Normalisation())
    nearly = dataclasses.replace(base, rotate_deg=1e-6, scale=1e-7)
    plain = dataclasses.replace(base, rotate_deg=0.0, scale=0.0)
    a = PatchSampler(tr, nearly, 0).batch(0, 3)
    b = PatchSampler(tr, plain, 0).batch(0, 3)
    assert torch.allclose(a.x, b.x, atol=1e-4)
    c = PatchSampler(tr, dataclasses.replace(base, rotate_deg=10.0, scale=0.1), 0).batch(0, 3)
    assert not torch.allclose(c.x, b.x, atol=1e-3)


def test_flips_mirror_the_patch_and_its_position() -> None:
    base = DataConfig(source="phantom", synthetic_shape=(24, 24, 24), patch_size=(8, 8, 8),
                      train_volumes=1, val_volumes=1, intensity=0.0, rotate_deg=0.0, scale=0.0,
                      flip_axes=(0,))
    tr, _ = build_pools(base, Normalisation())
    noflip = PatchSampler(tr, dataclasses.replace(base, flip_axes=()), 0).batch(0, 16)
    flip = PatchSampler(tr, base, 0).batch(0, 16)
    flipped = flip.position[:, 0] != noflip.position[:, 0]
    assert flipped.any() and (~flipped).any()
    for i in range(16):
        if flipped[i]:
            assert torch.equal(flip.x[i], torch.flip(noflip.x[i], dims=[1]))
            assert flip.position[i, 0] == -noflip.position[i, 0]
        else:
            assert torch.equal(flip.x[i], noflip.x[i])


def test_dicom_series_folders_are_training_studies(tmp_path: Path) -> None:
    from tests.dicom_factory import write_series

    rng = np.random.default_rng(0)
    ct = np.rint(rng.uniform(-1000, 1000, (12, 10, 6)))
    write_series(tmp_path / "tree" / "pat1" / "ct", ct, np.diag([2.0, 2.0, 2.0, 1.0]),
                 modality="CT", intercept=-1024.0)
    _write(tmp_path / "tree" / "pat2", "mr.nii.gz", "MR", shape=(8, 8, 8), spacing=(2, 2, 2))
    found = discover_studies([tmp_path / "tree"])
    assert sorted(p.name for p, _ in found) == ["ct", "mr.nii.gz"]
    ct_dir = next(p for p, _ in found if p.name == "ct")
    tv = load_training_volume(ct_dir, None, DataConfig(), Normalisation(), None)
    assert tv.modality == 1 and tv.data.shape == (12, 10, 6)
    assert np.allclose(np.sort(tv.data.ravel()), np.sort(((ct + 1000) / 3000).ravel()),
                       atol=1e-5)


def test_split_keeps_a_training_study_for_any_paths(tmp_path: Path) -> None:
    """Whatever the hashes of the paths, two or more studies give non-empty train and val."""
    for trial in range(40):
        items = [(tmp_path / f"t{trial}" / f"s{i}.nii.gz", None) for i in range(3)]
        tr, va = split_train_val(items, 0.9)
        assert tr and va and len(tr) + len(va) == 3


def test_split_trains_on_a_single_study_even_when_hashed_into_validation(
        tmp_path: Path) -> None:
    """One study is never held out: all to training, no validation (for any hash)."""
    items = [(tmp_path / f"only{i}.nii.gz", None) for i in range(20)]
    for it in items:
        assert split_train_val([it], 0.9) == ([it], [])  # most of these hash below 0.9
    assert split_train_val([], 0.5) == ([], [])
