"""The forward-difference image gradient D (isotropic TV's operator) and its adjoint.

``D`` maps an image (I, J, K) to its forward differences along chosen axes, stacked on a new
leading axis: (len(dims), I, J, K), with a Neumann boundary (0 at the last index, as in
Chambolle 2004). Its adjoint is minus the discrete divergence, ``D^H = -div``, exactly (not up
to boundary terms), and ``||D||^2 <= 4 len(dims)`` (tight for large grids). The plain functions
take leading batch dimensions; :class:`FiniteDifference` is the same map as a
:class:`~medrecon.operators.base.LinearOperator` on unbatched images.

Anisotropic voxels. With per-axis ``weights`` the differences are scaled, ``D_w = diag(w) D``
(adjoint ``-div(w g)``, ``||D_w||^2 <= 4 sum w^2``); :func:`spacing_weights` gives
``w_d = h_min / h_d`` from the voxel size, so that ``D_w x`` is the gradient in physical units
(times the finest spacing) and isotropic TV is the TV of the imaged object, not of the voxel
grid. Without them a difference across 10 mm slices weighs as much as one across 0.4 mm
pixels: TV then couples slices that share little anatomy (measured on the real head CT of
benchmarks/real_quality.py, 512 x 512 x 2 at 0.39 x 0.39 x 10 mm; benchmarks/RESULTS_ct.md).
Isotropic voxels keep the unweighted map exactly (:func:`spacing_weights` returns None).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medrecon.operators.base import LinearOperator

Tensor = torch.Tensor

__all__ = ["FiniteDifference", "difference_norm_bound", "divergence", "finite_difference",
           "spacing_weights"]


def spacing_weights(spacing_mm: Sequence[float], dims: Sequence[int] = (0, 1, 2),
                    shape: Sequence[int] | None = None) -> tuple[float, ...] | None:
    """Per-axis weights ``h_min / h_d`` of the differences along ``dims`` for voxels of size
    ``spacing_mm`` (I, J, K); axes of one voxel in ``shape`` (no differences) count neither
    for ``h_min`` nor against it (weight 1). None where the other axes share one size: the
    plain differences."""
    h = [float(spacing_mm[d]) for d in dims]
    if not all(v > 0 for v in h):
        raise ValueError(f"voxel sizes must be positive, got {tuple(spacing_mm)}")
    used = [shape is None or int(shape[d]) > 1 for d in dims]
    sizes = [v for v, u in zip(h, used, strict=True) if u]
    if not sizes or max(sizes) <= min(sizes) * (1.0 + 1e-6):
        return None
    return tuple(min(sizes) / v if u else 1.0 for v, u in zip(h, used, strict=True))


def difference_norm_bound(n_axes: int, weights: Sequence[float] | None = None) -> float:
    """The bound on ``||D||^2`` of the differences along ``n_axes`` axes: 4 per axis, times
    the axis' weight squared where ``weights`` are given."""
    return 4.0 * (n_axes if weights is None else sum(w * w for w in weights))


def finite_difference(x: Tensor, dims: Sequence[int] = (0, 1, 2),
                      weights: Sequence[float] | None = None) -> Tensor:
    """Forward differences along ``dims``, stacked on a new leading axis.

    ``(D x)[d, ..., n, ...] = x[..., n + 1, ...] - x[..., n, ...]`` along dimension ``dims[d]``,
    and 0 at the last index (Neumann boundary, as in Chambolle 2004), times ``weights[d]``
    where given. Shape ``(len(dims), *x.shape)``; ``dims`` index the trailing three (I, J, K)
    dimensions of x, so leading batch dimensions are allowed.
    """
    out = []
    for i, d in enumerate(dims):
        d = d - 3 if d >= 0 else d  # count from the trailing (I, J, K) dimensions
        g = torch.zeros_like(x)
        n = x.shape[d]
        if n > 1:
            hi = x.narrow(d, 1, n - 1)
            lo = x.narrow(d, 0, n - 1)
            g.narrow(d, 0, n - 1).copy_(hi - lo)
            if weights is not None:
                g.mul_(weights[i])
        out.append(g)
    return torch.stack(out, dim=0)


def divergence(g: Tensor, dims: Sequence[int] = (0, 1, 2),
               weights: Sequence[float] | None = None) -> Tensor:
    """Discrete divergence, the negative adjoint of :func:`finite_difference` (with the same
    ``weights``): div = -D^H.

    ``g`` has shape ``(len(dims), *shape)``; returns a tensor of ``shape``.
    """
    x = torch.zeros_like(g[0])
    for i, d in enumerate(dims):
        d = d - 3 if d >= 0 else d  # count from the trailing (I, J, K) dimensions
        gi = g[i] if weights is None else g[i] * weights[i]
        n = gi.shape[d]
        if n == 1:
            continue
        # -(D^H g)[n] = g[n] - g[n-1] inside, g[0] at the first, -g[N-2] at the last index.
        x.narrow(d, 0, n - 1).add_(gi.narrow(d, 0, n - 1))
        x.narrow(d, 1, n - 1).sub_(gi.narrow(d, 0, n - 1))
    return x


class FiniteDifference(LinearOperator):
    """The forward-difference gradient D as a LinearOperator: (I, J, K) -> (len(dims), I, J, K).

    Adjoint ``D^H = -divergence``; ``||D||^2 <= 4 len(dims)``, with ``weights``
    ``4 sum w^2`` (:attr:`norm_bound`).
    """

    def __init__(self, shape: Sequence[int], dims: Sequence[int] = (0, 1, 2),
                 weights: Sequence[float] | None = None) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"FiniteDifference works on 3D shapes, got {shape}")
        self.dims = tuple(int(d) for d in dims)
        if weights is not None and len(weights) != len(self.dims):
            raise ValueError(f"{len(self.dims)} axes need as many weights, got {list(weights)}")
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        super().__init__(shape, (len(self.dims), *shape))

    @property
    def norm_bound(self) -> float:
        """The bound on ``||D||^2``: 4 per axis, times the axis' weight squared."""
        return difference_norm_bound(len(self.dims), self.weights)

    def _forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3:
            raise ValueError("FiniteDifference takes unbatched (I, J, K) tensors")
        return finite_difference(x, self.dims, self.weights)

    def _adjoint(self, y: Tensor) -> Tensor:
        return -divergence(y, self.dims, self.weights)
