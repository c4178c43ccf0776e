"""Self-tuned weights and iteration counts by hold-out (medrecon.recon.autotune)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medrecon.io import Volume
from medrecon.io.measurement import Measurement
from medrecon.methods import get_method
from medrecon.phantoms import shepp_logan_3d
from medrecon.recon.autotune import (
    best_iteration,
    ct_holdout_views,
    mr_holdout_masks,
    tune_weight,
)
from medrecon.recon.base import ReconOptions
from medrecon.simulate import CTSettings, MRISettings, SimulationConfig, simulate

CPU = torch.device("cpu")


def psnr(img: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(ref.max() ** 2 / np.mean((img - ref) ** 2)))


@pytest.fixture(scope="module")
def mr_case() -> tuple[Measurement, np.ndarray]:
    ref = Volume(shepp_logan_3d((16, 14, 6)), np.eye(4), modality="MR")
    cfg = SimulationConfig(seed=3, mri=MRISettings(coils=4, acceleration=3.0, calibration=4,
                                                   snr=20.0))
    return simulate(ref, cfg), ref.data


@pytest.fixture(scope="module")
def ct_case() -> Measurement:
    hu = shepp_logan_3d((20, 20, 2)) * 1000.0 - 1000.0
    ref = Volume(hu.astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), modality="CT",
                 units="HU")
    return simulate(ref, SimulationConfig(modality="ct", seed=2,  # type: ignore[arg-type]
                                          ct=CTSettings(views=24, dose_i0=3e4)))


def test_mr_holdout_partitions_the_samples_and_keeps_calibration() -> None:
    mask = (np.random.default_rng(0).random((1, 30, 20)) < 0.4).astype(np.float32)
    mask[:, 12:18, 7:13] = 1.0
    train, held = mr_holdout_masks(mask, (0, 1, 2), calibration=6, fraction=0.15, seed=4)
    assert np.array_equal(train + held, mask)
    assert not np.any((train > 0) & (held > 0))
    assert np.all(train[:, 12:18, 7:13] == 1.0)  # the calibration box stays for training
    outside = (mask > 0).sum() - 36
    assert abs((held > 0).sum() - 0.15 * outside) <= 1
    again = mr_holdout_masks(mask, (0, 1, 2), calibration=6, fraction=0.15, seed=4)
    assert np.array_equal(again[1], held)
    other = mr_holdout_masks(mask, (0, 1, 2), calibration=6, fraction=0.15, seed=5)
    assert not np.array_equal(other[1], held)


def test_ct_holdout_views_every_kth() -> None:
    train, held = ct_holdout_views(60, seed=1)
    assert np.array_equal(train + held, np.ones(60))
    idx = np.flatnonzero(held)
    assert len(idx) in (8, 9) and np.all(np.diff(idx) == 7)
    train, held = ct_holdout_views(6, seed=0)  # few views: at least one, at most half
    assert 1 <= held.sum() <= 3


def test_tune_weight_finds_the_minimum_and_refines() -> None:
    calls: list[float] = []

    def err(lam: float) -> float:
        calls.append(lam)
        return (math.log(lam) - math.log(0.37)) ** 2

    best, grid, errors = tune_weight(err, 1.0)
    assert grid == sorted(grid) and len(grid) == len(errors) == 7 == len(calls)
    assert abs(math.log(best / 0.37)) < math.log(8 ** 0.25) + 1e-9
    assert errors[grid.index(best)] == min(errors)
    assert best_iteration([3.0, 2.0, 1.5, 1.7]) == 3


def test_mr_auto_weight_near_the_oracle_and_uses_all_data(
        mr_case: tuple[Measurement, np.ndarray]) -> None:
    m, ref = mr_case
    spec = get_method("MR", "tv")
    auto = spec(m, ReconOptions(iterations=25), CPU)
    tuned = auto.info["autotune"]
    assert tuned["parameter"] == "lam" and auto.info["lam"] == tuned["chosen"]
    assert len(tuned["heldout_errors"]) == len(tuned["grid"]) == 7
    assert tuned["scale"] > 1.0  # more samples in the full data term
    # The oracle over the same grid (scaled to all data), which needs the reference.
    scores = {g * tuned["scale"]: psnr(spec(m, ReconOptions(lam=g * tuned["scale"],
                                                            iterations=25), CPU).image, ref)
              for g in tuned["grid"]}
    oracle = max(scores, key=scores.__getitem__)
    assert abs(math.log(tuned["chosen"] / oracle)) <= math.log(4.0) + 1e-9, (tuned, scores)
    assert scores[oracle] - psnr(auto.image, ref) < 1.0
    # The final run is on all the data with the chosen weight, and deterministic.
    fixed = spec(m, ReconOptions(lam=tuned["chosen"], iterations=25), CPU)
    assert np.array_equal(fixed.image, auto.image)
    assert fixed.residual == pytest.approx(auto.residual)
    again = spec(m, ReconOptions(lam="auto", iterations=25), CPU)
    assert again.info["autotune"] == tuned and np.array_equal(again.image, auto.image)


def test_ct_auto_iterations_by_early_stopping(ct_case: Measurement) -> None:
    spec = get_method("CT", "cgls")
    auto = spec(ct_case, ReconOptions(), CPU)
    tuned = auto.info["autotune"]
    errors = tuned["heldout_errors"]
    assert tuned["parameter"] == "iterations" and len(errors) == 60
    assert auto.iterations == tuned["chosen"] == int(np.argmin(errors)) + 1
    fixed = spec(ct_case, ReconOptions(iterations=auto.iterations), CPU)
    assert np.allclose(fixed.image, auto.image)
    assert "views held out" in auto.info["autotune_line"]


def test_ct_tv_auto_weight_records_grid(ct_case: Measurement) -> None:
    out = get_method("CT", "tv")(ct_case, ReconOptions(iterations=20), CPU)
    tuned = out.info["autotune"]
    assert out.info["lam"] == tuned["chosen"] and tuned["scale"] == 1.0
    assert min(tuned["grid"]) < 1e-3 < max(tuned["grid"])  # around the fixed rule
    assert tuned["chosen"] in tuned["grid"]


def test_lam_auto_spelling() -> None:
    assert ReconOptions(lam="auto").lam is None
    with pytest.raises(Exception, match="number or 'auto'"):
        ReconOptions(lam="fast")


def test_tuning_line_reaches_the_dicom_derivation_text(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pydicom

    from medrecon.io.dicom_write import write_dicom_series

    v = Volume(np.ones((6, 5, 2), np.float32), np.eye(4), modality="MR")
    v.meta["reconstruction"] = {"method": "tv",
                                "autotune_line": "lam auto = 0.003: held-out error 0.1"}
    write_dicom_series(v, tmp_path / "out")
    ds = pydicom.dcmread(sorted((tmp_path / "out").iterdir())[0])
    assert ds.DerivationDescription.endswith("; lam auto = 0.003: held-out error 0.1")
