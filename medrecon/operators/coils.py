"""Coil sensitivity maps estimated from k-space (ESPIRiT, low-resolution) for real data.

Simulated maps for synthetic data are in :mod:`medrecon.operators.coil_simulation`.

All maps are complex tensors ``(C, I, J, K)`` on the image grid of :mod:`medrecon.operators.mri`
and are normalised so that ``sum_c |S_c|^2 = 1`` wherever they are defined (everywhere for
simulated maps; inside the support for estimated ones, zero outside). Maps are defined only up to
a common voxel-wise phase (``S -> S e^{i phi(r)}``, ``x -> x e^{-i phi(r)}`` leaves ``S x``
unchanged); estimators fix it by referring the phase to the first principal component of the
coils (a virtual body coil), as BART's ``ecalib`` does, which gives smooth maps.

ESPIRiT (:func:`espirit`, Uecker et al., MRM 71:990, 2014)
    1. Calibration matrix: all ``k x k`` patches of the fully sampled central
       ``calibration x calibration`` k-space block, coils stacked (Hankel structure).
    2. SVD; the right singular vectors with singular value above ``threshold * s_max`` span the
       signal (row) space -- the ESPIRiT kernels; the rest is the null space.
    3. Each kernel is taken to the image domain; per voxel the ``C x C`` matrix
       ``sum_n g_n(r) g_n(r)^H`` (scaled by ``N / k^2`` so that a consistent signal gives
       eigenvalue 1) is formed. Its entries are band-limited (degree < 2k), so they are computed
       exactly on a ``2k`` grid and Fourier-interpolated to the image grid instead of transforming
       every kernel at full size.
    4. Per voxel, the eigenvector of the largest eigenvalue is the sensitivity vector; voxels
       whose eigenvalue is below ``crop`` (no consistent signal, i.e. outside the object) are
       set to zero. The dominant eigenvector is found by repeated squaring of the (trace
       normalised) matrix, equivalent to 2^6 = 64 power iterations at the cost of 6 batched
       ``C x C`` products, then refined by two power steps.

    With ``sets = M > 1`` the eigenvectors of the M largest eigenvalues (by deflation) are M map
    sets ``(M, C, I, J, K)`` (soft SENSE: where the calibration cannot pin one sensitivity
    vector per voxel, e.g. a narrow calibration region or an object wider than the field of
    view, a second set with eigenvalue near 1 absorbs what the first misses; the SENSE
    operator then reconstructs one image per set). For a true 3D
    acquisition (``fft_dims=(0, 1, 2)``) the k-space is first inverse-transformed along the fully
    sampled readout axis 0 and 2D ESPIRiT runs independently for every readout position on the
    (J, K) phase-encode plane; for 2D multi-slice data (``fft_dims=(0, 1)``) it runs per slice on
    the (I, J) plane. Defaults (kernel 6, calibration 24, threshold 0.02, crop 0.95) follow the
    paper and SigPy's ``EspiritCalib``; :func:`estimate_coil_maps` narrows the kernel for narrow
    calibration regions and, for 2D multi-slice data, extends the region along the fully
    sampled readout (as BART's ``ecalib`` does). For narrow regions the threshold 0.02 can cut
    signal too; :func:`medrecon.problem.estimate_maps` (the maps of a file without maps) then
    chooses it on held-out k-space.

Low resolution (:func:`lowres_maps`)
    Coil images from the Hann-windowed calibration region, divided by their root-sum-of-squares,
    phase-referenced as above and zeroed where the RSS is below a fraction of its maximum. Fast and
    robust; less accurate near object edges than ESPIRiT.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medrecon.errors import GeometryError, InputError
from medrecon.operators.functional.fft import fftc, ifftc
from medrecon.operators.masks import calibration_slice

__all__ = [
    "DEFAULT_THRESHOLD",
    "EspiritResult",
    "default_kernel",
    "detect_calibration",
    "espirit",
    "espirit_maps",
    "estimate_coil_maps",
    "lowres_maps",
    "rss",
    "unpack_hermitian",
]

#: Largest calibration box used when it is detected from the mask (bounds the SVD cost).
MAX_AUTO_CALIBRATION = 32
#: Readout extent of the calibration region of 2D multi-slice data (BART ecalib's limit).
READOUT_CALIBRATION = 24
#: ESPIRiT singular-value threshold (relative to the largest), SigPy's ``EspiritCalib`` default.
DEFAULT_THRESHOLD = 0.02


def default_kernel(calibration: int) -> int:
    """ESPIRiT kernel width for a calibration region ``calibration`` lines wide: 6, or
    ``(calibration - 2) // 2`` (at least 2) below 14 lines, so that it slides over enough
    positions to determine the null space (with kernel 6 on 8 lines the eigenvalues collapse
    below the crop and the maps vanish, in BART's ``ecalib`` too: benchmarks/RESULTS_mri.md)."""
    return max(2, min(6, (int(calibration) - 2) // 2))


def rss(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Root-sum-of-squares over ``dim`` (coil combination): ``sqrt(sum |x|^2)``, real."""
    return torch.sqrt(torch.sum(torch.abs(x) ** 2, dim=dim))


# ----------------------------------------------------------------------------------------------
# ESPIRiT
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EspiritResult:
    """ESPIRiT output: ``maps`` ``(C, I, J, K)`` and the first eigenvalue ``(I, J, K)``; with
    several map sets ``(M, C, I, J, K)`` and ``(M, I, J, K)``."""

    maps: torch.Tensor
    eigenvalues: torch.Tensor


def _check_kspace(kspace: torch.Tensor) -> None:
    if kspace.ndim != 4:
        raise GeometryError(f"k-space must have shape (C, I, J, K), got {tuple(kspace.shape)}.")
    if not kspace.is_complex():
        raise InputError("k-space must be complex.")
    if not bool(torch.isfinite(torch.view_as_real(kspace)).all()):
        raise InputError("k-space contains NaN or infinite values.")


def _planes(fft_dims: Sequence[int]) -> tuple[int, tuple[int, int], tuple[int, ...]]:
    """(slice axis, in-plane k-space axes, axes to inverse-transform first) of (I, J, K)."""
    dims = tuple(sorted(int(d) for d in fft_dims))
    if dims == (0, 1, 2):
        return 0, (1, 2), (0,)
    if dims == (0, 1):
        return 2, (0, 1), ()
    raise InputError(f"Coil-map estimation supports fft_dims (0, 1, 2) or (0, 1), got {dims}.")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int | np.integer):
        return int(v), int(v)
    a, b = (int(x) for x in v)
    return a, b


def _centre_pad(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad the last two axes to ``size``, keeping index n // 2 at the new centre."""
    n1, n2 = x.shape[-2:]
    out = x.new_zeros((*x.shape[:-2], *size))
    s1, s2 = size[0] // 2 - n1 // 2, size[1] // 2 - n2 // 2
    out[..., s1:s1 + n1, s2:s2 + n2] = x
    return out


def _hermitian_index(c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle indices (rows, cols) of a C x C matrix, and for each of the C^2 entries
    its position in the packed upper triangle (entries below the diagonal are conjugates)."""
    rows, cols = np.triu_indices(c)
    pos = np.empty((c, c), dtype=np.int64)
    pos[rows, cols] = np.arange(rows.size)
    pos[cols, rows] = np.arange(rows.size)
    return rows, cols, pos.reshape(-1)


def unpack_hermitian(packed: torch.Tensor, c: int) -> torch.Tensor:
    """Full Hermitian matrices ``(..., C, C)`` from packed upper triangles ``(..., C(C+1)/2)``."""
    _, _, pos = _hermitian_index(c)
    full = torch.index_select(packed, -1, torch.from_numpy(pos).to(packed.device))
    lower = torch.tril(torch.ones((c, c), dtype=torch.bool, device=packed.device), -1)
    return torch.where(lower.reshape(-1), full.conj(), full).reshape(*packed.shape[:-1], c, c)


def _dominant_eigen_np(packed: np.ndarray, c: int, squarings: int, count: int = 1,
                       chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest eigenpairs of packed Hermitian PSD matrices ``(..., C(C+1)/2)``
    (numpy, CPU): vectors ``(..., count, C)``, values ``(..., count)``, descending.

    Works through the voxels in cache-sized chunks, unpacking each chunk on the fly (batched
    small matmul is several times faster in numpy than in torch on CPU). Pairs after the first
    come from deflation (``A - lam v v^H``), which keeps the matrix PSD.
    """
    shape = packed.shape[:-1]
    flat = packed.reshape(-1, packed.shape[-1])
    _, _, pos = _hermitian_index(c)
    lower = np.tril(np.ones((c, c), dtype=bool), -1).reshape(-1)
    vecs = np.empty((flat.shape[0], count, c), dtype=packed.dtype)
    vals = np.empty((flat.shape[0], count), dtype=packed.real.dtype)
    for s0 in range(0, flat.shape[0], chunk):
        full = flat[s0:s0 + chunk][:, pos]
        np.conjugate(full, out=full, where=lower)
        a = full.reshape(-1, c, c)
        for m in range(count):
            if m:
                v, lam = vecs[s0:s0 + chunk, m - 1], vals[s0:s0 + chunk, m - 1]
                a = a - lam[:, None, None] * (v[:, :, None] * v.conj()[:, None, :])
            vecs[s0:s0 + chunk, m], vals[s0:s0 + chunk, m] = _dominant_eigen_chunk(a, squarings)
    return vecs.reshape(*shape, count, c), vals.reshape(*shape, count)


def _dominant_eigen_chunk(a: np.ndarray, squarings: int) -> tuple[np.ndarray, np.ndarray]:
    tr = np.maximum(np.trace(a, axis1=-2, axis2=-1).real, 1e-30)
    b = a / tr[..., None, None]
    for _ in range(squarings):
        b = np.matmul(b, b)
        b /= np.maximum(np.trace(b, axis1=-2, axis2=-1).real, 1e-30)[..., None, None]
    # b -> v v^H: column j has norm |v_j|, so the largest diagonal entry picks the best column.
    col = np.argmax(np.diagonal(b, axis1=-2, axis2=-1).real, axis=-1)
    v = np.take_along_axis(b, col[..., None, None], axis=-1)  # (..., C, 1)
    for _ in range(2):
        v = np.matmul(a, v / np.maximum(np.linalg.norm(v, axis=-2, keepdims=True), 1e-30))
    v /= np.maximum(np.linalg.norm(v, axis=-2, keepdims=True), 1e-30)
    lam = np.matmul(np.conj(np.swapaxes(v, -1, -2)), np.matmul(a, v))[..., 0, 0].real
    return v[..., 0], lam


def _dominant_eigen(a: torch.Tensor, squarings: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Dominant eigenpair of Hermitian PSD matrices ``a`` ``(..., C, C)``.

    Returns unit eigenvectors ``(..., C)`` and eigenvalues ``(...)``. Repeated squaring of the
    trace-normalised matrix converges like 2^squarings power iterations.
    """
    if a.device.type == "cpu":
        v, lam = _dominant_eigen_chunk(a.numpy(), squarings)
        return torch.from_numpy(v), torch.from_numpy(lam)
    tr = torch.diagonal(a, dim1=-2, dim2=-1).real.sum(-1).clamp_min(1e-30)
    b = a / tr[..., None, None]
    for _ in range(squarings):
        b = b @ b
        b = b / torch.diagonal(b, dim1=-2, dim2=-1).real.sum(-1).clamp_min(1e-30)[..., None, None]
    col = torch.argmax(torch.diagonal(b, dim1=-2, dim2=-1).real, dim=-1)
    v = torch.take_along_dim(b, col[..., None, None], dim=-1)
    for _ in range(2):
        v = a @ (v / torch.linalg.vector_norm(v, dim=-2, keepdim=True).clamp_min(1e-30))
    v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True).clamp_min(1e-30)
    lam = (v.conj().transpose(-2, -1) @ (a @ v))[..., 0, 0].real
    return v[..., 0], lam


def _top_eigen_packed(packed: torch.Tensor, c: int, count: int = 1,
                      squarings: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` largest eigenpairs of packed Hermitian PSD matrices ``(..., C(C+1)/2)``:
    vectors ``(..., count, C)`` and values ``(..., count)`` (deflation after the first)."""
    if packed.device.type == "cpu":
        v, lam = _dominant_eigen_np(packed.numpy(), c, squarings, count)
        return torch.from_numpy(v), torch.from_numpy(lam)
    a = unpack_hermitian(packed, c)
    vecs, vals = [], []
    for m in range(count):
        if m:
            a = a - vals[-1][..., None, None] * (vecs[-1][..., :, None]
                                                 * vecs[-1].conj()[..., None, :])
        v, lam = _dominant_eigen(a, squarings)
        vecs.append(v)
        vals.append(lam)
    return torch.stack(vecs, dim=-2), torch.stack(vals, dim=-1)


def _espirit_gram(ks: torch.Tensor, cal: tuple[int, int], kernel: tuple[int, int],
                  threshold: float) -> torch.Tensor:
    """ESPIRiT image-domain matrices of a stack of slices ``ks`` ``(S, C, N1, N2)``.

    Returns ``sum_n g_n(r) g_n(r)^H * N1 N2 / (k1 k2)`` per voxel as packed upper triangles
    ``(S, N1, N2, C(C+1)/2)`` (see :func:`unpack_hermitian`).
    """
    s, c, n1, n2 = ks.shape
    k1, k2 = kernel
    calib = ks[..., calibration_slice(n1, cal[0]), calibration_slice(n2, cal[1])]
    patches = calib.unfold(2, k1, 1).unfold(3, k2, 1)  # (S, C, p1, p2, k1, k2)
    mat = patches.permute(0, 2, 3, 1, 4, 5).reshape(s, -1, c * k1 * k2)
    _, sv, vh = torch.linalg.svd(mat, full_matrices=False)
    keep = sv > threshold * sv[:, :1].clamp_min(1e-30)
    vh = vh * keep[..., None]  # discarded (null-space) rows become zero kernels
    kernels = vh.reshape(s, -1, c, k1, k2)
    # Gram matrices sum_n g_n g_n^H are trig polynomials of degree < 2k: exact on a 2k grid
    # (or on the image grid itself when that is smaller), then Fourier-interpolated.
    l1, l2 = min(2 * k1, n1), min(2 * k2, n2)
    g = ifftc(_centre_pad(kernels, (l1, l2)), (-2, -1))  # (S, n, C, l1, l2)
    gl = g.permute(0, 3, 4, 2, 1)  # (S, l1, l2, C, n)
    q = gl @ gl.conj().transpose(-2, -1)  # (S, l1, l2, C, C)
    # Hermitian: interpolate only the upper triangle (C (C + 1) / 2 of the C^2 entries).
    rows, cols, _ = _hermitian_index(c)
    q = q[..., torch.from_numpy(rows).to(ks.device), torch.from_numpy(cols).to(ks.device)]
    q = q.permute(0, 3, 1, 2)  # (S, P, l1, l2)
    if (l1, l2) != (n1, n2):
        q = _fourier_interpolate(q, (n1, n2)) * math.sqrt(l1 * l2 / (n1 * n2))
    # sum_n g_n g_n^H at full size has the factor 1 / (N1 N2) of the orthonormal FFT; scaling by
    # N1 N2 / (k1 k2) makes a consistent signal's eigenvalue 1 (Uecker 2014, SigPy).
    return (q * (n1 * n2 / (k1 * k2))).permute(0, 2, 3, 1).contiguous()


def _espirit_stack(ks: torch.Tensor, cal: tuple[int, int], kernel: tuple[int, int],
                   threshold: float, sets: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """2D ESPIRiT on a stack of slices ``ks`` ``(S, C, N1, N2)`` (k-space on the last two axes).

    Returns maps ``(S, M, C, N1, N2)`` of the ``M = sets`` largest eigenvalues (before phase
    referencing and cropping) and the eigenvalues ``(S, M, N1, N2)``.
    """
    packed = _espirit_gram(ks, cal, kernel, threshold)
    vec, lam = _top_eigen_packed(packed, ks.shape[1], sets)  # (S, N1, N2, M, C), (S, N1, N2, M)
    return vec.permute(0, 3, 4, 1, 2), lam.permute(0, 3, 1, 2)


def _fourier_interpolate(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``ifftc(centre_pad(fftc(x)), size)`` over the last two axes, without shift copies.

    The small centred spectrum is placed at its wrapped frequencies and pre-modulated so that a
    plain inverse FFT lands directly in the centred output grid (a shift by ``N // 2`` of the
    output is a phase ramp on the input).
    """
    spec = fftc(x, (-2, -1))
    out = spec.new_zeros((*spec.shape[:-2], *size))
    index = []
    for axis, n in zip((-2, -1), size, strict=True):
        m = spec.shape[axis]
        k = torch.arange(m, device=x.device) - m // 2
        angle = (-2 * math.pi * (n // 2) / n) * k.to(torch.float64)
        ramp = torch.polar(torch.ones_like(angle), angle).to(spec.dtype)
        shape = [1, 1]
        shape[axis] = m
        spec = spec * ramp.reshape(shape)
        index.append(k % n)
    out[..., index[0][:, None], index[1][None, :]] = spec
    return torch.fft.ifftn(out, dim=(-2, -1), norm="ortho")


def _principal_component(calib: torch.Tensor) -> torch.Tensor:
    """First principal component ``(C,)`` of coil data ``(C, ...)`` (the phase reference)."""
    flat = calib.reshape(calib.shape[0], -1)
    u, _, _ = torch.linalg.svd(flat, full_matrices=False)
    return u[:, 0]


def _refer_phase(maps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Remove the common voxel phase: make ``reference^H maps`` real and non-negative."""
    virtual = torch.einsum("c,c...->...", reference.conj(), maps)
    phase = torch.polar(torch.ones_like(virtual.real), -torch.angle(virtual))
    return maps * phase


def _check_calibration(shape: Sequence[int], axes: tuple[int, int], cal: tuple[int, int],
                       kernel: tuple[int, int]) -> None:
    for ax, c, k in zip(axes, cal, kernel, strict=True):
        if k < 1 or c <= k:
            raise InputError(
                f"The calibration region ({c}) must be larger than the ESPIRiT kernel ({k})."
            )
        if c > shape[ax]:
            raise InputError(
                f"The calibration region ({c}) is larger than k-space axis {ax} ({shape[ax]})."
            )


def espirit(
    kspace: torch.Tensor,
    calibration: int | Sequence[int] = 24,
    kernel: int | Sequence[int] = 6,
    threshold: float = DEFAULT_THRESHOLD,
    crop: float = 0.95,
    fft_dims: Sequence[int] = (0, 1, 2),
    slices_per_chunk: int | None = None,
    sets: int = 1,
    set_crop: float = 0.8,
) -> EspiritResult:
    """ESPIRiT coil sensitivities from the fully sampled centre of ``kspace`` ``(C, I, J, K)``.

    ``calibration`` is the side of the central fully sampled box on the in-plane k-space axes
    (``(J, K)`` for 3D, ``(I, J)`` for 2D multi-slice); ``kernel`` the ESPIRiT kernel width;
    ``threshold`` the singular-value cut (relative to the largest) separating signal from null
    space; ``crop`` the eigenvalue below which maps are zeroed (0 keeps everything). Computation
    is vectorised over slices in chunks of ``slices_per_chunk`` (default: ~256 MB of Gram
    matrices) and runs on ``kspace``'s device. See the module docstring for the algorithm.

    ``sets > 1`` also returns the eigenvectors of the next eigenvalues as further map sets
    (soft SENSE, Uecker et al. 2014), each phase-referenced like the first and kept where its
    eigenvalue exceeds ``set_crop`` inside the first set's support (which alone decides where
    the object is): ``maps`` is then ``(M, C, I, J, K)`` and ``eigenvalues`` ``(M, I, J, K)``
    with ``M = sets``. ``set_crop`` 0.8 is BART ``ecalib``'s crop; on the fastMRI-format brain
    of benchmarks/RESULTS_mri.md the second eigenvalue passes 0.95 in 1 % of the grid and 0.8
    in 9 %; L1-wavelet gained 1.2 dB more with 0.8 than with 0.95, and 0.7 was no better.
    """
    _check_kspace(kspace)
    slice_axis, plane_axes, pre_ifft = _planes(fft_dims)
    cal, ker = _pair(calibration), _pair(kernel)
    _check_calibration(kspace.shape[1:], plane_axes, cal, ker)
    if not 0 <= threshold < 1:
        raise InputError(f"The ESPIRiT threshold must be in [0, 1), got {threshold}.")
    if not 1 <= int(sets) <= kspace.shape[0]:
        raise InputError(f"The number of ESPIRiT map sets must be between 1 and the number of "
                         f"coils ({kspace.shape[0]}), got {sets}.")
    sets = int(sets)
    work = kspace.to(torch.complex128 if kspace.dtype == torch.complex128 else torch.complex64)
    if pre_ifft:
        work = ifftc(work, tuple(d + 1 for d in pre_ifft))
    # (S, C, N1, N2): slices first, k-space plane last.
    stack = work.movedim(slice_axis + 1, 0)
    n_slices, n_coils, n1, n2 = stack.shape
    if slices_per_chunk is None:
        per_slice = n_coils * n_coils * n1 * n2 * stack.element_size()
        slices_per_chunk = max(1, int(256e6 // max(per_slice, 1)))
    maps = stack.new_zeros((n_slices, sets, n_coils, n1, n2))
    eig = torch.zeros((n_slices, sets, n1, n2), dtype=stack.real.dtype, device=stack.device)
    for s0 in range(0, n_slices, slices_per_chunk):
        sl = slice(s0, min(s0 + slices_per_chunk, n_slices))
        maps[sl], eig[sl] = _espirit_stack(stack[sl], cal, ker, threshold, sets)
    # One reference for all slices, so the phase is consistent through the volume.
    calib = stack[..., calibration_slice(n1, cal[0]), calibration_slice(n2, cal[1])]
    reference = _principal_component(calib.movedim(1, 0))
    maps = maps.movedim(1, 0).movedim(1, slice_axis + 2)  # (M, C, I, J, K)
    eig = eig.movedim(1, 0).movedim(1, slice_axis + 1)  # (M, I, J, K)
    maps = torch.stack([_refer_phase(mp, reference) for mp in maps])
    keep = eig > crop
    if sets > 1:
        keep[1:] = (eig[1:] > set_crop) & keep[:1]
    maps = maps * keep[:, None]
    if sets == 1:
        maps, eig = maps[0], eig[0]
    return EspiritResult(maps=maps.to(kspace.dtype), eigenvalues=eig)


def espirit_maps(
    kspace: torch.Tensor,
    calibration: int | Sequence[int] = 24,
    kernel: int | Sequence[int] = 6,
    threshold: float = DEFAULT_THRESHOLD,
    crop: float = 0.95,
    fft_dims: Sequence[int] = (0, 1, 2),
) -> torch.Tensor:
    """ESPIRiT maps ``(C, I, J, K)``; see :func:`espirit` (which also returns eigenvalues)."""
    return espirit(kspace, calibration, kernel, threshold, crop, fft_dims).maps


# ----------------------------------------------------------------------------------------------
# Low-resolution estimate
# ----------------------------------------------------------------------------------------------


def lowres_maps(
    kspace: torch.Tensor,
    calibration: int | Sequence[int] = 24,
    fft_dims: Sequence[int] = (0, 1, 2),
    support_threshold: float = 0.05,
) -> torch.Tensor:
    """Fast coil maps ``(C, I, J, K)`` from low-resolution coil images.

    The central ``calibration`` samples of every Fourier-encoded axis (clipped to the axis
    length) are kept under a Hann window, transformed to the image domain, divided by their
    root-sum-of-squares and phase-referenced to the first principal component. Voxels whose
    low-resolution RSS is below ``support_threshold`` times its maximum are set to zero.
    """
    _check_kspace(kspace)
    dims = tuple(sorted(int(d) for d in fft_dims))
    _planes(dims)
    if isinstance(calibration, int | np.integer):
        cal = {d: int(calibration) for d in dims}
    else:
        vals = [int(c) for c in calibration]
        # A pair gives the phase-encode sizes; the readout (fully sampled) takes the first.
        cal = dict(zip(dims, ([vals[0]] + vals)[-len(dims):], strict=True))
    window = torch.ones(kspace.shape[1:], dtype=kspace.real.dtype, device=kspace.device)
    for d in dims:
        n = kspace.shape[d + 1]
        c = min(max(cal[d], 2), n)
        w = torch.zeros(n, dtype=kspace.real.dtype, device=kspace.device)
        w[calibration_slice(n, c)] = torch.hann_window(c + 2, periodic=False,
                                                       dtype=kspace.real.dtype,
                                                       device=kspace.device)[1:-1]
        shape = [1, 1, 1]
        shape[d] = n
        window = window * w.reshape(shape)
    images = ifftc(kspace * window, tuple(d + 1 for d in dims))
    norm = rss(images)
    maps = images / norm.clamp_min(1e-30)
    reference = _principal_component(images)
    maps = _refer_phase(maps, reference)
    return maps * (norm > support_threshold * norm.max())


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def detect_calibration(mask: torch.Tensor | np.ndarray, image_shape: Sequence[int],
                       fft_dims: Sequence[int] = (0, 1, 2)) -> int:
    """Side of the largest fully sampled central box in the phase-encode plane of ``mask``.

    For 3D data the box is on (J, K); for 2D multi-slice the central lines along J (in every
    slice). Returns 0 when even the centre sample is missing.
    """
    m = np.broadcast_to(np.asarray(torch.as_tensor(mask).cpu().numpy() != 0),
                        tuple(int(n) for n in image_shape))
    _planes(fft_dims)  # validates
    # Phase-encode axes: (J, K) for 3D, J for 2D multi-slice (readout I is always full).
    pe_axes = (1, 2) if tuple(sorted(int(d) for d in fft_dims)) == (0, 1, 2) else (1,)
    best = 0
    for c in range(1, min(m.shape[a] for a in pe_axes) + 1):
        idx: list[slice] = [slice(None)] * 3
        for a in pe_axes:
            idx[a] = calibration_slice(m.shape[a], c)
        if not m[tuple(idx)].all():
            break
        best = c
    return best


def estimate_coil_maps(
    kspace: torch.Tensor,
    mask: torch.Tensor | np.ndarray | None = None,
    method: str = "espirit",
    calibration: int | None = None,
    fft_dims: Sequence[int] = (0, 1, 2),
    map_sets: int = 1,
    **kwargs: float | int,
) -> torch.Tensor:
    """Coil maps ``(C, I, J, K)`` from (undersampled) multi-coil ``kspace``.

    ``method`` is ``"espirit"`` or ``"lowres"``. ``calibration`` defaults to the largest fully
    sampled central box found in ``mask`` (capped at :data:`MAX_AUTO_CALIBRATION`); given
    explicitly, it is checked against the mask. Extra keyword arguments go to :func:`espirit`
    (``kernel``, default :func:`default_kernel`; ``threshold``, ``crop``) or
    :func:`lowres_maps` (``support_threshold``). For 2D multi-slice data ``calibration``
    counts phase-encode lines, and ESPIRiT's region spans ``min(I, max(calibration,
    READOUT_CALIBRATION))`` samples of the fully sampled readout.

    ``map_sets > 1`` (ESPIRiT only) returns ``(M, C, I, J, K)``: the ESPIRiT map sets of the
    largest eigenvalues (:func:`espirit` ``sets``), without the sets that the crop empties
    everywhere, so ``1 <= M <= map_sets``; the low-resolution estimate (chosen, or as the
    fallback) is then one set ``(1, C, I, J, K)``.
    """
    _check_kspace(kspace)
    shape = tuple(kspace.shape[1:])
    if mask is not None:
        available = detect_calibration(mask, shape, fft_dims)
        if calibration is None:
            calibration = min(available, MAX_AUTO_CALIBRATION)
        elif calibration > available:
            raise InputError(
                f"The mask fully samples a central region of only {available}, less than the "
                f"requested calibration size {calibration}."
            )
    elif calibration is None:
        calibration = 24
    method = str(method).lower()
    if method == "espirit":
        options = {"kernel": default_kernel(calibration), **kwargs}
        region: int | tuple[int, int] = calibration
        if tuple(sorted(int(d) for d in fft_dims)) == (0, 1):
            region = (min(shape[0], max(calibration, READOUT_CALIBRATION)), calibration)
        sets = espirit(kspace, calibration=region, fft_dims=fft_dims,  # type: ignore[arg-type]
                       sets=map_sets, **options).maps
        if map_sets > 1:
            keep = [m for m in range(sets.shape[0]) if m == 0 or bool(sets[m].abs().amax() > 0)]
            sets = sets[keep]
        maps = sets[0] if map_sets > 1 else sets
        # ESPIRiT crops voxels whose eigenvalue is below ``crop``. With a calibration region
        # barely larger than the kernel the eigenvalues stay below it almost everywhere and the
        # maps vanish inside the object; SENSE with such maps returns zeros. Fall back to the
        # low-resolution estimate, which needs no eigenvalue gap, and say so.
        covered = float(((maps.abs() ** 2).sum(0) > 0.5).float().mean())
        if covered >= 0.5:  # at least half the grid: cannot be under half of the signal support
            return sets
        lowres = lowres_maps(kspace, calibration=calibration, fft_dims=fft_dims)
        if map_sets > 1:
            lowres = lowres[None]
        wanted = float(((lowres.abs() ** 2).sum(0) > 0.5).float().mean())
        if covered < 0.5 * wanted:
            warnings.warn(
                f"ESPIRiT maps cover only {covered:.0%} of the voxels with signal (calibration "
                f"region {calibration} is too small for a clear eigenvalue gap); using the "
                f"low-resolution coil-map estimate instead.",
                stacklevel=2,
            )
            return lowres
        return sets
    if method == "lowres":
        maps = lowres_maps(kspace, calibration=calibration, fft_dims=fft_dims, **kwargs)  # type: ignore[arg-type]
        return maps[None] if map_sets > 1 else maps
    raise InputError(f"Unknown coil-map method {method!r}; choose 'espirit' or 'lowres'.")
