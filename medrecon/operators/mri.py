"""Cartesian MRI measurement operators on native complex tensors.

Axis convention (stored by :mod:`medrecon.io.measurement` with every MRI measurement):

* The image ``x`` has shape ``(I, J, K)`` -- the same voxel axes as :class:`medrecon.io.Volume`
  ``data``, so a reconstruction lands in the reference geometry without transposes.
* k-space ``y`` has shape ``(C, I, J, K)``: coil first, then the same three axes. Along an axis
  in ``fft_dims`` index ``n`` holds spatial frequency ``(n - N // 2) / FOV`` (centred, DC at
  ``N // 2``); axes not in ``fft_dims`` stay in image space.
* The FFT is the centred orthonormal one of :mod:`medrecon.operators.functional.fft`
  (``fftshift(fftn(ifftshift(.), norm="ortho"))``), so ``F^H F = I`` and noise keeps its variance.
* **True 3D acquisition**, ``fft_dims=(0, 1, 2)``: axis 0 (I) is the readout, always fully
  sampled; axes 1, 2 (J, K) are the two phase-encode directions, undersampled by a mask of shape
  ``(1, J, K)``.
* **2D multi-slice**, ``fft_dims=(0, 1)``: axis 2 (K) indexes slices (no FFT across slices),
  axis 0 (I) is the readout and axis 1 (J) the phase encode; the mask has shape ``(1, J, 1)``
  (same lines in every slice) or ``(1, J, K)`` (a pattern per slice).

The SENSE model (Pruessmann et al. 1999) with sensitivities ``S_c`` and binary mask ``M`` is

    forward:  y_c = M F (S_c x)                         c = 1..C
    adjoint:  x   = sum_c conj(S_c) F^H (M y_c)
    normal:   x  -> sum_c conj(S_c) F^H (M^2 F (S_c x))  (M^2 = M for a binary mask)

Unsampled k-space locations hold zeros. A mask with non-binary weights (e.g. density
compensation) is allowed; the operator is then ``W F S`` with ``W = diag(mask)``, and ``normal``
uses ``W^2``. In ``normal`` the FFT along any axis on which the mask is constant (the fully
sampled readout) cancels exactly (``F_i^H W F_i = W`` when ``W`` does not vary along ``i``), so a
3D normal costs 2D FFTs only; the centring shifts cancel as well (with the weight pre-shifted),
so the normal operator runs plain, uncentred FFTs.

Several map sets (soft SENSE, ESPIRiT with ``sets > 1``, Uecker et al. 2014): with maps
``S_{m,c}`` of shape ``(M, C, I, J, K)`` the image has one component per set, ``x`` of shape
``(M, I, J, K)``, and

    forward:  y_c = M F (sum_m S_{m,c} x_m)
    adjoint:  x_m = sum_c conj(S_{m,c}) F^H (M y_c)

so the FFT count is that of one set (the sets are summed before the FFT); the image is
usually shown as the root-sum-of-squares over m.

Operators accept leading batch dimensions: ``forward`` maps ``(..., I, J, K)`` to
``(..., C, I, J, K)`` (with map sets, from ``(..., M, I, J, K)``). Device and precision follow
the input and the maps: the maps and mask are moved to the input's device on first use, and a
float64 / complex128 input or map gives a complex128 result (complex64 otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medrecon.errors import GeometryError, InputError
from medrecon.operators.base import LinearOperator, Shape
from medrecon.operators.functional.fft import fftc, ifftc

__all__ = ["FFTOperator", "SenseOperator", "complex_dtype_for"]


def complex_dtype_for(*dtypes: torch.dtype) -> torch.dtype:
    """complex128 if any of ``dtypes`` is double precision, else complex64."""
    double = any(d in (torch.float64, torch.complex128) for d in dtypes)
    return torch.complex128 if double else torch.complex64


def _fft_axes(fft_dims: Sequence[int], ndim: int = 3) -> tuple[int, ...]:
    """Validate ``fft_dims`` (indices into the ``ndim`` image axes) and return them sorted."""
    try:
        dims = tuple(int(d) for d in fft_dims)
    except (TypeError, ValueError):
        raise InputError(f"fft_dims must be a sequence of axis indices, got {fft_dims!r}.") from None
    if not dims or len(set(dims)) != len(dims) or any(d < 0 or d >= ndim for d in dims):
        raise InputError(
            f"fft_dims must be distinct axis indices in 0..{ndim - 1}, got {tuple(fft_dims)}."
        )
    return tuple(sorted(dims))


class FFTOperator(LinearOperator):
    """The centred orthonormal FFT over ``dims`` of a tensor ending in ``shape``.

    ``dims`` index into ``shape`` (e.g. ``(0, 1)`` of an ``(I, J, K)`` image); leading batch
    dimensions pass through. Unitary: ``adjoint`` is the inverse and ``normal`` the identity.
    """

    def __init__(self, shape: Sequence[int], dims: Sequence[int]) -> None:
        super().__init__(shape, shape)
        self.dims = _fft_axes(dims, len(self.ishape))
        self._neg = tuple(d - len(self.ishape) for d in self.dims)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return fftc(x, self._neg)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return ifftc(y, self._neg)

    def _normal(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.is_complex() else x.to(complex_dtype_for(x.dtype))


class SenseOperator(LinearOperator):
    """Multi-coil Cartesian SENSE: y_c = M F (S_c x); see the module docstring for the axes.

    Parameters
    ----------
    maps:
        Complex coil sensitivities ``(C, I, J, K)``, or ``(M, C, I, J, K)`` for M map sets (the
        image is then ``(M, I, J, K)``, see the module docstring), or ``None`` for a single
        receive coil with unit sensitivity (``C = 1``).
    mask:
        Sampling mask (bool, 0/1 or non-negative weights) broadcastable to ``(I, J, K)``, e.g.
        ``(1, J, K)`` for 3D or ``(1, J, 1)`` for 2D multi-slice. A numpy array is accepted.
    fft_dims:
        Image axes Fourier-encoded: ``(0, 1, 2)`` for a 3D acquisition, ``(0, 1)`` for 2D
        multi-slice with slices along axis 2.
    coil_batch:
        Process at most this many coils at a time (``None``: all at once). ``forward`` still
        returns all coils; ``adjoint`` and ``normal`` never hold more than ``coil_batch`` coil
        images, which bounds the peak memory of iterative reconstructions.
    image_shape:
        ``(I, J, K)``; needed only when ``maps`` is ``None`` and ``mask`` is not full-size.
    """

    def __init__(
        self,
        maps: torch.Tensor | None,
        mask: torch.Tensor | np.ndarray,
        fft_dims: tuple[int, ...],
        coil_batch: int | None = None,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        mask_t = torch.as_tensor(mask)
        if mask_t.is_complex():
            raise InputError("The sampling mask must be real (bool or non-negative weights).")
        sets: int | None = None
        if maps is not None:
            if maps.ndim not in (4, 5):
                raise GeometryError(
                    f"Coil maps must have shape (C, I, J, K) or (sets, C, I, J, K), got "
                    f"{tuple(maps.shape)}."
                )
            if maps.ndim == 5:
                sets = int(maps.shape[0])
            shape: Shape = tuple(int(s) for s in maps.shape[-3:])
            if image_shape is not None and tuple(int(s) for s in image_shape) != shape:
                raise GeometryError(
                    f"Coil maps of image shape {shape} do not match image_shape "
                    f"{tuple(image_shape)}."
                )
            n_coils = int(maps.shape[-4])
            if not maps.is_complex():
                maps = maps.to(complex_dtype_for(maps.dtype))
        else:
            if image_shape is None:
                if mask_t.ndim != 3:
                    raise GeometryError(
                        "Without coil maps the image shape must be given (image_shape) or the "
                        "mask must have the full shape (I, J, K)."
                    )
                image_shape = tuple(mask_t.shape)
            shape = tuple(int(s) for s in image_shape)
            n_coils = 1
        if len(shape) != 3:
            raise GeometryError(f"The image must be 3D (I, J, K), got shape {shape}.")
        if mask_t.ndim > 3 or any(
            m not in (1, s) for m, s in zip(mask_t.shape[::-1], shape[::-1], strict=False)
        ):
            raise GeometryError(
                f"The sampling mask of shape {tuple(mask_t.shape)} cannot be broadcast to the "
                f"image shape {shape}."
            )
        mask_t = mask_t.reshape((1,) * (3 - mask_t.ndim) + tuple(mask_t.shape))
        if not mask_t.dtype == torch.bool and bool((mask_t < 0).any()):
            raise InputError("Sampling-mask weights must be non-negative.")
        if coil_batch is not None and int(coil_batch) < 1:
            raise InputError(f"coil_batch must be a positive integer, got {coil_batch}.")

        super().__init__(shape if sets is None else (sets, *shape), (n_coils, *shape))
        #: Number of map sets M (None: plain (C, I, J, K) maps, image (I, J, K)).
        self.sets = sets
        self.image_shape: Shape = shape
        self.maps = maps
        self.mask = mask_t
        self.fft_dims = _fft_axes(fft_dims)
        self.coil_batch = None if coil_batch is None else int(coil_batch)
        self.n_coils = n_coils
        self._fwd_dims = tuple(d - 3 for d in self.fft_dims)
        # In A^H A the FFT along an axis where the mask is constant cancels (see module docs).
        self._normal_dims = tuple(d - 3 for d in self.fft_dims if self.mask.shape[d] != 1)
        # (device, dtype) -> (maps, mask weight, ifftshift(weight^2) for the normal operator)
        self._cache: dict[tuple[torch.device, torch.dtype],
                          tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]] = {}

    # -- helpers --------------------------------------------------------------------------------
    def _dtype_for(self, t: torch.Tensor) -> torch.dtype:
        if self.maps is None:
            return complex_dtype_for(t.dtype)
        return complex_dtype_for(t.dtype, self.maps.dtype)

    def _resources(self, t: torch.Tensor
                   ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.dtype]:
        """Maps, real mask weights and the normal operator's weight on ``t``'s device in the
        working precision (cached)."""
        cdtype = self._dtype_for(t)
        key = (t.device, cdtype)
        if key not in self._cache:
            rdtype = torch.float64 if cdtype == torch.complex128 else torch.float32
            maps = None if self.maps is None else self.maps.to(device=t.device, dtype=cdtype)
            weight = self.mask.to(device=t.device, dtype=rdtype)
            # The centring shifts cancel in A^H A too: ifftc(fftc(x) w) = ifftn(fftn(x)
            # ifftshift(w)) (the image-side shifts commute with the circular convolution), so
            # the normal operator runs plain FFTs with this pre-shifted weight^2.
            w2 = weight * weight
            if self._normal_dims:
                w2 = torch.fft.ifftshift(w2, dim=self._normal_dims).contiguous()
            # One cached copy is enough: switching device or precision mid-run is rare.
            self._cache = {key: (maps, weight, w2)}
        return (*self._cache[key], cdtype)

    def _chunks(self) -> list[slice]:
        step = self.coil_batch or self.n_coils
        return [slice(c, min(c + step, self.n_coils)) for c in range(0, self.n_coils, step)]

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> SenseOperator:
        """A copy with maps (and mask) on ``device`` and maps cast to complex ``dtype``."""
        maps = None if self.maps is None else self.maps.to(device=device, dtype=dtype)
        return SenseOperator(maps, self.mask.to(device=device), self.fft_dims, self.coil_batch,
                             image_shape=self.image_shape)

    # -- operator -------------------------------------------------------------------------------
    def _coil_images(self, x: torch.Tensor, maps: torch.Tensor, sl: slice) -> torch.Tensor:
        """``S_c x`` (summed over map sets) for the coils ``sl``; ``x`` is ``(..., 1, I, J, K)``
        or, with map sets, ``(..., M, 1, I, J, K)``."""
        if self.sets is None:
            return x * maps[sl]
        return torch.sum(x * maps[:, sl], dim=-5)

    def _combine(self, coil: torch.Tensor, maps: torch.Tensor, sl: slice) -> torch.Tensor:
        """``sum_c conj(S_c) coil_c`` over the coils ``sl`` of ``coil`` ``(..., c, I, J, K)``:
        ``(..., I, J, K)``, or with map sets ``(..., M, I, J, K)``."""
        if self.sets is None:
            return torch.sum(maps[sl].conj() * coil, dim=-4)
        return torch.sum(maps[:, sl].conj() * coil.unsqueeze(-5), dim=-4)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        maps, weight, _, cdtype = self._resources(x)
        x = x.to(cdtype).unsqueeze(-4)  # (..., 1, I, J, K) or (..., M, 1, I, J, K)
        if maps is None:
            return fftc(x, self._fwd_dims) * weight
        chunks = self._chunks()
        if len(chunks) == 1:
            return fftc(self._coil_images(x, maps, chunks[0]), self._fwd_dims) * weight
        lead = x.shape[:-4] if self.sets is None else x.shape[:-5]
        out = torch.empty((*lead, *self.oshape), dtype=cdtype, device=x.device)
        for sl in chunks:
            out[..., sl, :, :, :] = fftc(self._coil_images(x, maps, sl), self._fwd_dims) * weight
        return out

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        maps, weight, _, cdtype = self._resources(y)
        y = y.to(cdtype)
        if maps is None:
            return ifftc(y * weight, self._fwd_dims).squeeze(-4)
        out: torch.Tensor | None = None
        for sl in self._chunks():
            part = self._combine(ifftc(y[..., sl, :, :, :] * weight, self._fwd_dims), maps, sl)
            out = part if out is None else out + part
        assert out is not None
        return out

    def _normal(self, x: torch.Tensor) -> torch.Tensor:
        maps, _, w2, cdtype = self._resources(x)
        x = x.to(cdtype)
        dims = self._normal_dims

        def apply(v: torch.Tensor) -> torch.Tensor:
            if not dims:
                return v * w2
            k = torch.fft.fftn(v, dim=dims, norm="ortho")
            return torch.fft.ifftn(k.mul_(w2), dim=dims, norm="ortho")

        if maps is None:
            return apply(x)
        x = x.unsqueeze(-4)
        out: torch.Tensor | None = None
        for sl in self._chunks():
            coil = self._coil_images(x, maps, sl)
            k = apply(coil)
            part = self._combine(k, maps, sl)
            out = part if out is None else out + part
        assert out is not None
        return out

    def __repr__(self) -> str:
        return (f"SenseOperator(ishape={self.ishape}, oshape={self.oshape}, sets={self.sets}, "
                f"fft_dims={self.fft_dims}, mask={tuple(self.mask.shape)}, "
                f"coil_batch={self.coil_batch})")
