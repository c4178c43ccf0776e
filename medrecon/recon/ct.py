"""Classical CT reconstructions: FBP (parallel, fan), FDK (cone), SIRT, CGLS and TV (PDHG).

All methods take a CT :class:`~medrecon.io.measurement.Measurement` (sinogram of line integrals,
geometry in ``operator``) and return HU on the reference grid. They start from its physics
problem (:func:`medrecon.problem.measurement_problem`: the projector of the measured views, the
data, the pixel weights applied once, the HU <-> mu map with the file's water value); images
are the linear attenuation mu in 1/mm. Each method's own options are a frozen dataclass
(:class:`FBPSettings`, :class:`SIRTSettings`, :class:`CGLSSettings`, :class:`TVSettings`).

Analytic methods (Kak & Slaney, *Principles of Computerized Tomographic Imaging*, ch. 3)::

    parallel:  mu(x) = sum_v w_v  (p_v * h)(x . e_u)
    fan/cone:  mu(x) = sum_v w_v  r_v(gamma) U^-2 ((c p_v) * h)(u'(x), v'(x))

with ``h`` the ramp filter (Ram-Lak, optionally apodised by a Shepp-Logan, cosine, Hamming or
Hann window), ``w_v`` the angular quadrature weight of view v, ``U = (DSO - x . e_s) / DSO``,
``(u', v')`` the voxel's detector coordinates scaled to the isocentre, ``c = DSO /
sqrt(DSO^2 + u'^2 + v'^2)`` the cosine pre-weight (FDK: Feldkamp, Davis & Kress 1984), and
``r_v`` the redundancy weight: 1/2 for a full 360 deg scan, Parker's weights for a short scan
of at least 180 deg plus the fan angle. The backprojection is voxel-driven (linear detector
interpolation), not the ray-driven adjoint; the scaling makes a uniform water cylinder come back
at 0 HU.

Iterative methods solve with the matched ray-driven projector A (mu in units of mu_water inside
the solvers, which keeps the regularisation weight dimensionless):

* ``sirt``: x <- x + C A^T R (y - A x), R = 1 / (A 1), C = 1 / (A^T 1), x >= 0;
* ``cgls``: conjugate gradients on the normal equations of min ||A x - y||^2 (early stopping
  regularises);
* ``tv``: min_x>=0 1/2 ||A x - y||^2 / L + lam TV(x) by PDHG (Chambolle & Pock 2011), with
  L = ||A||^2 from a power iteration and isotropic 3D TV.

Without ``lam`` TV's weight, and without ``iterations`` the count of SIRT and CGLS, are chosen
from the measurement alone on held-out views (:mod:`medrecon.recon.ct_tune`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medrecon.config import option
from medrecon.errors import InputError, MeasurementError
from medrecon.operators.ct_geometry import CTGeometry
from medrecon.operators.finite_difference import divergence, finite_difference
from medrecon.operators.functional.projectors import sample_detector_2d, sample_detector_3d
from medrecon.problem import Problem, measurement_problem
from medrecon.recon.autotune import TuneReport, best_iteration
from medrecon.recon.base import ReconOptions, ReconOutput, method_settings
from medrecon.recon.ct_tune import holdout_problems, tune_tv_weight
from medrecon.solvers import (
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
    "FILTERS",
    "ramp_filter",
    "filter_sinogram",
    "fbp",
    "fdk",
    "analytic_reconstruction",
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

#: Apodisation windows of the ramp filter, as functions of f in cycles/sample (|f| <= 1/2).
FILTERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ram-lak": lambda f: np.ones_like(f),
    "shepp-logan": lambda f: np.sinc(f),  # sin(pi f) / (pi f): 2/pi at Nyquist
    "cosine": lambda f: np.cos(np.pi * f),
    "hamming": lambda f: 0.54 + 0.46 * np.cos(2 * np.pi * f),
    "hann": lambda f: 0.5 + 0.5 * np.cos(2 * np.pi * f),
}
_FILTER_ALIASES = {"ramp": "ram-lak", "ramlak": "ram-lak", "ram_lak": "ram-lak",
                   "shepp_logan": "shepp-logan", "shepplogan": "shepp-logan", "hanning": "hann"}


def _filter_name(name: str) -> str:
    key = str(name).strip().lower()
    key = _FILTER_ALIASES.get(key, key)
    if key not in FILTERS:
        raise InputError(f"Unknown FBP filter {name!r}; choose one of: {', '.join(FILTERS)}.")
    return key


def ramp_filter(n: int, spacing: float, window: str = "ram-lak") -> np.ndarray:
    """Frequency response (length P, real) of the discrete ramp filter for n detector samples.

    The spatial Ram-Lak kernel of Kak & Slaney (eq. 3.61): ``h[0] = 1 / (4 tau^2)``,
    ``h[k] = -1 / (pi k tau)^2`` for odd k, 0 for even k != 0 (``tau`` = ``spacing`` in mm),
    zero-padded to P >= 2 n (no circular wrap-around), transformed, times ``tau`` (the
    convolution integral's measure) and the apodisation window. P is a power of two.
    """
    p = 1 << int(math.ceil(math.log2(max(2 * n, 2))))
    k = np.arange(p)
    k = np.where(k <= p // 2, k, k - p)  # circular lags
    h = np.zeros(p)
    h[0] = 1.0 / (4.0 * spacing**2)
    odd = (k % 2) != 0
    h[odd] = -1.0 / (np.pi * k[odd] * spacing) ** 2
    resp = np.real(np.fft.fft(h)) * spacing
    return resp * FILTERS[_filter_name(window)](np.fft.fftfreq(p))


def filter_sinogram(sino: Tensor, spacing: float, window: str = "ram-lak") -> Tensor:
    """Ramp-filter every detector row along the column axis (last dimension)."""
    n = sino.shape[-1]
    resp = torch.as_tensor(ramp_filter(n, spacing, window), dtype=sino.dtype, device=sino.device)
    spec = torch.fft.rfft(sino, n=resp.numel(), dim=-1) * resp[: resp.numel() // 2 + 1]
    return torch.fft.irfft(spec, n=resp.numel(), dim=-1)[..., :n]


# -------------------------------------------------------------------------------------------
# Angular weights
# -------------------------------------------------------------------------------------------
def _angular_weights(angles: np.ndarray) -> tuple[np.ndarray, float]:
    """Quadrature weights d(theta) per view and the total angular coverage (rad).

    Views are treated as samples of a scan covering ``[theta_0, theta_last + d_last]``; each
    gets half the gap to each neighbour (in scan order), the ends the adjacent full gap.
    """
    v = len(angles)
    if v == 1:
        return np.array([math.pi]), math.pi
    order = np.argsort(angles)
    a = np.asarray(angles, dtype=np.float64)[order]
    gaps = np.diff(a)
    w = np.empty(v)
    w[1:-1] = (gaps[:-1] + gaps[1:]) / 2
    w[0], w[-1] = gaps[0], gaps[-1]
    out = np.empty(v)
    out[order] = w
    return out, float(w.sum())


def _parallel_redundancy(angles: np.ndarray, coverage: float) -> np.ndarray:
    """Per-view weights making every direction (mod pi) count once."""
    if coverage >= 2 * math.pi - 1e-6:
        return np.full(len(angles), math.pi / coverage)
    if coverage <= math.pi + 1e-6:
        return np.ones(len(angles))
    # Between pi and 2 pi: directions in the overlap (first and last coverage - pi) are seen
    # twice and get half weight.
    rel = np.asarray(angles) - float(np.min(angles))
    overlap = coverage - math.pi
    twice = (rel < overlap) | (rel >= math.pi)
    return np.where(twice, 0.5, 1.0)


def _parker_weights(beta: Tensor, gamma: Tensor, delta: float) -> Tensor:
    """Parker (1982) short-scan weights for scan angle ``beta`` in [0, pi + 2 delta].

    ``gamma`` is the fan angle of the ray in Parker's sign convention (conjugate ray at
    ``beta + pi + 2 gamma``); needs ``delta >= max |gamma|``.
    """
    w = torch.ones_like(gamma * beta)
    b = beta.expand_as(w)
    g = gamma.expand_as(w)
    rise = b < 2 * (delta - g)
    fall = b > math.pi - 2 * g
    w = torch.where(rise, torch.sin(math.pi / 4 * b / (delta - g).clamp(min=1e-12)) ** 2, w)
    w = torch.where(fall, torch.sin(math.pi / 4 * (math.pi + 2 * delta - b)
                                    / (delta + g).clamp(min=1e-12)) ** 2, w)
    return w


# -------------------------------------------------------------------------------------------
# FBP / FDK
# -------------------------------------------------------------------------------------------
def _voxel_coords(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                  dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    axes = [(torch.arange(n, dtype=dtype, device=device) - (n - 1) / 2.0) * s
            for n, s in zip(shape, spacing, strict=True)]
    return axes[0], axes[1], axes[2]


def fbp(sino: Tensor, geometry: CTGeometry, volume_shape: tuple[int, int, int],
        spacing_mm: tuple[float, float, float], window: str = "ram-lak",
        max_elements: int = 2**24) -> Tensor:
    """Filtered backprojection for parallel and (flat-detector) fan-beam sinograms.

    Args:
        sino: (V, K, C) line integrals (rows = the K slices).
        geometry: a "parallel" or "fan" geometry without per-view vectors.
        volume_shape, spacing_mm: the output grid.
        window: ramp apodisation, one of :data:`FILTERS`.
        max_elements: bound on (views x voxels) handled at once.

    Returns:
        mu in 1/mm, shape (I, J, K).
    """
    if geometry.kind not in ("parallel", "fan"):
        raise InputError(f"FBP handles parallel and fan-beam data; use FDK for "
                         f"{geometry.kind}-beam data.")
    window = _filter_name(window)
    ni, nj, nk = volume_shape
    dtype, device = sino.dtype, sino.device
    angles = np.asarray(geometry.angles, dtype=np.float64)
    dtheta, coverage = _angular_weights(angles)
    x, y, _ = _voxel_coords(volume_shape, spacing_mm, dtype, device)
    xx, yy = torch.meshgrid(x, y, indexing="ij")
    u_det = torch.as_tensor(geometry.column_positions_mm(), dtype=dtype, device=device)
    ncols = geometry.detector_cols
    th = torch.as_tensor(angles, dtype=dtype, device=device)
    cos, sin = torch.cos(th), torch.sin(th)
    out = torch.zeros((nk, ni, nj), dtype=dtype, device=device)
    if geometry.kind == "parallel":
        w = torch.as_tensor(dtheta * _parallel_redundancy(angles, coverage), dtype=dtype,
                            device=device)
        q = filter_sinogram(sino, geometry.pixel_cols_mm, window)
        for a, b in _view_chunks(len(angles), ni * nj * (nk + 2), max_elements):
            u = -xx[None] * sin[a:b, None, None] + yy[None] * cos[a:b, None, None]
            idx = (u - geometry.offset_cols_mm) / geometry.pixel_cols_mm + (ncols - 1) / 2.0
            vals = sample_detector_2d(q[a:b].contiguous(), idx)  # (Vc, K, I, J)
            out += torch.einsum("v,vkij->kij", w[a:b], vals)
        return out.permute(1, 2, 0).contiguous()
    dso = float(geometry.source_isocentre_mm)  # type: ignore[arg-type]
    dsd = float(geometry.source_detector_mm)  # type: ignore[arg-type]
    scale = dso / dsd  # detector -> isocentre plane
    u_iso = u_det * scale
    pre = dso / torch.sqrt(dso**2 + u_iso**2)
    # Redundancy weights vary along the detector, so they go on before the ramp filter.
    redundancy = _fan_redundancy(geometry, angles, coverage, u_iso, dso, dtype, device)
    q = filter_sinogram(sino * (pre * redundancy)[:, None, :], geometry.pixel_cols_mm * scale,
                        window)
    w = torch.as_tensor(dtheta, dtype=dtype, device=device)
    for a, b in _view_chunks(len(angles), ni * nj * (nk + 3), max_elements):
        s = xx[None] * cos[a:b, None, None] + yy[None] * sin[a:b, None, None]
        t = -xx[None] * sin[a:b, None, None] + yy[None] * cos[a:b, None, None]
        big_u = (dso - s) / dso
        u = t / big_u / scale  # on the detector, mm
        idx = (u - geometry.offset_cols_mm) / geometry.pixel_cols_mm + (ncols - 1) / 2.0
        vals = sample_detector_2d(q[a:b].contiguous(), idx)  # (Vc, K, I, J)
        out += torch.einsum("v,vij,vkij->kij", w[a:b], 1.0 / big_u**2, vals)
    return out.permute(1, 2, 0).contiguous()


def _view_chunks(views: int, per_view: int, max_elements: int) -> list[tuple[int, int]]:
    n = max(1, int(max_elements) // max(1, per_view))
    return [(a, min(a + n, views)) for a in range(0, views, n)]


def _fan_redundancy(geometry: CTGeometry, angles: np.ndarray, coverage: float, u_iso: Tensor,
                    dso: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(V, C) redundancy weights of a divergent-beam scan: 1/2 for 360 deg, else Parker."""
    v = len(angles)
    if coverage >= 2 * math.pi - 1e-6:
        return torch.full((v, u_iso.numel()), math.pi / coverage, dtype=dtype, device=device)
    gamma_max = float(torch.max(torch.abs(torch.atan(u_iso / dso))))
    delta = (coverage - math.pi) / 2.0
    if delta < gamma_max - 1e-9:
        raise InputError(
            f"Fan- and cone-beam FBP needs a scan of at least 180 deg plus the fan angle "
            f"({math.degrees(math.pi + 2 * gamma_max):.1f} deg) but these views cover "
            f"{math.degrees(coverage):.1f} deg; use sirt, cgls or tv instead.")
    start = float(np.min(angles))
    # Column u is at fan angle atan(u / DSO) in our frame; Parker's convention has the
    # conjugate ray at beta + pi + 2 gamma, which is our -atan(u / DSO).
    gamma = -torch.atan(u_iso / dso)[None, :]
    beta = torch.as_tensor(np.asarray(angles) - start, dtype=dtype, device=device)[:, None]
    return _parker_weights(beta, gamma, delta)


def fdk(sino: Tensor, geometry: CTGeometry, volume_shape: tuple[int, int, int],
        spacing_mm: tuple[float, float, float], window: str = "ram-lak",
        max_elements: int = 2**24) -> Tensor:
    """Feldkamp-Davis-Kress reconstruction of a circular cone-beam scan (flat detector).

    Args:
        sino: (V, R, C) line integrals.
        geometry: a circular "cone" geometry (no per-view vectors).

    Returns:
        mu in 1/mm, shape (I, J, K). Exact in the central plane; the usual cone-angle
        approximations elsewhere.
    """
    if geometry.kind != "cone":
        raise InputError(f"FDK reconstructs cone-beam data; use FBP for {geometry.kind}-beam "
                         f"data.")
    if geometry.vectors is not None:
        raise InputError("FDK needs a circular orbit; reconstruct arbitrary per-view "
                         "geometries with sirt, cgls or tv.")
    window = _filter_name(window)
    ni, nj, nk = volume_shape
    dtype, device = sino.dtype, sino.device
    angles = np.asarray(geometry.angles, dtype=np.float64)
    dtheta, coverage = _angular_weights(angles)
    dso = float(geometry.source_isocentre_mm)  # type: ignore[arg-type]
    dsd = float(geometry.source_detector_mm)  # type: ignore[arg-type]
    scale = dso / dsd
    u_iso = torch.as_tensor(geometry.column_positions_mm(), dtype=dtype, device=device) * scale
    v_iso = torch.as_tensor(geometry.row_positions_mm(), dtype=dtype, device=device) * scale
    pre = dso / torch.sqrt(dso**2 + u_iso[None, :] ** 2 + v_iso[:, None] ** 2)  # (R, C)
    redundancy = _fan_redundancy(geometry, angles, coverage, u_iso, dso, dtype, device)
    q = filter_sinogram(sino * pre * redundancy[:, None, :], geometry.pixel_cols_mm * scale,
                        window)
    w = torch.as_tensor(dtheta, dtype=dtype, device=device)
    x, y, z = _voxel_coords(volume_shape, spacing_mm, dtype, device)
    xx, yy = torch.meshgrid(x, y, indexing="ij")
    th = torch.as_tensor(angles, dtype=dtype, device=device)
    cos, sin = torch.cos(th), torch.sin(th)
    out = torch.zeros(volume_shape, dtype=dtype, device=device)
    nrows, ncols = geometry.detector_rows, geometry.detector_cols
    for a, b in _view_chunks(len(angles), ni * nj * nk * 4, max_elements):
        s = xx[None] * cos[a:b, None, None] + yy[None] * sin[a:b, None, None]
        t = -xx[None] * sin[a:b, None, None] + yy[None] * cos[a:b, None, None]
        big_u = (dso - s) / dso  # (Vc, I, J)
        u = (t / big_u / scale)[..., None].expand(-1, -1, -1, nk)
        v = z[None, None, None, :] / big_u[..., None] / scale
        ui = (u - geometry.offset_cols_mm) / geometry.pixel_cols_mm + (ncols - 1) / 2.0
        vi = (v - geometry.offset_rows_mm) / geometry.pixel_rows_mm + (nrows - 1) / 2.0
        vals = sample_detector_3d(q[a:b].contiguous(), ui, vi)  # (Vc, I, J, K)
        out += torch.einsum("v,vij,vijk->ijk", w[a:b], 1.0 / big_u**2, vals)
    return out


def analytic_reconstruction(sino: Tensor, geometry: CTGeometry,
                            volume_shape: tuple[int, int, int],
                            spacing_mm: tuple[float, float, float],
                            window: str = "ram-lak") -> Tensor:
    """FBP for parallel/fan geometries, FDK for cone; mu in 1/mm."""
    if geometry.kind == "cone":
        return fdk(sino, geometry, volume_shape, spacing_mm, window)
    return fbp(sino, geometry, volume_shape, spacing_mm, window)


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
) -> tuple[SolverResult, float]:
    """``min_x 1/2 ||A x - y||^2 / L + lam TV(x)`` (x >= 0) by the shared PDHG.

    K = [A / sqrt(L); D] with D the forward-difference gradient over the three axes (isotropic
    TV), ``||K||^2 <= 1 + 12``; the dual variable packs the scaled sinogram and the gradient
    field into one flat tensor so that the generic :func:`~medrecon.solvers.pdhg` runs
    unchanged. ``tau = s / step_ratio``, ``sigma = s step_ratio`` with ``s = 0.99 / sqrt(13)``;
    the default ratio 0.1 (larger primal steps) converges several times faster than 1 on
    sparse-view problems with x in water units. Returns (result, L).
    """
    if lipschitz is None:
        gen = torch.Generator(device=x0.device).manual_seed(0)
        start = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=gen)
        lipschitz = power_iteration(lambda v: adjoint(forward(v)), start,
                                    iters=15).rayleigh * 1.05
    sq = math.sqrt(max(lipschitz, 1e-30))
    ny = y.numel()
    shape = x0.shape
    ys = y / sq

    def k_op(x: Tensor) -> Tensor:
        return torch.cat([(forward(x) / sq).reshape(-1), finite_difference(x).reshape(-1)])

    def k_adj(d: Tensor) -> Tensor:
        return (adjoint(d[:ny].reshape(y.shape)) / sq
                - divergence(d[ny:].reshape(3, *shape)))

    def prox_f_conj(d: Tensor, sigma: float) -> Tensor:
        data = (d[:ny] - sigma * ys.reshape(-1)) / (1.0 + sigma)
        grad = project_l2_ball(d[ny:].reshape(3, *shape), lam, dim=0).reshape(-1)
        return torch.cat([data, grad])

    def prox_g(x: Tensor, tau: float) -> Tensor:
        return x.clamp(min=0.0) if nonnegative else x

    step = 0.99 / math.sqrt(1.0 + 12.0)
    result = pdhg(k_op, k_adj, prox_f_conj, prox_g, x0, tau=step / step_ratio,
                  sigma=step * step_ratio,
                  max_iter=max_iter, tol=tol, progress=progress)
    return result, float(lipschitz)


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
        _filter_name(self.filter)  # an unknown window is an InputError naming the choices


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
    :mod:`medrecon.recon.ct_tune` says where each helps and where it hurts)."""

    warm_start: bool = True
    step_ratio: float = option(0.1, gt=0.0)
    discrepancy_cap: bool = False
    sure: bool = True


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
    return _output(problem, mu, 0, {"algorithm": algorithm, "filter": _filter_name(window),
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
              device: torch.device) -> ReconOutput:
    """Isotropic 3D TV with non-negativity by PDHG, warm-started from FBP/FDK when possible.

    ``lam`` (default :data:`DEFAULT_TV_LAM`) weighs TV of the image in units of water against
    ``1/2 ||A x - y||^2 / ||A||^2`` (none: self-tuned); ``iterations`` default 200; ``extra``:
    :class:`TVSettings`.
    """
    settings = method_settings(TVSettings, options.extra, "tv")
    t0 = time.perf_counter()
    problem = _problem(measurement, device)
    iters = options.iterations or DEFAULT_ITERATIONS["tv"]
    report = None
    if options.lam is None:
        lam, report = tune_tv_weight(
            measurement, problem, DEFAULT_TV_LAM, device,
            lambda p, w: _tv_solve(p, w, iters, options.tol, settings)[0].x,
            cap=settings.discrepancy_cap, use_sure=settings.sure)
    else:
        lam = float(options.lam)
    res, lip, warm = _tv_solve(problem, lam, iters, options.tol, settings, options.progress)
    info: dict[str, Any] = {"algorithm": "tv-pdhg", "lam": lam, "lipschitz": lip,
                            "warm_start": warm, "history": res.history[-5:]}
    if report is not None:
        info.update(autotune=report.as_dict(), autotune_line=report.line())
    info["seconds"] = time.perf_counter() - t0
    return _output(problem, res.x * problem.units.mu_water, res.iterations, info)


def _tv_solve(problem: Problem, lam: float, iters: int, tol: float, settings: TVSettings,
              progress: bool = False) -> tuple[SolverResult, float, str]:
    """TV-PDHG for one weight on ``problem`` (water units): (result, ||A||^2, warm start)."""
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
        res, lip = tv_reconstruction(forward, adjoint, y, x0, lam, max_iter=iters, tol=tol,
                                     step_ratio=settings.step_ratio, progress=progress)
    return res, lip, warm
