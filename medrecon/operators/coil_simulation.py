"""Simulated coil sensitivity maps for synthetic data (estimation from k-space: :mod:`.coils`).

Maps are complex tensors ``(C, I, J, K)`` on the image grid of :mod:`medrecon.operators.mri`,
normalised so that ``sum_c |S_c|^2 = 1`` everywhere (zero outside an optional support).

Simulation (:func:`simulate_coil_maps`)
    ``"biot-savart"`` (default): circular receive loops placed on a cylinder around the object,
    axis along image axis 2 (the usual head/knee array around B0), one ring of up to 8 loops,
    more rings stacked along the axis for more coils. The quasi-static field of each loop is
    integrated with the Biot-Savart law on a coarse grid, the receive sensitivity is the
    transverse field ``B_x - i B_y`` (axes 0, 1), and the result is interpolated trilinearly to
    the image grid (the fields are smooth inside the field of view).
    ``"birdcage"``: the analytic model of SigPy's ``birdcage_maps`` -- ``exp(i phi_c) / |r - r_c|``
    around a ring of point coils, with each coil's own azimuthal phase.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from medrecon.errors import GeometryError, InputError
from medrecon.operators.coils import rss

__all__ = ["simulate_coil_maps"]


# ----------------------------------------------------------------------------------------------


def _coarse_axes(shape: Sequence[int], spacing: Sequence[float],
                 max_points: int) -> list[np.ndarray]:
    """Physical coordinates (centre voxel n // 2 at 0) of a coarse grid spanning the image."""
    out = []
    for n, s in zip(shape, spacing, strict=True):
        m = min(n, max_points)
        out.append(np.linspace(-(n // 2), n - 1 - n // 2, m) * s)
    return out


def _biot_savart(points: np.ndarray, centre: np.ndarray, normal: np.ndarray, radius: float,
                 segments: int = 48) -> np.ndarray:
    """Magnetic field (up to a constant) of a unit-current circular loop at ``points`` (P, 3)."""
    # Two unit vectors spanning the loop plane.
    helper = np.array([0.0, 0.0, 1.0]) if abs(normal[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(normal, helper)
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    t = (np.arange(segments) + 0.5) * 2 * np.pi / segments
    mid = centre + radius * (np.cos(t)[:, None] * u + np.sin(t)[:, None] * v)  # (S, 3)
    dl = (2 * np.pi * radius / segments) * (-np.sin(t)[:, None] * u + np.cos(t)[:, None] * v)
    field = np.zeros_like(points)
    for m, d in zip(mid, dl, strict=True):
        r = points - m
        dist3 = np.maximum(np.sum(r * r, axis=1), (0.05 * radius) ** 2) ** 1.5
        field += np.cross(d, r) / dist3[:, None]
    return field


def _ring_layout(n_coils: int, per_ring: int = 8) -> list[tuple[int, int, int]]:
    """(ring index, position in ring, coils in that ring) for every coil."""
    n_rings = math.ceil(n_coils / per_ring)
    out = []
    for c in range(n_coils):
        ring = c * n_rings // n_coils
        members = [d for d in range(n_coils) if d * n_rings // n_coils == ring]
        out.append((ring, members.index(c), len(members)))
    return out


def simulate_coil_maps(
    shape: Sequence[int],
    n_coils: int,
    model: str = "biot-savart",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    coil_distance: float = 1.2,
    support: torch.Tensor | np.ndarray | None = None,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Simulated receive sensitivities ``(C, I, J, K)`` with ``sum_c |S_c|^2 = 1``.

    Parameters
    ----------
    shape:
        Image shape ``(I, J, K)``.
    n_coils:
        Number of receive coils ``C`` (>= 1).
    model:
        ``"biot-savart"`` (loops on a cylinder, physical) or ``"birdcage"`` (SigPy's analytic
        model); see the module docstring. Coils ring around image axis 2.
    spacing:
        Voxel size in mm along (I, J, K), so that anisotropic voxels see round coils.
    coil_distance:
        Radius of the coil cylinder relative to the half field of view (largest of axes 0, 1).
    support:
        Optional boolean object mask broadcastable to ``(I, J, K)``; maps are zeroed outside it.
    dtype, device:
        Complex dtype and device of the result.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise GeometryError(f"Coil maps need a 3D image shape, got {shape}.")
    if int(n_coils) < 1:
        raise InputError(f"The number of coils must be at least 1, got {n_coils}.")
    if coil_distance <= 0:
        raise InputError(f"coil_distance must be positive, got {coil_distance}.")
    n_coils = int(n_coils)
    spacing = tuple(float(s) for s in spacing)
    axes = _coarse_axes(shape, spacing, max_points=32)
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (a, b, c, 3)
    pts = grid.reshape(-1, 3)
    half = max(shape[0] * spacing[0], shape[1] * spacing[1]) / 2
    half_z = shape[2] * spacing[2] / 2
    ring_r = coil_distance * half
    layout = _ring_layout(n_coils)
    n_rings = layout[-1][0] + 1
    coarse = np.zeros((n_coils, pts.shape[0]), dtype=np.complex128)
    for c, (ring, pos, members) in enumerate(layout):
        # Rings are staggered in angle so stacked coils do not sit on top of one another.
        angle = 2 * np.pi * (pos + 0.5 * ring) / members
        z = (ring - (n_rings - 1) / 2) * (2 * half_z / max(n_rings, 1)) * 0.9
        centre = np.array([ring_r * np.cos(angle), ring_r * np.sin(angle), z])
        if model == "biot-savart":
            # Loops slightly wider than their share of the ring (neighbours overlap, as in real
            # arrays), and no taller than a ring's share of the axis.
            loop_r = min(0.55 * 2 * np.pi * ring_r / max(members, 3) / 2 * 2, 0.7 * ring_r)
            if n_rings > 1:
                loop_r = min(loop_r, 0.55 * 2 * half_z / n_rings)
            normal = -centre.copy()
            normal[2] = 0.0
            normal /= np.linalg.norm(normal)
            b = _biot_savart(pts, centre, normal, loop_r)
            coarse[c] = b[:, 0] - 1j * b[:, 1]
        elif model == "birdcage":
            d = pts - centre
            r = np.sqrt(np.sum(d * d, axis=1))
            phi = np.arctan2(d[:, 0], -d[:, 1]) - 2 * np.pi * (pos + ring) / members
            coarse[c] = np.exp(1j * phi) / np.maximum(r, 1e-3 * ring_r)
        else:
            raise InputError(f"Unknown coil model {model!r}; choose 'biot-savart' or 'birdcage'.")
    coarse_t = torch.from_numpy(coarse.reshape(n_coils, *grid.shape[:3]))
    # Smooth fields: trilinear interpolation from the coarse grid (corners aligned).
    planes = torch.view_as_real(coarse_t).permute(0, 4, 1, 2, 3).reshape(1, 2 * n_coils,
                                                                        *grid.shape[:3])
    fine = torch.nn.functional.interpolate(planes, size=shape, mode="trilinear",
                                           align_corners=True)
    fine = fine.reshape(n_coils, 2, *shape).permute(0, 2, 3, 4, 1).contiguous()
    maps = torch.view_as_complex(fine)
    maps = maps / rss(maps).clamp_min(1e-30)
    if support is not None:
        maps = maps * torch.as_tensor(support, dtype=torch.bool)
    return maps.to(device=device, dtype=dtype)
