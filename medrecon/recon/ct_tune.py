"""Self-tuning of the CT methods' weight from the measurement alone (issue 13).

(Docstring with the rule and its numbers: see below.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.problem import Problem, measurement_problem
from medrecon.recon.autotune import TuneReport, ct_holdout_views, tune_weight

if TYPE_CHECKING:
    from medrecon.io.measurement import Measurement

Tensor = torch.Tensor

__all__ = ["holdout_masks", "holdout_problems", "tune_tv_weight"]


def holdout_masks(measurement: Measurement) -> tuple[np.ndarray, np.ndarray, str]:
    """(training mask, held-out mask, what was held out) of a CT measurement: every k-th view
    set aside (:func:`~medrecon.recon.autotune.ct_holdout_views`) through the file's view
    mask, or zeroed in its per-pixel weights; either mask replaces ``measurement.mask``."""
    data = np.asarray(measurement.data)
    train, held = ct_holdout_views(data.shape[0],
                                   seed=int((measurement.acquisition or {}).get("seed", 0) or 0))
    mask = None if measurement.mask is None else np.asarray(measurement.mask, np.float32)
    if mask is not None and mask.shape == (data.shape[0],):
        train, held = train * mask, held * mask
    elif mask is not None:  # per-pixel weights: zero the other part's views
        train, held = train[:, None, None] * mask, held[:, None, None] * mask
    if not (np.any(held > 0) and np.any(train > 0)):
        raise InputError("Too few views to hold some out for self-tuning; give lam or "
                         "iterations.")
    n_held = int(np.count_nonzero(held.reshape(held.shape[0], -1).any(axis=1)))
    return train, held, f"{n_held} of {data.shape[0]} views held out"


def holdout_problems(measurement: Measurement,
                     device: torch.device) -> tuple[Problem, Problem, str]:
    """(training problem, held-out problem, what was held out) of :func:`holdout_masks`."""
    train, held, text = holdout_masks(measurement)
    parts = [measurement_problem(dataclasses.replace(measurement, mask=k), device)
             for k in (train, held)]
    return parts[0], parts[1], text


def tune_tv_weight(measurement: Measurement, problem: Problem, centre: float,
                   device: torch.device,
                   solve: Callable[[Problem, float], Tensor]) -> tuple[float, TuneReport]:
    """The TV weight for all the data of ``measurement`` (its ``problem``).

    Args:
        centre: the method's fixed weight; the search grid lies around it.
        solve: ``solve(problem, lam) -> x``, the method on a problem (x in units of water).

    Returns:
        (weight, what was tried and why).
    """
    sub, held, text = holdout_problems(measurement, device)
    mw = problem.units.mu_water
    assert mw is not None

    def heldout_error(lam: float) -> float:
        return held.residual(solve(sub, lam) * mw)

    lam, grid, errors = tune_weight(heldout_error, centre)
    return lam, TuneReport("lam", lam, tuple(grid), tuple(errors), 1.0, text)
