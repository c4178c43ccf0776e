"""``--workers N``: training volumes are loaded / generated in N spawned processes, which
needs picklable per-item callables (not closures), and gives the same volumes as one process."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from medrecon.io import Volume, save_volume
from medrecon.priors.config import DataConfig
from medrecon.priors.data import (
    PatchSampler,
    PhantomMaker,
    StudyLoader,
    SyntheticMaker,
    TrainingVolume,
    build_pools,
)
from medrecon.priors.normalisation import Normalisation

TINY = dict(modalities=("MR", "CT"), spacing_mm=(2.0, 2.0, 2.0), patch_size=(8, 8, 8),
            synthetic_shape=(16, 16, 16), train_volumes=2, val_volumes=1)


def _same(a: list[TrainingVolume], b: list[TrainingVolume]) -> bool:
    return [v.source for v in a] == [v.source for v in b] and all(
        np.array_equal(x.data, y.data) and x.modality == y.modality for x, y in zip(a, b, strict=True))


def test_per_item_callables_survive_pickling(tmp_path: Path) -> None:
    cfg = DataConfig(source="phantom", **TINY)  # type: ignore[arg-type]
    norm = Normalisation()
    study = save_volume(Volume(np.ones((6, 6, 6), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]),
                               modality="MR"), tmp_path / "s.nii.gz")
    for fn, item in ((PhantomMaker(cfg), (3, "CT")), (SyntheticMaker(cfg, norm), (3, "MR")),
                     (StudyLoader(cfg, norm, None), (study, None))):
        again = pickle.loads(pickle.dumps(fn))
        assert _same([again(item)], [fn(item)])  # type: ignore[operator]


@pytest.mark.timeout(120)  # a wedged worker pool must fail, not hang
@pytest.mark.parametrize("source", ["phantom", "synthetic", "files"])
def test_pools_from_two_worker_processes_equal_one_process(source: str, tmp_path: Path) -> None:
    paths: list[Path] = []
    if source == "files":
        for i in range(3):
            data = np.random.default_rng(i).uniform(0, 100, (10, 9, 8)).astype(np.float32)
            paths.append(save_volume(Volume(data, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR"),
                                     tmp_path / f"s{i}.nii.gz"))
    cfg = DataConfig(source=source, val_fraction=0.3, **TINY)  # type: ignore[arg-type]
    one = build_pools(cfg, Normalisation(), paths, None, workers=0)
    two = build_pools(cfg, Normalisation(), paths, None, workers=2)
    assert one[0] and one[1]
    assert _same(one[0], two[0]) and _same(one[1], two[1])
    batch = PatchSampler(two[0], cfg, seed=0).batch(0, 2)
    assert batch.x.shape == (2, 1, 8, 8, 8)
