"""Analytic CT reconstruction: filtered backprojection (parallel, fan) and FDK (cone).

Pure functions of a sinogram (line integrals, (views, detector rows, detector columns)) and a
:class:`~medrecon.operators.ct_geometry.CTGeometry`, returning the linear attenuation mu in 1/mm
on a given grid; the registered methods that wrap them (``fbp``, ``fdk``) and the TV warm start
live in :mod:`medrecon.recon.ct`. After Kak & Slaney, *Principles of Computerized Tomographic
Imaging*, ch. 3::

    parallel:  mu(x) = sum_v w_v  (p_v * h)(x . e_u)
    fan/cone:  mu(x) = sum_v w_v  r_v(gamma) U^-2 ((c p_v) * h)(u'(x), v'(x))

with ``h`` the ramp filter (Ram-Lak, optionally apodised by a Shepp-Logan, cosine, Hamming or
Hann window), ``w_v`` the angular quadrature weight of view v, ``U = (DSO - x . e_s) / DSO``,
``(u', v')`` the voxel's detector coordinates scaled to the isocentre, ``c = DSO /
sqrt(DSO^2 + u'^2 + v'^2)`` the cosine pre-weight (FDK: Feldkamp, Davis & Kress 1984), and
``r_v`` the redundancy weight: 1/2 for a full 360 deg scan, Parker's weights for a short scan
of at least 180 deg plus the fan angle. The backprojection is voxel-driven (linear detector
interpolation), not the ray-driven adjoint; the scaling makes a uniform water cylinder come back
at 0 HU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.operators.ct_geometry import CTGeometry
from medrecon.operators.functional.projectors import sample_detector_2d, sample_detector_3d

Tensor = torch.Tensor

__all__ = [
    "FILTERS",
    "analytic_reconstruction",
    "fbp",
    "fdk",
    "filter_name",
    "filter_sinogram",
    "ramp_filter",
]

#: Apodisation windows of the ramp filter, as functions of f in cycles/sample (|f| <= 1/2).
FILTERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ram-lak": lambda f: np.ones_like(f),
    "shepp-logan": lambda f: np.sinc(f),  # sin(pi f) / (pi f): 2/pi at Nyquist
    "cosine": lambda f: np.cos(np.pi * f),
    "hamming": lambda f: 0.54 + 0.46 * np.cos(2 * np.pi * f),
    "hann": lambda f: 0.5 + 0.5 * np.cos(2 * np.pi * f),
}
_FILTER_ALIASES = {"ramp": "ram-lak", "ramlak": "ram-lak", "ram_lak": "ram-lak",
                   "shepp_logan": "shepp-logan", "shepplogan": "shepp-logan", "hanning": "hann"}


def filter_name(name: str) -> str:
    """The :data:`FILTERS` key of a window name or alias (case and spaces ignored); an
    :class:`~medrecon.errors.InputError` naming the choices for an unknown one."""
    key = str(name).strip().lower()
    key = _FILTER_ALIASES.get(key, key)
    if key not in FILTERS:
        raise InputError(f"Unknown FBP filter {name!r}; choose one of: {', '.join(FILTERS)}.")
    return key


def ramp_filter(n: int, spacing: float, window: str = "ram-lak") -> np.ndarray:
    """Frequency response (length P, real) of the discrete ramp filter for n detector samples.

    The spatial Ram-Lak kernel of Kak & Slaney (eq. 3.61): ``h[0] = 1 / (4 tau^2)``,
    ``h[k] = -1 / (pi k tau)^2`` for odd k, 0 for even k != 0 (``tau`` = ``spacing`` in mm),
    zero-padded to P >= 2 n (no circular wrap-around), transformed, times ``tau`` (the
    convolution integral's measure) and the apodisation window. P is a power of two.
    """
    p = 1 << int(math.ceil(math.log2(max(2 * n, 2))))
    k = np.arange(p)
    k = np.where(k <= p // 2, k, k - p)  # circular lags
    h = np.zeros(p)
    h[0] = 1.0 / (4.0 * spacing**2)
    odd = (k % 2) != 0
    h[odd] = -1.0 / (np.pi * k[odd] * spacing) ** 2
    resp = np.real(np.fft.fft(h)) * spacing
    return resp * FILTERS[filter_name(window)](np.fft.fftfreq(p))


def filter_sinogram(sino: Tensor, spacing: float, window: str = "ram-lak") -> Tensor:
    """Ramp-filter every detector row along the column axis (last dimension)."""
    n = sino.shape[-1]
    resp = torch.as_tensor(ramp_filter(n, spacing, window), dtype=sino.dtype, device=sino.device)
    spec = torch.fft.rfft(sino, n=resp.numel(), dim=-1) * resp[: resp.numel() // 2 + 1]
    return torch.fft.irfft(spec, n=resp.numel(), dim=-1)[..., :n]


# -------------------------------------------------------------------------------------------
# Angular weights
# -------------------------------------------------------------------------------------------
def _angular_weights(angles: np.ndarray) -> tuple[np.ndarray, float]:
    """Quadrature weights d(theta) per view and the total angular coverage (rad).

    Views are treated as samples of a scan covering ``[theta_0, theta_last + d_last]``; each
    gets half the gap to each neighbour (in scan order), the ends the adjacent full gap.
    """
    v = len(angles)
    if v == 1:
        return np.array([math.pi]), math.pi
    order = np.argsort(angles)
    a = np.asarray(angles, dtype=np.float64)[order]
    gaps = np.diff(a)
    w = np.empty(v)
    w[1:-1] = (gaps[:-1] + gaps[1:]) / 2
    w[0], w[-1] = gaps[0], gaps[-1]
    out = np.empty(v)
    out[order] = w
    return out, float(w.sum())


def _parallel_redundancy(angles: np.ndarray, coverage: float) -> np.ndarray:
    """Per-view weights making every direction (mod pi) count once."""
    if coverage >= 2 * math.pi - 1e-6:
        return np.full(len(angles), math.pi / coverage)
    if coverage <= math.pi + 1e-6:
        return np.ones(len(angles))
    # Between pi and 2 pi: directions in the overlap (first and last coverage - pi) are seen
    # twice and get half weight.
    rel = np.asarray(angles) - float(np.min(angles))
    overlap = coverage - math.pi
    twice = (rel < overlap) | (rel >= math.pi)
    return np.where(twice, 0.5, 1.0)


def _parker_weights(beta: Tensor, gamma: Tensor, delta: float) -> Tensor:
    """Parker (1982) short-scan weights for scan angle ``beta`` in [0, pi + 2 delta].

    ``gamma`` is the fan angle of the ray in Parker's sign convention (conjugate ray at
    ``beta + pi + 2 gamma``); needs ``delta >= max |gamma|``.
    """
    w = torch.ones_like(gamma * beta)
    b = beta.expand_as(w)
    g = gamma.expand_as(w)
    rise = b < 2 * (delta - g)
    fall = b > math.pi - 2 * g
    w = torch.where(rise, torch.sin(math.pi / 4 * b / (delta - g).clamp(min=1e-12)) ** 2, w)
    w = torch.where(fall, torch.sin(math.pi / 4 * (math.pi + 2 * delta - b)
                                    / (delta + g).clamp(min=1e-12)) ** 2, w)
    return w


# -------------------------------------------------------------------------------------------
# FBP / FDK
# -------------------------------------------------------------------------------------------
def _voxel_coords(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                  dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    axes = [(torch.arange(n, dtype=dtype, device=device) - (n - 1) / 2.0) * s
            for n, s in zip(shape, spacing, strict=True)]
    return axes[0], axes[1], axes[2]


def fbp(sino: Tensor, geometry: CTGeometry, volume_shape: tuple[int, int, int],
        spacing_mm: tuple[float, float, float], window: str = "ram-lak",
        max_elements: int = 2**24) -> Tensor:
    """Filtered backprojection for parallel and (flat-detector) fan-beam sinograms.

    Args:
        sino: (V, K, C) line integrals (rows = the K slices).
        geometry: a "parallel" or "fan" geometry without per-view vectors.
        volume_shape, spacing_mm: the output grid.
        window: ramp apodisation, one of :data:`FILTERS`.
        max_elements: bound on (views x voxels) handled at once.

    Returns:
        mu in 1/mm, shape (I, J, K).
    """
    if geometry.kind not in ("parallel", "fan"):
        raise InputError(f"FBP handles parallel and fan-beam data; use FDK for "
                         f"{geometry.kind}-beam data.")
    window = filter_name(window)
    ni, nj, nk = volume_shape
    dtype, device = sino.dtype, sino.device
    angles = np.asarray(geometry.angles, dtype=np.float64)
    dtheta, coverage = _angular_weights(angles)
    x, y, _ = _voxel_coords(volume_shape, spacing_mm, dtype, device)
    xx, yy = torch.meshgrid(x, y, indexing="ij")
    u_det = torch.as_tensor(geometry.column_positions_mm(), dtype=dtype, device=device)
    ncols = geometry.detector_cols
    th = torch.as_tensor(angles, dtype=dtype, device=device)
    cos, sin = torch.cos(th), torch.sin(th)
    out = torch.zeros((nk, ni, nj), dtype=dtype, device=device)
    if geometry.kind == "parallel":
        w = torch.as_tensor(dtheta * _parallel_redundancy(angles, coverage), dtype=dtype,
                            device=device)
        q = filter_sinogram(sino, geometry.pixel_cols_mm, window)
        for a, b in _view_chunks(len(angles), ni * nj * (nk + 2), max_elements):
            u = -xx[None] * sin[a:b, None, None] + yy[None] * cos[a:b, None, None]
            idx = (u - geometry.offset_cols_mm) / geometry.pixel_cols_mm + (ncols - 1) / 2.0
            vals = sample_detector_2d(q[a:b].contiguous(), idx)  # (Vc, K, I, J)
            out += torch.einsum("v,vkij->kij", w[a:b], vals)
        return out.permute(1, 2, 0).contiguous()
    dso = float(geometry.source_isocentre_mm)  # type: ignore[arg-type]
    dsd = float(geometry.source_detector_mm)  # type: ignore[arg-type]
    scale = dso / dsd  # detector -> isocentre plane
    u_iso = u_det * scale
    pre = dso / torch.sqrt(dso**2 + u_iso**2)
    # Redundancy weights vary along the detector, so they go on before the ramp filter.
    redundancy = _fan_redundancy(geometry, angles, coverage, u_iso, dso, dtype, device)
    q = filter_sinogram(sino * (pre * redundancy)[:, None, :], geometry.pixel_cols_mm * scale,
                        window)
    w = torch.as_tensor(dtheta, dtype=dtype, device=device)
    for a, b in _view_chunks(len(angles), ni * nj * (nk + 3), max_elements):
        s = xx[None] * cos[a:b, None, None] + yy[None] * sin[a:b, None, None]
        t = -xx[None] * sin[a:b, None, None] + yy[None] * cos[a:b, None, None]
        big_u = (dso - s) / dso
        u = t / big_u / scale  # on the detector, mm
        idx = (u - geometry.offset_cols_mm) / geometry.pixel_cols_mm + (ncols - 1) / 2.0
        vals = sample_detector_2d(q[a:b].contiguous(), idx)  # (Vc, K, I, J)
        out += torch.einsum("v,vij,vkij->kij", w[a:b], 1.0 / big_u**2, vals)
    return out.permute(1, 2, 0).contiguous()


def _view_chunks(views: int, per_view: int, max_elements: int) -> list[tuple[int, int]]:
    n = max(1, int(max_elements) // max(1, per_view))
    return [(a, min(a + n, views)) for a in range(0, views, n)]


def _fan_redundancy(geometry: CTGeometry, angles: np.ndarray, coverage: float, u_iso: Tensor,
                    dso: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(V, C) redundancy weights of a divergent-beam scan: 1/2 for 360 deg, else Parker."""
    v = len(angles)
    if coverage >= 2 * math.pi - 1e-6:
        return torch.full((v, u_iso.numel()), math.pi / coverage, dtype=dtype, device=device)
    gamma_max = float(torch.max(torch.abs(torch.atan(u_iso / dso))))
    delta = (coverage - math.pi) / 2.0
    if delta < gamma_max - 1e-9:
        raise InputError(
            f"Fan- and cone-beam FBP needs a scan of at least 180 deg plus the fan angle "
            f"({math.degrees(math.pi + 2 * gamma_max):.1f} deg) but these views cover "
            f"{math.degrees(coverage):.1f} deg; use sirt, cgls or tv instead.")
    start = float(np.min(angles))
    # Column u is at fan angle atan(u / DSO) in our frame; Parker's convention has the
    # conjugate ray at beta + pi + 2 gamma, which is our -atan(u / DSO).
    gamma = -torch.atan(u_iso / dso)[None, :]
    beta = torch.as_tensor(np.asarray(angles) - start, dtype=dtype, device=device)[:, None]
    return _parker_weights(beta, gamma, delta)


def fdk(sino: Tensor, geometry: CTGeometry, volume_shape: tuple[int, int, int],
        spacing_mm: tuple[float, float, float], window: str = "ram-lak",
        max_elements: int = 2**24) -> Tensor:
    """Feldkamp-Davis-Kress reconstruction of a circular cone-beam scan (flat detector).

    Args:
        sino: (V, R, C) line integrals.
        geometry: a circular "cone" geometry (no per-view vectors).

    Returns:
        mu in 1/mm, shape (I, J, K). Exact in the central plane; the usual cone-angle
        approximations elsewhere.
    """
    if geometry.kind != "cone":
        raise InputError(f"FDK reconstructs cone-beam data; use FBP for {geometry.kind}-beam "
                         f"data.")
    if geometry.vectors is not None:
        raise InputError("FDK needs a circular orbit; reconstruct arbitrary per-view "
                         "geometries with sirt, cgls or tv.")
    window = filter_name(window)
    ni, nj, nk = volume_shape
    dtype, device = sino.dtype, sino.device
    angles = np.asarray(geometry.angles, dtype=np.float64)
    dtheta, coverage = _angular_weights(angles)
    dso = float(geometry.source_isocentre_mm)  # type: ignore[arg-type]
    dsd = float(geometry.source_detector_mm)  # type: ignore[arg-type]
    scale = dso / dsd
    u_iso = torch.as_tensor(geometry.column_positions_mm(), dtype=dtype, device=device) * scale
    v_iso = torch.as_tensor(geometry.row_positions_mm(), dtype=dtype, device=device) * scale
    pre = dso / torch.sqrt(dso**2 + u_iso[None, :] ** 2 + v_iso[:, None] ** 2)  # (R, C)
    redundancy = _fan_redundancy(geometry, angles, coverage, u_iso, dso, dtype, device)
    q = filter_sinogram(sino * pre * redundancy[:, None, :], geometry.pixel_cols_mm * scale,
                        window)
    w = torch.as_tensor(dtheta, dtype=dtype, device=device)
    x, y, z = _voxel_coords(volume_shape, spacing_mm, dtype, device)
    xx, yy = torch.meshgrid(x, y, indexing="ij")
    th = torch.as_tensor(angles, dtype=dtype, device=device)
    cos, sin = torch.cos(th), torch.sin(th)
    out = torch.zeros(volume_shape, dtype=dtype, device=device)
    nrows, ncols = geometry.detector_rows, geometry.detector_cols
    for a, b in _view_chunks(len(angles), ni * nj * nk * 4, max_elements):
        s = xx[None] * cos[a:b, None, None] + yy[None] * sin[a:b, None, None]
        t = -xx[None] * sin[a:b, None, None] + yy[None] * cos[a:b, None, None]
        big_u = (dso - s) / dso  # (Vc, I, J)
        u = (t / big_u / scale)[..., None].expand(-1, -1, -1, nk)
        v = z[None, None, None, :] / big_u[..., None] / scale
        ui = (u - geometry.offset_cols_mm) / geometry.pixel_cols_mm + (ncols - 1) / 2.0
        vi = (v - geometry.offset_rows_mm) / geometry.pixel_rows_mm + (nrows - 1) / 2.0
        vals = sample_detector_3d(q[a:b].contiguous(), ui, vi)  # (Vc, I, J, K)
        out += torch.einsum("v,vij,vijk->ijk", w[a:b], 1.0 / big_u**2, vals)
    return out


def analytic_reconstruction(sino: Tensor, geometry: CTGeometry,
                            volume_shape: tuple[int, int, int],
                            spacing_mm: tuple[float, float, float],
                            window: str = "ram-lak") -> Tensor:
    """FBP for parallel/fan geometries, FDK for cone; mu in 1/mm."""
    if geometry.kind == "cone":
        return fdk(sino, geometry, volume_shape, spacing_mm, window)
    return fbp(sino, geometry, volume_shape, spacing_mm, window)
