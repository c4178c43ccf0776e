"""Self-tuning of the CT methods from the measurement alone: the hold-out split and TV's weight.

SIRT and CGLS choose their iteration count by early stopping on held-out views, TV its weight
by the rule below (issue 13, item 1); the diffusion guard (:mod:`medrecon.guard`) uses the same
split (:func:`holdout_masks`: every 7th view, offset by the seed).

TV's weight minimises, over the held-out search's weights (the log grid around the fixed weight
of :func:`~medrecon.recon.autotune.tune_weight`, refined once, then the parabola vertex through
the best tried weight and its neighbours), the per-ray risk at a random angle estimated from
the training views and the held-out views (x_lam: TV from the training views, (1/mm)^2)::

    R(lam) = sigma_t^2 SURE_t(lam)  +  ( ||M_h (A x_lam - y)||^2 / n_h - sigma_h^2 ) / 3
             in-sample risk (SURE)      held-out views: squared prediction error less noise

* ``SURE_t`` (:func:`~medrecon.recon.sure.sure`): Stein's unbiased estimate of
  ``||M_t A (x_lam - x_true)||^2`` in units of the noise energy, the divergence by one
  Monte-Carlo probe: one more TV solve per weight from the training data nudged by
  ``0.1 sigma b`` (b fixed by the seed; :func:`~medrecon.recon.sure.sure_probe`). ``sigma^2``
  is the ray-averaged variance ``exp(p) / I0`` of the log transform from the file's noise
  model. So the divergence term estimates ``sigma^2 tr(J)``, not ``tr(Sigma J)``, and the
  estimate is biased low at weak weights (45 % on a synthetic head, 93 % on the real
  abdomen); a probe with each ray's own variance is accurate there, but with it this rule
  picks too strong weights (up to 0.54 dB): the held-out share below was derived and checked
  with the biased term (RESULTS_autotune.md, "CT TV's SURE is biased low at weak weights").
  Cost: two training solves per weight (14 instead of 7 for the default grid);
  ``--set sure=false`` keeps the held-out choice alone, as does data without a noise model
  (noiseless or unknown dose).
* The held-out term (:func:`~medrecon.recon.sure.heldout_risk`) is the same split's
  residual, the former rule's score (its relative form is still what the report lists as
  the held-out errors).
* The weight carries over to all views unscaled (the data term is normalised by ||A||^2),
  and from a slab of slices to the whole volume (:mod:`medrecon.slab`: parallel and fan
  beam are block diagonal over the slices with identical blocks, so the slab's ||A||^2 is
  the whole volume's).

Why a third of the held-out risk. A ray at a random angle lies between two measured views,
at a distance d of at most half the view spacing D from one of them (all views, the data the
weight is for); its prediction error grows with d from the in-sample risk R_0 at a measured
angle (what SURE estimates). A held-out view lies a whole spacing D from its nearest training
views (mid-way in a gap of 2D): it estimates R(D), at twice the largest distance the full
data have. With a linear growth ``R(d) = R_0 + (R(D) - R_0) d / D``, the risk averaged over d
in [0, D/2] is ``(3 R_0 + R(D)) / 4``, proportional to R(lam) above (a quadratic growth would
weigh the held-out term 1/11). The former rule summed the two terms (the average over
[0, D], as if the held-out view sat mid-way between two views of the full data) and chose
1.4-2x the PSNR optimum on the synthetic heads and the real abdomen and spine slices where
the held-out term dominates (benchmarks/RESULTS_autotune.md, "Between the tried weights or
beside them"). Each criterion alone errs, in opposite directions:

* Held-out views alone (the former rule) pick too smooth an image on sparse views: above the
  angular Nyquist frequency of the training views a held-out projection cannot be predicted,
  the smoothest image predicts it best, and the score never sees the detail along the
  measured views that PSNR rewards. Their curve is then flat (2.3e-3 to 2.7e-3 per ray over
  a 128x range of weights on 256^2 at 0.75 mm, 30 views) and, with 30 views, picked 4-23x the
  PSNR optimum there (1.5-3.9 dB). Averaging two or three interleaved splits, or a parabola
  through the minimum, does not remove this (a bias, not variance): 16x stays 16x.
* SURE alone (an in-sample risk) is blind to the unmeasured angles and picks too sharp an image
  where they dominate; on the synthetic heads it picked 0.35-1.4x the optimum (up to 0.5 dB),
  and the discrepancy principle (its cruder relative, below) cost 1.6-2.2 dB on a real head
  slice whose detail the views cannot resolve.
* In the weighted sum each term counts by how much it changes with the weight: where the
  held-out curve is flat, SURE decides; where the unmeasured angles' error grows fast with a
  smaller weight, the held-out views do.

The vertex (:func:`~medrecon.recon.autotune.parabola_vertex`, no extra solve): the minimum of
the parabola through the risks of the best tried weight and its two neighbours on the log-lam
axis (within half the distance to each; the tried weights are 2^(3/4) apart there), so that
the choice is not bound to the tried weights (the oracle's curve falls by 0.3-0.5 dB per
factor 1.7 on the heads at 1 mm and on the real spine).

Measured with the weighted sum and the vertex (benchmarks/RESULTS_autotune.md, "Between the
tried weights or beside them"; quarter-octave oracle, 200 PDHG iterations): on the synthetic
heads (128^2 at 1 mm, 30 / 60 views; 256^2 at 0.75 mm, 30 views) 0.00-0.11 dB under the
oracle, where the sum on the tried weights lost 0.07-0.64 dB; each change alone fixes only
some of them (the sum's vertex: up to 0.28 dB, it follows the sum's own bias; a third of the
held-out risk on the tried weights: up to 0.56 dB, a coarse step off). On the fine curves
the sum's minimum lies 1.2-2x above the PSNR optimum (a bias, not only the grid's
resolution), the weighted risk's within a quarter octave of it on 9 of 10 cases. Real
slices (central slice, the real validation files; their curves were measured to find the
bias, the third follows from the geometry above, not from them): abdomen 30 views 0.18 ->
0.01 dB, head 30 views 0.08 -> 0.10 dB, spine 60 views 0.00 -> 0.04 dB, spine 30 views
0.52 -> 0.62 dB (its weighted risk's minimum is still 1.7x the optimum).

History: the sum without the vertex, measured as follows.

Measured (benchmarks/RESULTS_autotune.md, "SURE plus held-out views", synthetic test heads,
I0 = 1e5, 200 PDHG iterations, PSNR above -900 HU; the fine weight grid 2^(e/2) x 1e-3): the
summed risk is within 0.45 dB of the oracle on all six cases with curves (128^2 at 1 mm,
256^2 at 0.75 mm with and without the generator's texture, 30 and 60 views), where the
held-out views alone lost up to 3.9 dB. The library's search (coarse grid x1/8..x8, refined
once): 0.14 / 0.06 dB under the oracle on 256^2 at 0.75 mm, 30 views (the held-out pick:
1.45 / 3.89 dB); at 1 mm 0.00-0.64 dB (the held-out pick: 0.00-1.72 dB; the picks sit a
coarse step above the optimum, the summed risk being flat near its minimum).

Real check (once, after the rule was fixed on synthetic data; the real validation slices of
benchmarks/real_quality.py, central slice, ct30 / ct60; oracles from the fine curves of
benchmarks/RESULTS_autotune.md): the summed risk kept the held-out pick on the abdomen (30
views: 2x the oracle, 0.17 dB) and on the head (30 views: 0.35 dB above the grid's best; 60
views: 1.7x, 0.45 dB), where the held-out term dominates and where the discrepancy cap lost
1.6-2.2 dB, and moved the spine at 30 views from 8e-3 (1.44 dB under the grid's best) to
4.8e-3 (0.22 dB under it), at 60 views the abdomen from 2x to 1.19x the oracle (0.76 ->
0.09 dB) and the spine from 1.7x to 1.0x (0.47 -> 0.00 dB): all six within 0.5 dB of the
oracle grid's best.

The discrepancy cap (``--set discrepancy_cap=true``, off by default): the chosen weight
capped at the weight whose misfit to the training views equals their noise energy
(:mod:`medrecon.recon.sure`: ``discrepancy``, ``discrepancy_weight``; Morozov's principle)::

    m(lam) = ||M_t (A x_lam - y)||^2 / (sigma^2 n_t)          misfit in units of the noise
    lam    = lam_d: m(lam_d) = 1 (below the choice)   where m(choice) > 1

(interpolated in log-log between tried weights; up to three more solves below the grid when
none of them fits; none where no weight fits, e.g. an object larger than the grid). It brought
the held-out pick within 0.3 dB of the oracle on the sparse synthetic heads but, on the real
validation slices (once, after the rule was fixed), gained 1.7 dB on the spine at 30 views and
lost 1.1-2.5 dB on the head (0.39 mm), whose best image fits the data far worse than the noise
(misfit 7.8 / 3.0 at 30 / 60 views): fine detail that 30-60 views cannot resolve, which fitting
to the noise level turns into streaks.

Tried and not adopted (same benchmarks): scoring the held-out views only below the angular
Nyquist frequency of the training views ``n_t / (pi FOV)`` (2.8x the optimum, 2.6 dB, at 1 mm;
below twice that frequency also 2.6 dB at 1 mm), the half-ramp weighted held-out residual,
holding out more views (every 4th), two or three interleaved splits, a parabola through the
held-out minimum, SURE alone (up to 0.5 dB at 60 views on 256^2), SURE unless the held-out
views prefer their pick by two standard errors of the per-view difference (they do, on the
biased cases: 1.45 dB), the geometric mean of the SURE and held-out picks (1.0 dB), and both
terms in the ramp-weighted energy that stands for the image's (``sure`` / ``heldout_risk``
with :class:`~medrecon.recon.sure.SpectralEnergy`): spine 30 views 0.62 -> 0.30 dB, but the
real head at 30 views 0.10 -> 0.87 dB and the abdomen at 60 views 0.00 -> 0.82 dB (CPU and
H100 alike; RESULTS_autotune.md, "CT TV's risk in the image's energy"). The linear growth
above was then measured with triples of views held out (RESULTS_autotune.md, "CT TV's
held-out risk at two distances"): the risk follows the gap around a ray (a view one spacing
from the training views is predicted 2.2-2.9x worse in a gap of 4 spacings than in one of 2)
more than its distance to the nearest view (+20-24 % from one spacing to two in the same gap);
a share extrapolated from the two gaps leaves the spine's pick where it is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.problem import Problem, measurement_problem
from medrecon.recon.autotune import TuneReport, ct_holdout_views, tune_weight
from medrecon.recon.sure import (
    Fold,
    discrepancy,
    discrepancy_weight,
    risk_criterion,
    sure_probe,
)

if TYPE_CHECKING:
    from medrecon.io.measurement import Measurement

Tensor = torch.Tensor

__all__ = [
    "HELDOUT_SHARE",
    "holdout_masks",
    "holdout_problems",
    "tune_tv_weight",
]


#: The held-out views' risk counts a third against SURE's (module docstring: a held-out view
#: lies a whole view spacing from the training views, twice the full data's largest distance).
HELDOUT_SHARE = 1.0 / 3.0


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
                   solve: Callable[[Problem, float], Tensor],
                   cap: bool = False, use_sure: bool = True,
                   keep: dict[float, Tensor] | None = None) -> tuple[float, TuneReport]:
    """The TV weight for all the data of ``measurement`` (its ``problem``): with ``use_sure``
    (and a noise model) the minimum of the summed per-ray risks of the training views (SURE)
    and the held-out views, else the held-out views' choice; with ``cap`` capped at the
    discrepancy weight of the training views (module docstring).

    Args:
        centre: the method's fixed weight; the search grid lies around it.
        solve: ``solve(problem, lam) -> x``, the method on a problem (x in units of water).
        keep: filled with each tried weight's solution on the training views (mu in 1/mm,
            on the host): the caller's for the weight it runs, where that is a tried one.

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

    def fit(p: Problem, lam: float) -> Tensor:
        x = solve(p, lam) * mw
        if cap and p is sub:  # the misfit costs a projection per weight: only when used
            misfit[lam] = discrepancy(sub, x)
        if keep is not None and p is sub:
            keep[lam] = x.detach().cpu()
        return x

    criterion = risk_criterion([Fold(sub, held, probe)], fit, HELDOUT_SHARE, relative)
    # with the risk: the vertex of its parabola through the best tried weight and its
    # neighbours; the held-out views alone keep the former rule (the best tried weight)
    lam, grid, values = tune_weight(criterion, centre, vertex=probe is not None)
    errors = [relative[g] for g in grid]
    tried = grid[int(np.argmin(values))]  # the tried weight nearest the vertex
    pick = grid[int(np.argmin(errors))]
    note = ("" if pick == tried
            else f"held-out + SURE risk (held-out views alone: {pick:.3g})")
    if cap and math.isfinite(misfit[tried]) and misfit[tried] > 1.0:
        # The choice's fit is worse than the noise: cap it at the discrepancy weight below
        # it, stepping down (at most 3 grid steps, while the misfit still falls) until some
        # weight fits to the noise level; these extra weights need their misfit only (one
        # solve each: no held-out residual, no SURE solve), the report's grid stays the
        # search's.
        step = math.sqrt(grid[1] / grid[0]) if len(grid) > 1 else 2.0
        for _ in range(3):
            low = sorted(misfit)
            if (any(misfit[g] < 1.0 for g in low if g <= lam)
                    or (len(low) > 1 and misfit[low[0]] >= misfit[low[1]])):
                break
            fit(sub, low[0] / step)
        capped = discrepancy_weight(list(misfit), list(misfit.values()), below=lam)
        if capped is not None:
            note = "; ".join(t for t in (
                note, f"capped at the discrepancy weight (training misfit = noise level; "
                      f"uncapped {lam:.3g}, misfit {misfit[tried]:.3g})") if t)
            lam = capped
    report = TuneReport("lam", lam, tuple(grid), tuple(errors), 1.0, text, note)
    return lam, report
