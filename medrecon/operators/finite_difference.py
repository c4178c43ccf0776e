"""The forward-difference image gradient D (isotropic TV's operator) and its adjoint.

``D`` maps an image (I, J, K) to its forward differences along chosen axes, stacked on a new
leading axis: (len(dims), I, J, K), with a Neumann boundary (0 at the last index, as in
Chambolle 2004). Its adjoint is minus the discrete divergence, ``D^H = -div``, exactly (not up
to boundary terms), and ``||D||^2 <= 4 len(dims)`` (tight for large grids). The plain functions
take leading batch dimensions; :class:`FiniteDifference` is the same map as a
:class:`~medrecon.operators.base.LinearOperator` on unbatched images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medrecon.operators.base import LinearOperator

Tensor = torch.Tensor

__all__ = ["FiniteDifference", "divergence", "finite_difference"]


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
