"""Pure-torch ray-driven projection kernels (one code path for CPU and CUDA).

The forward projector samples the image with trilinear (3D) or bilinear (2D) interpolation at
equidistant points along every ray and sums them times the step length (a midpoint rule for the
line integral of the interpolated image). Its adjoint is the exact transpose of that sampling: the
input-gradient kernel of ``torch.nn.functional.grid_sample`` (``aten::grid_sampler_*_backward``),
which scatters each weighted ray value back onto the same interpolation weights. Forward and
adjoint therefore match to rounding error (float64 adjoint tests pass at ~1e-15).

Rays are given in ``grid_sample``'s normalised coordinates (see :func:`index_to_normalised`;
for a centred volume that is simply millimetres divided by the half field of view ``N s / 2``),
ordered last axis first, so that the kernels do one fused multiply-add per sample. The image is
zero outside its voxels; interpolation falls linearly to zero over the one-voxel margin beyond the
edge voxel centres (``grid_sample`` with zero padding and ``align_corners=False`` and our own
index normalisation, which also works for axes of length 1).

Rays are produced chunk by chunk by a callback, so memory stays bounded by ``max_points`` sampled
points per chunk whatever the number of views or detector pixels.

For 2D geometries the same operator is also available as an explicit sparse matrix
(:func:`ray_matrix_2d`): rows are rays, columns are the I*J pixels, and each entry is ``step_mm``
times the sum of the bilinear weights that the ray's samples give that pixel (computed exactly as
``grid_sample`` does, dropping neighbours outside the grid). Applying it to every slice at once
is one CSR sparse x dense product, which reads contiguous rows and needs no atomics; the adjoint
is the product with the transposed matrix, stored as its own CSR.

Also here: :func:`sample_detector_2d` / :func:`sample_detector_3d`, the voxel-driven detector
interpolation used by filtered backprojection (FBP/FDK), which is a different (non-adjoint)
backprojector by design.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

Tensor = torch.Tensor
#: ray_fn(start, stop) -> (starts, steps): ray start points and per-sample step vectors of rays
#: start..stop-1, shape (stop - start, D) each, in grid_sample's normalised coordinates and order:
#: D = 2 as (j, i) for images, D = 3 as (k, j, i) for volumes (see :func:`index_to_normalised`).
RayFn = Callable[[int, int], tuple[Tensor, Tensor]]

__all__ = [
    "RayFn",
    "ray_project_2d",
    "ray_backproject_2d",
    "ray_matrix_2d",
    "csr_matmul",
    "ray_project_3d",
    "ray_backproject_3d",
    "sample_detector_2d",
    "sample_detector_3d",
    "index_to_normalised",
]

_BILINEAR = 0  # grid_sampler interpolation_mode code
_ZEROS = 0  # grid_sampler padding_mode code


def index_to_normalised(idx: Tensor, size: int) -> Tensor:
    """Map continuous voxel indices along an axis of ``size`` to grid_sample's [-1, 1] range.

    With ``align_corners=False``, index ``n`` is at ``(2 n + 1) / size - 1``.
    """
    return (2.0 * idx + 1.0) / float(size) - 1.0


def _grid(starts: Tensor, steps: Tensor, n_samples: int) -> Tensor:
    """Sample points ``starts + (s + 1/2) steps`` for s = 0..n_samples-1; shape (N, S, D).

    One fused multiply-add: on CPUs this kernel is memory-bound, so no extra passes.
    """
    s = torch.arange(n_samples, device=starts.device, dtype=starts.dtype) + 0.5
    return torch.addcmul(starts[:, None, :], s[None, :, None], steps[:, None, :])


def _chunks(n_rays: int, n_samples: int, per_point: int, max_points: int) -> list[tuple[int, int]]:
    """Split ``n_rays`` so that rays * samples * per_point <= max_points (at least one ray)."""
    rays = max(1, int(max_points) // max(1, n_samples * per_point))
    return [(a, min(a + rays, n_rays)) for a in range(0, n_rays, rays)]


def ray_project_2d(image: Tensor, ray_fn: RayFn, n_rays: int, n_samples: int, step_mm: float,
                   max_points: int = 2**22) -> Tensor:
    """Line integrals through a stack of 2D images along in-plane rays.

    Args:
        image: (C, I, J) real tensor; every channel (e.g. an axial slice) is integrated along
            the same rays.
        ray_fn: in-plane ray starts and sample steps, normalised (j, i), see :data:`RayFn`.
        n_rays: total number of rays.
        n_samples: samples per ray.
        step_mm: length of one sample step in mm (the quadrature weight).
        max_points: bound on (rays x samples x (channels + 2)) held at once.

    Returns:
        (C, n_rays) line integrals (image units x mm).
    """
    c, ni, nj = image.shape
    inp = image[None]
    out = image.new_empty((c, n_rays))
    for a, b in _chunks(n_rays, n_samples, c + 2, max_points):
        starts, steps = ray_fn(a, b)
        grid = _grid(starts, steps, n_samples)[None]
        vals = torch.nn.functional.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros",
                                               align_corners=False)  # (1, C, N, S)
        out[:, a:b] = vals[0].sum(dim=-1) * step_mm
    return out


def ray_backproject_2d(sino: Tensor, shape: tuple[int, int], ray_fn: RayFn, n_samples: int,
                       step_mm: float, max_points: int = 2**22) -> Tensor:
    """Exact adjoint of :func:`ray_project_2d`: (C, n_rays) -> (C, I, J)."""
    c, n_rays = sino.shape
    ni, nj = shape
    out = sino.new_zeros((c, ni, nj))
    zeros = sino.new_zeros((1, c, ni, nj))
    for a, b in _chunks(n_rays, n_samples, c + 2, max_points):
        starts, steps = ray_fn(a, b)
        grid = _grid(starts, steps, n_samples)[None]
        g = (sino[:, a:b] * step_mm)[None, :, :, None].expand(1, c, b - a, n_samples)
        grad_in, _ = torch.ops.aten.grid_sampler_2d_backward(
            g.contiguous(), zeros, grid, _BILINEAR, _ZEROS, False, [True, False])
        out += grad_in[0]
    return out


#: Rough bytes of build temporaries per sampled point in :func:`ray_matrix_2d`, in units of the
#: ``max_points`` budget's points (coordinates, four corners' keys and weights, sort buffers).
_MATRIX_POINT_COST = 16


def _sum_duplicates(keys: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique keys and the sum of the weights of each key.

    Deterministic on every device (no atomics): a stable sort, then the few duplicates of each
    key (consecutive samples of one ray touching the same pixel) are added in sample order.
    """
    keys, order = torch.sort(keys, stable=True)
    weights = weights[order]
    unique, counts = torch.unique_consecutive(keys, return_counts=True)
    if unique.numel() == keys.numel():
        return unique, weights
    first = torch.cumsum(counts, 0) - counts
    sums = weights[first]
    last = weights.numel() - 1
    for o in range(1, int(counts.max())):
        # Dense (no boolean indexing): adding an exact 0 leaves the shorter runs unchanged.
        more = weights[torch.clamp(first + o, max=last)]
        sums += torch.where(counts > o, more, 0.0)
    return unique, sums


def _spend_csr_notice() -> None:
    """torch says "Sparse CSR tensor support is in beta state" once per process, at its first
    CSR tensor, to users who did not ask for one: spent here at import, on a 1 x 1 tensor, so
    that no warnings filter is needed around later calls (filters are process-wide: a
    catch_warnings block's restore races with a caller's other threads, and a filter of our
    own would not hold against a caller's ``simplefilter("always")``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.sparse_csr_tensor(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1.0]),
                                size=(1, 1), check_invariants=False)


_spend_csr_notice()


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def ray_matrix_2d(ray_fn: RayFn, n_rays: int, n_samples: int, step_mm: float,
                  shape: tuple[int, int], dtype: torch.dtype, max_nnz: int,
                  max_points: int = 2**22) -> tuple[Tensor, Tensor] | None:
    """The sparse matrix of :func:`ray_project_2d` and its transpose, as CSR tensors.

    ``A[n, i * J + j] = step_mm * sum_s w_s(i, j)`` with ``w_s`` the bilinear weight of pixel
    (i, j) at sample s of ray n, as ``grid_sample`` computes it (``align_corners=False``, zero
    padding: neighbours outside the grid are dropped). Exact zeros are not stored. Then
    ``ray_project_2d(image) = (A @ image.reshape(C, I * J).T).T`` and
    ``ray_backproject_2d(sino) = (A^T @ sino.T).T`` up to rounding.

    Built chunk by chunk over rays in the precision and on the device of ``ray_fn``'s output
    (use float64 rays for a matrix exact to float64 rounding); values are stored in ``dtype``.
    Indices are int32 when every index fits, else int64.

    Args:
        ray_fn, n_rays, n_samples, step_mm: as in :func:`ray_project_2d`.
        shape: image shape (I, J).
        dtype: dtype of the stored values.
        max_nnz: give up (return None) as soon as the matrix would hold more nonzeros.
        max_points: bound on sampled points per build chunk (x a fixed cost per point).

    Returns:
        (A of shape (n_rays, I*J), A^T of shape (I*J, n_rays)), or None when over ``max_nnz``.
    """
    ni, nj = shape
    npix = ni * nj
    cols: list[Tensor] = []
    vals: list[Tensor] = []
    counts: list[Tensor] = []
    nnz = 0
    device = None
    for a, b in _chunks(n_rays, n_samples, _MATRIX_POINT_COST, max_points):
        starts, steps = ray_fn(a, b)
        device = starts.device
        grid = _grid(starts, steps, n_samples)  # (N, S, 2) as (j, i)
        # grid_sample's unnormalisation for align_corners=False, then bilinear corner weights.
        ix = ((grid[..., 0] + 1.0) * nj - 1.0) / 2.0
        iy = ((grid[..., 1] + 1.0) * ni - 1.0) / 2.0
        x0, y0 = torch.floor(ix), torch.floor(iy)
        x1, y1 = x0 + 1.0, y0 + 1.0
        corner_x = torch.stack([x0, x1, x0, x1], dim=-1)
        corner_y = torch.stack([y0, y0, y1, y1], dim=-1)
        w = torch.stack([(x1 - ix) * (y1 - iy), (ix - x0) * (y1 - iy),
                         (x1 - ix) * (iy - y0), (ix - x0) * (iy - y0)], dim=-1)  # (N, S, 4)
        keep = ((corner_x >= 0) & (corner_x < nj) & (corner_y >= 0) & (corner_y < ni)
                & (w != 0)).reshape(-1)
        ray = torch.arange(b - a, device=device)[:, None, None] * npix
        keys = (ray + corner_y.long() * nj + corner_x.long()).reshape(-1)
        idx = torch.nonzero(keep).squeeze(1)
        keys, sums = _sum_duplicates(keys[idx], w.reshape(-1)[idx])
        nnz += keys.numel()
        if nnz > max_nnz:
            return None
        counts.append(torch.bincount(keys // npix, minlength=b - a))
        cols.append(keys % npix)
        vals.append((sums * step_mm).to(dtype))
    index = torch.int32 if max(nnz, n_rays, npix) < 2**31 - 1 else torch.int64
    col = torch.cat(cols).to(index)
    values = torch.cat(vals)
    row_counts = torch.cat(counts)
    del cols, vals, counts
    zero = torch.zeros(1, dtype=index, device=device)
    crow = torch.cat([zero, torch.cumsum(row_counts, 0).to(index)])
    matrix = _csr(crow, col, values, (n_rays, npix))
    # A^T as its own CSR: a stable sort by pixel keeps the rays of each pixel in order.
    col_sorted, order = torch.sort(col, stable=True)
    del col_sorted
    rows = torch.repeat_interleave(torch.arange(n_rays, device=device, dtype=index),
                                   row_counts)[order]
    pix_counts = torch.bincount(col.long(), minlength=npix)
    crow_t = torch.cat([zero, torch.cumsum(pix_counts, 0).to(index)])
    transpose = _csr(crow_t, rows, values[order], (npix, n_rays))
    return matrix, transpose


#: Dense columns per CSR product on the CPU: the rows of a 32-column block that a matrix row
#: gathers stay in cache (measured 1.5-2x faster than one product at 256 columns).
CPU_COLUMN_BLOCK = 32


def csr_matmul(matrix: Tensor, dense: Tensor, column_block: int | None = None) -> Tensor:
    """``matrix @ dense`` for a CSR ``matrix`` (M, N) and a dense (N, C) tensor -> (M, C).

    On the CPU, C > ``column_block`` (default :data:`CPU_COLUMN_BLOCK`) is done in blocks of
    columns for cache locality; elsewhere in one product (cuSPARSE SpMM).
    """
    n_cols = dense.shape[1]
    block = CPU_COLUMN_BLOCK if column_block is None else int(column_block)
    if dense.device.type != "cpu" or n_cols <= block:
        return matrix @ dense.contiguous()
    out = dense.new_empty((matrix.shape[0], n_cols))
    for a in range(0, n_cols, block):
        out[:, a:a + block] = matrix @ dense[:, a:a + block].contiguous()
    return out


def ray_project_3d(volume: Tensor, ray_fn: RayFn, n_rays: int, n_samples: int, step_mm: float,
                   max_points: int = 2**22) -> Tensor:
    """Line integrals through a volume along 3D rays.

    Args:
        volume: (C, I, J, K) real tensor (C independent volumes, e.g. a batch).
        ray_fn: ray starts and sample steps, normalised (k, j, i), see :data:`RayFn`.
        n_rays, n_samples, step_mm, max_points: as in :func:`ray_project_2d`.

    Returns:
        (C, n_rays) line integrals.
    """
    c = volume.shape[0]
    inp = volume[None]
    out = volume.new_empty((c, n_rays))
    for a, b in _chunks(n_rays, n_samples, c + 3, max_points):
        starts, steps = ray_fn(a, b)
        grid = _grid(starts, steps, n_samples)[None, None]
        vals = torch.nn.functional.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros",
                                               align_corners=False)  # (1, C, 1, N, S)
        out[:, a:b] = vals[0, :, 0].sum(dim=-1) * step_mm
    return out


def ray_backproject_3d(sino: Tensor, shape: tuple[int, int, int], ray_fn: RayFn, n_samples: int,
                       step_mm: float, max_points: int = 2**22) -> Tensor:
    """Exact adjoint of :func:`ray_project_3d`: (C, n_rays) -> (C, I, J, K)."""
    c, n_rays = sino.shape
    out = sino.new_zeros((c, *shape))
    zeros = sino.new_zeros((1, c, *shape))
    for a, b in _chunks(n_rays, n_samples, c + 3, max_points):
        starts, steps = ray_fn(a, b)
        grid = _grid(starts, steps, n_samples)[None, None]
        g = (sino[:, a:b] * step_mm)[None, :, None, :, None].expand(1, c, 1, b - a, n_samples)
        grad_in, _ = torch.ops.aten.grid_sampler_3d_backward(
            g.contiguous(), zeros, grid, _BILINEAR, _ZEROS, False, [True, False])
        out += grad_in[0]
    return out


def sample_detector_2d(filtered: Tensor, u_index: Tensor) -> Tensor:
    """Linearly interpolate 1D detector data at fractional column indices (0 outside).

    Args:
        filtered: (V, C, N_cols) -- per view, C channels (slices) of detector columns.
        u_index: (V, I, J) fractional column index of every pixel, per view.

    Returns:
        (V, C, I, J) interpolated values.
    """
    v, _, ncols = filtered.shape
    gx = index_to_normalised(u_index, ncols)
    grid = torch.stack([gx, torch.zeros_like(gx)], dim=-1)  # (V, I, J, 2), y = the single row
    return torch.nn.functional.grid_sample(filtered[:, :, None, :], grid, mode="bilinear",
                                           padding_mode="zeros", align_corners=False)


def sample_detector_3d(filtered: Tensor, u_index: Tensor, v_index: Tensor) -> Tensor:
    """Bilinearly interpolate 2D detector images at fractional (row, column) indices.

    Args:
        filtered: (V, N_rows, N_cols) detector images.
        u_index, v_index: (V, I, J, K) fractional column and row index of every voxel.

    Returns:
        (V, I, J, K) interpolated values (0 off the detector).
    """
    v, nrows, ncols = filtered.shape
    shape = u_index.shape[1:]
    gx = index_to_normalised(u_index, ncols).reshape(v, 1, -1)
    gy = index_to_normalised(v_index, nrows).reshape(v, 1, -1)
    grid = torch.stack([gx, gy], dim=-1)  # (V, 1, M, 2)
    vals = torch.nn.functional.grid_sample(filtered[:, None], grid, mode="bilinear",
                                           padding_mode="zeros", align_corners=False)
    return vals.reshape(v, *shape)
