"""The folds of the MR hold-out (medrecon.recon.autotune.mr_holdout_folds) and the criterion
pooled over them (medrecon.recon.sure.risk_criterion, medrecon.recon.mri._weight)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from medrecon.io import Volume
from medrecon.io.measurement import Measurement
from medrecon.operators.masks import make_mask
from medrecon.operators.mri import SenseOperator
from medrecon.phantoms import shepp_logan_3d
from medrecon.problem import Problem, measurement_problem
from medrecon.recon import mri
from medrecon.recon.autotune import (
    MIN_HELDOUT_UNITS,
    fold_count,
    mr_holdout_folds,
    mr_holdout_masks,
)
from medrecon.recon.base import ReconOptions
from medrecon.recon.sure import Fold, heldout_risk, risk_criterion, sure, sure_probe
from medrecon.simulate import MRISettings, SimulationConfig, simulate

CPU = torch.device("cpu")


def test_fold_count_reaches_the_minimum_within_its_bounds() -> None:
    """Enough folds to hold out MIN_HELDOUT_UNITS (30) units together, at most 7
    (round(1 / 0.15)) and at most as many as the candidates fill; one where a single draw
    holds out 30 already."""
    assert MIN_HELDOUT_UNITS == 30
    assert fold_count(1, 4) == 4  # 48-line synthetic row: every candidate line once
    assert fold_count(2, 16) == 7  # capped at round(1 / fraction)
    assert fold_count(3, 20) == 6  # 6 folds of 3 fill 18 of the 20 candidates
    assert fold_count(12, 80) == 3  # ceil(30 / 12)
    assert fold_count(30, 200) == fold_count(34, 224) == fold_count(240, 1600) == 1
    assert fold_count(0, 0) == 1


def _random_lines(lines: int = 40, accel: float = 3.0, calibration: int = 6) -> np.ndarray:
    return np.asarray(make_mask("random", (8, lines, 1), accel, calibration=calibration,
                                dims="2d", seed=2).mask).astype(np.float32)


def test_line_folds_are_disjoint_and_fold_0_is_the_former_draw() -> None:
    """A 2D random-line mask with one held-out line per draw: the folds hold out every line
    outside the calibration block at most once (here each exactly once), fold 0 is
    mr_holdout_masks' draw (the guard's split), and the calibration lines always train."""
    mask = _random_lines()
    calib = np.zeros(mask.shape, dtype=bool)
    calib[:, 17:23] = True  # the 6 central lines (fastMRI placement)
    assert np.all(mask[calib] > 0)
    folds = mr_holdout_folds(mask, (0, 1), 6, seed=4, image_shape=(8, 40, 1))
    first = mr_holdout_masks(mask, (0, 1), 6, seed=4, image_shape=(8, 40, 1))
    assert np.array_equal(folds[0][0], first[0]) and np.array_equal(folds[0][1], first[1])
    candidates = int(((mask > 0) & ~calib).sum())
    per_fold = int((first[1] > 0).sum())
    assert per_fold == max(1, round(0.15 * candidates))
    assert len(folds) == fold_count(per_fold, candidates) > 1
    count = np.zeros(mask.shape, dtype=int)
    for train, held in folds:
        assert train.shape == held.shape == mask.shape
        assert np.array_equal(train + held, mask)
        assert not np.any((train > 0) & (held > 0))
        assert np.all(train[calib] > 0)
        assert int((held > 0).sum()) == per_fold  # equal sizes: one scale for all
        count += held > 0
    assert count.max() == 1  # disjoint
    assert int(count.sum()) == len(folds) * per_fold
    # given fold 0 (the guard's split), the same folds
    again = mr_holdout_folds(mask, (0, 1), 6, seed=4, image_shape=(8, 40, 1), first=first)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(again, folds, strict=True))
    other = mr_holdout_folds(mask, (0, 1), 6, seed=5, image_shape=(8, 40, 1))
    assert not np.array_equal(other[1][1], folds[1][1])


def test_large_masks_keep_one_fold_and_single_samples_fold_full_size() -> None:
    """A 3D mask holding out >= 30 points in one draw keeps that draw alone (the former
    split, no more solves); a regular pattern's single samples fold on the full grid."""
    rng = np.random.default_rng(0)
    mask = (rng.random((1, 64, 48)) < 0.3).astype(np.float32)
    mask[:, 28:36, 20:28] = 1.0
    folds = mr_holdout_folds(mask, (0, 1, 2), 8, seed=1, image_shape=(4, 64, 48))
    first = mr_holdout_masks(mask, (0, 1, 2), 8, seed=1, image_shape=(4, 64, 48))
    assert len(folds) == 1 and (folds[0][1] > 0).sum() >= 30
    assert np.array_equal(folds[0][1], first[1]) and np.array_equal(folds[0][0], first[0])

    shape = (6, 24, 1)
    regular = np.asarray(make_mask("equispaced", shape, 3.0, calibration=4, dims="2d",
                                   seed=2).mask).astype(np.float32)
    folds = mr_holdout_folds(regular, (0, 1), 4, seed=1, image_shape=shape)
    assert folds[0][1].shape == shape and len(folds) > 1
    assert np.array_equal(folds[0][1], mr_holdout_masks(regular, (0, 1), 4, seed=1,
                                                        image_shape=shape)[1])
    held = np.stack([h > 0 for _, h in folds])
    assert held.sum(axis=0).max() == 1
    assert not np.any(held[:, :, 10:14])  # the calibration lines stay
    assert held.any(axis=(0, 1)).sum() > 2  # several readout lines give samples


@pytest.fixture(scope="module")
def case() -> Measurement:
    """Shepp-Logan 16 x 14 x 6, 4 coils, R = 3, SNR 20: a 3D mask of 84 phase positions,
    a few held out per draw."""
    ref = Volume(shepp_logan_3d((16, 14, 6)), np.eye(4), modality="MR")
    cfg = SimulationConfig(seed=3, mri=MRISettings(coils=4, acceleration=3.0, calibration=4,
                                                   snr=20.0))
    return simulate(ref, cfg)


def _part(problem: Problem, k: np.ndarray) -> Problem:
    op = problem.op
    assert isinstance(op, SenseOperator)
    k_t = torch.from_numpy(k)
    part_op = SenseOperator(op.maps, k_t, fft_dims=op.fft_dims, image_shape=op.image_shape)
    return dataclasses.replace(problem, op=part_op, y=problem.y * (k_t > 0))


def test_risk_criterion_pools_the_folds(case: Measurement) -> None:
    """Without a probe: the relative residual of all held-out data, each fold's predicted
    from its own training solve (one fold: its residual as it is); with fold 0's probe:
    SURE of fold 0 plus the mean of the folds' held-out risks."""
    problem = measurement_problem(case, CPU)
    mask = problem.op.mask.numpy()  # type: ignore[union-attr]
    folds = mr_holdout_folds(mask, case.fft_dims, 4, seed=0, image_shape=(16, 14, 6))
    assert len(folds) > 1
    parts = [(_part(problem, t), _part(problem, h)) for t, h in folds]
    settings = mri.method_settings(mri.L1WaveletSettings, {"map_sets": 1}, "l1-wavelet")

    def solve(p: Problem, lam: float) -> torch.Tensor:
        return mri._l1_solve(p, lam, settings, 15, 0.0, False, CPU)[0].x

    lam = 1e-3
    xs = [solve(s, lam) for s, _ in parts]
    res2 = sum(float((torch.abs(h.op(x) - h.y) ** 2).sum())
               for (_, h), x in zip(parts, xs, strict=True))
    y2 = sum(float((torch.abs(h.y) ** 2).sum()) for _, h in parts)
    relative: dict[float, float] = {}
    pooled = risk_criterion([Fold(s, h) for s, h in parts], solve, 1.0, relative)(lam)
    assert pooled == relative[lam] == pytest.approx(math.sqrt(res2 / y2), rel=1e-5)
    one: dict[float, float] = {}
    assert risk_criterion([Fold(*parts[0])], solve, 1.0, one)(lam) == \
        parts[0][1].residual(xs[0])
    # fold 0 alone is another number: the other folds count
    assert abs(one[lam] - pooled) > 1e-3

    probe = sure_probe(parts[0][0], 0)
    assert probe is not None
    makers = [lambda: Fold(parts[0][0], parts[0][1], probe)] + [
        lambda s=s, h=h: Fold(s, h) for s, h in parts[1:]]
    got = risk_criterion(makers, solve, 1.0, {})(lam)
    in_sample = parts[0][0].noise_std ** 2 * sure(parts[0][0], xs[0],
                                                  solve(probe.nudged, lam), probe)
    held = np.mean([heldout_risk(h, x) for (_, h), x in zip(parts, xs, strict=True)])
    assert got == pytest.approx(in_sample + held, rel=1e-6)


def test_self_tuned_weight_reports_its_folds_and_the_guard_split_gives_the_same(
        case: Measurement) -> None:
    """l1-wavelet's self-tuning on a few-unit mask scores every fold and says so; handed the
    guard's split (fold 0, drawn already) it picks the same weight."""
    options = ReconOptions(iterations=10)
    settings = mri.method_settings(mri.L1WaveletSettings, {}, "l1-wavelet")
    out = mri.l1_wavelet(case, options, CPU)
    tuned = out.info["autotune"]
    problem, _ = mri._setup(case, settings, CPU)
    mask = problem.op.mask.numpy()  # type: ignore[union-attr]
    acq = case.acquisition or {}
    assert acq["calibration"] == 4
    folds = mr_holdout_folds(mask, case.fft_dims, 4, seed=int(acq["seed"]),
                             image_shape=(16, 14, 6))
    assert tuned["folds"] == len(folds) > 1
    assert out.info["autotune_line"].endswith(
        f"held-out terms pooled over {len(folds)} disjoint folds")
    given = mri.l1_wavelet(case, options, CPU, holdout_masks=folds[0])
    assert given.info["lam"] == out.info["lam"]
    assert given.info["autotune"]["heldout_errors"] == tuned["heldout_errors"]
