"""Iterative solvers as plain functions over callables, shared by MRI and CT.

Solvers never see an operator class: they take callables (``normal_op(x)``, ``grad_f(x)``,
``prox_g(v, step)``, ...) so any LinearOperator, lambda or closure works (SigPy's ``Alg`` rule).
Every solver works on real or native complex tensors on any device and returns a
:class:`SolverResult` holding the estimate, the iterations run and the history of its stopping
criterion.

Also here: the building blocks of regularised reconstructions -- a finite-difference gradient
with its exactly matched adjoint (``-divergence``), an orthonormal separable wavelet transform in
pure torch (runs on CPU and CUDA), soft-thresholding and the projections used by TV.

To add a solver (CGLS, SIRT, ADMM, ...), write one more function with the same pattern:
arguments are callables and an initial estimate, keyword options ``max_iter``, ``tol``,
``callback``, ``progress``; return a :class:`SolverResult`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from medrecon.operators.base import LinearOperator

Tensor = torch.Tensor
Callback = Callable[[int, Tensor], None]

__all__ = [
    "SolverResult",
    "conjugate_gradient",
    "power_iteration",
    "fista",
    "pdhg",
    "soft_threshold",
    "project_l2_ball",
    "relative_change",
    "FiniteDifference",
    "finite_difference",
    "divergence",
    "WaveletTransform",
]


@dataclass
class SolverResult:
    """Result of an iterative solver.

    Attributes:
        x: the final estimate (same shape, dtype and device as the initial one).
        iterations: iterations actually run.
        converged: True when the stopping criterion fell below ``tol`` before ``max_iter``.
        history: the stopping criterion after every iteration (relative residual for CG,
            relative change of the iterate for FISTA and PDHG).
    """

    x: Tensor
    iterations: int
    converged: bool
    history: list[float] = field(default_factory=list)


def _vdot(a: Tensor, b: Tensor) -> Tensor:
    """Real part of <a, b> = sum conj(a) b, as a 0-d real tensor."""
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


def _progress(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    import sys

    from tqdm.auto import tqdm

    # In logs and pipelines (stderr not a terminal) redraw rarely instead of every iteration.
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30.0)


# -------------------------------------------------------------------------------------------
# Solvers
# -------------------------------------------------------------------------------------------
def conjugate_gradient(
    normal_op: Callable[[Tensor], Tensor],
    rhs: Tensor,
    x0: Tensor | None = None,
    max_iter: int = 50,
    tol: float = 1e-6,
    lam: float = 0.0,
    callback: Callback | None = None,
    progress: bool = False,
) -> SolverResult:
    """Solve ``(N + lam I) x = rhs`` by conjugate gradients, N Hermitian positive semi-definite.

    Used as CG-SENSE with ``N = A^H A`` and ``rhs = A^H y`` (Pruessmann et al. 2001), i.e. the
    minimiser of ``||A x - y||^2 + lam ||x||^2``.

    Args:
        normal_op: x -> N x (e.g. ``A.normal``), any shape, real or complex.
        rhs: right-hand side b, same shape as x.
        x0: initial estimate (zeros when None).
        max_iter: maximum number of iterations.
        tol: stop when ``||b - (N + lam I) x|| / ||b|| < tol``.
        lam: Tikhonov weight added to the diagonal.
        callback: called as ``callback(k, x)`` after iteration k (1-based).
        progress: show a tqdm progress bar.
    """
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()

    def apply(v: Tensor) -> Tensor:
        out = normal_op(v)
        return out + lam * v if lam else out

    r = rhs - apply(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rr = _vdot(r, r)
    b_norm = max(_norm(rhs), 1e-30)
    history: list[float] = []
    converged = False
    k = 0
    if math.sqrt(float(rr)) / b_norm < tol:
        return SolverResult(x, 0, True, [math.sqrt(float(rr)) / b_norm])
    with _progress(max_iter, "CG", progress) as bar:
        for k in range(1, max_iter + 1):
            ap = apply(p)
            pap = _vdot(p, ap)
            if float(pap) <= 0:  # direction of zero curvature: N is singular along p, stop
                k -= 1
                break
            alpha = rr / pap
            x = x + alpha * p
            r = r - alpha * ap
            rr_new = _vdot(r, r)
            res = math.sqrt(float(rr_new)) / b_norm
            if _record(bar, history, res, callback, k, x, tol, "residual"):
                converged = True
                break
            p = r + (rr_new / rr) * p
            rr = rr_new
    return SolverResult(x, k, converged, history)


def power_iteration(
    op: Callable[[Tensor], Tensor],
    x0: Tensor,
    iters: int = 30,
    generator: torch.Generator | None = None,
) -> float:
    """Largest eigenvalue of a Hermitian positive semi-definite ``op`` (e.g. A^H A).

    Gives the Lipschitz constant L = ||A||^2 for gradient step sizes (1 / L) and PDHG's
    ``tau * sigma * ||K||^2 < 1``.

    Args:
        op: x -> N x.
        x0: a template tensor (shape, dtype, device); its values are replaced by random ones
            when ``generator`` is given, else used as the start vector.
        iters: number of iterations (30 gives a few-percent estimate for typical spectra).
    """
    if generator is not None:
        x = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
    else:
        x = x0.clone()
    x = x / max(_norm(x), 1e-30)
    eig = 0.0
    for _ in range(max(int(iters), 1)):
        y = op(x)
        eig = float(_vdot(x, y))
        n = _norm(y)
        if n == 0:
            return 0.0
        x = y / n
    return eig


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
    with _progress(max_iter, "FISTA", progress) as bar:
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
    with _progress(max_iter, "PDHG", progress) as bar:
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
# Finite differences (TV)
# -------------------------------------------------------------------------------------------
def finite_difference(x: Tensor, dims: Sequence[int] = (0, 1, 2)) -> Tensor:
    """Forward differences along ``dims``, stacked on a new leading axis.

    ``(D x)[d, ..., n, ...] = x[..., n + 1, ...] - x[..., n, ...]`` along dimension ``dims[d]``,
    and 0 at the last index (Neumann boundary, as in Chambolle 2004). Shape
    ``(len(dims), *x.shape)``; ``dims`` index the trailing three (I, J, K) dimensions of x, so
    leading batch dimensions are allowed.
    """
    out = []
    for d in dims:
        d = d - 3 if d >= 0 else d  # count from the trailing (I, J, K) dimensions
        g = torch.zeros_like(x)
        n = x.shape[d]
        if n > 1:
            hi = x.narrow(d, 1, n - 1)
            lo = x.narrow(d, 0, n - 1)
            g.narrow(d, 0, n - 1).copy_(hi - lo)
        out.append(g)
    return torch.stack(out, dim=0)


def divergence(g: Tensor, dims: Sequence[int] = (0, 1, 2)) -> Tensor:
    """Discrete divergence, the negative adjoint of :func:`finite_difference`: div = -D^H.

    ``g`` has shape ``(len(dims), *shape)``; returns a tensor of ``shape``.
    """
    x = torch.zeros_like(g[0])
    for i, d in enumerate(dims):
        d = d - 3 if d >= 0 else d  # count from the trailing (I, J, K) dimensions
        gi = g[i]
        n = gi.shape[d]
        if n == 1:
            continue
        # -(D^H g)[n] = g[n] - g[n-1] inside, g[0] at the first, -g[N-2] at the last index.
        x.narrow(d, 0, n - 1).add_(gi.narrow(d, 0, n - 1))
        x.narrow(d, 1, n - 1).sub_(gi.narrow(d, 0, n - 1))
    return x


class FiniteDifference(LinearOperator):
    """The forward-difference gradient D as a LinearOperator: (I, J, K) -> (len(dims), I, J, K).

    Adjoint ``D^H = -divergence``; ``||D||^2 <= 4 len(dims)``.
    """

    def __init__(self, shape: Sequence[int], dims: Sequence[int] = (0, 1, 2)) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"FiniteDifference works on 3D shapes, got {shape}")
        self.dims = tuple(int(d) for d in dims)
        super().__init__(shape, (len(self.dims), *shape))

    def _forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3:
            raise ValueError("FiniteDifference takes unbatched (I, J, K) tensors")
        return finite_difference(x, self.dims)

    def _adjoint(self, y: Tensor) -> Tensor:
        return -divergence(y, self.dims)


# -------------------------------------------------------------------------------------------
# Orthonormal wavelets in torch
# -------------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _wavelet_filters(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(low-pass, high-pass) analysis filters of an orthogonal wavelet, from PyWavelets."""
    import pywt

    try:
        w = pywt.Wavelet(name)
    except ValueError:
        raise ValueError(f"unknown wavelet {name!r}; use e.g. haar, db2, db4, sym4") from None
    if not w.orthogonal:
        raise ValueError(f"wavelet {name!r} is not orthogonal; use haar, dbN, symN or coifN")
    # Rows of the analysis matrix: a[n] = sum_k lo[k] x[2n + k], d[n] = sum_k hi[k] x[2n + k],
    # with lo the reconstruction low-pass filter and hi its quadrature mirror. The shifted rows
    # are orthonormal for an orthogonal wavelet, which is what makes the transform unitary.
    lo = tuple(float(v) for v in w.rec_lo)
    n = len(lo)
    hi = tuple(((-1) ** k) * lo[n - 1 - k] for k in range(n))
    return lo, hi


class WaveletTransform(LinearOperator):
    """Multi-level separable orthonormal discrete wavelet transform with periodic boundaries.

    Pure torch (gathers and index-adds with real filter taps), so it runs on CPU and CUDA, on
    real and complex tensors, and stays on the GPU inside iterative reconstructions; PyWavelets
    is used only for the filter coefficients. Filters are the orthogonal Daubechies family
    (``haar``, ``db2`` ... ``db8``, ``symN``, ``coifN``); default ``db4`` (SigPy's choice; the
    MRI ``l1-wavelet`` method uses ``db2``, BART's default).

    Shapes: input (I, J, K); output (I', J', K') where every transformed axis is zero-padded up
    to a multiple of ``2**levels``. Coefficients are stored in the Mallat layout: after each
    level the low-pass ("approximation") block sits in the leading corner and the next level
    transforms that corner. Padding makes the operator an isometry (``W^H W = I``); on sizes
    already divisible by ``2**levels`` it is unitary (``W W^H = I``) as well.

    The ``axes`` argument picks which of the three axes are transformed (e.g. ``(0, 1)`` for
    in-plane wavelets of a 2D multi-slice acquisition).
    """

    def __init__(self, shape: Sequence[int], wavelet: str = "db4", levels: int | None = None,
                 axes: Sequence[int] = (0, 1, 2)) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"WaveletTransform works on 3D shapes, got {shape}")
        self.axes = tuple(sorted(int(a) % 3 for a in axes))
        self.wavelet = wavelet
        lo, hi = _wavelet_filters(wavelet)
        self._lo, self._hi = lo, hi
        if levels is None:
            # As many levels as keep the coarsest band at least as long as the filter.
            smallest = min(shape[a] for a in self.axes)
            levels = max(1, int(math.floor(math.log2(max(smallest / len(lo), 1.0)))))
        self.levels = int(levels)
        if self.levels < 1:
            raise ValueError("levels must be >= 1")
        m = 2**self.levels
        padded = tuple(
            (math.ceil(s / m) * m if a in self.axes else s) for a, s in enumerate(shape)
        )
        super().__init__(shape, padded)

    def approximation_slices(self) -> tuple[slice, ...]:
        """Index of the coarsest low-pass (approximation) block in the coefficient array.

        L1-wavelet reconstructions usually leave these coefficients unpenalised (BART, SigPy's
        examples): they carry the image's low-resolution content, not sparsity.
        """
        m = 2**self.levels
        return tuple(slice(0, s // m) if a in self.axes else slice(None)
                     for a, s in enumerate(self.oshape))

    # -- 1D single-level analysis / synthesis along one axis -------------------------------
    def _index(self, n: int, device: torch.device) -> Tensor:
        taps = len(self._lo)
        rows = torch.arange(n // 2, device=device)[:, None] * 2
        return (rows + torch.arange(taps, device=device)[None, :]) % n  # (n/2, taps)

    def _filters(self, like: Tensor) -> tuple[Tensor, Tensor]:
        real = like.real.dtype if like.is_complex() else like.dtype
        lo = torch.tensor(self._lo, dtype=real, device=like.device)
        hi = torch.tensor(self._hi, dtype=real, device=like.device)
        if like.is_complex():
            lo, hi = lo.to(like.dtype), hi.to(like.dtype)
        return lo, hi

    def _analysis_1d(self, x: Tensor, dim: int) -> Tensor:
        n = x.shape[dim]
        x = x.movedim(dim, -1)
        idx = self._index(n, x.device)
        gathered = x[..., idx]  # (..., n/2, taps)
        lo, hi = self._filters(x)
        out = torch.cat([gathered @ lo, gathered @ hi], dim=-1)
        return out.movedim(-1, dim)

    def _synthesis_1d(self, c: Tensor, dim: int) -> Tensor:
        n = c.shape[dim]
        c = c.movedim(dim, -1)
        idx = self._index(n, c.device)
        lo, hi = self._filters(c)
        half = n // 2
        # Transpose of the analysis: scatter every coefficient times its taps back.
        contrib = c[..., :half, None] * lo + c[..., half:, None] * hi  # (..., n/2, taps)
        out = torch.zeros(c.shape, dtype=c.dtype, device=c.device)
        out.index_add_(out.ndim - 1, idx.reshape(-1), contrib.reshape(*c.shape[:-1], -1))
        return out.movedim(-1, dim)

    # -- LinearOperator ---------------------------------------------------------------------
    def _forward(self, x: Tensor) -> Tensor:
        lead = x.ndim - 3
        pad: list[int] = []
        for a in reversed(range(3)):
            pad += [0, self.oshape[a] - self.ishape[a]]
        out = torch.nn.functional.pad(x, pad) if any(pad) else x.clone()
        size = list(self.oshape)
        for _ in range(self.levels):
            block = out[(..., *[slice(0, s) for s in size])]
            for a in self.axes:
                block = self._analysis_1d(block, lead + a)
            out[(..., *[slice(0, s) for s in size])] = block
            size = [s // 2 if a in self.axes else s for a, s in enumerate(size)]
        return out

    def _adjoint(self, y: Tensor) -> Tensor:
        lead = y.ndim - 3
        out = y.clone()
        m = 2 ** (self.levels - 1)
        for level in reversed(range(self.levels)):
            m = 2**level
            size = [s // m if a in self.axes else s for a, s in enumerate(self.oshape)]
            block = out[(..., *[slice(0, s) for s in size])]
            for a in reversed(self.axes):
                block = self._synthesis_1d(block, lead + a)
            out[(..., *[slice(0, s) for s in size])] = block
        return out[(..., *[slice(0, s) for s in self.ishape])]


# -------------------------------------------------------------------------------------------
# Least-squares solvers for tomography (added with the CT reconstructions)
# -------------------------------------------------------------------------------------------
__all__ += ["sirt", "cgls"]


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
    with _progress(max_iter, "SIRT", progress) as bar:
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
    with _progress(max_iter, "CGLS", progress) as bar:
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
