"""The :class:`Volume`: a 3D image with its geometry and metadata.

Conventions
-----------
``data[i, j, k]`` is the voxel at index ``(i, j, k)``; ``affine @ (i, j, k, 1)`` is its centre in
RAS+ millimetres, as in NIfTI and nibabel: world x, y, z increase towards the patient's Right,
Anterior and Superior. An orientation code such as ``"LPS"`` names the world direction each
voxel axis increases towards.

For DICOM input the voxel axes are (column, row, slice): ``i`` runs along a row (the first
direction cosine of ImageOrientationPatient), ``j`` down the columns, ``k`` along the slice
normal in the order of increasing position. DICOM's patient frame is LPS+, so the affine is the
LPS affine with its first two rows negated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

#: DICOM's LPS+ patient frame -> RAS+ (x and y negated); its own inverse, so also RAS+ -> LPS+.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def clean_text(text: object) -> str:
    """``text`` as printable one-line text: NUL and other control characters become spaces.

    Descriptions read from files may hold them (an FSL NIfTI description holds NUL bytes),
    and HDF5 strings and DICOM text cannot.
    """
    return "".join(c if c.isprintable() else " " for c in str(text or "")).strip()


def check_affine(affine: Any, source: str) -> None:
    """Refuse a voxel-to-world matrix that places no voxel anywhere sensible.

    A 4x4 affine whose 3x3 part is singular (a zero voxel size, two parallel axes) or holds
    NaN/Inf cannot be inverted, so nothing read from ``source`` could be written back, compared
    or projected. Raises :class:`~medrecon.errors.InputError` naming ``source``.
    """
    from medrecon.errors import InputError

    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise InputError(f"{source} has an invalid affine (not a finite 4x4 matrix); "
                         f"fix its geometry in the tool that wrote it.")
    lin = a[:3, :3]
    sizes = np.linalg.norm(lin, axis=0)
    # Relative conditioning: a voxel axis of zero length or two axes (nearly) parallel.
    if np.min(sizes) <= 0 or abs(np.linalg.det(lin)) <= 1e-6 * float(np.prod(sizes)):
        raise InputError(f"{source} has a zero or singular affine (voxel sizes "
                         f"{', '.join(f'{x:g}' for x in sizes)} mm); fix its geometry in the "
                         f"tool that wrote it.")


@dataclass
class Volume:
    """A 3D image: float32 ``data`` of shape (I, J, K), a 4x4 ``affine`` (voxel -> RAS+ mm).

    Attributes:
        data: float32 array, shape (I, J, K).
        affine: float64 4x4 array mapping voxel indices to RAS+ millimetres.
        modality: DICOM-style modality code: "CT", "MR", or "OT" when unknown.
        units: intensity units, e.g. "HU" for CT, "a.u." for MR magnitude.
        series_description: free text shown to users (control characters become spaces).
        dicom_header: a pydicom Dataset of the source series' first slice (pixel data removed),
            kept so that outputs can be written back as a DICOM series derived from the source.
        meta: any further key-value metadata (source path, series UID, ...).
    """

    data: np.ndarray
    affine: np.ndarray
    modality: str = "OT"
    units: str = "a.u."
    series_description: str = ""
    dicom_header: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data, dtype=np.float32)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.data.ndim != 3:
            raise ValueError(f"Volume data must be 3D, got shape {self.data.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got shape {self.affine.shape}")
        self.series_description = clean_text(self.series_description)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (i, j, k)."""
        sp = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(sp[0]), float(sp[1]), float(sp[2]))

    @property
    def orientation(self) -> str:
        """Three-letter RAS orientation code of the voxel axes, e.g. "LPS" or "RAS"."""
        import nibabel as nib

        return "".join(nib.orientations.aff2axcodes(self.affine))

    def with_data(self, data: np.ndarray, **changes: Any) -> Volume:
        """A copy with new voxel values of the same shape and the same geometry."""
        data = np.asarray(data, dtype=np.float32)
        if data.shape != self.data.shape:
            raise ValueError(f"new data shape {data.shape} != volume shape {self.data.shape}")
        return replace(self, data=data, meta=copy.deepcopy(self.meta), **changes)

    def reoriented_like(self, other: Volume, atol_mm: float = 1e-3) -> Volume | None:
        """This volume on ``other``'s grid, when both grids are the same voxel centres with the
        axes in another order or direction (e.g. LAS and LAI after a DICOM round trip).

        The voxel-index map ``n = inv(other.affine) @ self.affine`` must be a signed
        permutation (each axis of ``self`` runs along one axis of ``other``, forwards or
        backwards) that maps the index box onto the index box; the affines then agree within
        ``atol_mm`` at every voxel. The data are transposed and flipped, not resampled.

        Returns:
            A copy with ``other``'s affine and the reordered data (shape ``other.shape``), or
            None when the grids are not the same set of voxels.
        """
        try:
            n = np.linalg.solve(other.affine, self.affine)
        except np.linalg.LinAlgError:
            return None
        signs = np.round(n[:3, :3])
        if not (np.all(np.abs(signs).sum(axis=0) == 1) and np.all(np.abs(signs).sum(axis=1) == 1)):
            return None
        perm = [int(np.flatnonzero(signs[a])[0]) for a in range(3)]  # other axis a <- self axis
        index_map = np.eye(4)
        index_map[:3, :3] = signs
        index_map[:3, 3] = np.round(n[:3, 3])
        data = np.transpose(self.data, perm)
        if data.shape != other.data.shape:
            return None
        for a in range(3):
            start = 0 if signs[a, perm[a]] > 0 else other.shape[a] - 1
            if index_map[a, 3] != start:
                return None  # the index boxes do not coincide: a shifted or partial overlap
            if signs[a, perm[a]] < 0:
                data = np.flip(data, axis=a)
        if np.max(np.abs(other.affine @ index_map - self.affine)) > atol_mm:
            return None
        return replace(self, data=np.ascontiguousarray(data), affine=other.affine.copy(),
                       meta=copy.deepcopy(self.meta))

    def same_geometry(self, other: Volume, atol_mm: float = 1e-3) -> bool:
        """True when shapes match and affines agree within ``atol_mm``."""
        return self.shape == other.shape and bool(
            np.allclose(self.affine, other.affine, atol=atol_mm)
        )
