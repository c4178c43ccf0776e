"""Classical CT reconstructions: FBP (parallel, fan), FDK (cone), SIRT, CGLS and TV (PDHG).

All methods take a CT :class:`~medrecon.io.measurement.Measurement` (sinogram of line integrals,
geometry in ``operator``) and return HU on the reference grid. They start from its physics
problem (:func:`medrecon.problem.measurement_problem`: the projector of the measured views, the
data, the pixel weights applied once, the HU <-> mu map with the file's water value); images
are the linear attenuation mu in 1/mm. Each method's own options are a frozen dataclass
(:class:`FBPSettings`, :class:`SIRTSettings`, :class:`CGLSSettings`, :class:`TVSettings`).

FBP and FDK run the analytic reconstructions of :mod:`medrecon.recon.ct_analytic` (ramp
filter, angular and redundancy weights, voxel-driven backprojection) on the problem's data.

Iterative methods solve with the matched ray-driven projector A (mu in units of mu_water inside
the solvers, which keeps the regularisation weight dimensionless):

* ``sirt``: x <- x + C A^T R (y - A x), R = 1 / (A 1), C = 1 / (A^T 1), x >= 0;
* ``cgls``: conjugate gradients on the normal equations of min ||A x - y||^2 (early stopping
  regularises);
* ``tv``: min_x>=0 1/2 ||A x - y||^2 / L + lam TV(x) by PDHG (Chambolle & Pock 2011), with
  L = ||A||^2 from a power iteration and isotropic 3D TV.

Without ``lam`` TV's weight, and without ``iterations`` the count of SIRT and CGLS, are chosen
from the measurement alone on held-out views (:mod:`medrecon.recon.ct_tune`); TV's weight on
long parallel- and fan-beam volumes on a slab of 64 slices (``tune_slab``,
:mod:`medrecon.slab`), then one solve on all the data. SIRT's and CGLS's early stopping runs on
the whole volume.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from medrecon.config import option
from medrecon.errors import InputError, MeasurementError
from medrecon.operators.finite_difference import (
    difference_norm_bound,
    divergence,
    finite_difference,
    spacing_weights,
)
from medrecon.problem import Problem, measurement_problem
from medrecon.recon.autotune import TuneReport, best_iteration
from medrecon.recon.base import ReconOptions, ReconOutput, method_settings
from medrecon.recon.ct_analytic import analytic_reconstruction, filter_name
from medrecon.recon.ct_tune import holdout_problems, tune_tv_weight
from medrecon.slab import SLAB_ROWS, measurement_slab
from medrecon.solvers import (
    OperatorNorms,
    SolverResult,
    cgls,
    pdhg,
    power_iteration,
    project_l2_ball,
    sirt,
)

if TYPE_CHECKING:
    from medrecon.io.measurement import Measurement

Tensor = torch.Tensor

__all__ = [
    "sirt",
    "cgls",
    "tv_reconstruction",
    "fbp_method",
    "fdk_method",
    "sirt_method",
    "cgls_method",
    "tv_method",
    "DEFAULT_ITERATIONS",
    "DEFAULT_TV_LAM",
    "CGLSSettings",
    "FBPSettings",
    "SIRTSettings",
    "TVSettings",
]


# -------------------------------------------------------------------------------------------
# TV by PDHG (SIRT and CGLS live in medrecon.solvers)
# -------------------------------------------------------------------------------------------
def tv_reconstruction(
    forward: Callable[[Tensor], Tensor],
    adjoint: Callable[[Tensor], Tensor],
    y: Tensor,
    x0: Tensor,
    lam: float,
    max_iter: int = 200,
    tol: float = 1e-5,
    lipschitz: float | None = None,
    nonnegative: bool = True,
    step_ratio: float = 0.1,
    progress: bool = False,
    weights: Sequence[float] | None = None,
) -> tuple[SolverResult, float]:
    """``min_x 1/2 ||A x - y||^2 / L + lam TV(x)`` (x >= 0) by the shared PDHG.

    K = [A / sqrt(L); D] with D the forward-difference gradient over the three axes (isotropic
    TV; with ``weights``, each axis' differences scaled: anisotropic voxels,
    :func:`~medrecon.operators.finite_difference.spacing_weights`), ``||K||^2 <= 1 + 4 sum
    w^2`` (13 unweighted); the dual variable packs the scaled sinogram and the gradient
    field into one flat tensor so that the generic :func:`~medrecon.solvers.pdhg` runs
    unchanged. ``tau = s / step_ratio``, ``sigma = s step_ratio`` with ``s = 0.99 /
    ||K||``; the default ratio 0.1 (larger primal steps) converges several times faster than 1
    on sparse-view problems with x in water units. Returns (result, L).
    """
    if lipschitz is None:
        lipschitz = _data_lipschitz(forward, adjoint, x0)
    sq = math.sqrt(max(lipschitz, 1e-30))
    ny = y.numel()
    shape = x0.shape
    ys = y / sq

    def k_op(x: Tensor) -> Tensor:
        return torch.cat([(forward(x) / sq).reshape(-1),
                          finite_difference(x, weights=weights).reshape(-1)])

    def k_adj(d: Tensor) -> Tensor:
        return (adjoint(d[:ny].reshape(y.shape)) / sq
                - divergence(d[ny:].reshape(3, *shape), weights=weights))

    def prox_f_conj(d: Tensor, sigma: float) -> Tensor:
        data = (d[:ny] - sigma * ys.reshape(-1)) / (1.0 + sigma)
        grad = project_l2_ball(d[ny:].reshape(3, *shape), lam, dim=0).reshape(-1)
        return torch.cat([data, grad])

    def prox_g(x: Tensor, tau: float) -> Tensor:
        return x.clamp(min=0.0) if nonnegative else x

    step = 0.99 / math.sqrt(1.0 + difference_norm_bound(3, weights))
    result = pdhg(k_op, k_adj, prox_f_conj, prox_g, x0, tau=step / step_ratio,
                  sigma=step * step_ratio,
                  max_iter=max_iter, tol=tol, progress=progress)
    return result, float(lipschitz)


def _data_lipschitz(forward: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor],
                    like: Tensor) -> float:
    """``||A^H A||`` (5 % margin) by 15 power iterations from a seeded start shaped like
    ``like``: :func:`tv_reconstruction`'s ``L``."""
    gen = torch.Generator(device=like.device).manual_seed(0)
    start = torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=gen)
    return power_iteration(lambda v: adjoint(forward(v)), start, iters=15).rayleigh * 1.05


# -------------------------------------------------------------------------------------------
# Registered methods
# -------------------------------------------------------------------------------------------
def _problem(measurement: Measurement, device: torch.device) -> Problem:
    if measurement.modality != "CT":
        raise MeasurementError(f"Expected a CT measurement, got modality "
                               f"{measurement.modality!r}.")
    return measurement_problem(measurement, device)


def _output(problem: Problem, mu: Tensor, iterations: int, info: dict[str, Any]) -> ReconOutput:
    hu = problem.units.to_reference(mu.detach().float().cpu().numpy())
    return ReconOutput(image=hu, residual=problem.residual(mu), iterations=iterations,
                       info={**problem.info, **info}, solution=mu.detach().cpu())


#: Default iteration counts (``--iterations`` overrides them).
DEFAULT_ITERATIONS = {"sirt": 100, "cgls": 30, "tv": 200}
#: Default TV weight (image in water units, data term normalised by ||A||^2).
DEFAULT_TV_LAM = 1e-3


@dataclass(frozen=True)
class FBPSettings:
    """fbp and fdk (``--set``): the ramp filter's apodisation window."""

    filter: str = option("ram-lak", help="ram-lak, shepp-logan, cosine, hamming or hann.")

    def __post_init__(self) -> None:
        filter_name(self.filter)  # an unknown window is an InputError naming the choices


@dataclass(frozen=True)
class SIRTSettings:
    """sirt: the relaxation factor (SIRT converges for 0 < relaxation < 2)."""

    relaxation: float = option(1.0, gt=0.0, lt=2.0)


@dataclass(frozen=True)
class CGLSSettings:
    """cgls has no options of its own (``--iterations`` is its regulariser)."""


@dataclass(frozen=True)
class TVSettings:
    """tv: the FBP/FDK warm start, PDHG's step ratio, and the self-tuned weight's criteria:
    ``sure`` adds SURE's in-sample risk to the held-out views' (one more solve per weight),
    ``discrepancy_cap`` caps the choice at the discrepancy weight (off:
    :mod:`medrecon.recon.ct_tune` says where each helps and where it hurts), ``tune_slab``
    where it is chosen (the slab of :mod:`medrecon.slab`)."""

    warm_start: bool = True
    step_ratio: float = option(0.1, gt=0.0)
    discrepancy_cap: bool = False
    sure: bool = True
    tune_slab: int = option(SLAB_ROWS, ge=0, help=(
        "Self-tuned weight on parallel- and fan-beam volumes of more than 1.5x this many "
        "slices: chosen on the slab of this many slices whose detector rows hold the largest "
        "line integrals (medrecon.slab), then one solve on all the data; 0: on the whole "
        "volume."))


def _analytic(measurement: Measurement, options: ReconOptions, device: torch.device,
              method: str) -> ReconOutput:
    window = method_settings(FBPSettings, options.extra, method).filter
    t0 = time.perf_counter()
    problem = _problem(measurement, device)
    geometry = problem.geometry
    assert geometry is not None
    with torch.no_grad():  # weighted data enter FBP weighted (problem.y = W y)
        mu = analytic_reconstruction(problem.y, geometry, problem.image_shape,  # type: ignore[arg-type]
                                     problem.spacing_mm, window)
    algorithm = "fdk" if geometry.kind == "cone" else "fbp"
    return _output(problem, mu, 0, {"algorithm": algorithm, "filter": filter_name(window),
                                    "seconds": time.perf_counter() - t0})


def fbp_method(measurement: Measurement, options: ReconOptions,
               device: torch.device) -> ReconOutput:
    """Filtered backprojection (parallel, fan; cone data get FDK). ``extra["filter"]``:
    ram-lak (default), shepp-logan, cosine, hamming or hann (:class:`FBPSettings`)."""
    return _analytic(measurement, options, device, "fbp")


def fdk_method(measurement: Measurement, options: ReconOptions,
               device: torch.device) -> ReconOutput:
    """FDK for cone-beam data (parallel/fan data get the matching FBP)."""
    return _analytic(measurement, options, device, "fdk")


def _scaled(problem: Problem) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor],
                                      Tensor, Tensor]:
    """Operators on x = mu / mu_water (water = 1), the data, and a zero start."""
    op, y, mw = problem.op, problem.y, problem.units.mu_water
    assert mw is not None

    def forward(x: Tensor) -> Tensor:
        return op.forward(x * mw)

    def adjoint(r: Tensor) -> Tensor:
        return op.adjoint(r) * mw

    x0 = torch.zeros(problem.image_shape, dtype=y.dtype, device=y.device)
    return forward, adjoint, y, x0


def _iterative(measurement: Measurement, options: ReconOptions, device: torch.device,
               algorithm: str, solver: Callable[..., SolverResult], default_iterations: int,
               **solver_options: Any) -> ReconOutput:
    """Run ``solver`` (sirt, cgls) in water units. Without ``iterations`` the count is chosen
    by early stopping on held-out views: one run on the other views (up to twice the default
    count) scored after every iteration, then the same count on all views."""
    t0 = time.perf_counter()
    problem = _problem(measurement, device)
    report = None
    iterations = options.iterations
    if iterations is None:
        sub, held, text = holdout_problems(measurement, device)
        f, a, y, x0 = _scaled(sub)
        mw = problem.units.mu_water
        errors: list[float] = []
        with torch.no_grad():
            solver(f, a, y, x0, max_iter=2 * default_iterations, tol=0.0,
                   callback=lambda k, x: errors.append(held.residual(x * mw)),
                   **solver_options)
        iterations = best_iteration(errors)
        report = TuneReport("iterations", iterations, tuple(range(1, len(errors) + 1)),
                            tuple(errors), 1.0, text)
    forward, adjoint, y, x0 = _scaled(problem)
    with torch.no_grad():
        res = solver(forward, adjoint, y, x0, max_iter=iterations, tol=0.0,
                     progress=options.progress, **solver_options)
    info: dict[str, Any] = {"algorithm": algorithm, "history": res.history[-5:]}
    if report is not None:
        info.update(autotune=report.as_dict(), autotune_line=report.line())
    info["seconds"] = time.perf_counter() - t0
    return _output(problem, res.x * problem.units.mu_water, res.iterations, info)


def sirt_method(measurement: Measurement, options: ReconOptions,
                device: torch.device) -> ReconOutput:
    """SIRT with non-negativity; ``iterations`` default 100; ``extra["relaxation"]`` (1.0)."""
    settings = method_settings(SIRTSettings, options.extra, "sirt")
    return _iterative(measurement, options, device, "sirt", sirt, DEFAULT_ITERATIONS["sirt"],
                      relaxation=settings.relaxation)


def cgls_method(measurement: Measurement, options: ReconOptions,
                device: torch.device) -> ReconOutput:
    """CGLS; ``iterations`` default 30 (early stopping regularises noisy data)."""
    method_settings(CGLSSettings, options.extra, "cgls")
    return _iterative(measurement, options, device, "cgls", cgls, DEFAULT_ITERATIONS["cgls"])


def tv_method(measurement: Measurement, options: ReconOptions,
              device: torch.device, *, keep_training: bool = False) -> ReconOutput:
    """Isotropic 3D TV with non-negativity by PDHG, warm-started from FBP/FDK when possible.

    ``lam`` (default :data:`DEFAULT_TV_LAM`) weighs TV of the image in units of water against
    ``1/2 ||A x - y||^2 / ||A||^2`` (none: self-tuned); ``iterations`` default 200; ``extra``:
    :class:`TVSettings`. Self-tuned on a volume of more than 1.5x ``tune_slab`` slices
    (parallel and fan beam): the weight is chosen on the slab of :func:`~medrecon.slab.
    measurement_slab` (``info["tune_slab"]``, the report's note says which slices), then one
    solve on all the data. ``keep_training``: ``ReconOutput.training_solution`` is the
    self-tuning's solve on its training views at the chosen weight, where the weight is a
    tried one (not the parabola vertex between two: :func:`~medrecon.recon.ct_tune.
    tune_tv_weight`), for the guard, which would otherwise solve it again; the guard cuts its
    own slab, so with ``keep_training`` the weight is chosen on ``measurement`` as given.
    """
    settings = method_settings(TVSettings, options.extra, "tv")
    t0 = time.perf_counter()
    problem = _problem(measurement, device)
    iters = options.iterations or DEFAULT_ITERATIONS["tv"]
    report = None
    kept: dict[float, Tensor] | None = {} if keep_training else None
    norms = OperatorNorms()  # the training views' L: estimated once for all their solves
    slab = None
    if options.lam is None:
        # Long parallel- and fan-beam volumes: the weight is chosen on the exact sub-problem of
        # a slab of slices (absolute: it carries over, medrecon.slab). Not where the caller
        # keeps the training solution (the guard, which scores it on its own split: on the
        # slab it has cut already, or on the whole volume where it cut none).
        tm, tp = measurement, problem
        found = None if keep_training else measurement_slab(measurement, device,
                                                            settings.tune_slab)
        if found is not None:
            tm, slab = found
            tp = _problem(tm, device)
        lam, report = tune_tv_weight(
            tm, tp, DEFAULT_TV_LAM, device,
            lambda p, w: _tv_solve(p, w, iters, options.tol, settings, norms=norms)[0].x,
            cap=settings.discrepancy_cap, use_sure=settings.sure, keep=kept)
        del tm, tp
        if slab is not None:
            report = report.noted(f"weight chosen on {slab.text}")
    else:
        lam = float(options.lam)
    training = None if kept is None else kept.pop(lam, None)
    del kept
    res, lip, warm = _tv_solve(problem, lam, iters, options.tol, settings, options.progress,
                               norms)
    info: dict[str, Any] = {"algorithm": "tv-pdhg", "lam": lam, "lipschitz": lip,
                            "warm_start": warm, "history": res.history[-5:]}
    axis_weights = _tv_weights(problem)
    if axis_weights is not None:
        info["tv_axis_weights"] = list(axis_weights)
    if slab is not None:
        info["tune_slab"] = slab.as_dict()
    if report is not None:
        info.update(autotune=report.as_dict(), autotune_line=report.line())
    info["seconds"] = time.perf_counter() - t0
    out = _output(problem, res.x * problem.units.mu_water, res.iterations, info)
    out.training_solution = training
    return out


def _tv_solve(problem: Problem, lam: float, iters: int, tol: float, settings: TVSettings,
              progress: bool = False,
              norms: OperatorNorms | None = None) -> tuple[SolverResult, float, str]:
    """TV-PDHG for one weight on ``problem`` (water units): (result, ||A||^2, warm start);
    ``norms``: the method call's ``||A^H A||`` by operator (SURE's nudged problems keep the
    operator and its units), else estimated here."""
    forward, adjoint, y, x0 = _scaled(problem)
    mw = problem.units.mu_water
    assert mw is not None and problem.geometry is not None
    warm = "zeros"
    if problem.weights is None and settings.warm_start:
        try:
            with torch.no_grad():
                x0 = analytic_reconstruction(problem.y, problem.geometry,
                                             problem.image_shape,  # type: ignore[arg-type]
                                             problem.spacing_mm).clamp(min=0) / mw
            warm = "fbp"
        except InputError:
            pass  # e.g. a short fan scan: start from zeros
    with torch.no_grad():
        lip0 = (norms or OperatorNorms())(problem.op,
                                          lambda: _data_lipschitz(forward, adjoint, x0))
        res, lip = tv_reconstruction(forward, adjoint, y, x0, lam, max_iter=iters, tol=tol,
                                     lipschitz=lip0, step_ratio=settings.step_ratio,
                                     progress=progress, weights=_tv_weights(problem))
    return res, lip, warm


def _tv_weights(problem: Problem) -> tuple[float, ...] | None:
    """TV's per-axis difference weights on ``problem``'s voxels (None: isotropic, or a
    single slice): the gradient in physical units on thick slices."""
    return spacing_weights(problem.spacing_mm, shape=problem.image_shape)
