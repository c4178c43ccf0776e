"""Calibrating the posterior standard-deviation map: a variance scale stored with the prior.

The per-voxel std of K posterior samples is over-confident when the sampler's chains spread
less than the true posterior does (a learned prior, approximate data consistency, few steps):
measured on synthetic heads and real brain MRI, only 40-50 % of voxels lay within 2 std of the
truth, where a calibrated map covers about 95 %. No sampler setting fixes that by construction,
so the map is rescaled by a factor fitted on held-out synthetic heads (validation seeds, never
trained on) and stored in the prior's JSON (``std_calibration``, any format version).

The model behind the factor. Let ``s_K`` be the std of K chains (``ddof = 1``) and ``m_K`` their
mean. If the error of the infinitely-many-chain mean has std ``alpha * sigma`` where the chains
spread by ``sigma``, then ``m_K - truth`` has variance ``(alpha^2 + 1/K) sigma^2`` and, for
Gaussian chains, ``(m_K - truth) / s_K`` is ``sqrt(alpha^2 + 1/K)`` times a Student-t variable
with ``K - 1`` degrees of freedom. The calibrated map is ``c(K) s_K`` with

    c(K) = sqrt(alpha^2 + 1/K) * t_{K-1}^{-1}(Phi(k)) / k,      k = 2,

so that ``|m_K - truth| <= k c(K) s_K`` holds as often as ``|N(0, 1)| <= k`` (95.4 %). For
exact posterior samples alpha = 1 (tested on a Gaussian prior with its closed-form posterior)
and c(K) still exceeds 1 for small K (1.85 at K = 4) because a std from few samples is noisy;
for large K, c(K) -> alpha. :func:`fit_alpha` chooses alpha so that the coverage, averaged over
the sample counts of the fitting runs, meets the target (a conformal-style quantile fit).

Entries are per modality and sampler and for the sampler options that shape the spread (DDS:
lam, eta, cg_iters); among entries that match a run, the one fitted at the nearest number of
steps applies, if within a factor 2 of the run's. A run that matches none, or a prior without ``std_calibration``, keeps the raw
std and says "uncalibrated". :func:`calibrate_std` is the one entry point for callers that
hold a std map (the sampler's API, guards that replace the image).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import InputError

__all__ = [
    "COVERAGE_K",
    "SPREAD_OPTIONS",
    "STEPS_RATIO",
    "CalibrationEntry",
    "CalibrationNote",
    "StdCalibration",
    "calibrate_std",
    "coverage",
    "coverage_by_samples",
    "error_ratios",
    "fit_alpha",
    "heldout_alpha",
    "heldout_scale",
    "output_std",
    "std_factor",
    "target_coverage",
    "write_calibration",
]

#: The std multiple at which coverage is calibrated and reported.
COVERAGE_K = 2.0

#: An entry applies to runs of up to this factor more or fewer steps than it was fitted at:
#: the chains' spread changes with the number of steps, and further away it is unmeasured.
STEPS_RATIO = 2.0

#: Sampler options (names of :class:`~medrecon.sampling.api.SamplerOptions` fields) that change
#: how far the chains spread: a calibration fitted at other values does not apply.
SPREAD_OPTIONS: dict[str, tuple[str, ...]] = {
    "dds": ("lam", "eta", "cg_iters"),
    "diffpir": ("lam", "zeta_diffpir", "cg_iters"),
    "pc": ("snr", "corrector_steps", "pc_cg_iters", "pc_mode"),
    "dps": ("zeta_dps",),
}


def target_coverage(k: float = COVERAGE_K) -> float:
    """``P(|N(0, 1)| <= k)``: 0.9545 for k = 2."""
    return math.erf(k / math.sqrt(2.0))


def std_factor(alpha: float, samples: int, k: float = COVERAGE_K,
               weight: float = 1.0) -> float:
    """The multiplier ``c(K)`` of the std of ``samples`` chains (module docstring).

    ``weight`` < 1: the factor for an output that blends the K-chain mean with weight ``w``
    into another image (:func:`output_std`): the chains' own scatter enters the output with
    ``w``, so ``c = sqrt(alpha^2 + w^2 / K) t^-1_{K-1}(Phi(k)) / k``.

    Raises:
        ValueError: fewer than 2 samples (no std) or a non-positive alpha.
    """
    from scipy.stats import t

    if samples < 2:
        raise ValueError(f"a std map needs at least 2 samples, got {samples}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    q = float(t.ppf(0.5 * (1.0 + target_coverage(k)), samples - 1))
    return math.sqrt(alpha**2 + weight**2 / samples) * q / k


def output_std(raw: np.ndarray, offset: np.ndarray, weight: float, alpha: float, samples: int,
               scale: float = 1.0, k: float = COVERAGE_K) -> np.ndarray:
    """The std map of an output ``w mean_K + (1 - w) x_c`` that blends the mean of K chains
    with another image ``x_c`` (``w`` = 0: ``x_c`` alone), in the module's model.

    The posterior expected squared error of any estimate ``x^`` is the posterior variance
    plus its squared distance from the posterior mean. With the chains' spread ``raw`` (std
    of K, ``ddof = 1``) scaled as the module's model scales it (``alpha``) and ``offset`` =
    ``x_c - mean_K`` (the output lies ``(1 - w) offset`` from the chains' mean)::

        std = scale * sqrt((std_factor(alpha, K, k, w) raw)^2 + ((1 - w) offset)^2).

    ``scale``: one factor for the whole map, calibrated on held-out data
    (:func:`heldout_scale`); 1 where none applies. ``w`` = 1 is ``std_factor(alpha, K) raw``.
    """
    c = std_factor(alpha, samples, k, weight)
    out = np.sqrt((c * raw) ** 2 + ((1.0 - weight) * offset) ** 2)
    return (scale * out).astype(np.float32)


def heldout_alpha(error_energy: float, spread_energy: float, noise_energy: float,
                  noise_sd: float) -> float | None:
    """The module's ``alpha`` for one measurement, from data held out of it.

    Two chains sampled from the rest of the data predict the held-out data as ``p1``, ``p2``;
    their mean predicts them as ``q = (p1 + p2) / 2``. In the module's model the mean's error
    has variance ``(alpha^2 + 1/2) sigma^2`` at two chains, so over the held-out components::

        E||q - y_h||^2 = (alpha^2 + 1/2) v + E||n_h||^2,    v = E||p1 - p2||^2 / 2,

    and ``alpha^2 = (||q - y_h||^2 - E||n_h||^2) / v - 1/2``. (A blend with another image is
    not a posterior mean: :func:`output_std` and :func:`heldout_scale` model its map.)

    Args:
        error_energy: ``||q - y_h||^2``.
        spread_energy: ``v``, estimated by ``||p1 - p2||^2 / 2``.
        noise_energy: ``E||n_h||^2``, the held-out data's expected noise energy.
        noise_sd: the standard deviation of ``||n_h||^2`` (``sigma^2 sqrt(2 n)`` for ``n``
            real Gaussian components).
    Returns:
        alpha, or None where the data cannot tell it: no spread, or an error above the noise
        by less than two standard deviations of the noise energy (then the held-out data
        measure the noise, not the error), or ``alpha^2 <= 0``.
    """
    # (alpha^2 + 1/2) is the square of heldout_scale's factor for a model energy of v
    scale = heldout_scale(error_energy, spread_energy, noise_energy, noise_sd)
    alpha2 = None if scale is None else scale**2 - 0.5
    return math.sqrt(alpha2) if alpha2 is not None and alpha2 > 0.0 else None


def heldout_scale(error_energy: float, model_energy: float, noise_energy: float,
                  noise_sd: float) -> float | None:
    """One factor for a std map whose model predicts the held-out data's error energy as
    ``model_energy`` (before the factor): ``sqrt((||q - y_h||^2 - E||n_h||^2) / model)``.

    Returns None where the data cannot tell it: an error above the noise by less than two
    standard deviations of the noise energy, or no model energy (the arguments as
    :func:`heldout_alpha`'s)."""
    excess = error_energy - noise_energy
    if not (model_energy > 0.0 and excess > 2.0 * noise_sd):
        return None
    return math.sqrt(excess / model_energy)


def error_ratios(samples: np.ndarray, truth: np.ndarray, group: int) -> np.ndarray:
    """``|mean - truth| / std`` per voxel for disjoint groups of ``group`` chains.

    Args:
        samples: (N, n) chains (N >= group) at n voxels, any units.
        truth: (n,) the true values in the same units.
        group: chains per group K (>= 2); the ``N // K`` groups are consecutive chains.
    Returns:
        (N // K, n) float64 ratios; a voxel whose chains agree exactly has ratio 0 where
        its mean is exact and inf otherwise.
    """
    x = np.asarray(samples, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    n_groups = x.shape[0] // group
    if group < 2 or n_groups < 1:
        raise ValueError(f"need groups of >= 2 of the {x.shape[0]} chains, got {group}")
    g = x[: n_groups * group].reshape(n_groups, group, -1)
    err = np.abs(g.mean(axis=1) - t)
    sd = g.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = err / sd
    return np.where(sd > 0, r, np.where(err > 0, np.inf, 0.0))


def coverage(ratios: np.ndarray, factor: float, k: float = COVERAGE_K) -> float:
    """Fraction of ``ratios`` (from :func:`error_ratios`) within ``k * factor``."""
    r = np.asarray(ratios)
    return float((r <= k * factor).mean()) if r.size else float("nan")


def fit_alpha(ratios: Mapping[int, np.ndarray], k: float = COVERAGE_K,
              target: float | None = None) -> float:
    """The alpha whose factors :func:`std_factor` give ``target`` coverage (default
    :func:`target_coverage`), averaged with equal weight over the sample counts K of
    ``ratios`` (K -> ratios of groups of K chains, pooled over cases).

    Coverage grows with alpha, so a bisection on log(alpha) over [1e-3, 1e4] finds it; a
    target out of that range returns the nearer end.
    """
    goal = target_coverage(k) if target is None else float(target)
    items = [(int(kk), np.asarray(r).ravel()) for kk, r in ratios.items() if np.size(r)]
    if not items:
        raise ValueError("no ratios to fit")

    def mean_cov(alpha: float) -> float:
        return float(np.mean([coverage(r, std_factor(alpha, kk, k), k) for kk, r in items]))

    lo, hi = math.log(1e-3), math.log(1e4)
    if mean_cov(math.exp(lo)) >= goal:
        return math.exp(lo)
    if mean_cov(math.exp(hi)) < goal:
        return math.exp(hi)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mean_cov(math.exp(mid)) < goal:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


@dataclass(frozen=True)
class CalibrationEntry:
    """One fitted scale: a modality, a sampler and the settings it was fitted at.

    Attributes:
        modality: "MR" or "CT".
        sampler: "dds", "dps", "pc" or "diffpir".
        steps: diffusion steps of the fitting runs.
        options: the sampler options of :data:`SPREAD_OPTIONS` used in the fit.
        alpha: the large-K std scale (module docstring).
        coverage: fraction of fitting voxels within 2 calibrated std (mean over the K fitted).
        coverage_by_samples: K -> that fraction for K chains (the K fitted).
        cases: number of (head, acquisition) cases fitted.
        basis: what it was fitted on, in words (heads, grid, acquisitions, region).
        fitted: date and device of the fit.
    """

    modality: str
    sampler: str
    steps: int
    options: dict[str, Any]
    alpha: float
    coverage: float
    coverage_by_samples: dict[int, float] = field(default_factory=dict)
    cases: int = 0
    basis: str = ""
    fitted: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "sampler": self.sampler, "steps": self.steps,
                "options": dict(self.options), "alpha": self.alpha, "coverage": self.coverage,
                "coverage_by_samples": {str(k): v for k, v in
                                        sorted(self.coverage_by_samples.items())},
                "cases": self.cases, "basis": self.basis, "fitted": self.fitted}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalibrationEntry:
        return cls(modality=str(d["modality"]).upper(), sampler=str(d["sampler"]).lower(),
                   steps=int(d["steps"]), options=dict(d.get("options", {})),
                   alpha=float(d["alpha"]), coverage=float(d["coverage"]),
                   coverage_by_samples={int(k): float(v) for k, v in
                                        dict(d.get("coverage_by_samples", {})).items()},
                   cases=int(d.get("cases", 0)), basis=str(d.get("basis", "")),
                   fitted=str(d.get("fitted", "")))

    def matches(self, modality: str, sampler: str, options: Mapping[str, Any]) -> bool:
        """Same modality and sampler, and the same spread-shaping options."""
        if self.modality != modality.upper() or self.sampler != sampler.lower():
            return False
        for name in SPREAD_OPTIONS.get(self.sampler, ()):
            mine, theirs = self.options.get(name), options.get(name)
            if isinstance(mine, int | float) and isinstance(theirs, int | float):
                if not math.isclose(float(mine), float(theirs), rel_tol=1e-6, abs_tol=1e-12):
                    return False
            elif mine != theirs:
                return False
        return True


@dataclass(frozen=True)
class StdCalibration:
    """A prior's ``std_calibration``: the fitted entries and the std multiple ``k``."""

    entries: tuple[CalibrationEntry, ...]
    k: float = COVERAGE_K

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "target": target_coverage(self.k),
                "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, d: Any, source: str = "the prior") -> StdCalibration:
        """Parse the JSON block; a malformed one is one :class:`InputError` sentence."""
        try:
            entries = tuple(CalibrationEntry.from_dict(e) for e in d["entries"])
            k = float(d.get("k", COVERAGE_K))
            if not (k > 0 and all(e.alpha > 0 and e.steps >= 1 for e in entries)):
                raise ValueError("non-positive value")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{source} has an invalid 'std_calibration' block ({exc}); fit it "
                             f"again with benchmarks/std_calibration.py or remove it.") from None
        return cls(entries=entries, k=k)

    def find(self, modality: str, sampler: str, steps: int,
             options: Mapping[str, Any]) -> CalibrationEntry | None:
        """The matching entry fitted at the number of steps nearest ``steps`` (log scale), if
        that is within a factor :data:`STEPS_RATIO`."""
        found = [e for e in self.entries if e.matches(modality, sampler, options)
                 and abs(math.log(e.steps / max(steps, 1))) <= math.log(STEPS_RATIO) + 1e-9]
        if not found:
            return None
        return min(found, key=lambda e: (abs(math.log(e.steps / max(steps, 1))), -e.steps))

    def with_entry(self, entry: CalibrationEntry) -> StdCalibration:
        """This calibration with ``entry`` replacing any for the same modality, sampler,
        options and steps."""
        keep = tuple(e for e in self.entries
                     if not (e.matches(entry.modality, entry.sampler, entry.options)
                             and e.steps == entry.steps))
        return StdCalibration(entries=(*keep, entry), k=self.k)


@dataclass(frozen=True)
class CalibrationNote:
    """How a std map was (or was not) calibrated.

    Attributes:
        factor: the multiplier applied (None: uncalibrated, the raw std of the chains).
        line: one sentence for the user, e.g. "std map calibrated on synthetic heads (x1.85
            for K = 4): 2 std covered 95 % there".
        entry: the calibration entry used, if any.
        samples: K.
    """

    factor: float | None
    line: str
    entry: CalibrationEntry | None = None
    samples: int = 0

    @property
    def calibrated(self) -> bool:
        return self.factor is not None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"calibrated": self.calibrated, "factor": self.factor,
                             "samples": self.samples, "line": self.line}
        if self.entry is not None:
            d.update(alpha=self.entry.alpha, fitted_steps=self.entry.steps,
                     fitted_coverage=self.entry.coverage, basis=self.entry.basis,
                     fitted=self.entry.fitted)
        return d


def _settings_text(sampler: str, options: Mapping[str, Any]) -> str:
    names = SPREAD_OPTIONS.get(sampler, ())
    return ", ".join(f"{n} {options[n]:g}" if isinstance(options.get(n), int | float)
                     else f"{n} {options.get(n)}" for n in names)


def calibrate_std(std: Any, calibration: StdCalibration | None, *, modality: str, sampler: str,
                  steps: int, samples: int, options: Mapping[str, Any],
                  prior_name: str = "the prior") -> tuple[Any, CalibrationNote]:
    """Scale a std map of ``samples`` chains by the prior's calibration, when one applies.

    Args:
        std: (I, J, K) raw per-voxel std of the chains (numpy array or tensor, any units).
        calibration: the prior's :class:`StdCalibration` (``Prior.std_calibration``) or None.
        modality, sampler, steps, samples: the run ("MR"/"CT", "dds", ..., steps, K >= 2).
        options: the run's sampler options (``dataclasses.asdict(SamplerOptions)``).
        prior_name: for the sentence when there is no calibration.
    Returns:
        (the std map multiplied by :func:`std_factor` -- the same object type -- or ``std``
        itself when uncalibrated, the :class:`CalibrationNote`).
    """
    k = calibration.k if calibration is not None else COVERAGE_K
    entry = (calibration.find(modality, sampler, steps, options)
             if calibration is not None else None)
    if entry is None:
        why = (f"prior {prior_name!r} has no std calibration" if calibration is None else
               f"prior {prior_name!r} has no std calibration for {modality} {sampler} with "
               f"{_settings_text(sampler, options)} near {steps} steps")
        line = (f"std map uncalibrated ({why}): the raw spread of the {samples} samples, "
                f"{k:g} std may cover far less than {100 * target_coverage(k):.0f} % of errors")
        return std, CalibrationNote(factor=None, line=line, samples=samples)
    factor = std_factor(entry.alpha, samples, k)
    at = "" if entry.steps == steps else f", fitted at {entry.steps} steps"
    line = (f"std map calibrated on synthetic heads (x{factor:.3g} for K = {samples}{at}): "
            f"{k:g} std covered {100 * entry.coverage:.0f} % there")
    return std * factor, CalibrationNote(factor=factor, line=line, entry=entry, samples=samples)


def coverage_by_samples(samples: np.ndarray, truth: np.ndarray, groups: Sequence[int],
                        alpha: float | None, k: float = COVERAGE_K) -> dict[int, float]:
    """K -> coverage at ``k`` calibrated (alpha given) or raw (alpha None) std, for the
    disjoint groups of K of the (N, n) ``samples``."""
    out: dict[int, float] = {}
    for g in groups:
        if g <= samples.shape[0]:
            r = error_ratios(samples, truth, g)
            out[g] = coverage(r, 1.0 if alpha is None else std_factor(alpha, g, k), k)
    return out


def write_calibration(json_path: str | os.PathLike[str],
                      entries: Sequence[CalibrationEntry]) -> StdCalibration:
    """Store ``entries`` in the ``std_calibration`` of the prior JSON ``json_path``, replacing
    entries for the same modality, sampler, options and steps and keeping the others; the
    file is replaced atomically and nothing else in it changes. Returns the new block."""
    import json

    from medrecon.io.atomic import atomic_file
    from medrecon.priors.checkpoint import read_prior_description

    path = Path(json_path)
    doc = read_prior_description(path)
    old = doc.get("std_calibration")
    calib = (StdCalibration(entries=()) if old is None
             else StdCalibration.from_dict(old, str(path)))
    for e in entries:
        calib = calib.with_entry(e)
    doc["std_calibration"] = calib.to_dict()
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return calib
