"""Iterative solvers as plain functions over callables, shared by reconstruction and sampling.

Solvers never see an operator class: they take callables (``apply(x)``, ``grad_f(x)``,
``prox_g(v, step)``, ...) so any LinearOperator, lambda or closure works (SigPy's ``Alg`` rule).
Every solver works on real or native complex tensors on any device.

* :func:`conjugate_gradient`: the one CG of the package, for a single system (CG-SENSE) or a
  batch of independent systems with per-item step sizes (the data-consistency steps of
  posterior sampling);
* :func:`power_iteration`: the one power method (Lipschitz constants, operator norms);
* :func:`fista`, :func:`pdhg` (Chambolle-Pock / Condat-Vu), :func:`sirt`, :func:`cgls`, and the
  proximal maps :func:`soft_threshold` and :func:`project_l2_ball`.

Iterative solvers return a :class:`SolverResult` holding the estimate, the iterations run and
the history of their stopping criterion. This module sits below :mod:`medrecon.recon` and
:mod:`medrecon.sampling` (both import it, neither imports the other); the operators they
iterate with (finite differences, wavelets) live in :mod:`medrecon.operators`.

To add a solver (ADMM, ...), write one more function with the same pattern: arguments are
callables and an initial estimate, keyword options ``max_iter``, ``tol``, ``callback``,
``progress``; return a :class:`SolverResult`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from medrecon.progress import progress_bar, shows_progress

Tensor = torch.Tensor
Callback = Callable[[int, Tensor], None]

__all__ = [
    "PowerIterationResult",
    "SolverResult",
    "cgls",
    "conjugate_gradient",
    "fista",
    "inner",
    "pdhg",
    "power_iteration",
    "project_l2_ball",
    "relative_change",
    "sirt",
    "soft_threshold",
]


@dataclass
class SolverResult:
    """Result of an iterative solver.

    Attributes:
        x: the final estimate (same shape, dtype and device as the initial one).
        iterations: iterations actually run.
        converged: True when the stopping criterion fell below ``tol`` before ``max_iter``.
        history: the stopping criterion after every iteration (relative residual for CG and
            CGLS, relative change of the iterate for FISTA, PDHG and SIRT).
    """

    x: Tensor
    iterations: int
    converged: bool
    history: list[float] = field(default_factory=list)


def inner(a: Tensor, b: Tensor, batched: bool = False) -> Tensor:
    """Real inner product ``Re <a, b> = Re sum conj(a) b``: 0-d, or (B,) per item of dim 0.

    The two modes keep the summation order that single-system CG (CG-SENSE, the power method)
    and the batched sampling steps have always used, so both reproduce earlier results bit for
    bit (the orders differ in float32 rounding, which CG amplifies to ~1e-5): one system sums
    the complex products and takes the real part; a batch takes the real parts and sums them
    per item.
    """
    if batched:
        prod = torch.conj(a) * b if a.is_complex() else a * b
        if prod.is_complex():
            prod = prod.real
        return prod.reshape(prod.shape[0], -1).sum(dim=1)
    if a.is_complex():
        return torch.sum(torch.conj(a) * b).real
    return torch.sum(a * b)


def _norm(x: Tensor) -> float:
    return float(torch.linalg.vector_norm(x))


def _record(bar: Any, history: list[float], value: float,
            callback: Callable[[int, Tensor], None] | None, k: int, x: Tensor,
            tol: float, label: str = "change") -> bool:
    """Book-keeping of one solver iteration: log ``value`` (the stopping quantity, shown as
    ``label``), call ``callback``; True when ``value`` is below ``tol``."""
    history.append(value)
    bar.update(1)
    bar.set_postfix({label: f"{value:.2e}"})
    if callback is not None:
        callback(k, x)
    return value < tol


def relative_change(x_new: Tensor, x_old: Tensor) -> float:
    """||x_new - x_old|| / max(||x_new||, tiny): the stopping criterion of FISTA and PDHG."""
    return _norm(x_new - x_old) / max(_norm(x_new), 1e-30)


# -------------------------------------------------------------------------------------------
# Solvers
# -------------------------------------------------------------------------------------------
def conjugate_gradient(
    apply: Callable[[Tensor], Tensor],
    rhs: Tensor,
    x0: Tensor | None = None,
    max_iter: int = 50,
    tol: float = 1e-6,
    batched: bool = False,
    callback: Callback | None = None,
    progress: bool = False,
) -> SolverResult:
    """Solve ``apply(x) = rhs`` by conjugate gradients, ``apply`` Hermitian positive semi-definite.

    Used as CG-SENSE with ``apply = A^H A + lam I`` and ``rhs = A^H y`` (Pruessmann et al.
    2001), i.e. the minimiser of ``||A x - y||^2 + lam ||x||^2``, and for the proximal and
    projection steps of posterior sampling on a batch of chains at once.

    With ``batched`` the first dimension indexes independent problems that share only the
    operator (``apply`` must act on each item separately): every item gets its own step sizes
    and stops on its own. An item stops once ``||r|| <= max(tol, 16 eps) ||rhs||``: iterating
    on a rounding-level residual can divide by ``p^H A p ~ 0`` and blow up, so the tolerance
    never goes below rounding level; a direction of zero curvature (``p^H A p <= tiny``, the
    operator singular along p) stops the item too.

    Args:
        apply: x -> (N x), same shape as x, real or complex.
        rhs: right-hand side b (with ``batched``: (B, ...)).
        x0: initial estimate (zeros when None, which saves one ``apply``).
        max_iter: maximum number of iterations (0 returns ``x0``).
        tol: relative residual at which an item stops.
        batched: treat dimension 0 as a batch of independent systems.
        callback: called as ``callback(k, x)`` after iteration k (1-based).
        progress: show a tqdm progress bar (on a terminal only, see :mod:`medrecon.progress`).

    Returns:
        :class:`SolverResult`; ``history`` holds the largest relative residual
        ``||rhs - apply(x)|| / ||rhs||`` over the items after every iteration, ``converged``
        whether every item stopped before ``max_iter``.
    """
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    if max_iter <= 0:
        return SolverResult(x, 0, False, [])
    r = rhs.clone() if x0 is None else rhs - apply(x)
    p = r.clone()
    rs = inner(r, r, batched)
    rhs_norm = torch.sqrt(inner(rhs, rhs, batched))
    tiny = torch.finfo(rs.dtype).tiny
    stop = max(tol, 16 * torch.finfo(rs.dtype).eps) * rhs_norm

    # The history in float64 from the float32 sums: the numbers CG-SENSE has always reported.
    b_norm = (torch.linalg.vector_norm(rhs.reshape(rhs.shape[0], -1), dim=1) if batched
              else torch.linalg.vector_norm(rhs)).double().clamp_min(1e-30)

    def view(v: Tensor) -> Tensor:  # (B,) -> broadcastable against (B, ...)
        return v.reshape(-1, *([1] * (x.ndim - 1))) if batched else v

    history: list[Tensor] = []
    k = 0
    # The bar (and its per-iteration sync) only when shown: sampling calls CG at every step.
    with (progress_bar(max_iter, "CG") if shows_progress(progress)
          else contextlib.nullcontext()) as bar:
        for _ in range(max_iter):
            active = torch.sqrt(rs) > stop
            if not bool(torch.any(active)):
                break
            ap = apply(p)
            pap = inner(p, ap, batched)
            ok = active & (pap > tiny)
            alpha = torch.where(ok, rs / pap.clamp_min(tiny), torch.zeros_like(rs))
            x = x + view(alpha) * p
            r = r - view(alpha) * ap
            rs_new = torch.where(ok, inner(r, r, batched), rs)
            beta = torch.where(ok, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs))
            p = torch.where(view(ok), r + view(beta) * p, p)
            rs = torch.where(ok, rs_new, torch.zeros_like(rs))
            k += 1
            history.append((torch.sqrt(rs_new.double()) / b_norm).max())
            if bar is not None:
                bar.update(1)
                bar.set_postfix({"residual": f"{float(history[-1]):.2e}"})
            if callback is not None:
                callback(k, x)
    converged = not bool(torch.any(torch.sqrt(rs) > stop))
    return SolverResult(x, k, converged, torch.stack(history).tolist() if history else [])


@dataclass(frozen=True)
class PowerIterationResult:
    """Two read-outs of the last unit-norm iterate ``x`` of :func:`power_iteration`.

    Attributes:
        rayleigh: the Rayleigh quotient ``<x, N x>``.
        gain: ``||N x||``. Both tend to the largest eigenvalue of N from below, ``rayleigh <=
            gain``; ``sqrt(gain)`` estimates ``||A||`` for ``N = A^H A``.
    """

    rayleigh: float
    gain: float


def power_iteration(
    op: Callable[[Tensor], Tensor],
    start: Tensor,
    iters: int = 30,
) -> PowerIterationResult:
    """Largest eigenvalue of a Hermitian positive semi-definite ``op`` (e.g. A^H A).

    Gives the Lipschitz constant L = ||A||^2 for gradient step sizes (1 / L), PDHG's
    ``tau * sigma * ||K||^2 < 1``, and the operator norm that posterior sampling divides by.
    Iterates ``x <- N x / ||N x||`` from ``start / ||start||``.

    Args:
        op: x -> N x.
        start: the first iterate (e.g. ``torch.randn`` of the input shape with a seeded
            generator: a start orthogonal to the top eigenvector would never find it).
        iters: number of iterations (30 gives a few-percent estimate for typical spectra).
    """
    x = start / max(_norm(start), 1e-30)
    last, y, gain = x, x, 0.0
    for _ in range(max(int(iters), 1)):
        y = op(x)
        gain = _norm(y)
        if gain == 0:
            return PowerIterationResult(0.0, 0.0)
        x, last = y / gain, x
    return PowerIterationResult(float(inner(last, y)), gain)


class OperatorNorms:
    """Operator norms (e.g. the Lipschitz constant ``||A^H A||`` of :func:`power_iteration`)
    estimated once per operator: ``norms(op, estimate)`` is ``estimate()`` the first time
    ``op`` comes (by identity; held here, so an id is never reused for another operator),
    that value after. A self-tuning solves one training operator for every weight and for
    SURE's nudged data (the same operator object): a seeded estimate gives the same number
    each time, so reusing it leaves every solve unchanged bit for bit."""

    def __init__(self) -> None:
        self._known: list[tuple[object, float]] = []

    def __call__(self, op: object, estimate: Callable[[], float]) -> float:
        for known, value in self._known:
            if known is op:
                return value
        value = float(estimate())
        self._known.append((op, value))
        return value


def fista(
    grad_f: Callable[[Tensor], Tensor],
    prox_g: Callable[[Tensor, float], Tensor],
    x0: Tensor,
    step: float,
    max_iter: int = 100,
    tol: float = 1e-4,
    callback: Callback | None = None,
    progress: bool = False,
) -> SolverResult:
    """FISTA (Beck & Teboulle 2009) for ``min_x f(x) + g(x)``, f smooth, g with a cheap prox.

    Iteration: ``x_k = prox_g(z_k - step * grad_f(z_k), step)``,
    ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``, ``z_{k+1} = x_k + (t_k - 1) / t_{k+1} (x_k - x_{k-1})``.

    Args:
        grad_f: x -> gradient of f (for f = ||A x - y||^2 / 2: A^H (A x - y)).
        prox_g: (v, step) -> argmin_x g(x) + ||x - v||^2 / (2 step).
        x0: initial estimate.
        step: step size, at most 1 / L with L the Lipschitz constant of grad_f.
        max_iter: maximum number of iterations.
        tol: stop when ``||x_k - x_{k-1}|| / ||x_k|| < tol``.
    """
    x = x0.clone()
    z = x.clone()
    t = 1.0
    history: list[float] = []
    converged = False
    k = 0
    with progress_bar(max_iter, "FISTA", progress) as bar:
        for k in range(1, max_iter + 1):
            x_new = prox_g(z - step * grad_f(z), step)
            t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
            z = x_new + ((t - 1.0) / t_new) * (x_new - x)
            change = relative_change(x_new, x)
            x, t = x_new, t_new
            if _record(bar, history, change, callback, k, x, tol):
                converged = True
                break
    return SolverResult(x, k, converged, history)


def pdhg(
    K: Callable[[Tensor], Tensor],  # noqa: N803 - the operator's name in the literature
    K_adj: Callable[[Tensor], Tensor],  # noqa: N803
    prox_f_conj: Callable[[Tensor, float], Tensor],
    prox_g: Callable[[Tensor, float], Tensor],
    x0: Tensor,
    tau: float,
    sigma: float,
    max_iter: int = 100,
    tol: float = 1e-4,
    theta: float = 1.0,
    y0: Tensor | None = None,
    grad_h: Callable[[Tensor], Tensor] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> SolverResult:
    """Primal-dual hybrid gradient (Chambolle & Pock 2011) for ``min_x f(K x) + g(x) [+ h(x)]``.

    Iteration::

        y_{k+1} = prox_{sigma f*}(y_k + sigma K xbar_k)
        x_{k+1} = prox_{tau g}(x_k - tau (K^H y_{k+1} [+ grad_h(x_k)]))
        xbar_{k+1} = x_{k+1} + theta (x_{k+1} - x_k)

    converging for ``tau * sigma * ||K||^2 < 1`` (estimate ||K||^2 with :func:`power_iteration`
    on ``K^H K``). With an optional smooth term h (gradient ``grad_h``, Lipschitz constant L_h)
    this is the Condat-Vu algorithm (Condat 2013), converging for
    ``1 / tau - sigma ||K||^2 >= L_h / 2``; it lets a data term ``1/2 ||A x - y||^2`` enter
    through the cheap ``A^H A`` instead of being dualised.

    Args:
        K, K_adj: the linear map and its adjoint, as callables.
        prox_f_conj: (v, sigma) -> prox of sigma f* (f* the convex conjugate of f).
        prox_g: (v, tau) -> prox of tau g.
        x0: initial primal estimate; y0: initial dual (zeros of K(x0)'s shape when None).
        grad_h: x -> gradient of the optional smooth term h.
        tol: stop when ``||x_{k+1} - x_k|| / ||x_{k+1}|| < tol``.
    """
    x = x0.clone()
    xbar = x.clone()
    y = torch.zeros_like(K(x)) if y0 is None else y0.clone()
    history: list[float] = []
    converged = False
    k = 0
    with progress_bar(max_iter, "PDHG", progress) as bar:
        for k in range(1, max_iter + 1):
            y = prox_f_conj(y + sigma * K(xbar), sigma)
            direction = K_adj(y) if grad_h is None else K_adj(y) + grad_h(x)
            x_new = prox_g(x - tau * direction, tau)
            xbar = x_new + theta * (x_new - x)
            change = relative_change(x_new, x)
            x = x_new
            if _record(bar, history, change, callback, k, x, tol):
                converged = True
                break
    return SolverResult(x, k, converged, history)


# -------------------------------------------------------------------------------------------
# Proximal maps
# -------------------------------------------------------------------------------------------
def soft_threshold(x: Tensor, threshold: float | Tensor) -> Tensor:
    """prox of ``threshold * ||x||_1``: shrink magnitudes by ``threshold``, keep phases.

    Works for complex x (``x * max(|x| - t, 0) / |x|``) and real x (the usual sign form).
    """
    mag = torch.abs(x)
    scale = torch.clamp(mag - threshold, min=0.0) / torch.clamp(mag, min=1e-30)
    return x * scale


def project_l2_ball(y: Tensor, radius: float | Tensor, dim: int = 0) -> Tensor:
    """Project every vector along ``dim`` onto the l2 ball of ``radius`` (pointwise in space).

    This is the prox of the conjugate of ``radius * ||.||_{2,1}`` (isotropic TV's dual step):
    ``y / max(1, ||y||_2 / radius)``.
    """
    norm = torch.sqrt(torch.sum(torch.abs(y) ** 2, dim=dim, keepdim=True))
    return y / torch.clamp(norm / radius, min=1.0)


# -------------------------------------------------------------------------------------------
# Least-squares solvers for tomography (added with the CT reconstructions)
# -------------------------------------------------------------------------------------------
def sirt(
    forward: Callable[[Tensor], Tensor],
    adjoint: Callable[[Tensor], Tensor],
    y: Tensor,
    x0: Tensor,
    max_iter: int = 100,
    tol: float = 0.0,
    relaxation: float = 1.0,
    nonnegative: bool = True,
    callback: Callback | None = None,
    progress: bool = False,
) -> SolverResult:
    """SIRT (Gilbert 1972; ASTRA's form): ``x <- x + lambda C A^T R (y - A x)``.

    ``R = 1 / (A 1)`` and ``C = 1 / (A^T 1)`` (zero where the sums vanish) make it a weighted
    Landweber iteration converging for ``0 < lambda < 2`` to the minimiser of
    ``||A x - y||_R^2``; ``nonnegative`` projects onto x >= 0 after each step.

    Args:
        forward, adjoint: x -> A x and y -> A^T y.
        y: measured data; x0: initial estimate (fixes shape, dtype, device).
        tol: stop when the relative change of x falls below it (0: run ``max_iter``).
    """
    ones_x = torch.ones_like(x0)
    row = forward(ones_x)
    col = adjoint(torch.ones_like(y))
    r = torch.where(row > 0, 1.0 / row.clamp(min=1e-30), torch.zeros_like(row))
    c = torch.where(col > 0, 1.0 / col.clamp(min=1e-30), torch.zeros_like(col))
    x = x0.clone()
    history: list[float] = []
    converged = False
    k = 0
    with progress_bar(max_iter, "SIRT", progress) as bar:
        for k in range(1, max_iter + 1):
            x_new = x + relaxation * c * adjoint(r * (y - forward(x)))
            if nonnegative:
                x_new = x_new.clamp(min=0.0)
            change = relative_change(x_new, x)
            x = x_new
            if _record(bar, history, change, callback, k, x, tol):
                converged = True
                break
    return SolverResult(x, k, converged, history)


def cgls(
    forward: Callable[[Tensor], Tensor],
    adjoint: Callable[[Tensor], Tensor],
    y: Tensor,
    x0: Tensor,
    max_iter: int = 30,
    tol: float = 1e-6,
    callback: Callback | None = None,
    progress: bool = False,
) -> SolverResult:
    """CGLS (Hestenes & Stiefel; Bjoerck): conjugate gradients for ``min ||A x - y||^2``.

    Numerically preferable to CG on ``A^T A`` (it never forms the normal equations' residual
    from scratch). The history is ``||A^T (y - A x_k)|| / ||A^T (y - A x_0)||``; stops below
    ``tol``. Early stopping is the regulariser for noisy data.
    """
    x = x0.clone()
    r = y - forward(x)
    s = adjoint(r)
    p = s.clone()
    gamma = float(torch.sum(s * s))
    s0 = math.sqrt(max(gamma, 1e-300))
    history: list[float] = []
    converged = False
    k = 0
    with progress_bar(max_iter, "CGLS", progress) as bar:
        for k in range(1, max_iter + 1):
            q = forward(p)
            qq = float(torch.sum(q * q))
            if qq <= 0 or gamma == 0:
                k -= 1
                converged = True
                break
            alpha = gamma / qq
            x = x + alpha * p
            r = r - alpha * q
            s = adjoint(r)
            gamma_new = float(torch.sum(s * s))
            res = math.sqrt(gamma_new) / s0
            if _record(bar, history, res, callback, k, x, tol, "residual"):
                converged = True
                break
            p = s + (gamma_new / gamma) * p
            gamma = gamma_new
    return SolverResult(x, k, converged, history)
