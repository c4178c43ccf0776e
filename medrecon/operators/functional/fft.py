"""Centred, orthonormal discrete Fourier transforms over chosen axes.

Convention (fastMRI, BART, SigPy): the array centre ``n // 2`` is the origin in both image space
and k-space, so

    fftc(x, dims)  = fftshift(fftn(ifftshift(x), norm="ortho"))
    ifftc(k, dims) = fftshift(ifftn(ifftshift(k), norm="ortho"))

over the axes ``dims`` only. With ``norm="ortho"`` the transform is unitary, so ``ifftc`` is at
once the inverse and the exact adjoint of ``fftc`` (the shifts are permutations, whose adjoint is
their inverse). The pairing ``ifftshift`` before / ``fftshift`` after is what makes odd sizes
correct: the DC sample of a centred array at index ``n // 2`` moves to index 0 and back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["fftc", "ifftc"]


def _normalise_dims(x: torch.Tensor, dims: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted({int(d) % x.ndim for d in dims})) if x.ndim else ()
    if len(out) != len(tuple(dims)):
        raise ValueError(f"fft dims {tuple(dims)} repeat an axis of a {x.ndim}-D tensor")
    return out


def _as_complex(x: torch.Tensor) -> torch.Tensor:
    if x.is_complex():
        return x
    # Real inputs keep their precision: float64 -> complex128, anything else -> complex64.
    return x.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)


def _centred(transform: Callable[..., torch.Tensor], x: torch.Tensor,
             dims: Sequence[int]) -> torch.Tensor:
    """``fftshift(transform(ifftshift(x), norm="ortho"))`` over ``dims``, complex output."""
    d = _normalise_dims(x, dims)
    x = _as_complex(x)
    if not d:
        return x
    return torch.fft.fftshift(transform(torch.fft.ifftshift(x, dim=d), dim=d, norm="ortho"), dim=d)


def fftc(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Centred orthonormal forward FFT of ``x`` over the axes ``dims`` (negative allowed).

    ``x`` is any real or complex tensor; the result is complex with the same shape, on the same
    device. Equal to ``numpy.fft.fftshift(numpy.fft.fftn(numpy.fft.ifftshift(x, axes),
    axes=axes, norm="ortho"), axes)``.
    """
    return _centred(torch.fft.fftn, x, dims)


def ifftc(k: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Centred orthonormal inverse FFT over ``dims``; the inverse and the adjoint of :func:`fftc`."""
    return _centred(torch.fft.ifftn, k, dims)
