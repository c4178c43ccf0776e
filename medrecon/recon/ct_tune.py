"""Self-tuning of the CT methods from the measurement alone: the hold-out split and TV's weight.

SIRT and CGLS choose their iteration count by early stopping on held-out views, TV its weight
by the rule below (issue 13, item 1); the diffusion guard (:mod:`medrecon.guard`) uses the same
split (:func:`holdout_masks`: every 7th view, offset by the seed).

TV's weight: the held-out pick, and with ``discrepancy_cap`` (``--set discrepancy_cap=true``,
off by default, see "Real check" below) the smaller of two estimates::

    lam_h = argmin_lam ||M_h (A x_lam - y)|| / ||M_h y||     x_lam: TV from the training views
    m(lam) = ||M_t (A x_lam - y)||^2 / (sigma^2 n_t)          misfit in units of the noise
    lam   = lam_h                 if m(lam_h) <= 1
            lam_d: m(lam_d) = 1   otherwise (below lam_h)

1. Held-out views (``lam_h``): TV on the training views over the log grid around the fixed
   weight (:func:`~medrecon.recon.autotune.tune_weight`), scored on the held-out views.
2. The discrepancy cap (``lam_d``, Morozov's principle): the same training solves also give
   their misfit to the training data in units of the expected noise energy (:func:`discrepancy`;
   ``sigma^2`` the ray-averaged variance ``exp(p) / I0`` (+ electronic noise) of the log
   transform, from the file's noise model, ``n_t`` the training rays). When the held-out pick
   fits the training views worse than the noise, the weight becomes the one whose misfit
   equals 1 (:func:`discrepancy_weight`, interpolated in log-log between tried weights; up to
   three more solves below the grid when none of them fits). No cap without a noise model
   (noiseless or unknown-dose data), nor where no weight fits to the noise level (data the
   model cannot explain, e.g. an object larger than the image grid).
3. The weight carries over to all views unscaled (the data term is normalised by ||A||^2,
   which grows with the views as ||A x - y||^2 does). The cap costs no extra solve unless the
   grid must be extended downwards.

Why the smaller of the two: both err toward too strong a weight, for different reasons.

* Held-out views: the training views leave a gap of twice the view spacing around each
  held-out view, and above the angular Nyquist frequency of the training views (about
  ``n / (4 pi R)`` for n views and an object of radius R: 0.02 /mm for 30 views on a 20 cm
  head, against a detector Nyquist of 0.67 /mm at 0.75 mm) a held-out projection cannot be
  predicted from them; there the smoothest reconstruction predicts it best (nothing, where a
  sharper one predicts streaks), and the score never sees the detail along the measured views
  that PSNR rewards. With 1 mm pixels on 128^2 the bias stays within half an octave; with 30
  views on 256^2 at 0.75 mm the held-out pick was 11x and 16x the PSNR optimum (2.8 and 3.7 dB),
  with 60 views 2x (1.1 dB); on the real abdomen slice 2x (30 views).
* The discrepancy principle over-smooths: the best reconstruction fits part of the noise (its
  degrees of freedom), so its misfit is below 1 (0.53-1.01 on the synthetic heads) and the
  weight whose misfit is 1 lies above the optimum (1.1-2.1x on the heads; it alone lost up to
  1.4 dB at 1 mm, where the held-out pick is better).

Measured (benchmarks/RESULTS_autotune.md, synthetic test heads, I0 = 1e5, 200 PDHG iterations,
PSNR above -900 HU): on the fine weight grid the capped pick is within 0.32 dB of the oracle on
all eight cases (128^2 at 1 mm and 256^2 at 0.75 mm, 30 and 60 views, 256^2 at 0.5 mm), where
the held-out pick alone lost up to 3.7 dB; the capped self-tuning (coarse grid) went from 0.7-3.9 dB
to 0.04-0.28 dB under the oracle on the three 0.75 mm cases measured. Left: 0.64 dB at 1 mm,
30 views, one head, from the hold-out's variance (which views are held out), not its bias.

Real check (once, after the rule was fixed on synthetic data; the real validation slices of
benchmarks/real_quality.py, 1 slice, ct30 / ct60, oracle on 2^(e/2) x 1e-3, e = -8..2): on the
abdomen (0.86 mm) the cap does not engage (held-out pick 2x the oracle: 0.17 / 0.76 dB); on the
spine (0.29 mm) it gains 1.7 dB at 30 views (held-out pick 4x the oracle, 1.44 dB; capped 0.28 dB
above the grid's best) and does not engage at 60 (1.7x, 0.47 dB); on the head (0.39 mm) it loses 2.5 / 1.1 dB (capped 2.2 / 1.6 dB under
the oracle, the held-out pick 0.35 dB above the grid's best / 0.45 dB under it). There the best
image fits the data far worse than the noise (the held-out pick's misfit 7.8 / 3.0): the slice
holds fine detail that 30-60 views cannot resolve, and fitting it to the noise level brings back
streaks; no synthetic head showed this, textured ones and 512^2 at 0.39 mm included. The cap
therefore stays off by default until a criterion tells the cases apart from the data alone.

Tried and not adopted (same benchmark): scoring the held-out views only below the angular
Nyquist frequency of the training views (4x the optimum, 3.7 dB, at 1 mm; 1-4x elsewhere), a
half-ramp weighting of the held-out residual (the same picks as the plain one), holding out
more views (every 4th: pushes the pick up, 2x at 1 mm), the discrepancy principle alone (up to
1.4 dB at 1 mm). Holding out random detector pixels instead of whole views (all angles stay in
training, as MR holds out single samples of regular patterns) chose 1.41x (0.25 dB) at 1 mm,
30 views; not measured on the fine grids for lack of time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.problem import Problem, measurement_problem
from medrecon.recon.autotune import TuneReport, ct_holdout_views, tune_weight

if TYPE_CHECKING:
    from medrecon.io.measurement import Measurement

Tensor = torch.Tensor

__all__ = [
    "SureProbe",
    "discrepancy",
    "discrepancy_weight",
    "holdout_masks",
    "heldout_risk",
    "holdout_problems",
    "sure",
    "sure_probe",
    "tune_tv_weight",
]


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


def _noise_count(problem: Problem) -> float:
    """``sum_i w_i^2`` (the number of rays without pixel weights): ``E||n||^2 / sigma^2``."""
    count = (float(problem.y.numel()) if problem.weights is None
             else float((problem.weights.double() ** 2).sum()))
    return max(count, 1.0)


def discrepancy(problem: Problem, x: Tensor) -> float:
    """``||A x - y||^2 / E||n||^2``: the data misfit of ``x`` (mu in 1/mm) in units of the
    expected noise energy ``sigma^2 sum_i w_i^2`` (``w`` the pixel weights, else 1; ``sigma^2``
    the ray-averaged variance of :func:`medrecon.problem.measurement_problem`); inf without a
    noise model."""
    if problem.noise_std <= 0.0:
        return math.inf
    with torch.no_grad():
        r = (problem.op(x) - problem.y).double()
        return float((r * r).sum()) / (problem.noise_std ** 2 * _noise_count(problem))


@dataclasses.dataclass(frozen=True)
class SureProbe:
    """A fixed Gaussian nudge of a problem's data for the Monte-Carlo divergence of SURE.

    Attributes:
        nudged: the problem with data ``y + eps * d``.
        direction: ``d = w * b`` (b standard normal, w the pixel weights or 1), data shape.
        eps: the step, a tenth of the noise level (1/mm, the data's units).
    """

    nudged: Problem
    direction: Tensor
    eps: float


def sure_probe(problem: Problem, seed: int = 0) -> SureProbe | None:
    """The nudge of :func:`sure` for ``problem`` (None without a noise model); ``seed`` fixes
    ``b`` so that the choice is reproducible."""
    if problem.noise_std <= 0.0:
        return None
    b = torch.randn(tuple(problem.y.shape), generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float32).to(device=problem.y.device, dtype=problem.y.dtype)
    direction = b if problem.weights is None else b * problem.weights  # weighted data: W n
    eps = 0.1 * problem.noise_std
    nudged = dataclasses.replace(problem, y=problem.y + eps * direction)
    return SureProbe(nudged, direction, eps)


def heldout_risk(problem: Problem, x: Tensor) -> float:
    """The held-out views' estimate of the squared prediction error per ray,
    ``||A x - y||^2 / sum_i w_i^2 - sigma^2`` ((1/mm)^2; x: mu in 1/mm, from the other
    views): the residual's mean square less the noise variance."""
    with torch.no_grad():
        r = (problem.op(x) - problem.y).double()
        return float((r * r).sum()) / _noise_count(problem) - problem.noise_std ** 2


def sure(problem: Problem, x: Tensor, x_nudged: Tensor, probe: SureProbe) -> float:
    """Stein's unbiased estimate of the in-sample risk ``||A (x - x_true)||^2 / E||n||^2``
    (x, x_nudged: the method's results from the data and from ``probe.nudged``, mu in 1/mm)::

        misfit - 1 + 2 tr(Sigma J) / E||n||^2,   tr(Sigma J) ~ sigma^2 d . (A x' - A x) / eps

    (``J`` the Jacobian of the predicted data ``A x`` in the data, one Monte-Carlo probe).
    """
    with torch.no_grad():
        change = (problem.op(x_nudged) - problem.op(x)).double()
        div = float((probe.direction.double() * change).sum()) / probe.eps
    return discrepancy(problem, x) - 1.0 + 2.0 * div / _noise_count(problem)


def discrepancy_weight(lams: Sequence[float], ratios: Sequence[float],
                       below: float = math.inf) -> float | None:
    """Where the misfit ratio crosses 1 (Morozov's discrepancy principle) below ``below``:
    the largest tried weight ``<= below`` with a ratio under 1 and its upper neighbour,
    interpolated linearly in (log lam, log ratio) (the largest weight itself when it fits
    already); None when no weight up to ``below`` fits
    the data to the noise level (then the model cannot explain the data, e.g. an object
    larger than the grid, and the principle does not apply)."""
    pairs = sorted((lam, r) for lam, r in zip(lams, ratios, strict=True) if lam <= below)
    if pairs and pairs[-1][1] < 1.0:
        return pairs[-1][0]
    for (l0, r0), (l1, r1) in zip(pairs[-2::-1], pairs[::-1], strict=False):
        if r0 < 1.0:  # the first weight under the noise level, going down (r1 >= 1 > r0)
            t = -math.log(max(r0, 1e-300)) / (math.log(r1) - math.log(max(r0, 1e-300)))
            return float(math.exp(math.log(l0) + t * (math.log(l1) - math.log(l0))))
    return None


def tune_tv_weight(measurement: Measurement, problem: Problem, centre: float,
                   device: torch.device,
                   solve: Callable[[Problem, float], Tensor],
                   cap: bool = False, use_sure: bool = True) -> tuple[float, TuneReport]:
    """The TV weight for all the data of ``measurement`` (its ``problem``): with ``use_sure``
    (and a noise model) the minimum of the summed per-ray risks of the training views (SURE)
    and the held-out views, else the held-out views' choice; with ``cap`` capped at the
    discrepancy weight of the training views (module docstring).

    Args:
        centre: the method's fixed weight; the search grid lies around it.
        solve: ``solve(problem, lam) -> x``, the method on a problem (x in units of water).

    Returns:
        (weight, what was tried and why).
    """
    sub, held, text = holdout_problems(measurement, device)
    mw = problem.units.mu_water
    assert mw is not None
    misfit: dict[float, float] = {}
    relative: dict[float, float] = {}  # the held-out views' relative residual (the report's)
    seed = int((measurement.acquisition or {}).get("seed", 0) or 0)
    probe = sure_probe(sub, seed) if use_sure else None

    def criterion(lam: float) -> float:
        x = solve(sub, lam) * mw
        if cap:  # the misfit costs a projection per weight: only when it is used
            misfit[lam] = discrepancy(sub, x)
        relative[lam] = held.residual(x)
        if probe is None:
            return relative[lam]
        # one more solve per weight, from the nudged training data
        in_sample = sub.noise_std ** 2 * sure(sub, x, solve(probe.nudged, lam) * mw, probe)
        return in_sample + heldout_risk(held, x)

    lam, grid, _ = tune_weight(criterion, centre)
    errors = [relative[g] for g in grid]
    pick = grid[int(np.argmin(errors))]
    note = "" if pick == lam else f"held-out + SURE risk (held-out views alone: {pick:.3g})"
    if cap and math.isfinite(misfit[lam]) and misfit[lam] > 1.0:
        # The choice's fit is worse than the noise: cap it at the discrepancy weight below
        # it, stepping down (at most 3 grid steps, while the misfit still falls) until some
        # weight fits to the noise level; these extra solves score the misfit only, the
        # report's grid stays the search's.
        step = math.sqrt(grid[1] / grid[0]) if len(grid) > 1 else 2.0
        for _ in range(3):
            low = sorted(misfit)
            if (any(misfit[g] < 1.0 for g in low if g <= lam)
                    or (len(low) > 1 and misfit[low[0]] >= misfit[low[1]])):
                break
            criterion(low[0] / step)
        capped = discrepancy_weight(list(misfit), list(misfit.values()), below=lam)
        if capped is not None:
            note = "; ".join(t for t in (
                note, f"capped at the discrepancy weight (training misfit = noise level; "
                      f"uncapped {lam:.3g}, misfit {misfit[lam]:.3g})") if t)
            lam = capped
    report = TuneReport("lam", lam, tuple(grid), tuple(errors), 1.0, text, note)
    return lam, report
