"""The linear-operator interface shared by MRI and CT physics.

An operator is its input shape, output shape, ``forward`` and ``adjoint`` (plus ``normal`` where
a cheaper form of A^H A exists). Solvers take callables, not operators, so anything with these
methods works with them. Implementations may accept leading batch dimensions before ``ishape``;
the base class checks only the trailing dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Shape = tuple[int, ...]


def _check_trailing(x: torch.Tensor, shape: Shape, what: str, name: str) -> None:
    n = len(shape)
    if tuple(x.shape[x.ndim - n:]) != tuple(shape) or x.ndim < n:
        raise ValueError(f"{name}: {what} must end in shape {tuple(shape)}, got {tuple(x.shape)}")


class LinearOperator:
    """A linear map A from tensors of shape ``ishape`` to tensors of shape ``oshape``.

    Subclasses implement ``_forward`` and ``_adjoint`` and may override ``_normal``.
    ``A(x)``, ``A.H(y)``, ``A @ B`` (composition) and ``c * A`` (scaling) are provided.
    """

    def __init__(self, ishape: Sequence[int], oshape: Sequence[int]) -> None:
        self.ishape: Shape = tuple(int(s) for s in ishape)
        self.oshape: Shape = tuple(int(s) for s in oshape)

    # -- to implement ----------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _normal(self, x: torch.Tensor) -> torch.Tensor:
        return self._adjoint(self._forward(x))

    # -- public, shape-checked -------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = A x; ``x`` ends in ``ishape``, the result ends in ``oshape``."""
        _check_trailing(x, self.ishape, "input", type(self).__name__)
        return self._forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """x = A^H y; ``y`` ends in ``oshape``, the result ends in ``ishape``."""
        _check_trailing(y, self.oshape, "adjoint input", type(self).__name__)
        return self._adjoint(y)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x."""
        _check_trailing(x, self.ishape, "input", type(self).__name__)
        return self._normal(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    @property
    def H(self) -> LinearOperator:  # noqa: N802 - conventional name for the adjoint
        return AdjointOperator(self)

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        return ComposedOperator(self, other)

    def __rmul__(self, scale: float) -> LinearOperator:
        return ScaledOperator(self, float(scale))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ishape={self.ishape}, oshape={self.oshape})"


class AdjointOperator(LinearOperator):
    """A^H of an operator, with the roles of forward and adjoint exchanged."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.oshape, op.ishape)
        self.op = op

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op._adjoint(x)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.op._forward(y)

    @property
    def H(self) -> LinearOperator:  # noqa: N802
        return self.op


class ComposedOperator(LinearOperator):
    """(A @ B) x = A(B(x))."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        if outer.ishape != inner.oshape:
            raise ValueError(
                f"cannot compose: {type(outer).__name__} takes {outer.ishape}, "
                f"{type(inner).__name__} gives {inner.oshape}"
            )
        super().__init__(inner.ishape, outer.oshape)
        self.outer, self.inner = outer, inner

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer._forward(self.inner._forward(x))

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner._adjoint(self.outer._adjoint(y))


class ScaledOperator(LinearOperator):
    """(c A) x = c (A x) for a real scalar c."""

    def __init__(self, op: LinearOperator, scale: float) -> None:
        super().__init__(op.ishape, op.oshape)
        self.op, self.scale = op, scale

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op._forward(x)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.scale * self.op._adjoint(y)

    def _normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale**2 * self.op._normal(x)


class Identity(LinearOperator):
    """I x = x."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__(shape, shape)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> = sum conj(a) * b, for real or complex tensors."""
    if a.is_complex() or b.is_complex():
        return torch.sum(torch.conj(a) * b)
    return torch.sum(a * b)


def random_like_shape(shape: Shape, complex_: bool, generator: torch.Generator,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """A float64 / complex128 standard normal tensor of ``shape``."""
    if complex_:
        re = torch.randn(shape, generator=generator, dtype=torch.float64, device=device)
        im = torch.randn(shape, generator=generator, dtype=torch.float64, device=device)
        return torch.complex(re, im)
    return torch.randn(shape, generator=generator, dtype=torch.float64, device=device)


def adjoint_mismatch(op: LinearOperator, complex_input: bool = True, seed: int = 0,
                     device: torch.device | str = "cpu") -> float:
    """Relative adjointness error |<Ax, y> - <x, A^H y>| / (|Ax| |y|) on random x, y.

    Use float64 operators: an exact adjoint gives ~1e-15, a wrong one O(1).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    x = random_like_shape(op.ishape, complex_input, g, device)
    ax = op.forward(x)
    y = random_like_shape(op.oshape, ax.is_complex(), g, device)
    lhs = _inner(ax, y)
    rhs = _inner(x, op.adjoint(y))
    denom = torch.linalg.vector_norm(ax) * torch.linalg.vector_norm(y)
    return float(torch.abs(lhs - rhs) / denom)
