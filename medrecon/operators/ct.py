"""CT acquisition model: geometry, ray-driven projectors with matched adjoints, simulation.

Frames and units
----------------
The projector works in the volume's own voxel frame scaled to millimetres and centred on the
volume (the isocentre)::

    x = (i - (I - 1) / 2) s_i,   y = (j - (J - 1) / 2) s_j,   z = (k - (K - 1) / 2) s_k

with ``(s_i, s_j, s_k)`` the voxel spacing in mm. The **rotation axis is z, the Volume's third
axis K** (superior-inferior for an axial DICOM series). Angles are radians; at angle ``theta``::

    e_s = (cos theta, sin theta, 0)    isocentre -> source
    e_u = (-sin theta, cos theta, 0)   detector column direction (column index increases along it)
    e_v = (0, 0, 1)                    detector row direction (row index increases with z)

Detector pixel ``(r, c)`` sits at ``u = (c - (C - 1) / 2) du + offset_cols``,
``v = (r - (R - 1) / 2) dv + offset_rows`` (mm) in the detector plane.

* ``parallel`` (2D, slice-wise): the ray of column c is the line through ``u e_u`` along
  ``-e_s`` in the axial plane of every slice; detector rows are the K slices (``dv = s_k``).
* ``fan`` (2D, slice-wise, flat detector): source at ``DSO e_s``, detector centre at
  ``-(DSD - DSO) e_s``; the ray of column c joins the source to ``-(DSD - DSO) e_s + u e_u``
  within each slice; rows are again the K slices.
* ``cone`` (3D, circular orbit, flat detector): as fan, with the detector pixel at
  ``-(DSD - DSO) e_s + u e_u + v e_v``. Optional ``vectors`` replace the circular orbit by
  arbitrary per-view source and detector positions (ASTRA's ``cone_vec`` idea): per view
  ``(source xyz, detector centre xyz, unit u direction xyz, unit v direction xyz)`` in the frame
  above, in mm.

Images are the linear attenuation coefficient mu in 1/mm (see :mod:`medrecon.intensity`);
sinograms hold line integrals ``p = int mu dl`` (dimensionless), shape (views, rows, cols).

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
``method="rays"`` use the ray-driven kernels.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medrecon.errors import GeometryError, InputError
from medrecon.operators.base import LinearOperator
from medrecon.operators.functional.projectors import (
    csr_matmul,
    ray_backproject_2d,
    ray_backproject_3d,
    ray_matrix_2d,
    ray_project_2d,
    ray_project_3d,
)
from medrecon.operators.registry import register_operator_case

if TYPE_CHECKING:
    from medrecon.io.volume import Volume
    from medrecon.phantoms import Ellipsoid

__all__ = [
    "GEOMETRY_KINDS",
    "PROJECTOR_METHODS",
    "CTGeometry",
    "CTProjector",
    "SparseSystem",
    "default_geometry",
    "make_projector",
    "simulate_sinogram",
    "add_ct_noise",
    "ct_operator_description",
    "analytic_projection",
    "ray_lines",
]

Tensor = torch.Tensor
GEOMETRY_KINDS: tuple[str, ...] = ("parallel", "fan", "cone")
#: Magnification DSD / DSO of the default fan and cone geometries (clinical scanners: ~1.8-2).
DEFAULT_MAGNIFICATION = 2.0
#: Source-isocentre distance of the default geometries in units of the field-of-view radius
#: (fan half-angle asin(1/2.5) = 23.6 deg, close to a clinical scanner's ~25 deg).
DEFAULT_SOURCE_DISTANCE_FOV = 2.5
#: How a projector applies A: "auto" (sparse matrix for 2D kinds, else rays), "sparse", "rays".
PROJECTOR_METHODS: tuple[str, ...] = ("auto", "sparse", "rays")
#: Default bound on the nonzeros of a 2D system matrix (A and A^T are each stored).
SPARSE_MAX_NNZ = 200_000_000
#: Default share of the device's free memory that A and A^T (and their build) may use.
SPARSE_MEMORY_FRACTION = 0.25


@dataclass(frozen=True)
class CTGeometry:
    """A CT acquisition geometry in mm and radians (see the module docstring for the frame).

    Attributes:
        kind: "parallel" or "fan" (2D, applied slice-wise to the K axial slices) or "cone".
        angles: view angles in radians, one per view.
        detector_rows: detector rows R (for 2D kinds: the number of slices K).
        detector_cols: detector columns C.
        pixel_rows_mm: detector pixel size along v (for 2D kinds: the slice spacing).
        pixel_cols_mm: detector pixel size along u.
        offset_rows_mm: shift of the detector centre along v (cone only).
        offset_cols_mm: shift of the detector centre along u (e.g. a quarter-pixel offset).
        source_isocentre_mm: source-isocentre distance DSO (fan and cone).
        source_detector_mm: source-detector distance DSD (fan and cone).
        vectors: optional per-view arbitrary geometry (cone only): ``views`` tuples of 12
            numbers (source xyz, detector centre xyz, unit u xyz, unit v xyz) in mm; when
            given, ``angles`` only label the views and DSO/DSD are ignored.
    """

    kind: str
    angles: tuple[float, ...]
    detector_rows: int
    detector_cols: int
    pixel_rows_mm: float
    pixel_cols_mm: float
    offset_rows_mm: float = 0.0
    offset_cols_mm: float = 0.0
    source_isocentre_mm: float | None = None
    source_detector_mm: float | None = None
    vectors: tuple[tuple[float, ...], ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "angles", tuple(float(a) for a in self.angles))
        if self.vectors is not None:
            object.__setattr__(self, "vectors",
                               tuple(tuple(float(v) for v in row) for row in self.vectors))
        if self.kind not in GEOMETRY_KINDS:
            raise GeometryError(f"CT geometry kind must be one of {', '.join(GEOMETRY_KINDS)}, "
                                f"got {self.kind!r}.")
        if len(self.angles) < 1 or not all(math.isfinite(a) for a in self.angles):
            raise GeometryError("A CT geometry needs at least one finite view angle.")
        if self.detector_rows < 1 or self.detector_cols < 1:
            raise GeometryError("The detector needs at least one row and one column.")
        if not (self.pixel_rows_mm > 0 and self.pixel_cols_mm > 0):
            raise GeometryError("Detector pixel sizes must be positive (mm).")
        if self.kind in ("fan", "cone") and self.vectors is None:
            dso, dsd = self.source_isocentre_mm, self.source_detector_mm
            if dso is None or dsd is None or not (0 < dso < dsd):
                raise GeometryError(f"A {self.kind}-beam geometry needs source-isocentre and "
                                    f"source-detector distances with 0 < DSO < DSD (mm).")
        if self.vectors is not None:
            if self.kind != "cone":
                raise GeometryError("Per-view source/detector vectors are supported for cone-beam "
                                    "geometries only.")
            if len(self.vectors) != len(self.angles) or any(len(r) != 12 for r in self.vectors):
                raise GeometryError("Per-view vectors need 12 numbers (source, detector centre, "
                                    "u, v) for every view angle.")

    @property
    def views(self) -> int:
        return len(self.angles)

    @property
    def sinogram_shape(self) -> tuple[int, int, int]:
        """(views, detector rows, detector cols)."""
        return (self.views, self.detector_rows, self.detector_cols)

    @property
    def is_2d(self) -> bool:
        """True for the slice-wise kinds (parallel, fan)."""
        return self.kind in ("parallel", "fan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (stored in the measurement file's operator description)."""
        d: dict[str, Any] = {
            "kind": self.kind,
            # The same, under a name that survives being merged into an operator description
            # whose own "kind" is "ct".
            "geometry_kind": self.kind,
            "angles_rad": [float(a) for a in self.angles],
            "detector_rows": int(self.detector_rows),
            "detector_cols": int(self.detector_cols),
            "pixel_rows_mm": float(self.pixel_rows_mm),
            "pixel_cols_mm": float(self.pixel_cols_mm),
            "offset_rows_mm": float(self.offset_rows_mm),
            "offset_cols_mm": float(self.offset_cols_mm),
            "source_isocentre_mm": self.source_isocentre_mm,
            "source_detector_mm": self.source_detector_mm,
            "rotation_axis": "k",
        }
        if self.vectors is not None:
            d["vectors"] = [list(r) for r in self.vectors]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str) -> CTGeometry:
        """Inverse of :meth:`to_dict` (also accepts the JSON string)."""
        if isinstance(d, str):
            d = json.loads(d)
        assert isinstance(d, dict)
        try:
            vectors = d.get("vectors")
            kind = d.get("geometry_kind", d.get("kind"))
            return cls(
                kind=str(kind),
                angles=tuple(float(a) for a in d["angles_rad"]),
                detector_rows=int(d["detector_rows"]),
                detector_cols=int(d["detector_cols"]),
                pixel_rows_mm=float(d["pixel_rows_mm"]),
                pixel_cols_mm=float(d["pixel_cols_mm"]),
                offset_rows_mm=float(d.get("offset_rows_mm", 0.0)),
                offset_cols_mm=float(d.get("offset_cols_mm", 0.0)),
                source_isocentre_mm=(None if d.get("source_isocentre_mm") is None
                                     else float(d["source_isocentre_mm"])),
                source_detector_mm=(None if d.get("source_detector_mm") is None
                                    else float(d["source_detector_mm"])),
                vectors=None if vectors is None else tuple(tuple(r) for r in vectors),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GeometryError(f"The stored CT geometry is incomplete or invalid ({exc}).") \
                from None

    # -- per-view frames ---------------------------------------------------------------------
    def frames(self, dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-view (source, detector centre, e_u, e_v), each (V, 3), in mm.

        For parallel geometries "source" is the unit vector e_s (rays run along -e_s) and the
        detector centre is the isocentre.
        """
        if self.vectors is not None:
            vec = torch.tensor(self.vectors, dtype=torch.float64)
            src, det, eu, ev = vec[:, 0:3], vec[:, 3:6], vec[:, 6:9], vec[:, 9:12]
            eu = eu / torch.linalg.vector_norm(eu, dim=1, keepdim=True)
            ev = ev / torch.linalg.vector_norm(ev, dim=1, keepdim=True)
        else:
            th = torch.tensor(self.angles, dtype=torch.float64)
            zeros, ones = torch.zeros_like(th), torch.ones_like(th)
            es = torch.stack([torch.cos(th), torch.sin(th), zeros], dim=1)
            eu = torch.stack([-torch.sin(th), torch.cos(th), zeros], dim=1)
            ev = torch.stack([zeros, zeros, ones], dim=1)
            if self.kind == "parallel":
                src, det = es, torch.zeros_like(es)
            else:
                dso = float(self.source_isocentre_mm)  # type: ignore[arg-type]
                dsd = float(self.source_detector_mm)  # type: ignore[arg-type]
                src, det = dso * es, -(dsd - dso) * es
        return tuple(t.to(dtype=dtype, device=device) for t in (src, det, eu, ev))  # type: ignore[return-value]

    def column_positions_mm(self) -> np.ndarray:
        """u coordinate (mm) of every detector column centre, shape (C,)."""
        c = self.detector_cols
        return (np.arange(c) - (c - 1) / 2.0) * self.pixel_cols_mm + self.offset_cols_mm

    def row_positions_mm(self) -> np.ndarray:
        """v coordinate (mm) of every detector row centre, shape (R,)."""
        r = self.detector_rows
        return (np.arange(r) - (r - 1) / 2.0) * self.pixel_rows_mm + self.offset_rows_mm


def _fov_radius(shape: Sequence[int], spacing: Sequence[float], dims: int) -> float:
    """Radius (mm) of the circle/sphere around the isocentre holding the volume's support.

    The interpolated image reaches one voxel beyond the edge voxel centres.
    """
    half = [(int(n) + 1) / 2.0 * float(s) for n, s in zip(shape[:dims], spacing[:dims],
                                                           strict=True)]
    return float(math.sqrt(sum(h * h for h in half)))


def default_geometry(volume_shape: Sequence[int], spacing_mm: Sequence[float], kind: str,
                     views: int, angular_range_deg: float | None = None) -> CTGeometry:
    """A geometry whose detector covers the whole field of view of a volume.

    Views are equispaced over ``angular_range_deg`` without the end point
    (``theta_n = n range / views``). Defaults: 180 deg for parallel, 360 deg for fan and cone.

    * parallel: detector pixel = the smaller in-plane voxel size; columns cover the diagonal of
      the axial field of view; rows = the K slices.
    * fan / cone: DSO = 2.5 x the in-plane field-of-view radius r (fan half-angle 23.6 deg),
      DSD = 2 DSO (magnification 2), detector pixel = magnification x voxel size, columns
      covering the fan that encloses the circle of radius r.
    * cone: rows covering the volume's z extent as magnified at the volume edge nearest to the
      source.

    Args:
        volume_shape: (I, J, K).
        spacing_mm: voxel size (s_i, s_j, s_k) in mm.
        kind: "parallel", "fan" or "cone".
        views: number of projections.
        angular_range_deg: total angular range covered, in degrees.
    """
    if kind not in GEOMETRY_KINDS:
        raise InputError(f"--geometry must be one of {', '.join(GEOMETRY_KINDS)}, got {kind!r}.")
    if int(views) < 1:
        raise InputError(f"The number of views must be at least 1, got {views}.")
    if len(volume_shape) != 3 or len(spacing_mm) != 3:
        raise GeometryError("CT geometries need a 3D volume shape (I, J, K) and spacing.")
    if angular_range_deg is None:
        angular_range_deg = 180.0 if kind == "parallel" else 360.0
    if not (0 < float(angular_range_deg) <= 360.0):
        raise InputError(f"The angular range must be in (0, 360] degrees, "
                         f"got {angular_range_deg}.")
    ni, nj, nk = (int(n) for n in volume_shape)
    si, sj, sk = (float(s) for s in spacing_mm)
    angles = tuple(math.radians(float(angular_range_deg)) * n / int(views)
                   for n in range(int(views)))
    r = _fov_radius((ni, nj), (si, sj), 2)
    du_iso = min(si, sj)
    if kind == "parallel":
        cols = int(math.ceil(2 * r / du_iso)) + 1
        return CTGeometry("parallel", angles, nk, cols, sk, du_iso)
    dso = DEFAULT_SOURCE_DISTANCE_FOV * r
    dsd = DEFAULT_MAGNIFICATION * dso
    mag = dsd / dso
    du = du_iso * mag
    half_width = dsd * r / math.sqrt(dso * dso - r * r)  # fan tangent to the FOV circle
    cols = 2 * int(math.ceil(half_width / du)) + 1
    if kind == "fan":
        return CTGeometry("fan", angles, nk, cols, sk, du, source_isocentre_mm=dso,
                          source_detector_mm=dsd)
    dv = sk * mag
    half_height = (nk + 1) / 2.0 * sk * dsd / (dso - r)
    rows = 2 * int(math.ceil(half_height / dv)) + 1
    return CTGeometry("cone", angles, rows, cols, dv, du, source_isocentre_mm=dso,
                      source_detector_mm=dsd)


# -------------------------------------------------------------------------------------------
# Rays
# -------------------------------------------------------------------------------------------
def ray_lines(geometry: CTGeometry, volume_shape: Sequence[int], spacing_mm: Sequence[float],
              dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
              ) -> tuple[Tensor, Tensor]:
    """Every detector pixel's ray as (point, unit direction) in mm, shapes (V, R, C, 3).

    The point is the source for fan/cone and the detector pixel for parallel beams; for the 2D
    kinds row r lies in slice k = r at ``z = (k - (K - 1) / 2) s_k``.
    """
    src, det, eu, ev = geometry.frames(dtype, device)
    u = torch.as_tensor(geometry.column_positions_mm(), dtype=dtype, device=device)
    if geometry.is_2d:
        nk, sk = int(volume_shape[2]), float(spacing_mm[2])
        z = (torch.arange(nk, dtype=dtype, device=device) - (nk - 1) / 2.0) * sk
        lift = z[None, :, None, None] * ev[:, None, None, :]  # (V, R, 1, 3) move into slice r
        pix = det[:, None, None, :] + u[None, None, :, None] * eu[:, None, None, :] + lift
        if geometry.kind == "parallel":
            d = (-src)[:, None, None, :].expand_as(pix)
            return pix, d.clone()
        s = (src[:, None, None, :] + lift).expand_as(pix)
    else:
        v = torch.as_tensor(geometry.row_positions_mm(), dtype=dtype, device=device)
        pix = (det[:, None, None, :] + u[None, None, :, None] * eu[:, None, None, :]
               + v[None, :, None, None] * ev[:, None, None, :])
        s = src[:, None, None, :].expand_as(pix)
    d = pix - s
    d = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    return s.clone(), d


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


def _available_memory(device: torch.device) -> int | None:
    """Free memory (bytes) where a sparse matrix would live, or None when unknown."""
    try:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            # Blocks PyTorch's caching allocator holds but does not use are free to us too.
            unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            return int(free + unused)
        if device.type == "cpu":
            return _available_host_memory()
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None
    return None


def _available_host_memory() -> int | None:
    """Linux MemAvailable (free + reclaimable cache), capped by a cgroup v2 memory limit."""
    avail: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                used = int(f.read().strip())
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


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
            :data:`SPARSE_MAX_NNZ`).
        sparse_memory_fraction: largest share of the device's free memory the matrices (A, A^T
            and their build) may take (default :data:`SPARSE_MEMORY_FRACTION`).
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
        self.radius_mm = _fov_radius(shape, spacing, dims)
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
        index_bytes = 4 if max(self.sparse_max_nnz, self.geometry.views
                               * self.geometry.detector_cols) < 2**31 - 1 else 8
        value_bytes = torch.empty(0, dtype=dtype).element_size()
        # A and A^T, plus the transpose's sort buffers while building.
        per_nnz = 2 * (value_bytes + index_bytes) + 24
        budget = self.sparse_max_nnz
        free = _available_memory(device)
        if free is not None:
            budget = min(budget, int(self.sparse_memory_fraction * free / per_nnz))
        return budget

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


# -------------------------------------------------------------------------------------------
# Noise and simulation
# -------------------------------------------------------------------------------------------
#: Counts below this floor (after electronic noise) are clipped before the log, as scanners do.
COUNT_FLOOR = 0.5


def add_ct_noise(line_integrals: Tensor, dose_i0: float | None, electronic_sigma: float,
                 generator: torch.Generator, line_integral_sigma: float = 0.0
                 ) -> tuple[Tensor, dict[str, Any]]:
    """Noisy line integrals and a description of the noise model.

    * ``dose_i0`` given: transmitted counts ``N ~ Poisson(I0 exp(-p))`` plus electronic noise
      ``Normal(0, electronic_sigma^2)`` in photon counts, clipped at :data:`COUNT_FLOOR`
      photons (as scanners do before the log), then ``p_noisy = -log(N / I0)``.
    * ``line_integral_sigma`` > 0 (without a dose): Gaussian noise of that standard deviation
      added to the line integrals directly (dimensionless) -- the usual weighted-least-squares
      approximation of the above.
    * neither: noiseless (a copy).

    Raises:
        InputError: for non-positive doses, negative sigmas, electronic noise without a dose,
            or both noise models at once.
    """
    meta: dict[str, Any]
    if electronic_sigma < 0 or line_integral_sigma < 0:
        raise InputError("Noise standard deviations must be >= 0.")
    if dose_i0 is not None:
        if not (math.isfinite(dose_i0) and dose_i0 > 0):
            raise InputError(f"The dose I0 must be a positive number of photons, got {dose_i0}.")
        if line_integral_sigma > 0:
            raise InputError("Choose either Poisson noise (a dose I0) or Gaussian noise on the "
                             "line integrals, not both.")
        expected = float(dose_i0) * torch.exp(-line_integrals.double())
        counts = torch.poisson(expected, generator=generator)
        if electronic_sigma > 0:
            counts = counts + electronic_sigma * torch.randn(
                counts.shape, generator=generator, dtype=counts.dtype, device=counts.device)
        clipped = int((counts < COUNT_FLOOR).sum())
        counts = counts.clamp(min=COUNT_FLOOR)
        noisy = (-torch.log(counts / float(dose_i0))).to(line_integrals.dtype)
        meta = {"model": "poisson", "i0": float(dose_i0),
                "electronic_sigma_counts": float(electronic_sigma), "count_floor": COUNT_FLOOR,
                "clipped_counts": clipped}
        return noisy, meta
    if electronic_sigma > 0:
        raise InputError("Electronic noise is given in photon counts and needs a dose I0; "
                         "for Gaussian noise on the line integrals use line_integral_sigma.")
    if line_integral_sigma > 0:
        noise = torch.randn(line_integrals.shape, generator=generator,
                            dtype=line_integrals.dtype, device=line_integrals.device)
        return line_integrals + line_integral_sigma * noise, {
            "model": "gaussian", "sigma_line_integral": float(line_integral_sigma)}
    return line_integrals.clone(), {"model": "none"}


def simulate_sinogram(volume: Volume, geometry_kind: str, views: int,
                      angular_range_deg: float | None = None, dose_i0: float | None = None,
                      electronic_sigma: float = 0.0, seed: int = 0,
                      device: torch.device | str = "cpu", line_integral_sigma: float = 0.0
                      ) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """Simulate a CT acquisition of an HU volume.

    HU -> mu (:func:`medrecon.intensity.hu_to_mu`, air clipped at 0) -> line integrals with the
    :func:`default_geometry` projector (float32, on ``device``) -> noise (:func:`add_ct_noise`,
    seeded by ``seed`` on the CPU, so the noise does not depend on the device).

    Args:
        volume: the reference in HU (modality CT).
        geometry_kind: "parallel", "fan" or "cone".
        views: number of projections, equispaced over ``angular_range_deg`` (default 180 for
            parallel, 360 for fan and cone).
        dose_i0: incident photons per detector pixel (Poisson noise); None: no Poisson noise.
        electronic_sigma: electronic noise std in photon counts (needs ``dose_i0``).
        seed: noise seed.
        device: where to project.
        line_integral_sigma: Gaussian noise std on the line integrals (without ``dose_i0``).

    Returns:
        (sinogram float32 (views, rows, cols) of line integrals, geometry dict
        (:meth:`CTGeometry.to_dict` plus ``mu_water_per_mm`` and ``effective_energy_kev``),
        noise description dict (model, I0, sigmas, seed)).
    """
    from medrecon.intensity import EFFECTIVE_ENERGY_KEV, MU_WATER_PER_MM, hu_to_mu

    data = np.asarray(volume.data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputError("The reference volume contains NaN or infinite values.")
    if str(volume.units).upper() != "HU" and str(volume.modality).upper() != "CT":
        raise InputError(f"CT simulation needs a volume in HU (modality CT), got modality "
                         f"{volume.modality!r} in {volume.units!r}.")
    geometry = default_geometry(volume.shape, volume.spacing, geometry_kind, views,
                                angular_range_deg)
    dev = torch.device(device)
    op = make_projector(geometry, volume.shape, volume.spacing, device=dev, dtype=torch.float32)
    mu = torch.as_tensor(hu_to_mu(data, MU_WATER_PER_MM), device=dev)
    with torch.no_grad():
        p = op.forward(mu).cpu()
    gen = torch.Generator().manual_seed(int(seed))
    noisy, noise = add_ct_noise(p, dose_i0, float(electronic_sigma), gen,
                                float(line_integral_sigma))
    noise["seed"] = int(seed)
    gdict = geometry.to_dict()
    gdict["mu_water_per_mm"] = MU_WATER_PER_MM
    gdict["effective_energy_kev"] = EFFECTIVE_ENERGY_KEV
    return noisy.numpy().astype(np.float32), gdict, noise


def ct_operator_description(geometry: CTGeometry | dict[str, Any], volume_shape: Sequence[int],
                            spacing_mm: Sequence[float]) -> dict[str, Any]:
    """The measurement file's ``operator`` entry for a CT sinogram (see docs/formats.md).

    ``{"kind": "ct", "geometry": {...CTGeometry.to_dict()...}, "image_shape": [I, J, K],
    "spacing_mm": [s_i, s_j, s_k], "mu_water_per_mm": ..., "effective_energy_kev": ...,
    "data": "line integrals of mu", "projector": "ray-driven trilinear"}``.
    """
    from medrecon.intensity import EFFECTIVE_ENERGY_KEV, MU_WATER_PER_MM

    gdict = geometry.to_dict() if isinstance(geometry, CTGeometry) else dict(geometry)
    return {
        "kind": "ct",
        "geometry": gdict,
        "image_shape": [int(n) for n in volume_shape],
        "spacing_mm": [float(s) for s in spacing_mm],
        "mu_water_per_mm": float(gdict.get("mu_water_per_mm", MU_WATER_PER_MM)),
        "effective_energy_kev": float(gdict.get("effective_energy_kev", EFFECTIVE_ENERGY_KEV)),
        "data": "line integrals of the linear attenuation (dimensionless)",
        "projector": "ray-driven, trilinear/bilinear interpolation, matched adjoint",
    }


# -------------------------------------------------------------------------------------------
# Closed-form projections of ellipsoid phantoms
# -------------------------------------------------------------------------------------------
def analytic_projection(ellipsoids: Sequence[Ellipsoid], geometry: CTGeometry,
                        volume_shape: Sequence[int], spacing_mm: Sequence[float]) -> np.ndarray:
    """Exact line integrals of :mod:`medrecon.phantoms` ellipsoids, shape (V, R, C).

    The phantom's normalised [-1, 1] cube spans the volume's field of view
    (``x_norm = 2 x / (N s)`` per axis, as :func:`medrecon.phantoms.ellipsoid_phantom`
    voxelises it), so ``(x - c)^T M (x - c) <= 1`` with ``M = S R^T diag(1/a^2) R S`` in mm and
    the chord of the line ``p + t d`` is ``2 sqrt(B^2 - A C) / A`` for
    ``A = d^T M d, B = d^T M (p - c), C = (p - c)^T M (p - c) - 1`` (unit d).
    """
    p, d = ray_lines(geometry, volume_shape, spacing_mm)
    p, d = p.numpy(), d.numpy()
    half = np.array([int(n) * float(s) / 2.0 for n, s in zip(volume_shape, spacing_mm,
                                                              strict=True)])
    scale = np.diag(1.0 / half)
    out = np.zeros(p.shape[:-1])
    for e in ellipsoids:
        c, s = math.cos(e.phi), math.sin(e.phi)
        rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        m = scale @ rot.T @ np.diag(1.0 / np.asarray(e.axes) ** 2) @ rot @ scale
        centre = np.asarray(e.centre) * half
        q = p - centre
        a = np.einsum("...i,ij,...j->...", d, m, d)
        b = np.einsum("...i,ij,...j->...", d, m, q)
        cc = np.einsum("...i,ij,...j->...", q, m, q) - 1.0
        disc = np.clip(b * b - a * cc, 0.0, None)
        out += e.value * 2.0 * np.sqrt(disc) / a
    return out


# -------------------------------------------------------------------------------------------
# Shared adjoint-test cases (float64, odd non-square shapes)
# -------------------------------------------------------------------------------------------
_CASE_SHAPE = (13, 11, 5)
_CASE_SPACING = (1.0, 1.3, 2.1)


# The 2D cases use the sparse system matrix (the default); their "-rays" twins the ray-driven
# kernels. Small max_points split both the matrix build and the ray kernels into many chunks.
@register_operator_case("ct-parallel")
def _case_parallel() -> tuple[LinearOperator, bool]:
    g = default_geometry(_CASE_SHAPE, _CASE_SPACING, "parallel", 7, 180.0)
    return CTProjector(g, _CASE_SHAPE, _CASE_SPACING, max_points=5000, method="sparse"), False


@register_operator_case("ct-parallel-rays")
def _case_parallel_rays() -> tuple[LinearOperator, bool]:
    g = default_geometry(_CASE_SHAPE, _CASE_SPACING, "parallel", 7, 180.0)
    return CTProjector(g, _CASE_SHAPE, _CASE_SPACING, max_points=5000, method="rays"), False


@register_operator_case("ct-fan")
def _case_fan() -> tuple[LinearOperator, bool]:
    g = default_geometry(_CASE_SHAPE, _CASE_SPACING, "fan", 7, 360.0)
    return CTProjector(g, _CASE_SHAPE, _CASE_SPACING, max_points=5000, method="sparse"), False


@register_operator_case("ct-fan-rays")
def _case_fan_rays() -> tuple[LinearOperator, bool]:
    g = default_geometry(_CASE_SHAPE, _CASE_SPACING, "fan", 7, 360.0)
    return CTProjector(g, _CASE_SHAPE, _CASE_SPACING, max_points=5000, method="rays"), False


@register_operator_case("ct-cone")
def _case_cone() -> tuple[LinearOperator, bool]:
    g = default_geometry(_CASE_SHAPE, _CASE_SPACING, "cone", 5, 360.0)
    return CTProjector(g, _CASE_SHAPE, _CASE_SPACING, max_points=20000), False


@register_operator_case("ct-cone-vectors")
def _case_cone_vectors() -> tuple[LinearOperator, bool]:
    # A helical-like arbitrary trajectory with a tilted detector.
    vectors = []
    for n in range(4):
        th = 0.9 * n
        src = (60 * math.cos(th), 60 * math.sin(th), -3.0 + 2.0 * n)
        det = (-50 * math.cos(th), -50 * math.sin(th), 1.0 - n)
        eu = (-math.sin(th), math.cos(th), 0.1)
        ev = (0.05, 0.0, 1.0)
        vectors.append((*src, *det, *eu, *ev))
    g = CTGeometry("cone", tuple(0.9 * n for n in range(4)), 9, 23, 2.3, 2.1,
                   vectors=tuple(vectors))
    return CTProjector(g, _CASE_SHAPE, _CASE_SPACING), False
