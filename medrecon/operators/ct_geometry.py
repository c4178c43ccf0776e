"""CT acquisition geometry: the frame, the detector, default geometries and every pixel's ray.

:class:`CTGeometry` describes where the source and detector are for every view (parallel, fan or
cone beam, or arbitrary per-view vectors); :func:`default_geometry` chooses one whose detector
covers a volume's field of view; :func:`ray_lines` gives each detector pixel's ray. The
projector built on a geometry is :mod:`medrecon.operators.ct_projector`.

Frames and units
----------------
Geometries work in the volume's own voxel frame scaled to millimetres and centred on the
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
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medrecon.errors import GeometryError, InputError

__all__ = [
    "GEOMETRY_KINDS",
    "CTGeometry",
    "default_geometry",
    "fov_radius",
    "ray_lines",
]

Tensor = torch.Tensor
GEOMETRY_KINDS: tuple[str, ...] = ("parallel", "fan", "cone")
#: Magnification DSD / DSO of the default fan and cone geometries (clinical scanners: ~1.8-2).
DEFAULT_MAGNIFICATION = 2.0
#: Source-isocentre distance of the default geometries in units of the field-of-view radius
#: (fan half-angle asin(1/2.5) = 23.6 deg, close to a clinical scanner's ~25 deg).
DEFAULT_SOURCE_DISTANCE_FOV = 2.5


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


def fov_radius(shape: Sequence[int], spacing: Sequence[float], dims: int) -> float:
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
    r = fov_radius((ni, nj), (si, sj), 2)
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
