"""Self-tuned regularisation: choose a weight or an iteration count from the measurement alone.

A user has no reference image, so the weight of L1-wavelet and TV and the iteration count of
SIRT and CGLS are chosen by **hold-out validation** (cross-validation of the data): a seeded part
of the measured data is set aside, the method reconstructs from the rest, and the value whose
reconstruction predicts the held-out data best wins::

    err(v) = ||M_h (A x_v - y)|| / ||M_h y||        (relative held-out residual)

* MR: a random ~15 % of the sampled k-space points outside the calibration region (the coil
  maps and the low frequencies stay with the training part); see :func:`mr_holdout_masks`.
  A point is a whole readout line (the readout is always fully sampled), except for regular
  (equispaced) line patterns (:func:`regular_pattern`), where single samples along the
  readout are held out: held-out lines of a regular pattern leave gaps of twice the spacing
  that the full data never have, and the weight that bridges them best is not the weight
  for the full data (4-9x too strong on the fastMRI-format brain: 1.2 dB under the best
  weight with one map set, about 2.5 dB with two; 2.5x too weak on a wide-centre T1 slice,
  0.6 dB; 3x too strong on the synthetic head, 1.1 dB; benchmarks/RESULTS_mri.md). Single
  samples keep every line's neighbours, as SSDU's loss-mask selection does for uniform masks
  (Yaman et al., MRM 84:3172, 2020). On random and Poisson-disc patterns whole lines stay:
  there they mimic the unsampled lines, and single samples chose TV weights up to 2 dB
  under the oracle on the cases of benchmarks/RESULTS_autotune.md.

  **Folds** (:func:`mr_holdout_folds`, k-fold cross-validation). The held-out risk is a mean
  over held-out *units* (a line with all its readout samples and coils; a single sample of a
  regular pattern), and it stands in for the mean over the units the training data leave
  unmeasured (on random line masks the two are exchangeable). As an estimate of that mean its
  standard error is ``s / sqrt(n)`` for ``n`` units of spread ``s``. A unit's error follows
  the k-space energy, which falls as a power of |k| (about |k|^-2 per line of a
  piecewise-smooth image), so over the band outside the calibration box (|k| from k_c to 6-12
  k_c) a line's error has a coefficient of variation of 1.2-1.8 (|k|^-2 uniform over the
  band): whether the few lines next to the box are drawn decides the ranking. A standard error
  of a third of the mean needs ``n >= 9 x 1.8^2``, about 30 units (:data:`MIN_HELDOUT_UNITS`;
  set from this estimate, not fitted to any case). A draw of 15 % holds out 1-3 lines of a
  96-line 2D mask or a 10 x 10 phase plane at R = 4-8 (off by 30x on a synthetic 48-line row,
  1.2 dB on real files: RESULTS_autotune.md, "Counting the unmeasured positions"), but
  hundreds of points of a 3D Poisson mask on a 128^2 plane. So the units are split into ``k``
  disjoint folds of the same size, ``k`` the fewest that hold out 30 units together, at most
  ``round(1 / fraction)`` = 7 (each unit outside the box held out about once) and at most as
  many as the units fill (:func:`fold_count`); each weight is scored on all of them (one
  training solve per fold) and the held-out terms pooled. Fold 0 is the former single draw
  (the guard scores diffusion on it, :mod:`medrecon.guard`), so where it holds out 30 units
  already nothing changes: the same single solve per weight and the same pick. More folds
  reduce the sampling error only; the bias of the holes that held-out samples open in a
  Poisson-disc pattern (twice its spacing; RESULTS_autotune.md) stays.
* CT: every k-th view (k = 7, offset from the seed); see :func:`ct_holdout_views`. TV adds
  SURE's risk on the training views to the held-out views' (:mod:`medrecon.recon.ct_tune`);
  MR L1-wavelet and TV do the same with the training samples where the file carries its
  noise level (:mod:`medrecon.recon.sure`, :mod:`medrecon.recon.mri`).

Weights are searched on a log grid around the method's fixed rule (x1/8 .. x8 in five steps,
then the two geometric midpoints beside the best, :func:`tune_weight`; CT TV then takes the
parabola vertex between the tried weights, :func:`parabola_vertex`); iteration counts by
early stopping along one training run (:func:`best_iteration`). The final reconstruction always
uses all the data; how the chosen value carries over to it is the method's ``scale`` (MR: the
data term sums over 1/(1-f) times more samples, so the weight is multiplied by n_all /
n_train to keep the balance of noise and regulariser per sample; CT TV: the data term is
normalised by ||A||^2, which grows with the views as the data term does, so no rescaling; SIRT
and CGLS: the same count, since SIRT's row/column normalisation and CGLS's Krylov steps do not
depend on the number of views).

Why hold-out rather than SURE or the discrepancy principle: it needs no noise estimate (the
discrepancy principle trusts the noise level, which fastMRI files do not carry and which the
background estimate gets wrong under coil correlation), no divergence of the method (SURE needs
a Monte-Carlo divergence per grid point and a Gaussian white noise model, wrong for Poisson CT
and weighted data), and it works the same for any method, noise model and operator, including
the diffusion sampler's data-consistency weight later. The one exception is CT TV, whose
held-out views are biased toward strong weights on sparse views and fine grids (up to 23x,
3.9 dB) and whose files carry their Poisson noise level (I0): there a third of the held-out
views' risk is added to SURE's on the training views (one Monte-Carlo divergence per weight,
with the ray-averaged variance of the log transform), and the discrepancy principle can cap
the choice (:mod:`medrecon.recon.ct_tune`; the cap is off by default, it hurt on a real head
slice). MR L1-wavelet and TV sum the two risks (unweighted) where the file gives the noise
level (simulated data): where the held-out samples, all outside the calibration region, are mostly noise,
every weight predicts them about equally badly (relative errors 1.00 for all weights on a
real brain volume at R = 8, SNR 30) and they alone chose 16x the best weight (1.2 dB under
it); SURE's risk on the training samples then decides. Where the held-out samples carry
signal (the synthetic heads), their risk is tens of noise variances and SURE's changes rarely
move the choice. fastMRI files carry no noise level and keep the held-out choice alone
(:mod:`medrecon.recon.mri`; benchmarks/RESULTS_autotune.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "COARSE_FACTORS",
    "HOLDOUT_FRACTION",
    "MIN_HELDOUT_UNITS",
    "TuneReport",
    "best_iteration",
    "ct_holdout_views",
    "fold_count",
    "mr_holdout_folds",
    "mr_holdout_masks",
    "mr_holdout_text",
    "parabola_vertex",
    "regular_pattern",
    "tune_weight",
]

#: Fraction of the (non-calibration) data held out.
HOLDOUT_FRACTION = 0.15
#: MR: held-out units (lines; single samples of a regular pattern) that the folds of
#: :func:`mr_holdout_folds` hold out together at least, where the mask has them (module
#: docstring: a standard error of a third of the held-out mean for a per-unit spread of
#: 1.8 times the mean).
MIN_HELDOUT_UNITS = 30
#: The coarse grid of weights, as factors of the method's fixed rule.
COARSE_FACTORS = (1 / 8, 1 / 8 ** 0.5, 1.0, 8 ** 0.5, 8.0)


@dataclass(frozen=True)
class TuneReport:
    """What the self-tuning chose and why (JSON-ready through :meth:`as_dict`).

    Attributes:
        parameter: "lam" or "iterations".
        chosen: the value the final, all-data reconstruction used.
        grid: the values tried on the training data (weights ascending; iterations 1..n).
        errors: relative held-out residual of each value in ``grid`` (over all ``folds``).
        scale: ``chosen = best training value * scale`` (see the module docstring).
        holdout: what was held out, in words.
        note: a rule that overrode the held-out choice, or how the candidates were run, in
            words ("" for none).
        folds: the disjoint held-out parts ``errors`` were pooled over (MR,
            :func:`mr_holdout_folds`; 1 elsewhere).
    """

    parameter: str
    chosen: float
    grid: tuple[float, ...]
    errors: tuple[float, ...]
    scale: float
    holdout: str
    note: str = ""
    folds: int = 1

    @property
    def best_error(self) -> float:
        """The smallest held-out error on the grid."""
        return float(min(self.errors))

    def line(self) -> str:
        """One line for the CLI and the DICOM/NIfTI text."""
        if self.parameter == "iterations":
            tried = f"1..{len(self.grid)}"
        else:
            tried = ", ".join(f"{g:.3g}" for g in self.grid)
        scaled = f" (x{self.scale:.3g} for all data)" if self.scale != 1.0 else ""
        note = f"; {self.note}" if self.note else ""
        return (f"{self.parameter} auto = {self.chosen:.4g}{scaled}: held-out error "
                f"{self.best_error:.4g}, {self.holdout}; tried {tried}{note}")

    def short(self) -> str:
        """A few characters for a series description."""
        return f"auto {self.parameter} {self.chosen:.3g}"

    def noted(self, text: str) -> TuneReport:
        """This report with ``text`` added to its note (after "; " where it has one)."""
        return dataclasses.replace(self, note=f"{self.note}; {text}" if self.note else text)

    def as_dict(self) -> dict[str, Any]:
        return {"parameter": self.parameter, "chosen": float(self.chosen),
                "grid": [float(g) for g in self.grid],
                "heldout_errors": [float(e) for e in self.errors],
                "scale": float(self.scale), "holdout": self.holdout, "note": self.note,
                "folds": int(self.folds)}


def parabola_vertex(lams: Sequence[float], errors: Sequence[float]) -> float:
    """The minimum of ``errors`` over ``lams`` (ascending, > 0) refined between grid points:
    the vertex of the parabola through the smallest error and its two neighbours on the
    log-lam axis, kept within half the distance to each neighbour (the part of the axis
    nearest the best point); the best point itself at an end of ``lams`` or where the three
    errors are equal.

    With the best point in the middle the vertex lies within that half-distance already (the
    parabola's slope changes sign between the midpoints of the two intervals); the clamp guards
    rounding and uneven spacing.
    """
    e = np.asarray(errors, dtype=np.float64)
    i = int(np.argmin(e))
    if i == 0 or i == len(lams) - 1:
        return float(lams[i])
    x0, x1, x2 = (math.log(lams[j]) for j in (i - 1, i, i + 1))
    y0, y1, y2 = (float(e[j]) for j in (i - 1, i, i + 1))
    # divided differences: curvature (> 0 unless all three errors are equal) and slope at x1
    d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    curvature = (d12 - d01) / (x2 - x0)
    if not curvature > 0.0:
        return float(lams[i])
    # the parabola through the three points: y1 + s (x - x1) + curvature (x - x1)^2,
    # s = d01 + curvature (x1 - x0): its slope at x1
    slope = d01 + curvature * (x1 - x0)
    x = x1 - slope / (2.0 * curvature)
    x = min(max(x, 0.5 * (x0 + x1)), 0.5 * (x1 + x2))
    return float(math.exp(x))


def tune_weight(heldout_error: Callable[[float], float], centre: float,
                factors: Sequence[float] = COARSE_FACTORS,
                refine: bool = True,
                vertex: bool = False) -> tuple[float, list[float], list[float]]:
    """Minimise ``heldout_error(lam)`` over ``centre * factors`` (ascending, log-spaced), then
    once at the neighbours of the best value that are not tried yet.

    A neighbour lies one step beside the best on the log axis: half a grid step with
    ``refine`` (the geometric midpoints, and half a step outwards when the best lies at an end
    of the grid: ``len(factors) + 2`` evaluations), a whole grid step without (only outwards,
    and only when the best lies at an end: at most ``len(factors) + 1`` evaluations, the
    diffusion weight's budget in :mod:`medrecon.guard`). The grid step is
    ``factors[1] / factors[0]``, the same at both ends on a log-spaced grid.

    With ``vertex`` the returned weight is :func:`parabola_vertex` of the tried weights: the
    best tried weight moved by at most half the step to its neighbours (a quarter of the
    coarse step with ``refine``) toward the side whose error is lower, at no extra
    evaluation. A smooth error curve's minimum is then estimated to well below the tried
    spacing instead of to within it; the caller's final solve runs at that weight (CT TV,
    :mod:`medrecon.recon.ct_tune`). Off for the diffusion weight (:mod:`medrecon.guard`):
    its errors come from single stochastic sampling runs, and its chosen weight's tuning run
    is reused, so the weight must be one that was run.

    Returns:
        (best lam, the weights tried ascending, their errors); without ``vertex`` the best
        lam is the tried weight with the smallest error.
    """
    tried: dict[float, float] = {}
    for f in factors:
        lam = float(centre * f)
        tried[lam] = float(heldout_error(lam))
    if len(factors) > 1:
        grid = sorted(tried)
        i = int(np.argmin([tried[g] for g in grid]))
        for j in (i - 1, i + 1):
            if 0 <= j < len(grid):
                if refine:  # without refine, the neighbour is a grid point, tried already
                    mid = math.sqrt(grid[i] * grid[j])
                    tried[mid] = float(heldout_error(mid))
                continue
            # the best is at an end of the grid: step once more outwards
            step = math.sqrt(grid[1] / grid[0]) if refine else grid[1] / grid[0]
            out = grid[i] * (step if j > i else 1.0 / step)
            tried[out] = float(heldout_error(out))
    grid = sorted(tried)
    errors = [tried[g] for g in grid]
    best = parabola_vertex(grid, errors) if vertex else grid[int(np.argmin(errors))]
    return best, grid, errors


def best_iteration(errors: Sequence[float]) -> int:
    """Early stopping: the (1-based) iteration with the smallest held-out error."""
    return int(np.argmin(np.asarray(errors, dtype=np.float64))) + 1


def _calibration_box(shape: tuple[int, ...], axes: Sequence[int],
                     calibration: int | None) -> np.ndarray:
    """Boolean array of ``shape``: True inside the centred calibration block on ``axes``."""
    box = np.ones(shape, dtype=bool)
    for d in axes:
        n = shape[d]
        if n <= 1:
            continue
        # Without a recorded calibration width, protect the central 8 % (at least 4 lines).
        width = int(calibration) if calibration else max(4, int(round(0.08 * n)))
        lo = n // 2 - width // 2
        idx = np.arange(n)
        inside = (idx >= lo) & (idx < lo + width)
        view = [1] * len(shape)
        view[d] = n
        box &= inside.reshape(view)
    return box


def regular_pattern(mask: np.ndarray, fft_dims: Sequence[int], calibration: int | None) -> bool:
    """Whether the phase-encode lines of ``mask`` outside the calibration block are equispaced.

    True when, along every phase-encode axis on which the mask varies, each line through it
    that holds at least three sampled points outside the calibration block has gaps of at most
    two neighbouring sizes (g and g + 1: a fractional spacing rounds to these; gaps across the
    block do not count), and some gap is at least 2: fastMRI's equispaced masks, regular
    (GRAPPA-style) lattices. Random and Poisson-disc patterns are not regular.
    """
    m = np.asarray(mask) > 0
    while m.ndim < 3:
        m = m[None]
    phase_axes = [d for d in fft_dims if d != 0] or list(fft_dims)
    outside = m & ~_calibration_box(m.shape, phase_axes, calibration)
    box = _calibration_box(m.shape, phase_axes, calibration)
    undersampled = False
    for a in phase_axes:
        if m.shape[a] < 3:
            continue
        rows = np.moveaxis(outside, a, -1).reshape(-1, m.shape[a])
        inner = np.moveaxis(box, a, -1).reshape(-1, m.shape[a])
        for row, blocked in zip(rows, inner, strict=True):
            idx = np.flatnonzero(row)
            if idx.size < 3:
                continue
            gaps = np.diff(idx)
            # a gap that jumps over the calibration block says nothing about the pattern
            across = np.array([blocked[i:j].any() for i, j in zip(idx[:-1], idx[1:], strict=True)])
            gaps = gaps[~across]
            if gaps.size == 0:
                continue
            # equispaced masks with a fractional spacing (fastMRI's, ours) round to two gaps
            if gaps.max() - gaps.min() > 1:
                return False
            undersampled = undersampled or bool(gaps.max() >= 2)
    return undersampled


def _resolved_calibration(m: np.ndarray, fft_dims: Sequence[int],
                          calibration: int | None) -> int | None:
    """``calibration``, or (None, a 3D mask: e.g. fastMRI files) the mask's largest fully
    sampled central block (:func:`~medrecon.operators.coils.detect_calibration`)."""
    if calibration is None and m.ndim == 3:
        from medrecon.operators.coils import detect_calibration

        calibration = detect_calibration(m, m.shape, fft_dims) or None
    return calibration


def _holdout_candidates(m: np.ndarray, fft_dims: Sequence[int],
                        calibration: int | None) -> np.ndarray:
    """Flat indices into ``m`` of the units that may be held out: the sampled points outside
    the calibration block (all sampled points where fewer than two lie outside it)."""
    phase_axes = [d for d in fft_dims if d != 0] or list(fft_dims)
    calib = _calibration_box(m.shape, phase_axes, calibration)
    candidates = np.flatnonzero((m > 0) & ~calib)
    if candidates.size < 2:  # fully sampled centre only: hold out from all samples
        candidates = np.flatnonzero(m > 0)
    return candidates


def _split(m: np.ndarray, held_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, held) masks of ``m`` with the points ``held_idx`` held out."""
    held = np.zeros(m.shape, dtype=np.float32)
    held.flat[held_idx] = m.flat[held_idx]
    return m - held, held


def mr_holdout_masks(mask: np.ndarray, fft_dims: Sequence[int], calibration: int | None,
                     fraction: float = HOLDOUT_FRACTION, seed: int = 0,
                     image_shape: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split a sampling mask into training and held-out masks (the first fold of
    :func:`mr_holdout_folds`, the split the guard scores diffusion on).

    Args:
        mask: the sampling mask, broadcastable to (I, J, K) (e.g. (1, J, K)); > 0 = sampled.
        fft_dims: the Fourier axes; axis 0 is the readout, the others are phase encodes.
        calibration: width of the fully sampled centre on the phase axes (None: the largest
            fully sampled central block of the mask, else 8 %, >= 4).
        fraction: share of the sampled points outside the calibration block to hold out.
        seed: seeds the choice.
        image_shape: (I, J, K); given, a :func:`regular_pattern` mask has single k-space
            samples held out, readout included, instead of whole readout lines (see the module
            docstring), and the masks are full-size (I, J, K).

    Returns:
        (train, held) float32 masks of ``mask``'s shape (full-size for single samples):
        ``train + held == mask`` where sampled; the calibration block is always in ``train``.
    """
    m = np.asarray(mask, dtype=np.float32)
    calibration = _resolved_calibration(m, fft_dims, calibration)
    if image_shape is not None and regular_pattern(m, fft_dims, calibration):
        m = np.ascontiguousarray(np.broadcast_to(m, tuple(int(n) for n in image_shape)))
    candidates = _holdout_candidates(m, fft_dims, calibration)
    n_held = max(1, int(round(fraction * candidates.size)))
    rng = np.random.default_rng(seed)
    held_idx = rng.choice(candidates, size=min(n_held, candidates.size - 1), replace=False)
    return _split(m, held_idx)


def fold_count(units: int, candidates: int, fraction: float = HOLDOUT_FRACTION,
               min_units: int = MIN_HELDOUT_UNITS) -> int:
    """How many disjoint folds of ``units`` held-out units each :func:`mr_holdout_folds`
    draws from ``candidates`` units: enough that they hold out at least ``min_units``
    together, at most ``round(1 / fraction)`` (every candidate held out about once) and at
    most as many as the candidates fill; 1 where one fold holds out ``min_units`` already
    (module docstring)."""
    if units <= 0:
        return 1
    wanted = min(max(1, int(round(1.0 / fraction))), -(-int(min_units) // int(units)))
    return max(1, min(wanted, int(candidates) // int(units)))


def mr_holdout_folds(mask: np.ndarray, fft_dims: Sequence[int], calibration: int | None,
                     fraction: float = HOLDOUT_FRACTION, seed: int = 0,
                     image_shape: Sequence[int] | None = None,
                     first: tuple[np.ndarray, np.ndarray] | None = None,
                     min_units: int = MIN_HELDOUT_UNITS) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, held) masks of the MR hold-out's folds (k-fold cross-validation over the
    sampled units outside the calibration block; module docstring).

    Fold 0 is :func:`mr_holdout_masks` (``first`` where drawn already: the guard's split);
    the others hold out as many units each, disjoint from it and from each other, drawn
    from the remaining candidates (seeded by ``seed``); :func:`fold_count` says how many.
    Arguments as :func:`mr_holdout_masks`; ``min_units``: the held-out units all the folds
    together should reach.

    Returns:
        [(train, held), ...]: every fold's masks of fold 0's shape, ``train + held`` the
        sampled mask; the calibration block always in ``train``; a single fold where fold 0
        holds out ``min_units`` units already (then nothing else is computed).
    """
    train0, held0 = first if first is not None else mr_holdout_masks(
        mask, fft_dims, calibration, fraction, seed, image_shape)
    held_idx = np.flatnonzero(held0 > 0)
    if held_idx.size == 0 or held_idx.size >= min_units:
        return [(train0, held0)]  # one fold is enough: no candidates to count
    m0 = np.asarray(mask, dtype=np.float32)
    calibration = _resolved_calibration(m0, fft_dims, calibration)
    m = np.ascontiguousarray(np.broadcast_to(m0, held0.shape))  # full-size: single samples
    candidates = _holdout_candidates(m, fft_dims, calibration)
    k = fold_count(held_idx.size, candidates.size, fraction, min_units)
    # the rest in a seeded order; a generator of its own, so fold 0 is the former draw
    rest = np.random.default_rng([int(seed), 1]).permutation(
        np.setdiff1d(candidates, held_idx))
    n = held_idx.size
    return [(train0, held0)] + [_split(m, rest[(f - 1) * n:f * n]) for f in range(1, k)]


def mr_holdout_text(mask: np.ndarray, train: np.ndarray, held: np.ndarray) -> str:
    """What :func:`mr_holdout_masks` held out of ``mask``, in words, e.g. "15 % of k-space
    samples held out (single samples: regular line pattern)": the share of the sampled points
    in ``held``, and the reason where single samples were held out (the masks then come out
    full-size, unlike a line mask). The same words for every fold of
    :func:`mr_holdout_folds` (their number goes into the report's note)."""
    n_held = float((np.asarray(held) > 0).sum())
    n_all = float((np.asarray(train) > 0).sum()) + n_held
    single = np.shape(train) != np.shape(mask)
    return (f"{100.0 * n_held / max(n_all, 1.0):.0f} % of k-space samples held out"
            + (" (single samples: regular line pattern)" if single else ""))


def ct_holdout_views(views: int, seed: int = 0,
                     fraction: float = HOLDOUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th view (k = round(1 / fraction), offset by the seed) is held out.

    Returns:
        (train, held) float32 view masks of shape (views,).
    """
    k = max(2, int(round(1.0 / fraction)))
    if views < 2 * k:  # few views: still hold out at least one, never more than half
        k = max(2, views // 2)
    offset = int(np.random.default_rng(seed).integers(k))
    held = np.zeros(views, dtype=np.float32)
    held[offset::k] = 1.0
    return 1.0 - held, held
