"""Analytic ellipsoid phantoms (3D Shepp-Logan after Kak & Slaney, with Toft's contrast).

Each ellipsoid is (value, centre (x, y, z), semi-axes (a, b, c), rotation phi about z in radians)
in normalised coordinates where the field of view spans [-1, 1] along every axis. Voxelised
phantoms are used by the quick start and by tests; :func:`analytic_projection` gives their exact
CT line integrals, the closed-form reference the CT projectors are tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from medrecon.io.volume import Volume

if TYPE_CHECKING:
    from medrecon.operators.ct_geometry import CTGeometry


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid adding ``value`` inside; coordinates normalised to the [-1, 1] cube."""

    value: float
    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    phi: float = 0.0  # rotation about the z axis, radians


# Modified 3D Shepp-Logan (higher contrast, as in Toft 1996 / scikit-image's 2D version).
SHEPP_LOGAN_3D: tuple[Ellipsoid, ...] = (
    Ellipsoid(1.0, (0.0, 0.0, 0.0), (0.69, 0.92, 0.81)),
    Ellipsoid(-0.8, (0.0, -0.0184, 0.0), (0.6624, 0.874, 0.78)),
    Ellipsoid(-0.2, (0.22, 0.0, 0.0), (0.11, 0.31, 0.22), -np.pi / 10),
    Ellipsoid(-0.2, (-0.22, 0.0, 0.0), (0.16, 0.41, 0.28), np.pi / 10),
    Ellipsoid(0.1, (0.0, 0.35, -0.15), (0.21, 0.25, 0.41)),
    Ellipsoid(0.1, (0.0, 0.1, 0.25), (0.046, 0.046, 0.05)),
    Ellipsoid(0.1, (0.0, -0.1, 0.25), (0.046, 0.046, 0.05)),
    Ellipsoid(0.1, (-0.08, -0.605, 0.0), (0.046, 0.023, 0.05)),
    Ellipsoid(0.1, (0.0, -0.605, 0.0), (0.023, 0.023, 0.02)),
    Ellipsoid(0.1, (0.06, -0.605, 0.0), (0.023, 0.046, 0.02)),
)


def ellipsoid_phantom(shape: tuple[int, int, int],
                      ellipsoids: tuple[Ellipsoid, ...] = SHEPP_LOGAN_3D,
                      oversample: int = 1) -> np.ndarray:
    """Voxelise ``ellipsoids`` on a grid of ``shape`` (I, J, K) spanning [-1, 1]^3.

    Voxel centres sit at ``-1 + (2 n + 1) / N``. ``oversample`` > 1 averages sub-voxel samples,
    which approximates the partial-volume (area) integral.
    """
    out = np.zeros(shape, dtype=np.float64)
    s = int(oversample)
    axes = []
    for n in shape:
        fine = (np.arange(n * s) + 0.5) / (n * s) * 2.0 - 1.0
        axes.append(fine)
    x, y, z = np.meshgrid(*axes, indexing="ij")
    fine_img = np.zeros(x.shape, dtype=np.float64)
    for e in ellipsoids:
        c, si = np.cos(e.phi), np.sin(e.phi)
        xr = (x - e.centre[0]) * c + (y - e.centre[1]) * si
        yr = -(x - e.centre[0]) * si + (y - e.centre[1]) * c
        zr = z - e.centre[2]
        inside = (xr / e.axes[0]) ** 2 + (yr / e.axes[1]) ** 2 + (zr / e.axes[2]) ** 2 <= 1.0
        fine_img[inside] += e.value
    if s == 1:
        out = fine_img
    else:
        out = fine_img.reshape(shape[0], s, shape[1], s, shape[2], s).mean(axis=(1, 3, 5))
    # Overlapping ellipsoids that cancel leave float round-off (~1e-17); make those exact zeros.
    out[np.abs(out) < 1e-9] = 0.0
    return out.astype(np.float32)


def shepp_logan_3d(shape: tuple[int, int, int] = (64, 64, 64)) -> np.ndarray:
    """The modified 3D Shepp-Logan phantom on a grid of ``shape``, values in [0, 1]."""
    return ellipsoid_phantom(shape, SHEPP_LOGAN_3D)


def shepp_logan_volume(size: int = 64, spacing_mm: float = 2.0, modality: str = "MR") -> Volume:
    """The phantom as a :class:`Volume`: ``size``^3 voxels of ``spacing_mm``, centred at the
    origin, voxel axes in DICOM's LPS order. MR values lie in [0, 1]; CT maps phantom values
    0 (air) .. 1 (skull) linearly onto -1000 .. +1000 HU, so soft tissue sits near 0 HU."""
    data = shepp_logan_3d((size, size, size))
    units = "a.u."
    if modality == "CT":
        data = np.clip(data * 2000.0 - 1000.0, -1000.0, 3000.0)
        units = "HU"
    affine = np.diag([-spacing_mm, -spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ np.full(3, (size - 1) / 2.0)
    return Volume(data, affine, modality=modality, units=units,
                  series_description="Shepp-Logan phantom")


def analytic_projection(ellipsoids: Sequence[Ellipsoid], geometry: CTGeometry,
                        volume_shape: Sequence[int], spacing_mm: Sequence[float]) -> np.ndarray:
    """Exact line integrals of ellipsoids along every ray of ``geometry``, shape (V, R, C).

    The phantom's normalised [-1, 1] cube spans the volume's field of view
    (``x_norm = 2 x / (N s)`` per axis, as :func:`ellipsoid_phantom` voxelises it), so
    ``(x - c)^T M (x - c) <= 1`` with ``M = S R^T diag(1/a^2) R S`` in mm and the chord of the line ``p + t d`` is ``2 sqrt(B^2 - A C) / A`` for
    ``A = d^T M d, B = d^T M (p - c), C = (p - c)^T M (p - c) - 1`` (unit d).
    """
    from medrecon.operators.ct_geometry import ray_lines

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
