"""Classical MRI reconstructions: zero-filled, CG-SENSE, L1-wavelet (FISTA) and TV (PDHG).

All methods solve for a complex image x of shape (I, J, K) from multi-coil k-space y of shape
(C, I, J, K) through the SENSE operator ``A = M F S`` of :mod:`medrecon.operators.mri`
(orthonormal centred FFT, maps normalised so that sum_c |S_c|^2 = 1), and return its magnitude.
Operator and data come from :func:`medrecon.problem.measurement_problem` (which estimates coil
maps for files without them); each method's own options are a frozen dataclass
(:class:`SenseSettings` and its subclasses), read from ``ReconOptions.extra``.
Because A is built from unitary pieces, the magnitude is in the reference's intensity scale:
simulating from a reference and reconstructing gives back values comparable to the reference,
with no rescaling.

Map sets (soft SENSE). For files without coil maps, L1-wavelet and TV use two ESPIRiT map sets
by default (``map_sets``, :class:`SenseSettings`; Uecker et al., MRM 71:990, 2014, as BART's
``ecalib`` + ``pics``): A then acts on one image per set, ``x`` of shape (2, I, J, K), and the
regulariser acts on each set. CG-SENSE and zero-filled keep one set by default: the second
set's extra unknowns, held only by CG-SENSE's small Tikhonov weight, amplify noise as the
acceleration grows (+1.0 dB at R = 3.3 but -0.8 dB at R = 4 on the fastMRI-format brain of
benchmarks/RESULTS_mri.md, 8 centre lines), while the sparsity penalty keeps them in check
(L1-wavelet at its best weight: +1.7 and +1.0 dB); on a wide-centre T1 slice the second set is
empty and nothing changes. The output is one complex image (:func:`combine_sets`): magnitude
the root-sum-of-squares over the sets, phase the first set's. RSS because the second set holds
signal that the first set's sensitivities cannot explain (where the calibration admits two
sensitivity vectors), so the magnitudes add in quadrature, as BART users combine ``pics``
output; the first set's phase because its image is the object's (``ReconOutput.solution``
keeps the sets: it is what the operator acts on). Maps from the file are used as they are
(map sets in the file: up to ``map_sets`` of them); the diffusion path keeps one set.

=============  ===========================================================  ===================
method         problem                                                      solver
=============  ===========================================================  ===================
zero-filled    x = A^H y (with maps); RSS_c |F^H y_c| without maps          direct
cg-sense       min ||A x - y||^2 + lam ||x||^2                               CG on A^H A + lam I
l1-wavelet     min 1/2 ||A x - y||^2 + lam ||W x||_1  (W: orthonormal db2,   FISTA, step 1/||A||^2
               approximation band unpenalised, in-plane for 2D multi-slice   (random cycle
               data, randomly shifted each iteration)                        spinning)
tv             min 1/2 ||A x - y||^2 + lam ||grad x||_{2,1} (isotropic TV)   PDHG (Condat-Vu)
=============  ===========================================================  ===================

Default regularisation weights. The Tikhonov weight of CG-SENSE multiplies ``||x||^2`` next to
``A^H A``, whose eigenvalues lie in [0, 1] for normalised maps and a binary mask, so it is
scale-free: ``lam = 1e-3``. The L1 and TV weights have the units of the image, so their
defaults scale with the data: ``lam = alpha * s`` with ``s`` the 99th percentile of |A^H y| (a
robust maximum of the zero-filled image) and ``alpha = 1e-3`` (L1-wavelet) or ``5e-4`` (TV),
chosen on simulated Shepp-Logan and brain-like phantoms at R = 4..12 with 8 coils and SNR 30
(see benchmarks/RESULTS_mri.md). For L1-wavelet and TV this rule is only the centre of the
self-tuning: without ``lam`` the weight is chosen on held-out k-space samples plus, where the
file gives its noise level, SURE's risk on the training samples (:mod:`medrecon.recon.autotune`,
:mod:`medrecon.recon.sure`, :func:`_weight`; two solves per tried weight, ``--set sure=false``
for the held-out samples alone), pooled over up to 7 disjoint held-out folds where one draw
holds out fewer than 30 lines (one more solve per fold and weight;
:func:`~medrecon.recon.autotune.mr_holdout_folds`). ``--lam`` always overrides it, in absolute
units.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from medrecon.config import option
from medrecon.errors import MeasurementError
from medrecon.operators.base import LinearOperator
from medrecon.operators.finite_difference import (
    FiniteDifference,
    divergence,
    finite_difference,
    spacing_weights,
)
from medrecon.operators.functional.fft import ifftc
from medrecon.operators.mri import SenseOperator
from medrecon.operators.wavelets import WaveletTransform, wavelet_filters
from medrecon.problem import Problem, kspace_tensor, measurement_problem
from medrecon.recon.autotune import (
    TuneReport,
    mr_holdout_folds,
    mr_holdout_text,
    tune_weight,
)
from medrecon.recon.base import ReconOptions, ReconOutput, method_settings
from medrecon.recon.sure import Fold, risk_criterion, sure_probe
from medrecon.slab import SLAB_ROWS, measurement_slab
from medrecon.solvers import (
    OperatorNorms,
    conjugate_gradient,
    fista,
    pdhg,
    power_iteration,
    project_l2_ball,
    soft_threshold,
)

if TYPE_CHECKING:
    from medrecon.io.measurement import Measurement

__all__ = [
    "combine_sets",
    "default_lam",
    "zero_filled",
    "cg_sense",
    "l1_wavelet",
    "total_variation",
    "DEFAULT_ALPHA",
    "DEFAULT_ITERATIONS",
    "L1WaveletSettings",
    "SenseSettings",
    "TVSettings",
    "ZeroFilledSettings",
]

#: Default iteration counts (``--iterations`` overrides them).
DEFAULT_ITERATIONS = {"cg-sense": 30, "l1-wavelet": 100, "tv": 300}
#: Default relative weights: lam = alpha * robust max |A^H y| (cg-sense: absolute, scale-free).
DEFAULT_ALPHA = {"cg-sense": 1e-3, "l1-wavelet": 1e-3, "tv": 5e-4}


@dataclass(frozen=True)
class SenseSettings:
    """Options (``--set``) of every MRI method: how the SENSE operator is built."""

    maps_method: Literal["espirit", "lowres"] = option(
        "espirit", help="Coil-map estimation for files without maps (fastMRI).")
    map_sets: int = option(
        1, ge=1, le=4, help="ESPIRiT map sets for files without maps (soft SENSE: one image "
                            "per set, shown as their root-sum-of-squares; default 2 for "
                            "l1-wavelet and tv).")
    coil_batch: int | None = option(None, ge=1, help="Coils transformed at once (memory).")


@dataclass(frozen=True)
class ZeroFilledSettings(SenseSettings):
    """zero-filled: the coil combination (default: SENSE with the file's maps or one coil,
    else root-sum-of-squares, which needs no maps)."""

    combine: Literal["rss", "sense"] | None = None


@dataclass(frozen=True)
class _TunedSettings(SenseSettings):
    """The options of the self-tuned methods (l1-wavelet, tv): two map sets by default and
    how the weight is chosen (SURE, the slab of :mod:`medrecon.slab`)."""

    map_sets: int = option(2, ge=1, le=4, help="ESPIRiT map sets (soft SENSE); see "
                                               "SenseSettings.")
    sure: bool = option(True, help="Self-tuned weight: add SURE's risk on the training "
                                   "samples to the held-out samples' (one more solve per "
                                   "weight); false: the held-out samples alone.")
    tune_slab: int = option(SLAB_ROWS, ge=0, help=(
        "Self-tuned weight on volumes more than 1.5x this many rows long (3D: readout, 2D "
        "multi-slice: slices): chosen on the slab of this many rows holding the most signal "
        "(medrecon.slab), then one solve on all the data; 0: on the whole volume."))


def _check_axes(axes: tuple[int, ...], key: str) -> None:
    if not axes or any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"{key} must list distinct image axes among 0, 1 and 2, got "
                         f"{list(axes)}")


@dataclass(frozen=True)
class L1WaveletSettings(_TunedSettings):
    """l1-wavelet: the transform (orthogonal PyWavelets name, levels, axes) and whether the
    coarsest approximation band is penalised."""

    wavelet: str = option("db2", help="Orthogonal wavelet: haar, dbN, symN or coifN.")
    levels: int | None = option(None, ge=1, help="Decomposition levels (default: as many as "
                                                 "keep the coarsest band longer than the filter).")
    wavelet_axes: tuple[int, ...] | None = option(
        None, help="Transformed axes (default: all three for 3D data, in-plane (0, 1) for 2D "
                   "multi-slice data).")
    penalise_approximation: bool = False
    cycle_spin: bool = option(True, help="Shift the wavelet grid by a random (seeded) offset "
                                         "at every iteration, as BART's pics does.")

    def __post_init__(self) -> None:
        if self.wavelet_axes is not None:
            _check_axes(self.wavelet_axes, "wavelet_axes")
        wavelet_filters(self.wavelet)  # ValueError naming the unknown wavelet


@dataclass(frozen=True)
class TVSettings(_TunedSettings):
    """tv: the gradient axes (default: all three for 3D data, in-plane for 2D multi-slice)
    and PDHG's steps (default: tau = 1 / L, sigma from Condat-Vu's bound)."""

    tv_axes: tuple[int, ...] | None = None
    tau: float | None = option(None, gt=0)
    sigma: float | None = option(None, gt=0)

    def __post_init__(self) -> None:
        if self.tv_axes is not None:
            _check_axes(self.tv_axes, "tv_axes")


def _check_mr(m: Measurement) -> None:
    if m.modality != "MR":
        raise MeasurementError(f"This is a {m.modality} measurement; MRI methods need MR k-space.")


def default_lam(method: str, adjoint_image: torch.Tensor) -> float:
    """The default weight of ``method`` for data whose zero-filled image is ``adjoint_image``."""
    if method == "cg-sense":
        return DEFAULT_ALPHA[method]
    mag = torch.abs(adjoint_image)
    if mag.ndim == 4:  # one image per map set: the scale of their root-sum-of-squares
        mag = torch.sqrt(torch.sum(mag * mag, dim=0))
    mag = mag.flatten()
    # kthvalue avoids torch.quantile's input-size limit on large volumes.
    k = max(1, int(0.99 * mag.numel()))
    scale = float(mag.kthvalue(k).values) if mag.numel() > 1 else float(mag.max())
    return DEFAULT_ALPHA[method] * max(scale, 1e-30)


def _lipschitz(op: LinearOperator, like: torch.Tensor, device: torch.device) -> float:
    """||A^H A|| by 20 power iterations from a seeded random start shaped like ``like``."""
    gen = torch.Generator(device=device).manual_seed(0)
    start = torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=gen)
    return power_iteration(op.normal, start, iters=20).rayleigh


def _iterations(options: ReconOptions, method: str) -> int:
    return int(options.iterations or DEFAULT_ITERATIONS[method])


def combine_sets(x: torch.Tensor) -> torch.Tensor:
    """One complex image ``(I, J, K)`` from the per-set images ``(M, I, J, K)`` of a
    multi-set (soft-SENSE) reconstruction: magnitude the root-sum-of-squares over the sets
    (as BART users combine ``pics`` output; each set holds part of the signal), phase that of
    the first set (the dominant eigenvector's image, whose phase is the object's), or of the
    second where the first is zero. An ``(I, J, K)`` image is returned as it is."""
    if x.ndim == 3:
        return x
    mag = torch.sqrt(torch.sum(torch.abs(x) ** 2, dim=0))
    lead = torch.where(x[0] != 0, x[0], x[1] if x.shape[0] > 1 else x[0])
    phase = torch.where(lead != 0, lead / torch.abs(lead).clamp_min(1e-30),
                        torch.ones_like(lead))
    return mag * phase


def _output(problem: Problem, x: torch.Tensor, iterations: int,
            info: dict[str, Any]) -> ReconOutput:
    if problem.support is not None:
        # Outside the coil maps' support the data say nothing; FISTA's wavelet prox and TV's
        # differences still smear values there. Keep the minimum-norm value (0), as CG does.
        x = x * problem.support
        info["unsupported_fraction"] = problem.info["unsupported_fraction"]
    residual = problem.residual(x)
    solution = x.detach().cpu()  # what the operator acts on: with map sets, the sets
    if x.ndim == 4:  # map sets: the residual is that of the sets; the image is combined
        info["map_sets"] = int(x.shape[0])
        x = combine_sets(x)
    img = problem.units.to_reference(x).cpu().numpy()
    return ReconOutput(image=img, residual=residual, iterations=iterations, info=info,
                       solution=solution)


def _setup(m: Measurement, settings: SenseSettings,
           device: torch.device) -> tuple[Problem, dict[str, Any]]:
    _check_mr(m)
    problem = measurement_problem(m, device, coil_batch=settings.coil_batch,
                                  maps_method=settings.maps_method, map_sets=settings.map_sets)
    return problem, {"coil_maps": problem.info["coil_maps"], "device": str(device)}


# -------------------------------------------------------------------------------------------
# Methods
# -------------------------------------------------------------------------------------------
def zero_filled(m: Measurement, options: ReconOptions, device: torch.device) -> ReconOutput:
    """Adjoint reconstruction: |A^H y| with coil maps, root-sum-of-squares without.

    Without maps in the file (and more than one coil) the coil images ``F^H y_c`` are combined
    by RSS, which needs no maps; the residual is then that of the coil images (the zero-filled
    coil images reproduce the samples exactly, so it is ~0). ``extra={"combine": "sense"}``
    forces the SENSE combination with estimated maps (:class:`ZeroFilledSettings`).
    """
    settings = method_settings(ZeroFilledSettings, options.extra, "zero-filled")
    _check_mr(m)
    t0 = time.perf_counter()
    combine = settings.combine or ("sense" if m.coil_maps is not None or m.n_coils == 1
                                   else "rss")
    if combine == "rss":
        y = kspace_tensor(m, device)  # no maps needed: not the SENSE problem
        dims = tuple(d - 3 for d in m.fft_dims)
        coil_images = ifftc(y, dims)
        img = torch.sqrt(torch.sum(torch.abs(coil_images) ** 2, dim=0))
        # Data consistency of the coil images themselves (M F F^H M y = M y).
        mask = torch.as_tensor(np.asarray(m.mask)).to(device=device, dtype=torch.float32)
        from medrecon.operators.functional.fft import fftc

        res = float(torch.linalg.vector_norm(fftc(coil_images, dims) * mask - y)
                    / torch.linalg.vector_norm(y).clamp_min(1e-30))
        info = {"combine": "rss", "device": str(device),
                "seconds": time.perf_counter() - t0}
        return ReconOutput(image=img.cpu().numpy(), residual=res, iterations=0, info=info)
    problem, info = _setup(m, settings, device)
    x = problem.op.adjoint(problem.y)
    info.update(combine="sense", seconds=time.perf_counter() - t0)
    return _output(problem, x, 0, info)


def cg_sense(m: Measurement, options: ReconOptions, device: torch.device) -> ReconOutput:
    """CG-SENSE with Tikhonov regularisation: argmin ||A x - y||^2 + lam ||x||^2.

    Conjugate gradients on ``(A^H A + lam I) x = A^H y`` from x = 0; stops after ``iterations``
    (default 30) or when the relative residual of the normal equations is below ``tol``.
    Options: :class:`SenseSettings`.
    """
    settings = method_settings(SenseSettings, options.extra, "cg-sense")
    t0 = time.perf_counter()
    problem, info = _setup(m, settings, device)
    op = problem.op
    rhs = op.adjoint(problem.y)
    lam = DEFAULT_ALPHA["cg-sense"] if options.lam is None else float(options.lam)

    def normal(v: torch.Tensor) -> torch.Tensor:
        out = op.normal(v)
        return out + lam * v if lam else out

    res = conjugate_gradient(normal, rhs, max_iter=_iterations(options, "cg-sense"),
                             tol=options.tol, progress=options.progress)
    info.update(lam=lam, lam_default=options.lam is None, converged=res.converged,
                history=res.history, seconds=time.perf_counter() - t0)
    return _output(problem, res.x, res.iterations, info)


def l1_wavelet(m: Measurement, options: ReconOptions, device: torch.device, *,
               holdout_masks: tuple[np.ndarray, np.ndarray] | None = None,
               keep_training: bool = False) -> ReconOutput:
    """L1-wavelet compressed sensing: argmin 1/2 ||A x - y||^2 + lam ||W x||_1.

    FISTA with step 1/L, L = ||A^H A|| by power iteration; the prox of the analysis term is
    ``W^H soft(W v, lam * step)``, exact for the orthonormal W of
    :class:`~medrecon.operators.wavelets.WaveletTransform`. As in BART's ``pics -l1``, the
    default wavelet is Daubechies-2 (BART's "dau2", 4 taps) and the coarsest approximation band
    is not penalised (it holds the image's low-resolution content, not sparsity), and the
    wavelet grid is shifted by a random (seeded) offset at every iteration (BART's random cycle
    spinning; ``cycle_spin=False`` is BART's ``-n``). 2D multi-slice data get in-plane
    wavelets. Options (:class:`L1WaveletSettings`) change all of these. Starts from A^H y;
    default 100 iterations. ``holdout_masks``: the self-tuning's (training, held-out) masks
    when they are drawn already (the guard's split of ``m``, :mod:`medrecon.guard`), the
    ones :func:`~medrecon.recon.autotune.mr_holdout_masks` would draw here.
    ``keep_training`` (with ``holdout_masks``): ``ReconOutput.training_solution`` is the
    self-tuning's solve on their training part at the weight it chose there
    (:func:`_tuned_solve`), which the guard would otherwise solve again.
    """
    settings = method_settings(L1WaveletSettings, options.extra, "l1-wavelet")
    t0 = time.perf_counter()
    problem, info = _setup(m, settings, device)
    iters = _iterations(options, "l1-wavelet")
    norms = OperatorNorms()

    def solve(p: Problem, lam: float, progress: bool = False) -> tuple[Any, dict[str, Any]]:
        return _l1_solve(p, lam, settings, iters, options.tol, progress, device, norms)

    return _tuned_solve(m, problem, info, options, "l1-wavelet", solve, holdout_masks,
                        settings, t0, keep_training)


def _l1_solve(problem: Problem, lam: float, settings: L1WaveletSettings, iters: int,
              tol: float, progress: bool, device: torch.device,
              norms: OperatorNorms | None = None) -> tuple[Any, dict[str, Any]]:
    """FISTA for one weight on ``problem``: (SolverResult, details for ``info``); ``norms``:
    the method call's Lipschitz constants (:class:`~medrecon.solvers.OperatorNorms`: the
    self-tuning's 14 solves on one training operator estimate it once, not 14 times, each
    estimate 20 ``A^H A``, a fifth of a 100-iteration l1-wavelet solve)."""
    op = problem.op
    x0 = op.adjoint(problem.y)
    # 2D multi-slice data: in-plane wavelets. Slices are separate excitations, often thick or
    # few, which caps a 3D transform at one or two levels (measured on fastMRI-format brain
    # k-space, 6 slices: 36.6 dB in-plane against 33.6 dB in 3D, benchmarks/RESULTS_mri.md).
    axes = settings.wavelet_axes or ((0, 1) if len(getattr(op, "fft_dims", ())) == 2
                                     else (0, 1, 2))
    # With map sets the image is (M, I, J, K): the transform runs per set (leading batch axis).
    wav = WaveletTransform(problem.image_shape[-3:], wavelet=settings.wavelet,
                           levels=settings.levels, axes=axes)
    roll_dims = [a - 3 for a in axes]
    penalise_approx = settings.penalise_approximation
    lipschitz = (norms or OperatorNorms())(op, lambda: _lipschitz(op, x0, device))
    step = 1.0 / max(lipschitz * 1.01, 1e-12)  # 1 % margin for the power-iteration estimate

    def grad_f(x: torch.Tensor) -> torch.Tensor:
        return op.normal(x) - x0  # A^H (A x - y), with x0 = A^H y

    approx = (..., *wav.approximation_slices())

    # Random cycle spinning (BART's pics; Figueiredo & Nowak): a decimated wavelet is not shift
    # invariant, so thresholding on one fixed grid leaves blocky artefacts; a new seeded
    # circular shift of the grid (by less than 2^levels, the period that matters) at every
    # iteration averages them out. Each prox stays exact (a shift is unitary).
    gen = torch.Generator().manual_seed(0)

    def prox_g(v: torch.Tensor, s: float) -> torch.Tensor:
        shifts = (torch.randint(0, 2**wav.levels, (len(axes),), generator=gen).tolist()
                  if settings.cycle_spin else [0] * len(axes))
        c = wav.forward(torch.roll(v, shifts, dims=roll_dims))
        shrunk = soft_threshold(c, lam * s)
        if not penalise_approx:
            shrunk[approx] = c[approx]
        return torch.roll(wav.adjoint(shrunk), [-t for t in shifts], dims=roll_dims)

    res = fista(grad_f, prox_g, x0, step=step, max_iter=iters, tol=tol, progress=progress)
    return res, {"wavelet": wav.wavelet, "levels": wav.levels, "wavelet_axes": list(axes),
                 "cycle_spin": settings.cycle_spin, "lipschitz": lipschitz}


def total_variation(m: Measurement, options: ReconOptions, device: torch.device, *,
                    holdout_masks: tuple[np.ndarray, np.ndarray] | None = None,
                    keep_training: bool = False) -> ReconOutput:
    """Isotropic total variation: argmin 1/2 ||A x - y||^2 + lam sum_voxels |grad x|_2.

    Primal-dual (PDHG) with ``K = D`` (forward differences, Neumann boundary), ``f = lam
    ||.||_{2,1}`` dualised (its prox is a pointwise projection onto the lam-ball) and the data
    term as the smooth part h (Condat-Vu form of :func:`~medrecon.solvers.pdhg`), so each
    iteration costs one ``A^H A`` (whose readout FFT cancels) instead of a forward and an
    adjoint. Steps: ``tau = 1 / L`` (the gradient step of the data term, L = ||A^H A||) and
    ``sigma = 0.95 (1 / tau - L / 2) / ||D||^2`` with ``||D||^2 = 4 * (number of TV axes)``.
    For 2D multi-slice data the gradient is in-plane only unless ``extra={"tv_axes": (0, 1,
    2)}`` (:class:`TVSettings`). On anisotropic voxels each axis' differences weigh
    ``h_min / h`` (the gradient in physical units,
    :func:`~medrecon.operators.finite_difference.spacing_weights`; ``||D||^2`` scaled alike).
    Starts from A^H y; default 300 iterations.
    ``holdout_masks``, ``keep_training``: as for :func:`l1_wavelet`.
    """
    settings = method_settings(TVSettings, options.extra, "tv")
    t0 = time.perf_counter()
    problem, info = _setup(m, settings, device)
    iters = _iterations(options, "tv")
    default_axes = (0, 1, 2) if len(m.fft_dims) == 3 else (0, 1)
    norms = OperatorNorms()

    def solve(p: Problem, lam: float, progress: bool = False) -> tuple[Any, dict[str, Any]]:
        return _tv_solve(p, lam, settings, settings.tv_axes or default_axes, iters,
                         options.tol, progress, device, norms)

    return _tuned_solve(m, problem, info, options, "tv", solve, holdout_masks,
                        settings, t0, keep_training)


def _tuned_solve(m: Measurement, problem: Problem, info: dict[str, Any],
                 options: ReconOptions, method: str,
                 solve: Callable[..., tuple[Any, dict[str, Any]]],
                 holdout_masks: tuple[np.ndarray, np.ndarray] | None,
                 settings: _TunedSettings, t0: float,
                 keep_training: bool = False) -> ReconOutput:
    """l1-wavelet's and TV's common end: the weight (given, or self-tuned by :func:`_weight`:
    without ``holdout_masks``, which the guard gives for a slab it has cut already, on the
    slab of :func:`~medrecon.slab.measurement_slab` where one applies, ``info["tune_slab"]``),
    the all-data solve, and ``info`` with the weight, the solver's record and the tuning's.
    ``keep_training`` (self-tuned, ``holdout_masks`` given): ``ReconOutput.training_solution``
    is the tuning's solve on their training part at the chosen weight (``_weight``'s
    ``keep``; up to 9 images on the host, 33 MB each at 128^3 with two map sets, until the
    weight is chosen), else None."""
    kept: dict[float, torch.Tensor] | None = (
        {} if keep_training and holdout_masks is not None else None)
    tm, tp, slab = m, problem, None
    if options.lam is None and holdout_masks is None:
        maps = problem.op.maps if isinstance(problem.op, SenseOperator) else None
        found = measurement_slab(m, problem.y.device, settings.tune_slab, maps)
        if found is not None:
            tm, slab = found
            tp = measurement_problem(tm, problem.y.device, coil_batch=settings.coil_batch,
                                     map_sets=settings.map_sets)
    lam, report = _weight(tm, tp, options, method, solve, holdout_masks,
                          use_sure=settings.sure, keep=kept)
    del tm, tp
    if slab is not None and report is not None:
        info["tune_slab"] = slab.as_dict()
        report = report.noted(f"weight chosen on {slab.text}")
    training = None if kept is None else kept.pop(lam, None)
    del kept
    res, extra = solve(problem, lam, options.progress)
    info.update(lam=lam, lam_default=options.lam is None, **extra, converged=res.converged,
                history=res.history, seconds=time.perf_counter() - t0)
    if report is not None:
        info.update(autotune=report.as_dict(), autotune_line=report.line())
    out = _output(problem, res.x, res.iterations, info)
    out.training_solution = training
    return out


def _tv_solve(problem: Problem, lam: float, settings: TVSettings, axes: tuple[int, ...],
              iters: int, tol: float, progress: bool, device: torch.device,
              norms: OperatorNorms | None = None) -> tuple[Any, dict[str, Any]]:
    """PDHG for one weight on ``problem``: (SolverResult, details for ``info``); ``norms``
    as for :func:`_l1_solve`."""
    op = problem.op
    x0 = op.adjoint(problem.y)
    shape = problem.image_shape[-3:]
    diff = FiniteDifference(shape, dims=axes,  # in physical units on anisotropic voxels
                            weights=spacing_weights(problem.spacing_mm, axes, shape))
    lipschitz = (norms or OperatorNorms())(op, lambda: _lipschitz(op, x0, device)) * 1.01
    d_norm2 = diff.norm_bound  # ||D||^2 <= 4 per axis (tight for large grids), times w^2
    # The primal step is what moves the image, so take the gradient step 1/L and give the dual
    # what is left of Condat-Vu's bound 1/tau - sigma ||D||^2 >= L/2 (with a 5 % margin).
    tau = settings.tau if settings.tau is not None else 1.0 / lipschitz
    sigma = (settings.sigma if settings.sigma is not None
             else 0.95 * (1.0 / tau - lipschitz / 2.0) / d_norm2)

    def grad_h(x: torch.Tensor) -> torch.Tensor:
        return op.normal(x) - x0  # A^H (A x - y)

    def prox_f_conj(v: torch.Tensor, s: float) -> torch.Tensor:
        return project_l2_ball(v, lam, dim=0)

    def prox_g(v: torch.Tensor, t: float) -> torch.Tensor:
        return v

    # The functional forms take the leading map-set axis of (M, I, J, K) images as a batch.
    def grad(x: torch.Tensor) -> torch.Tensor:
        return finite_difference(x, diff.dims, diff.weights)

    def grad_adjoint(g: torch.Tensor) -> torch.Tensor:
        return -divergence(g, diff.dims, diff.weights)

    res = pdhg(grad, grad_adjoint, prox_f_conj, prox_g, x0, tau=tau, sigma=sigma,
               max_iter=iters, tol=tol, grad_h=grad_h, progress=progress)
    return res, {"tv_axes": list(diff.dims),
                 **({"tv_axis_weights": list(diff.weights)} if diff.weights else {}),
                 "lipschitz": lipschitz, "tau": tau,
                 "sigma": sigma}


def _weight(m: Measurement, problem: Problem, options: ReconOptions, method: str,
            solve: Callable[[Problem, float], tuple[Any, dict[str, Any]]],
            masks: tuple[np.ndarray, np.ndarray] | None = None, use_sure: bool = True,
            keep: dict[float, torch.Tensor] | None = None) -> tuple[float, TuneReport | None]:
    """``options.lam``, or (None) the self-tuned weight (:mod:`medrecon.recon.autotune`): the
    same operator with a training mask, each grid weight scored by the summed per-sample risk
    of the training samples (SURE, one more solve per weight from nudged data) and of the
    held-out samples (their residual less the noise; :mod:`medrecon.recon.sure`, the rule of
    CT TV in :mod:`medrecon.recon.ct_tune`), the best one scaled by n_all / n_train for the
    full data term. Without the file's noise level, noiseless data or ``use_sure`` False:
    the held-out samples' relative residual alone (the report says which). Where one draw
    holds out few lines, the held-out terms are pooled over the disjoint folds of
    :func:`~medrecon.recon.autotune.mr_holdout_folds` (one training solve per fold and
    weight; SURE from the first fold only: it sums over every training sample already, and
    the folds' training sets differ in 15 % of the lines outside the calibration box).
    ``masks``: the first fold's (training, held-out) masks drawn already for ``m`` (else
    drawn here). ``keep``: filled with each tried weight's solution on the first fold's
    training part (on the host, the support applied as :func:`_output` does), keyed by the
    weight for all the data it stands for (the tried weight x n_all / n_train)."""
    if options.lam is not None:
        return float(options.lam), None
    op = problem.op
    assert isinstance(op, SenseOperator)
    mask = op.mask.detach().cpu().numpy()
    acq = m.acquisition or {}
    calib = acq.get("calibration")
    seed = int(acq.get("seed", 0) or 0)
    folds = mr_holdout_folds(mask, m.fft_dims, int(calib) if calib else None, seed=seed,
                             image_shape=op.image_shape, first=masks)
    dev = problem.y.device

    def part_op(k: np.ndarray) -> SenseOperator:
        return SenseOperator(op.maps, torch.from_numpy(k).to(dev), fft_dims=op.fft_dims,
                             coil_batch=op.coil_batch, image_shape=op.image_shape)

    def part(k: np.ndarray | SenseOperator) -> Problem:
        p_op = k if isinstance(k, SenseOperator) else part_op(k)
        return dataclasses.replace(problem, op=p_op, y=problem.y * (p_op.mask > 0))

    train, held = folds[0]
    sub = part(train)
    n_train = float((train > 0).sum())
    scale = (n_train + float((held > 0).sum())) / n_train  # the same for every fold (equal sizes)
    # the file's noise level (per real part); an estimate from the outer k-space (fastMRI
    # files) is biased by coil correlation, so the self-tuning does not trust it
    sigma = (problem.noise_std if use_sure and not problem.info.get("noise_estimated")
             else None)
    probe = None
    if sigma is not None and sigma > 0.0:  # sub and the held-out parts carry it
        probe = sure_probe(sub, seed)
    # the other folds' data are built when scored (one fold's data in memory at a time); their
    # training operators once (the maps are shared), so the solver's Lipschitz estimate per
    # operator (OperatorNorms) is made once per fold, not once per fold and weight
    train_ops = [part_op(t) for t, _ in folds[1:]]
    scored: list[Fold | Callable[[], Fold]] = [Fold(sub, part(held), probe)] + [
        lambda t=t, h=h: Fold(part(t), part(h)) for t, (_, h) in zip(train_ops, folds[1:],
                                                                     strict=True)]
    relative: dict[float, float] = {}  # the held-out relative residual (the report's errors)

    def fit(p: Problem, lam: float) -> torch.Tensor:
        x = solve(p, lam)[0].x
        if keep is not None and p is sub:
            keep[lam * scale] = (x if sub.support is None else x * sub.support).detach().cpu()
        return x

    criterion = risk_criterion(scored, fit, 1.0, relative)
    centre = default_lam(method, sub.op.adjoint(sub.y))
    best, grid, _ = tune_weight(criterion, centre)
    errors = [relative[g] for g in grid]
    if probe is not None:
        pick = grid[int(np.argmin(errors))]
        note = "held-out + SURE risk" + (
            "" if pick == best else f" (held-out samples alone: {pick * scale:.3g})")
    elif not use_sure:
        note = "held-out samples alone (sure=false)"
    elif sigma is None:
        note = "held-out samples alone: no noise level in the file"
    else:
        note = "held-out samples alone: noiseless data"
    if len(folds) > 1:
        note += f"; held-out terms pooled over {len(folds)} disjoint folds"
    report = TuneReport("lam", best * scale, tuple(grid), tuple(errors), scale,
                        mr_holdout_text(mask, train, held), note, len(folds))
    return best * scale, report
