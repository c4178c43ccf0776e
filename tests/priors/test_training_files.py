"""`--data` files for training: unreadable studies are named, a single study is trained on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from medrecon.errors import InputError
from medrecon.io import Volume, save_volume
from medrecon.priors.config import DataConfig
from medrecon.priors.data import build_pools, file_pools
from medrecon.priors.normalisation import Normalisation

CFG = DataConfig(source="files", modalities=("MR",), spacing_mm=(2.0, 2.0, 2.0),
                 patch_size=(8, 8, 8), val_fraction=0.1)


def _held_out_name(folder: Path, stem: str) -> Path:
    """A path in ``folder`` that the hash split puts into validation (val_fraction 0.1)."""
    for i in range(10_000):
        p = folder / f"{stem}{i}.nii.gz"
        h = int(hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:12], 16) / 16**12
        if h < CFG.val_fraction:
            return p
    raise AssertionError("no held-out name found")


def _study(path: Path) -> Path:
    data = np.random.default_rng(0).uniform(0, 1, (12, 12, 12)).astype(np.float32)
    return save_volume(Volume(data, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR"), path)


def _truncated(path: Path, good: Path) -> Path:
    path.write_bytes(good.read_bytes()[:200])
    return path


def test_a_single_corrupt_study_is_named(tmp_path: Path) -> None:
    good = _study(tmp_path / "good.nii.gz")
    bad = _truncated(_held_out_name(tmp_path, "held"), good)
    with pytest.raises(InputError, match=rf"Cannot read NIfTI file .*{bad.name}") as info:
        file_pools(CFG, Normalisation(), [bad], None)
    assert "got no training volume" not in str(info.value)


def test_a_single_study_is_trained_on_even_when_hashed_into_validation(tmp_path: Path) -> None:
    study = _study(_held_out_name(tmp_path, "only"))
    train, val = file_pools(CFG, Normalisation(), [study], None)
    assert len(train) == 1 and val == [] and train[0].source == str(study)


def test_every_unreadable_study_is_named(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    good = _study(d / "a.nii.gz")
    _study(d / "b.nii.gz")
    for name in ("c.nii.gz", "d.nii.gz"):
        _truncated(d / name, good)
    with pytest.raises(InputError, match=r"^2 of 4 training studies cannot be used \(.*c\.nii\.gz, "
                                         r".*d\.nii\.gz\); the first: cannot read NIfTI file"):
        file_pools(CFG, Normalisation(), [d], None)


def test_too_few_studies_for_the_processes(tmp_path: Path) -> None:
    study = _study(tmp_path / "a.nii.gz")
    with pytest.raises(InputError, match="leave process 1 of 2 without a training volume; give "
                                         "at least 2 studies"):
        file_pools(CFG, Normalisation(), [study], None, rank=1, world_size=2)


def test_build_pools_for_files_is_file_pools(tmp_path: Path) -> None:
    """``build_pools`` (the Python API for every source) names unreadable studies too, and
    says which process is left without a study, not 'Rank N got no training volume'."""
    d = tmp_path / "data"
    d.mkdir()
    _truncated(d / "c.nii.gz", _study(d / "a.nii.gz"))
    with pytest.raises(InputError, match=r"^Cannot read NIfTI file .*c\.nii\.gz"):
        build_pools(CFG, Normalisation(), [d], None)
    with pytest.raises(InputError, match="leave process 1 of 2 without a training volume"):
        build_pools(CFG, Normalisation(), [d / "a.nii.gz"], None, rank=1, world_size=2)
