"""Risk estimates from the measurement alone for the self-tuned weights: SURE, the held-out
residual's risk and the discrepancy principle, for any :class:`~medrecon.problem.Problem`.

Used by CT TV (:mod:`medrecon.recon.ct_tune`) and MR L1-wavelet / TV
(:mod:`medrecon.recon.mri`): both minimise :func:`risk_criterion`, the per-sample risk of the
training data (:func:`sure`, Stein's unbiased estimate with a Monte-Carlo divergence, one more
solve per weight from data nudged by :func:`sure_probe`) plus a share of the held-out data's
(:func:`heldout_risk`; CT a third, MR all of it); the module docstring of
:mod:`medrecon.recon.ct_tune` says why.

Everything counts the data as real components: a complex k-space sample is two of them
(real and imaginary part), each with the noise standard deviation ``problem.noise_std``
(units of y). Only measured samples count: CT rays with their pixel weights ``w`` (``sum_i
w_i^2``), MR samples on the SENSE operator's mask (times the coils; the data are zero off
the mask).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from medrecon.operators.mri import SenseOperator
from medrecon.problem import Problem

Tensor = torch.Tensor

__all__ = [
    "Fold",
    "SpectralEnergy",
    "SureProbe",
    "discrepancy",
    "discrepancy_weight",
    "heldout_risk",
    "noise_count",
    "risk_criterion",
    "sure",
    "sure_probe",
]


class SpectralEnergy:
    """The ramp-weighted energy of CT projection data: the image-domain energy it stands for.

    A std map is scaled so that its model predicts the held-out data's error energy
    (:meth:`medrecon.holdout.HeldOut.std_scale`), but it is read in the image; :func:`sure`
    and :func:`heldout_risk` take it to measure a weight's risks in the image's terms
    (measured for CT TV's weight, not adopted: :mod:`medrecon.recon.ct_tune`). By the Fourier slice theorem a
    parallel projection's 1D spectrum along the detector is a central line of the image's 2D
    spectrum, and the image's energy is the angular integral of the lines' energies weighted
    by ``|omega|`` (the polar measure): ``||e||^2 ~ sum_views sum_omega |omega| |P e(omega)|^2``,
    for any spectrum of the error. Unweighted projection energy is ``sum |E(k)|^2 / |k|``
    instead: a coarse error counts many times more than fine texture of the same image energy
    (a rejected posterior's speckle, a bone edge), so a map's model and the error it must
    match, when their textures differ, get a factor that is off in the image (6x between
    one-pixel texture and a 6-pixel blob in the unit test). Each detector row is zero-padded
    to ``P >= 2 n`` (no wrap-around) and weighted with FBP's discrete ramp
    (:func:`~medrecon.recon.ct_analytic.ramp_filter`: Ram-Lak, whose DC weight is small but
    positive), normalised so that white noise keeps its expected energy, ``sigma^2 n``:
    the held-out noise term stays ``noise_var x noise_count``. Fan and cone beams: the same
    weighting per detector row, the local form of the ramp their FBP / FDK use.

    ``rms``: the weights' root mean square over the spectrum (``> 1``: a ramp is uneven), by
    which the held-out noise energy's standard deviation grows (the weighted sum of ``P``
    squared Gaussians, treated as independent).
    """

    def __init__(self, n: int) -> None:
        from medrecon.recon.ct_analytic import ramp_filter

        resp = ramp_filter(int(n), 1.0)
        self.p = int(resp.size)
        half = resp[: self.p // 2 + 1]
        count = np.full(half.size, 2.0)  # rfft: every bin but DC and Nyquist stands for two
        count[0] = count[-1] = 1.0
        w = half / (np.sum(count * half) / self.p)  # white noise: E = sigma^2 n, unweighted's
        self.weights = count * w / self.p  # Parseval's 1 / P folded in
        self.rms = float(np.sqrt(np.sum(count * w**2) / self.p))

    def __call__(self, r: Tensor) -> float:
        """The weighted energy of ``r`` (..., detector cols), along the last axis."""
        return self.inner(r, r)

    def inner(self, a: Tensor, b: Tensor) -> float:
        """The weighted inner product of real ``a`` and ``b`` (the energy's bilinear form)."""
        spec_a = torch.fft.rfft(a.double(), n=self.p, dim=-1)
        spec_b = spec_a if b is a else torch.fft.rfft(b.double(), n=self.p, dim=-1)
        w = torch.as_tensor(self.weights, dtype=torch.float64, device=a.device)
        return float(torch.sum((spec_a * spec_b.conj()).real * w))


def _parts(t: Tensor) -> Tensor:
    """``t`` as float64 real components (complex: real and imaginary parts, last axis)."""
    return torch.view_as_real(t.contiguous()).double() if t.is_complex() else t.double()


def _sampled(problem: Problem) -> Tensor | None:
    """MR: where the data are measured, boolean, broadcast to the data's shape (None: all)."""
    if isinstance(problem.op, SenseOperator):
        return (problem.op.mask.to(problem.y.device) > 0).expand(tuple(problem.y.shape))
    return None


def noise_count(problem: Problem) -> float:
    """``E||n||^2 / sigma^2``: the number of measured real data components (CT: ``sum_i
    w_i^2``, the number of rays without pixel weights; MR: 2 x coils x sampled points)."""
    if problem.weights is not None:
        count = float((problem.weights.double() ** 2).sum())
    else:
        sampled = _sampled(problem)
        count = float(problem.y.numel() if sampled is None else sampled.sum())
        count *= 2.0 if problem.y.is_complex() else 1.0
    return max(count, 1.0)


def _energy(problem: Problem, x: Tensor, spectral: SpectralEnergy | None = None) -> float:
    """``||A x - y||^2`` (units of y squared; with ``spectral``, its weighted energy)."""
    with torch.no_grad():
        r = problem.op(x) - problem.y
        if spectral is not None:
            return spectral(r)
        r = _parts(r)
        return float((r * r).sum())


def discrepancy(problem: Problem, x: Tensor, spectral: SpectralEnergy | None = None) -> float:
    """``||A x - y||^2 / E||n||^2``: the data misfit of ``x`` (the image the operator acts on)
    in units of the expected noise energy ``sigma^2`` x :func:`noise_count`; inf without a
    noise model. ``spectral``: the misfit's weighted energy (white noise keeps its energy)."""
    if problem.noise_std <= 0.0:
        return math.inf
    return _energy(problem, x, spectral) / (problem.noise_std ** 2 * noise_count(problem))


@dataclasses.dataclass(frozen=True)
class SureProbe:
    """A fixed Gaussian nudge of a problem's data for the Monte-Carlo divergence of SURE.

    Attributes:
        nudged: the problem with data ``y + eps * d``.
        direction: ``d`` (data shape): ``w * b`` with ``b`` standard normal per real component
            and ``w`` the pixel weights (CT) or the sampling mask (MR), else 1.
        eps: the step, a tenth of the noise level (the data's units).
    """

    nudged: Problem
    direction: Tensor
    eps: float


def sure_probe(problem: Problem, seed: int = 0) -> SureProbe | None:
    """The nudge of :func:`sure` for ``problem`` (None without a noise model); ``seed`` fixes
    ``b`` so that the choice is reproducible."""
    if problem.noise_std <= 0.0:
        return None
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(problem.y.shape)
    b = torch.randn(shape, generator=gen, dtype=torch.float32)
    if problem.y.is_complex():  # each real component standard normal
        b = torch.complex(b, torch.randn(shape, generator=gen, dtype=torch.float32))
    b = b.to(device=problem.y.device, dtype=problem.y.dtype)
    sampled = _sampled(problem)
    if problem.weights is not None:  # weighted data: W n
        direction = b * problem.weights
    elif sampled is not None:  # MR: noise only where sampled (the data are 0 elsewhere)
        direction = b * sampled
    else:
        direction = b
    eps = 0.1 * problem.noise_std
    nudged = dataclasses.replace(problem, y=problem.y + eps * direction)
    return SureProbe(nudged, direction, eps)


def heldout_risk(problem: Problem, x: Tensor, spectral: SpectralEnergy | None = None) -> float:
    """The held-out data's estimate of the squared prediction error per real data component,
    ``||A x - y||^2 / n - sigma^2`` (units of y squared; ``n`` :func:`noise_count`; x from the
    other data): the residual's mean square less the noise variance; with ``spectral``, in
    its weighted energy (which keeps white noise's, so the noise term is the same)."""
    return _energy(problem, x, spectral) / noise_count(problem) - problem.noise_std ** 2


def sure(problem: Problem, x: Tensor, x_nudged: Tensor, probe: SureProbe,
         spectral: SpectralEnergy | None = None) -> float:
    """Stein's unbiased estimate of the in-sample risk ``||A (x - x_true)||^2 / E||n||^2``
    (x, x_nudged: the method's results from the data and from ``probe.nudged``)::

        misfit - 1 + 2 tr(Sigma J) / E||n||^2,   tr(Sigma J) ~ sigma^2 d . (A x' - A x) / eps

    (``J`` the Jacobian of the predicted data ``A x`` in the data, one Monte-Carlo probe; the
    dot product over real components, ``Re(d^H v)`` for complex data). With ``spectral`` (a
    weighting ``S^T S`` that keeps white noise's energy) the risk in its energy,
    ``||S A (x - x_true)||^2``: the misfit weighted and ``tr(Sigma S^T S J)``, the weighted
    product ``<d, A x' - A x>_S / eps``.
    """
    with torch.no_grad():
        change = problem.op(x_nudged) - problem.op(x)
        if spectral is not None:
            div = spectral.inner(probe.direction, change) / probe.eps
        else:
            div = float((_parts(probe.direction) * _parts(change)).sum()) / probe.eps
    return discrepancy(problem, x, spectral) - 1.0 + 2.0 * div / noise_count(problem)


@dataclasses.dataclass(frozen=True)
class Fold:
    """One split of the data for :func:`risk_criterion`.

    Attributes:
        sub: the training data (the method runs on them).
        held: the held-out data (they score its result).
        probe: SURE's nudge of ``sub`` (:func:`sure_probe`), or None: no in-sample risk
            from this fold.
    """

    sub: Problem
    held: Problem
    probe: SureProbe | None = None


def risk_criterion(folds: Sequence[Fold | Callable[[], Fold]],
                   solve: Callable[[Problem, float], Tensor], heldout_share: float,
                   relative: dict[float, float]) -> Callable[[float], float]:
    """The self-tuned weight's criterion over ``lam`` (CT TV, MR l1-wavelet and TV): the
    method's result ``x = solve(fold.sub, lam)`` from each fold's training data, scored by
    SURE's in-sample risk (averaged over the folds with a ``probe``: one more solve each,
    from ``probe.nudged``) plus ``heldout_share`` times the held-out data's
    :func:`heldout_risk` averaged over all the folds (per real data component, units of y
    squared; folds of equal size, so the mean is the pooled held-out risk), or where no fold
    has a probe (no noise model, or SURE off) by the held-out relative residual alone,
    pooled over the folds (``sqrt(sum ||A x_f - y_f||^2 / sum ||y_f||^2)``). Every weight's
    pooled relative residual goes into ``relative`` (the report's errors).

    ``folds``: :class:`Fold` s, or functions that build one (called once per weight, so that
    only one fold's data need be held at a time). With one fold the criterion is that fold's
    risk, or its relative residual, as they are.
    """

    def criterion(lam: float) -> float:
        in_sample: list[float] = []
        held_risk: list[float] = []
        rel: list[float] = []
        norm2: list[float] = []
        for item in folds:
            fold = item if isinstance(item, Fold) else item()
            x = solve(fold.sub, lam)
            rel.append(fold.held.residual(x))
            if len(folds) > 1:
                with torch.no_grad():
                    norm2.append(float((_parts(fold.held.y) ** 2).sum()))
            if fold.probe is not None:
                x_nudged = solve(fold.probe.nudged, lam)
                in_sample.append(fold.sub.noise_std ** 2
                                 * sure(fold.sub, x, x_nudged, fold.probe))
            held_risk.append(heldout_risk(fold.held, x))
        if len(folds) == 1:
            relative[lam] = rel[0]
        else:  # the relative residual of all the held-out data, each fold's from its x
            total = sum(norm2)
            relative[lam] = math.sqrt(sum(r * r * n for r, n in zip(rel, norm2, strict=True))
                                      / max(total, 1e-300))
        if not in_sample:
            return relative[lam]
        return (sum(in_sample) / len(in_sample)
                + heldout_share * (sum(held_risk) / len(held_risk)))

    return criterion


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
