"""The hold-out split of a measurement and how an image predicts the held-out data.

The diffusion weight's tuning and the guard (:mod:`medrecon.guard`) score every candidate on
the split of the classical self-tuning (:mod:`medrecon.recon.autotune`): MR ~15 % of the sampled
k-space outside the calibration box (:func:`~medrecon.recon.autotune.mr_holdout_masks`), CT
every 7th view (:func:`medrecon.recon.ct_tune.holdout_masks`), drawn with the same seed, so a
classical method's held-out errors and diffusion's are comparable. :class:`HeldOut` predicts
the held-out data from an image and scores predictions (relative residuals; the expected error
of a K-sample mean from two chains; the std map's calibration ``alpha``, on energies that stand
for the image's: CT's ramp-weighted, :class:`SpectralEnergy`); :func:`blend_weight` is the
closed-form weight of a blend of two predictions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medrecon.problem import Problem, measurement_problem
from medrecon.recon.autotune import mr_holdout_masks, mr_holdout_text
from medrecon.recon.ct_tune import holdout_masks as ct_holdout_masks
from medrecon.recon.sure import SpectralEnergy, noise_count

if TYPE_CHECKING:
    from medrecon.io.measurement import Measurement
    from medrecon.recon.base import ReconOutput

__all__ = ["HeldOut", "HoldoutSplit", "SpectralEnergy", "blend_weight", "heldout_std",
           "holdout_split", "offset_std", "prior_alpha"]


class HeldOut:
    """The held-out data and how an image predicts them.

    ``predict(x)`` is ``M_h A x`` for an image ``x`` in the operator's units (MR complex, CT mu
    in 1/mm, on any device), ``y`` the held-out data ``M_h y``. Every held-out error the guard
    reports is relative, ``||p - M_h y|| / ||M_h y||`` for a prediction ``p``
    (:meth:`prediction_error`): the residual that the classical self-tuning minimises.
    ``noise_var`` and ``noise_count``: the noise variance per real component of ``y`` and the
    number of those components (:func:`medrecon.recon.sure.noise_count`), or ``noise_var``
    None where the noise level is unknown (MR files without it: the estimate from the outer
    k-space is biased by coil correlation). ``positions``: MR, the held-out k-space positions
    (a mask over ``y``'s axes after the first, the coils'); None: every element of ``y`` is
    one (CT: a ray of a held-out view). A position is the unit of :meth:`gain_t`: the coils
    see one image error at a position through their maps, so they are not independent.
    """

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor,
                 noise_var: float | None = None, noise_count: float = 0.0,
                 spectral: SpectralEnergy | None = None,
                 positions: torch.Tensor | None = None) -> None:
        self._predict = predict
        self.y = y
        self.norm = float(torch.linalg.vector_norm(y).clamp_min(1e-30))
        self.noise_var = noise_var
        self.noise_count = noise_count
        self.spectral = spectral
        self.positions = positions

    def energy(self, r: torch.Tensor) -> float:
        """The energy of a held-out residual or difference ``r`` that stands for the image's
        (the std map's calibration): ``||r||^2`` (MR: Parseval), CT the ramp-weighted
        energy of :class:`SpectralEnergy`."""
        if self.spectral is None:
            return float(torch.linalg.vector_norm(r)) ** 2
        return self.spectral(r)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._predict(x.to(self.y.device))

    def prediction_error(self, p: torch.Tensor) -> float:
        """``||p - M_h y|| / ||M_h y||`` for a prediction ``p`` of the held-out data (a blend's
        predictions, say: the prediction is linear in the image)."""
        return float(torch.linalg.vector_norm(p - self.y)) / self.norm

    def error(self, x: torch.Tensor) -> float:
        """``||M_h (A x - y)|| / ||M_h y||`` for an image ``x``."""
        return self.prediction_error(self.predict(x))

    def gain_t(self, a: torch.Tensor, b: torch.Tensor, weight: float) -> tuple[float | None, int]:
        """How far the blend ``weight * a + (1 - weight) * b`` of two predictions improves on
        ``b`` beyond the held-out data's own scatter: the t statistic of the mean per-position
        gain ``|y - b|^2 - |y - blend|^2`` (MR: summed over the coils at each held-out k-space
        position; CT: per ray) over its standard error, and the number of positions; None
        for fewer than 2 positions or no scatter. The weight is fitted on the same positions,
        which the statistic does not discount: a one-parameter fit, small against the
        hundreds of positions of most splits."""
        e = self.y - b
        g = torch.abs(e) ** 2 - torch.abs(e - weight * (a - b)) ** 2
        if self.positions is not None:
            g = g.sum(dim=0)[self.positions.expand(tuple(g.shape[1:]))]
        g = g.flatten().double()
        n = int(g.numel())
        if n < 2:
            return None, n
        sd = float(g.std())
        return (float(g.mean()) / (sd / n**0.5) if sd > 0 else None), n

    def mean_error(self, p1: torch.Tensor, p2: torch.Tensor,
                   samples: int) -> tuple[float, torch.Tensor]:
        """The relative held-out error expected of the mean of ``samples`` posterior samples,
        from the predictions ``p1``, ``p2`` of two independent chains, and the two chains'
        mean prediction.

        With chains ``p_k = m + e_k`` (independent spread of total variance ``v``), the mean
        of K has ``E||mean_K - y||^2 = ||m - y||^2 + v / K``. Two chains give
        ``||mean_2 - y||^2`` (expectation ``||m - y||^2 + v / 2``) and the unbiased
        ``v ~ ||p1 - p2||^2 / 2``, so ``||mean_2 - y||^2 - v / 2 + v / K`` estimates it
        (clipped at 0). K = 1 gives one chain's expected error, K = 2 the two-chain mean's own.
        Both terms are relative to ``||M_h y||^2`` here, as :meth:`prediction_error` is.

        Returns:
            (the estimated relative error; the mean prediction ``(p1 + p2) / 2``).
        """
        mean = 0.5 * (p1 + p2)
        # the chains' spread relative to the data, as (half the squared) prediction_error of
        # one chain against the other
        v = 0.5 * (float(torch.linalg.vector_norm(p1 - p2)) / self.norm) ** 2
        e2 = self.prediction_error(mean) ** 2 - v / 2 + v / max(int(samples), 1)
        return max(e2, 0.0) ** 0.5, mean

    def std_alpha(self, p1: torch.Tensor, p2: torch.Tensor) -> float | None:
        """The std map's ``alpha`` (:func:`medrecon.priors.calibration.heldout_alpha`) for the
        mean of the chains, from two chains' predictions ``p1``, ``p2``; None where the noise
        level is unknown or the held-out data cannot tell alpha."""
        from medrecon.priors.calibration import heldout_alpha

        if self.noise_var is None:
            return None
        return heldout_alpha(self.energy(0.5 * (p1 + p2) - self.y), 0.5 * self.energy(p1 - p2),
                             self.noise_var * self.noise_count, self._noise_sd())

    def std_scale(self, p1: torch.Tensor, p2: torch.Tensor, weight: float, b: torch.Tensor,
                  alpha: float) -> float | None:
        """The factor of :func:`~medrecon.priors.calibration.output_std` for the output
        ``weight * mean + (1 - weight) * x_b`` (``weight`` < 1: a blend, 0: ``x_b`` alone)
        from two chains' predictions ``p1``, ``p2``, the prediction ``b`` of ``x_b`` and the
        chains' scale ``alpha``; None where the noise level is unknown or the held-out data
        cannot tell it (:func:`~medrecon.priors.calibration.heldout_scale`).

        The map's model on the two chains of the training part: the output
        ``q = w (p1 + p2) / 2 + (1 - w) b`` misses the truth by the posterior's spread
        (``alpha^2 v``, ``v = ||p1 - p2||^2 / 2`` one chain's scatter), the two chains' own
        scatter through ``w`` (``w^2 v / 2``) and its distance from the posterior mean,
        ``(1 - w)^2 (||b - mean_2||^2 - v / 2)`` (the two-chain mean scatters by ``v / 2``
        around the posterior mean)."""
        from medrecon.priors.calibration import heldout_scale

        if self.noise_var is None:
            return None
        mean = 0.5 * (p1 + p2)
        v = 0.5 * self.energy(p1 - p2)
        offset = self.energy(b - mean)
        model = (alpha**2 + 0.5 * weight**2) * v + (1.0 - weight) ** 2 * max(offset - v / 2,
                                                                               0.0)
        q = weight * mean + (1.0 - weight) * b
        return heldout_scale(self.energy(q - self.y), model,
                             self.noise_var * self.noise_count, self._noise_sd())

    def _noise_sd(self) -> float:
        """The standard deviation of the held-out noise energy, ``sigma^2 sqrt(2 n)``
        (:meth:`energy` with spectral weights: times their RMS, :class:`SpectralEnergy`)."""
        assert self.noise_var is not None
        gain = 1.0 if self.spectral is None else self.spectral.rms
        return self.noise_var * (2.0 * self.noise_count) ** 0.5 * gain


@dataclass(frozen=True)
class HoldoutSplit:
    """A measurement split for hold-out validation.

    Attributes:
        train: the measurement without the held-out part (MR: the training mask and the coil
            maps of the full data, so every run uses the same maps, map sets included; CT:
            the training views).
        held: the held-out data and their prediction.
        text: what was held out, in words.
        problem: the physics problem of all the data (residuals of a blend).
        masks: MR: the (training, held-out) sample masks, for another split of the same
            measurement (:func:`holdout_split` ``masks``); CT: None.
    """

    train: Measurement
    held: HeldOut
    text: str
    problem: Problem
    masks: tuple[np.ndarray, np.ndarray] | None = None


def holdout_split(measurement: Measurement, device: torch.device, *,
                  maps_method: str = "espirit", map_sets: int = 1,
                  masks: tuple[np.ndarray, np.ndarray] | None = None) -> HoldoutSplit:
    """The split of the classical self-tuning (:func:`medrecon.recon.mri` ``_weight``,
    :func:`medrecon.recon.ct_tune.holdout_masks`): same seed, same samples or views held out.

    MR: ``maps_method`` and ``map_sets`` build the coil maps as
    :func:`~medrecon.problem.measurement_problem` does (estimated here when the file has
    none, and carried by ``train``); the held-out prediction uses that operator (with map
    sets, of an ``(M, I, J, K)`` image). ``masks``: the ``masks`` of a split of the same
    measurement, used instead of drawing them again (the same ones: the draw depends only
    on the sampling mask, the calibration and the seed; full-size single-sample masks of a
    regular pattern took 3.9 s at 256^3 on a loaded CPU)."""
    acq = measurement.acquisition or {}
    seed = int(acq.get("seed", 0) or 0)
    if measurement.modality == "CT":
        train, held, text = ct_holdout_masks(measurement)
        held_problem = measurement_problem(dataclasses.replace(measurement, mask=held), device)
        return HoldoutSplit(dataclasses.replace(measurement, mask=train),
                            HeldOut(held_problem.op.forward, held_problem.y,
                                    held_problem.noise_std ** 2, noise_count(held_problem),
                                    SpectralEnergy(int(held_problem.y.shape[-1]))),
                            text, measurement_problem(measurement, device))
    problem = measurement_problem(measurement, device, maps_method=maps_method,
                                  map_sets=map_sets)
    op = problem.op
    mask = op.mask.detach().cpu().numpy()  # type: ignore[union-attr]
    calib = acq.get("calibration")
    train_mask, held_mask = masks if masks is not None else mr_holdout_masks(
        mask, measurement.fft_dims, int(calib) if calib else None, seed=seed,
        image_shape=op.image_shape)  # type: ignore[union-attr]
    maps = measurement.coil_maps
    if maps is None and op.maps is not None:  # type: ignore[union-attr]
        maps = op.maps.detach().cpu().numpy()  # type: ignore[union-attr]  # estimated once
    train = dataclasses.replace(measurement, mask=train_mask, coil_maps=maps)
    held_t = torch.from_numpy(held_mask).to(problem.y.device) > 0

    def predict(x: torch.Tensor) -> torch.Tensor:
        return op.forward(x.to(problem.y.dtype)) * held_t

    # the held-out samples' real components: two per coil and held-out k-space position
    count = 2.0 * float(held_t.expand(tuple(problem.y.shape[1:])).sum()) * problem.y.shape[0]
    var = None if problem.info.get("noise_estimated") else problem.noise_std ** 2
    return HoldoutSplit(train, HeldOut(predict, problem.y * held_t, var, count,
                                       positions=held_t),
                        mr_holdout_text(mask, train_mask, held_mask), problem,
                        (train_mask, held_mask))


def blend_weight(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> float:
    """The ``w`` in [0, 1] minimising ``||w a + (1 - w) b - y||`` (``a``, ``b``: predictions of
    the two images, ``y``: the data): ``w = Re<a - b, y - b> / ||a - b||^2``, clipped."""
    d = (a - b).flatten()
    den = float(torch.sum(torch.abs(d) ** 2))
    if den <= 0.0:
        return 1.0
    num = float(torch.sum((d.conj() * (y - b).flatten()).real))
    return float(min(1.0, max(0.0, num / den)))


def heldout_std(out: ReconOutput, support: torch.Tensor | None, alpha: float | None,
                samples: int) -> None:
    """The std map of a diffusion output ``out`` (``info["std_image"]``, calibrated by the
    prior's synthetic-head entry or raw) scaled by
    :func:`~medrecon.priors.calibration.std_factor` of ``alpha``, this measurement's own
    calibration from its held-out data (:meth:`HeldOut.std_alpha`); None: kept as it is.
    Voxels outside the operator's support keep their value (the prior's unconstrained
    spread, :mod:`medrecon.sampling.api`); ``support``: the whole output's (I, J, K)
    operator support, None for every voxel. ``alpha`` is a ratio (the error over the chains'
    spread), so one measured on a slab of the volume (:mod:`medrecon.slab`: the rows holding
    the most signal) is applied to the whole. In place."""
    from medrecon.priors.calibration import COVERAGE_K, std_factor, target_coverage

    if alpha is None:
        return
    info = out.info
    before = info.get("std_factor")
    factor = std_factor(alpha, samples)
    info["std_calibration_line"] = (
        f"std map calibrated on this measurement's held-out data (alpha {alpha:.3g} from "
        f"2 chains on the training part; x{factor:.3g} for K = {samples}): "
        f"{COVERAGE_K:g} std aim at {100 * target_coverage():.0f} % of errors")
    info["std_calibration"] = {
        **(info.get("std_calibration") or {}), "calibrated": True, "basis": "held-out data",
        "alpha": alpha, "factor": factor, "line": info["std_calibration_line"],
        "prior_factor": before}
    _rescale(info, support, lambda raw: factor * raw)
    info["std_factor"] = factor


def prior_alpha(info: dict[str, Any]) -> float:
    """The chains' scale ``alpha`` of the prior's std calibration that a diffusion output
    ``info`` was calibrated with; 1 (exact posterior samples) where none applied."""
    cal = info.get("std_calibration")
    alpha = cal.get("alpha") if isinstance(cal, dict) and cal.get("calibrated") else None
    return float(alpha) if alpha else 1.0


def offset_std(out: ReconOutput, support: torch.Tensor | None, weight: float,
               offset: np.ndarray, scale: float | None, samples: int) -> None:
    """The std map for the output ``weight * diffusion + (1 - weight) * classical`` (``weight``
    < 1; 0: the classical result alone) from the diffusion output ``out``:
    :func:`~medrecon.priors.calibration.output_std`, the posterior's spread at the prior's
    scale (:func:`prior_alpha`) and the output's distance ``(1 - weight) * offset`` from the
    posterior mean (``offset`` = classical - diffusion mean, in the output's units), times
    ``scale``, this measurement's own factor from its held-out data
    (:meth:`HeldOut.std_scale`; None: 1, the prior's calibration alone). Voxels outside the
    operator's ``support`` keep the sampler's value, as in :func:`heldout_std`. In place."""
    from medrecon.priors.calibration import (
        COVERAGE_K,
        output_std,
        std_factor,
        target_coverage,
    )

    info = out.info
    alpha = prior_alpha(info)
    before = info.get("std_factor")
    part = ("the classical result's" if weight == 0.0 else
            f"the blend's (diffusion weight {weight:.2f})")
    what = (f"the posterior spread and {part} distance from the posterior mean")
    if scale is None:
        basis = (info.get("std_calibration_line") or "").split(" (")[0].removeprefix("std map ")
        line = f"std map from {what} ({basis or 'uncalibrated'})"
    else:
        line = (f"std map calibrated on this measurement's held-out data ({what}, x{scale:.3g} "
                f"from 2 chains on the training part): {COVERAGE_K:g} std aim at "
                f"{100 * target_coverage():.0f} % of errors")
        info["std_calibration"] = {
            **(info.get("std_calibration") or {}), "calibrated": True,
            "basis": "held-out data", "scale": scale, "prior_alpha": alpha,
            "prior_factor": before}
    # the spread's factor; None where neither the prior nor the held-out data calibrate it
    factor = (None if scale is None and before is None else
              (scale or 1.0) * std_factor(alpha, samples, weight=weight))
    info["std_calibration_line"] = line
    if isinstance(info.get("std_calibration"), dict):
        info["std_calibration"] = {**info["std_calibration"], "factor": factor, "line": line}
    _rescale(info, support, lambda raw: output_std(raw, offset, weight, alpha, samples,
                                                   scale or 1.0))
    info["std_factor"] = factor


def _rescale(info: dict[str, Any], support: torch.Tensor | None,
             fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """``info["std_image"] = fn(raw spread)`` inside the operator's ``support`` (the raw
    spread: the map divided by ``info["std_factor"]``, the prior's factor), unchanged
    outside."""
    std = np.asarray(info["std_image"], dtype=np.float32)
    raw = std / float(info.get("std_factor") or 1.0)
    inside = np.ones(std.shape, dtype=bool) if support is None else support.cpu().numpy()
    info["std_image"] = np.where(inside, fn(raw), std).astype(np.float32)
