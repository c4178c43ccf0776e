"""CT projector: the ray-driven operator A (mu volume -> line integrals) with a matched adjoint.

:class:`CTProjector` applies a :class:`~medrecon.operators.ct_geometry.CTGeometry` to volumes of
one shape and spacing (frame and units: :mod:`medrecon.operators.ct_geometry`);
:func:`make_projector` builds one.

Discretisation: ray-driven, trilinear (cone) or bilinear (2D) interpolation sampled every
``step_mm`` (default half the smallest relevant voxel size) along the ray, see
:mod:`medrecon.operators.functional.projectors`. The adjoint is the exact transpose of that
sampling, so ``<A x, y> = <x, A^T y>`` to rounding error; gradients through the projector use the
adjoint directly (custom autograd functions), which keeps memory bounded in guided sampling.

Implementation: for the 2D kinds every slice sees the same in-plane rays, so the operator is one
sparse matrix A (rays x in-plane pixels) applied to all K slices at once. By default
(``method="auto"``) the projector builds that matrix exactly (the same bilinear samples, see
:func:`~medrecon.operators.functional.projectors.ray_matrix_2d`) once per device and dtype, and
applies ``A`` and a stored ``A^T`` as CSR sparse x dense products: far faster than resampling
every slice along every ray, deterministic (no atomics), and the same numbers up to rounding.
Matrices over a memory budget, cone beam (whose 3D matrix would be far too large) and
``method="rays"`` use the ray-driven kernels; the budget is
:mod:`medrecon.operators.ct_memory`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medrecon.errors import GeometryError, InputError
from medrecon.operators.base import LinearOperator
from medrecon.operators.ct_geometry import CTGeometry, fov_radius
from medrecon.operators.ct_memory import (
    SPARSE_MAX_NNZ,
    SPARSE_MEMORY_FRACTION,
    sparse_nnz_budget,
)
from medrecon.operators.functional.projectors import (
    csr_matmul,
    ray_backproject_2d,
    ray_backproject_3d,
    ray_matrix_2d,
    ray_project_2d,
    ray_project_3d,
)

__all__ = [
    "PROJECTOR_METHODS",
    "CTProjector",
    "SparseSystem",
    "make_projector",
]

Tensor = torch.Tensor
#: How a projector applies A: "auto" (sparse matrix for 2D kinds, else rays), "sparse", "rays".
PROJECTOR_METHODS: tuple[str, ...] = ("auto", "sparse", "rays")


@dataclass(frozen=True)
class SparseSystem:
    """The explicit matrix of a 2D-geometry projector on one device, in one dtype.

    Attributes:
        matrix: CSR A of shape (views * detector cols, I * J); row ``v * C + c`` is the ray of
            view v and column c, column ``i * J + j`` the in-plane pixel (i, j).
        transpose: CSR A^T of shape (I * J, views * detector cols), stored separately so that
            the adjoint is a gather (no atomics).
        build_s: wall time of the build in seconds.
    """

    matrix: Tensor
    transpose: Tensor
    build_s: float

    @property
    def nnz(self) -> int:
        """Stored nonzeros of A (A^T holds as many)."""
        return int(self.matrix.values().numel())

    @property
    def nbytes(self) -> int:
        """Memory held by A and A^T (values and indices) in bytes."""
        total = 0
        for m in (self.matrix, self.transpose):
            for t in (m.values(), m.col_indices(), m.crow_indices()):
                total += t.numel() * t.element_size()
        return total



class _Project(torch.autograd.Function):
    """y = A x whose gradient is A^T g (no sampling grids kept for the backward pass)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, op: CTProjector) -> Tensor:  # type: ignore[override]
        ctx.op = op
        return op._project(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.op._backproject(g), None


class _Backproject(torch.autograd.Function):
    """x = A^T y whose gradient is A g."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, op: CTProjector) -> Tensor:  # type: ignore[override]
        ctx.op = op
        return op._backproject(y)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.op._project(g), None


class CTProjector(LinearOperator):
    """Ray-driven CT projector A: mu volume (I, J, K) in 1/mm -> line integrals (V, R, C).

    Leading batch dimensions are allowed on both sides. Real float32/float64 tensors on any
    device; the computation follows the input's device and dtype.

    How A is applied (``method``; the operator is the same to rounding error either way):

    * ``"auto"`` (default): ``"sparse"`` for parallel and fan geometries, ``"rays"`` for cone
      beam, and ``"rays"`` whenever the matrix would exceed its budget.
    * ``"sparse"`` (2D kinds only): on first use on a device and dtype, build the exact sparse
      system matrix A (rays x in-plane pixels) and A^T once and cache them on the projector;
      then ``A x`` and ``A^T y`` are CSR sparse x dense products over all slices (and batch
      items) at once. Raises :class:`~medrecon.errors.InputError` when the matrix does not fit.
    * ``"rays"``: resample the image along every ray on every call (``grid_sample`` and its
      backward); no precomputation, memory bounded by ``max_points``.

    The matrix budget is ``min(sparse_max_nnz, sparse_memory_fraction x free memory of the
    device / bytes per nonzero)``; the build is abandoned as soon as it is exceeded. Only float32
    and float64 use the matrix (other dtypes use rays).

    Args:
        geometry: the acquisition geometry.
        volume_shape: (I, J, K).
        spacing_mm: voxel size in mm along (i, j, k).
        step_mm: sampling step along rays (default: half the smallest voxel size in the plane
            of integration, i.e. in-plane for 2D kinds and all three axes for cone).
        max_points: bound on sampled points held in memory at once (chunks over rays, also
            those of the matrix build); default 2**22 on the CPU and 2**25 on CUDA (about 20
            bytes each in float32).
        method: "auto", "sparse" or "rays" (above).
        sparse_max_nnz: most nonzeros the sparse matrix may hold (default
            :data:`~medrecon.operators.ct_memory.SPARSE_MAX_NNZ`).
        sparse_memory_fraction: largest share of the device's free memory the matrices (A, A^T
            and their build) may take (default
            :data:`~medrecon.operators.ct_memory.SPARSE_MEMORY_FRACTION`).
    """

    def __init__(self, geometry: CTGeometry, volume_shape: Sequence[int],
                 spacing_mm: Sequence[float], step_mm: float | None = None,
                 max_points: int | None = None, method: str = "auto",
                 sparse_max_nnz: int | None = None,
                 sparse_memory_fraction: float = SPARSE_MEMORY_FRACTION) -> None:
        shape = tuple(int(n) for n in volume_shape)
        spacing = tuple(float(s) for s in spacing_mm)
        if len(shape) != 3 or len(spacing) != 3 or min(shape) < 1 or min(spacing) <= 0:
            raise GeometryError(f"A CT projector needs a 3D volume shape and positive spacing, "
                                f"got {shape} and {spacing}.")
        if method not in PROJECTOR_METHODS:
            raise InputError(f"The CT projector method must be one of "
                             f"{', '.join(PROJECTOR_METHODS)}, got {method!r}.")
        if method == "sparse" and not geometry.is_2d:
            raise InputError("The sparse CT projector is available for parallel and fan "
                             "geometries only; use method 'rays' or 'auto' for cone beam.")
        if not 0.0 < float(sparse_memory_fraction) <= 1.0:
            raise InputError(f"The sparse memory fraction must be in (0, 1], got "
                             f"{sparse_memory_fraction}.")
        if geometry.is_2d:
            if geometry.detector_rows != shape[2]:
                raise GeometryError(f"A {geometry.kind}-beam geometry has one detector row per "
                                    f"slice: {geometry.detector_rows} rows for {shape[2]} "
                                    f"slices.")
            if geometry.offset_rows_mm != 0.0:
                raise GeometryError("Row offsets apply to cone-beam geometries only.")
        super().__init__(shape, geometry.sinogram_shape)
        self.geometry = geometry
        self.volume_shape = shape
        self.spacing = spacing
        dims = 2 if geometry.is_2d else 3
        self.step_mm = float(step_mm) if step_mm else 0.5 * min(spacing[:dims])
        self.radius_mm = fov_radius(shape, spacing, dims)
        if geometry.kind in ("fan", "cone") and geometry.vectors is None:
            if float(geometry.source_isocentre_mm) <= self.radius_mm:  # type: ignore[arg-type]
                raise GeometryError(f"The source (DSO {geometry.source_isocentre_mm} mm) lies "
                                    f"inside the volume's field of view (radius "
                                    f"{self.radius_mm:.1f} mm).")
        self.n_samples = int(math.ceil(2 * self.radius_mm / self.step_mm))
        self.max_points = None if max_points is None else int(max_points)
        self.method = method
        self.sparse_max_nnz = SPARSE_MAX_NNZ if sparse_max_nnz is None else int(sparse_max_nnz)
        self.sparse_memory_fraction = float(sparse_memory_fraction)
        self._cache: dict[tuple[str, torch.dtype], tuple[Tensor, ...]] = {}
        # None records "does not fit: use rays" so that the build is not retried.
        self._systems: dict[tuple[str, torch.dtype], SparseSystem | None] = {}

    # -- rays -----------------------------------------------------------------------------------
    def _frames(self, like: Tensor) -> tuple[Tensor, ...]:
        key = (str(like.device), like.dtype)
        if key not in self._cache:
            src, det, eu, ev = self.geometry.frames(like.dtype, like.device)
            u = torch.as_tensor(self.geometry.column_positions_mm(), dtype=like.dtype,
                                device=like.device)
            v = torch.as_tensor(self.geometry.row_positions_mm(), dtype=like.dtype,
                                device=like.device)
            half = torch.tensor([n * s / 2.0 for n, s in zip(self.volume_shape, self.spacing,
                                                              strict=True)],
                                dtype=like.dtype, device=like.device)
            self._cache[key] = (src, det, eu, ev, u, v, half)
        return self._cache[key]

    def _ray_fn(self, like: Tensor):  # type: ignore[no-untyped-def]
        """A RayFn over flat ray indices: (view, col) for 2D kinds, (view, row, col) for cone."""
        src, det, eu, ev, u, v, half = self._frames(like)
        g = self.geometry
        ncols, nrows = g.detector_cols, g.detector_rows
        radius, step = self.radius_mm, self.step_mm
        dims = 2 if g.is_2d else 3

        def fn(a: int, b: int) -> tuple[Tensor, Tensor]:
            idx = torch.arange(a, b, device=like.device)
            col = idx % ncols
            if g.is_2d:
                view = idx // ncols
                pix = det[view] + u[col, None] * eu[view]
                if g.kind == "parallel":
                    p0, d = pix, -src[view]
                else:
                    p0 = src[view]
                    d = pix - p0
                    d = d / torch.linalg.vector_norm(d, dim=1, keepdim=True)
            else:
                view = idx // (ncols * nrows)
                row = (idx // ncols) % nrows
                pix = det[view] + u[col, None] * eu[view] + v[row, None] * ev[view]
                p0 = src[view]
                d = pix - p0
                d = d / torch.linalg.vector_norm(d, dim=1, keepdim=True)
            p0, d = p0[:, :dims], d[:, :dims]
            # Sample a segment of length 2 radius centred on the point closest to the
            # isocentre; never start behind a divergent beam's source.
            t_mid = -(p0 * d).sum(dim=1)
            t0 = t_mid - radius
            if g.kind != "parallel":
                t0 = torch.clamp(t0, min=0.0)
            # grid_sample's normalised coordinate of a centred axis is x_mm / (N s / 2);
            # its coordinate order is last axis first.
            start = ((p0 + t0[:, None] * d) / half[:dims]).flip(1)
            steps = (d * (step / half[:dims])).flip(1)
            return start, steps

        return fn

    # -- sparse system matrix (2D kinds) ---------------------------------------------------
    def _sparse_budget(self, device: torch.device, dtype: torch.dtype) -> int:
        """Most nonzeros A may hold on ``device``: the nnz cap and the memory share."""
        return sparse_nnz_budget(self.sparse_max_nnz, self.sparse_memory_fraction,
                                 self.geometry.views * self.geometry.detector_cols, device, dtype)

    def sparse_system(self, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> SparseSystem | None:
        """The cached sparse A and A^T for ``device`` and ``dtype`` (built on first call).

        None when this projector applies A by rays there: cone beam, ``method="rays"``, a dtype
        other than float32/float64, or (with ``method="auto"``) a matrix over the budget.

        The matrix is computed in float64 (exact to float64 rounding), stored in ``dtype``.
        """
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if (self.method == "rays" or not self.geometry.is_2d
                or dtype not in (torch.float32, torch.float64)):
            return None
        key = (str(dev), dtype)
        if key in self._systems:
            return self._systems[key]
        g = self.geometry
        ni, nj, _ = self.volume_shape
        budget = self._sparse_budget(dev, dtype)
        build_dev = dev if dev.type in ("cpu", "cuda") else torch.device("cpu")
        like = torch.empty(0, dtype=torch.float64, device=build_dev)
        t0 = time.perf_counter()
        # Ordinary tensors even when first called under torch.inference_mode(), so the cached
        # matrix also serves later calls outside it.
        with torch.inference_mode(False), torch.no_grad():
            pair = ray_matrix_2d(self._ray_fn(like), g.views * g.detector_cols, self.n_samples,
                                 self.step_mm, (ni, nj), dtype, budget,
                                 self._chunk_points(like))
        if pair is None:
            if self.method == "sparse":
                raise InputError(f"The sparse CT system matrix needs more than {budget} "
                                 f"nonzeros (the memory budget on {dev}); use method 'rays' "
                                 f"or 'auto'.")
            system = None
        else:
            a, at = (m.to(dev) for m in pair)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            system = SparseSystem(a, at, time.perf_counter() - t0)
        self._systems[key] = system
        return system

    def method_for(self, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> str:
        """"sparse" or "rays": how inputs on ``device`` in ``dtype`` are projected.

        Builds the sparse matrix if it is due and not yet built.
        """
        return "rays" if self.sparse_system(device, dtype) is None else "sparse"

    # -- kernels --------------------------------------------------------------------------------
    def _chunk_points(self, t: Tensor) -> int:
        if self.max_points is not None:
            return self.max_points
        return 2**25 if t.device.type == "cuda" else 2**22

    def _project(self, x: Tensor) -> Tensor:
        lead = x.shape[:-3]
        ni, nj, nk = self.volume_shape
        xb = x.reshape(-1, ni, nj, nk)
        b = xb.shape[0]
        g = self.geometry
        system = self.sparse_system(x.device, x.dtype)
        if system is not None:
            # Pixels as rows, (batch, slice) as contiguous columns: every nonzero of A reads
            # one contiguous row. For an unbatched contiguous volume this is a view.
            cols = xb.permute(1, 2, 0, 3).reshape(ni * nj, b * nk)
            p = csr_matmul(system.matrix, cols).reshape(g.views, g.detector_cols, b, nk)
            return p.permute(2, 0, 3, 1).reshape(*lead, *g.sinogram_shape).contiguous()
        fn = self._ray_fn(x)
        if g.is_2d:
            img = xb.permute(0, 3, 1, 2).reshape(b * nk, ni, nj)  # slices as channels
            n_rays = g.views * g.detector_cols
            p = ray_project_2d(img, fn, n_rays, self.n_samples, self.step_mm,
                               self._chunk_points(x))
            p = p.reshape(b, nk, g.views, g.detector_cols).permute(0, 2, 1, 3)
        else:
            n_rays = g.views * g.detector_rows * g.detector_cols
            p = ray_project_3d(xb, fn, n_rays, self.n_samples, self.step_mm,
                               self._chunk_points(x))
            p = p.reshape(b, *g.sinogram_shape)
        return p.reshape(*lead, *g.sinogram_shape).contiguous()

    def _backproject(self, y: Tensor) -> Tensor:
        lead = y.shape[:-3]
        ni, nj, nk = self.volume_shape
        g = self.geometry
        yb = y.reshape(-1, *g.sinogram_shape)
        b = yb.shape[0]
        system = self.sparse_system(y.device, y.dtype)
        if system is not None:
            # (b, V, K, C) -> rays as rows, (batch, slice) as columns.
            sino = yb.permute(1, 3, 0, 2).reshape(g.views * g.detector_cols, b * nk)
            x = csr_matmul(system.transpose, sino).reshape(ni, nj, b, nk)
            return x.permute(2, 0, 1, 3).reshape(*lead, ni, nj, nk).contiguous()
        fn = self._ray_fn(y)
        if g.is_2d:
            sino = yb.permute(0, 2, 1, 3).reshape(b * nk, g.views * g.detector_cols)
            img = ray_backproject_2d(sino.contiguous(), (ni, nj), fn, self.n_samples,
                                     self.step_mm, self._chunk_points(y))
            x = img.reshape(b, nk, ni, nj).permute(0, 2, 3, 1)
        else:
            sino = yb.reshape(b, -1)
            x = ray_backproject_3d(sino, (ni, nj, nk), fn, self.n_samples, self.step_mm,
                                   self._chunk_points(y))
        return x.reshape(*lead, ni, nj, nk).contiguous()

    def _check_real(self, t: Tensor) -> None:
        if t.is_complex() or not t.is_floating_point():
            raise TypeError(f"CT projectors take real floating-point tensors, got {t.dtype}")

    def _forward(self, x: Tensor) -> Tensor:
        self._check_real(x)
        return _Project.apply(x, self)  # type: ignore[no-any-return]

    def _adjoint(self, y: Tensor) -> Tensor:
        self._check_real(y)
        return _Backproject.apply(y, self)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        g = self.geometry
        return (f"CTProjector({g.kind}, views={g.views}, volume={self.volume_shape}, "
                f"sinogram={g.sinogram_shape}, step={self.step_mm:g} mm, "
                f"method={self.method})")


def make_projector(geometry: CTGeometry | dict[str, Any], volume_shape: Sequence[int],
                   spacing_mm: Sequence[float], device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, **kwargs: Any) -> CTProjector:
    """The projector of ``geometry`` for a volume of ``volume_shape`` and ``spacing_mm``.

    ``device`` and ``dtype`` pre-build the ray tables for the expected inputs; the operator
    itself follows whatever device and dtype it is given (a 2D geometry's sparse matrix is built
    lazily, on first use). ``kwargs`` go to :class:`CTProjector` (``step_mm``, ``max_points``,
    ``method``, ``sparse_max_nnz``, ``sparse_memory_fraction``).
    """
    if isinstance(geometry, dict):
        geometry = CTGeometry.from_dict(geometry)
    op = CTProjector(geometry, volume_shape, spacing_mm, **kwargs)
    op._frames(torch.empty(0, dtype=dtype, device=device))
    return op
