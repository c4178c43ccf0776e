"""Procedural synthetic head volumes (MRI magnitude and CT in HU) for training and testing priors.

Why: the shipped default prior must be trained on data we may redistribute. This module builds
anatomically plausible 3D heads from the MNI ICBM152 2009a template (grey/white-matter and CSF
probability maps, shipped as package data ``medrecon/data/head_atlas_2mm.npz`` under the MNI
licence, see ``ATLAS_LICENSE.txt``) and procedural extra-cerebral anatomy, then renders them with a
random T1-, T2- or PD-like MR contrast or as CT in Hounsfield units.

Generation of one head (``generate_head``), all in torch (CPU or CUDA):

1. **Geometry.** Each output voxel centre ``x`` (RAS+ mm, ``Volume.affine @ (i, j, k, 1)``) is
   mapped into template (MNI) space by ``p = c + R diag(1 / (s0 s)) (x - c) + t + u(x)`` where
   ``c`` is the head centre, ``s0 = 0.9`` shrinks MNI space (larger than native heads) to an
   average adult head, ``R`` a random rotation (each Euler angle uniform in +-10 deg), ``s`` a
   scale (isotropic 0.92..1.08 times +-3 % per axis), ``t`` a shift (+-4 mm) and ``u`` a smooth
   elastic displacement (12 random sinusoids of wavelength 50..140 mm, RMS 1..3 mm per axis).
2. **Anatomy in template space.** Trilinear sampling of template channels on a 2 mm canvas:
   GM and WM probabilities, the signed distance ``sd_icv`` (mm) to the intracranial envelope
   (the brain mask smoothed with sigma 4 mm; spinal cord continued below the atlas), ``sd_head``
   to the outer head (cranium, face, jaw, nose and neck shapes), and signed distances to
   analytic structures. The WM share of brain tissue is sharpened (factor 1..2) and tissue
   fractions below a random threshold (0..0.3) become CSF, since the averaged template has blurred
   boundaries and sulci. Thresholds with random, spatially varying thicknesses give
   extra-cerebral CSF (1..3 mm), the skull (5..8 mm, inner and outer tables around diploe) and
   scalp (3.5..7 mm: skin, subcutaneous fat, muscle). Analytic shapes add eyes and orbital fat,
   air spaces (frontal, maxillary, sphenoid and mastoid sinuses, nasal cavity with septum,
   pharynx), bony sinus walls, a mandible and cervical vertebral bodies with discs. Optional
   lesions: 0..3 ellipsoids in white matter (semi-axes 3..12 mm, soft edges) of an oedema-like
   or a haemorrhage-like kind. Partial volume: every boundary is a linear ramp one voxel wide,
   so tissue *fractions* are rendered, not labels.
3. **Appearance.** ``image = sum_t f_t(x) I_t (1 + a_t n(x))`` with tissue fractions ``f_t``,
   per-volume intensities ``I_t`` drawn uniformly from the ranges in :data:`MR_INTENSITIES` and
   :data:`CT_HU` and a smooth texture field ``n``. MR: times a smooth bias field ``exp(b(x))``
   (RMS of ``b`` 0.05..0.2), scaled so that the 99.9th percentile is 1, then Rician noise
   ``|m + sigma (n1 + i n2)|`` with SNR ``1/sigma`` log-uniform in 15..80. CT: HU with air at
   -1000, plus spatially correlated Gaussian noise (std 2..10 HU).

Determinism: the anatomy depends on ``seed`` only (the same seed gives the same head in T1, T2,
PD and CT); appearance streams depend on ``(seed, modality, contrast)``. All random numbers are
drawn on the CPU, so a seed gives the same head on CPU and CUDA (up to float rounding).

Splits: :data:`SPLITS` reserves disjoint seed ranges for training, validation and held-out test
volumes; benchmarks and demos use ``"test"`` seeds only.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrecon.errors import ConfigError
from medrecon.io.volume import Volume

__all__ = [
    "CONTRASTS",
    "CT_HU",
    "LESION_INTENSITIES",
    "MODALITY_IDS",
    "MR_INTENSITIES",
    "SPLITS",
    "TISSUES",
    "SyntheticHeadDataset",
    "generate_head",
    "generate_head_tensor",
    "head_affine",
    "load_atlas",
    "preview_figure",
    "split_seeds",
]

#: Integer ids of the modalities, as used for network conditioning.
MODALITY_IDS: dict[str, int] = {"MR": 0, "CT": 1}
#: MR contrasts rendered by the generator.
CONTRASTS: tuple[str, ...] = ("T1", "T2", "PD")
#: Disjoint seed ranges: train on "train", select models on "val", report on "test" only.
SPLITS: dict[str, range] = {
    "train": range(0, 1_000_000),
    "val": range(1_000_000, 1_010_000),
    "test": range(2_000_000, 2_010_000),
}

# Tissue classes rendered by the generator (lesions are added separately, one intensity each).
TISSUES: tuple[str, ...] = (
    "gm", "wm", "csf", "cortical_bone", "diploe", "skin", "fat", "muscle", "vitreous",
)  # fmt: skip

# Per-contrast uniform ranges of relative MR magnitude (before bias, scaling and noise). Orders
# follow the usual appearance at 1.5-3 T: T1 (MPRAGE-like) WM > GM > CSF, fat bright; T2 (TSE)
# CSF > GM > WM, fat moderately bright; PD: small contrast, CSF ~ GM > WM. Cortical bone has
# almost no signal; diploe is fatty marrow.
MR_INTENSITIES: dict[str, dict[str, tuple[float, float]]] = {
    "T1": {
        "gm": (0.50, 0.62), "wm": (0.78, 0.90), "csf": (0.06, 0.16),
        "cortical_bone": (0.0, 0.04), "diploe": (0.45, 0.75), "skin": (0.45, 0.65),
        "fat": (0.85, 1.0), "muscle": (0.28, 0.40), "vitreous": (0.06, 0.14),
    },
    "T2": {
        "gm": (0.40, 0.52), "wm": (0.26, 0.36), "csf": (0.85, 1.0),
        "cortical_bone": (0.0, 0.04), "diploe": (0.30, 0.55), "skin": (0.30, 0.45),
        "fat": (0.55, 0.80), "muscle": (0.12, 0.22), "vitreous": (0.85, 1.0),
    },
    "PD": {
        "gm": (0.72, 0.82), "wm": (0.58, 0.68), "csf": (0.82, 0.98),
        "cortical_bone": (0.0, 0.05), "diploe": (0.50, 0.70), "skin": (0.55, 0.70),
        "fat": (0.80, 0.95), "muscle": (0.40, 0.50), "vitreous": (0.85, 0.98),
    },
}  # fmt: skip

# CT attenuation in HU (uniform ranges per volume); air is exactly -1000.
CT_HU: dict[str, tuple[float, float]] = {
    "gm": (36.0, 45.0), "wm": (22.0, 32.0), "csf": (0.0, 12.0),
    "cortical_bone": (1300.0, 1900.0), "diploe": (350.0, 750.0), "skin": (20.0, 50.0),
    "fat": (-120.0, -80.0), "muscle": (40.0, 60.0), "vitreous": (5.0, 15.0),
}  # fmt: skip
CT_AIR_HU = -1000.0

# Lesion kinds and their intensity ranges per contrast ("CT" in HU).
LESION_INTENSITIES: dict[str, dict[str, tuple[float, float]]] = {
    # oedema / demyelination / infarct: T1 dark, T2 and PD bright, CT hypodense
    "oedema": {"T1": (0.22, 0.42), "T2": (0.70, 0.95), "PD": (0.84, 0.98), "CT": (12.0, 22.0)},
    # subacute haemorrhage: T1 bright (methaemoglobin), T2 dark, CT hyperdense
    "haemorrhage": {"T1": (0.88, 1.0), "T2": (0.05, 0.2), "PD": (0.45, 0.6), "CT": (55.0, 85.0)},
}

# Texture amplitude per tissue: fraction of the intensity (MR) or HU (CT).
_MR_TEXTURE = {"gm": 0.03, "wm": 0.03, "csf": 0.03, "cortical_bone": 0.1, "diploe": 0.12,
               "skin": 0.06, "fat": 0.05, "muscle": 0.08, "vitreous": 0.02}  # fmt: skip
_CT_TEXTURE = {"gm": 1.5, "wm": 1.5, "csf": 2.0, "cortical_bone": 80.0, "diploe": 80.0,
               "skin": 5.0, "fat": 8.0, "muscle": 5.0, "vitreous": 2.0}  # fmt: skip

_ATLAS_FILE = "head_atlas_2mm.npz"
_MNI_TO_NATIVE = 0.9  # MNI space is larger than an average adult head
_HEAD_CENTRE_MM = (0.0, -8.0, 8.0)  # FOV centre in template (MNI) space
# Canvas padding (voxels before, after) around the atlas crop, for scalp, face and neck.
_CANVAS_PAD = ((13, 13), (10, 22), (30, 12))
_BASE_ENVELOPE_MM = 5.0  # head outline = intracranial envelope dilated by this, plus face/neck


# --------------------------------------------------------------------------------------------
# Atlas and template canvas
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_atlas() -> dict[str, np.ndarray]:
    """The packaged MNI ICBM152 2009a-derived atlas at 2 mm, read via ``importlib.resources``.

    Returns:
        dict with float32 probability maps ``gm``, ``wm``, ``csf`` and ``brain`` (the fraction of
        each voxel inside the skull-stripped brain), all of shape (I, J, K) with values in
        [0, 1], and ``affine``: the float64 4x4 voxel -> MNI (RAS+ mm) matrix. Cached; do not
        modify the arrays in place.
    """
    ref = resources.files("medrecon.data").joinpath(_ATLAS_FILE)
    with ref.open("rb") as fh, np.load(fh) as z:
        out = {name: z[name].astype(np.float32) / 255.0 for name in ("gm", "wm", "csf", "brain")}
        out["affine"] = z["affine"].astype(np.float64)
    for arr in out.values():
        arr.setflags(write=False)
    return out


def _signed_distance(inside: np.ndarray, spacing: float) -> np.ndarray:
    """Signed Euclidean distance in mm to the boundary of a binary mask (negative inside)."""
    from scipy import ndimage

    out = ndimage.distance_transform_edt(~inside, sampling=spacing)
    inn = ndimage.distance_transform_edt(inside, sampling=spacing)
    return (out - inn).astype(np.float32)


@dataclass(frozen=True)
class _Template:
    """Template canvas: channels (C, I, J, K) float32 on a 2 mm grid in MNI space."""

    maps: np.ndarray
    affine: np.ndarray
    lesion_sites: np.ndarray  # (M, 3) MNI mm coordinates of white-matter-rich voxels


_Axes = tuple[np.ndarray, np.ndarray, np.ndarray]  # x (I,1,1), y (1,J,1), z (1,1,K) in mm


def _np_ellipsoid_sd(p: _Axes, c: Sequence[float], s: Sequence[float]) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid, measured along the ray
    from its centre: ``|q| (1 - 1/r)`` with ``q = p - c`` and ``r`` the ellipsoidal radius.
    ``p`` holds broadcastable coordinate axes; returns (I, J, K)."""
    qx, qy, qz = p[0] - c[0], p[1] - c[1], p[2] - c[2]
    r = np.sqrt((qx / s[0]) ** 2 + (qy / s[1]) ** 2 + (qz / s[2]) ** 2).clip(1e-6)
    return np.sqrt(qx**2 + qy**2 + qz**2) * (1.0 - 1.0 / r)


def _np_cylinder_sd(p: _Axes, c: Sequence[float], s: Sequence[float], z_top: float) -> np.ndarray:
    """Approximate signed distance to a vertical elliptical cylinder below ``z_top``."""
    qx, qy = p[0] - c[0], p[1] - c[1]
    r = np.sqrt((qx / s[0]) ** 2 + (qy / s[1]) ** 2).clip(1e-6)
    return np.maximum(np.sqrt(qx**2 + qy**2) * (1.0 - 1.0 / r), p[2] - z_top)


def _np_mandible_sd(p: _Axes) -> np.ndarray:
    """Approximate signed distance to a mandible: a U-shaped bar (body) and two rami."""
    qx, qy = p[0], p[1] - 22.0
    r = np.sqrt((qx / 40.0) ** 2 + (qy / 46.0) ** 2).clip(1e-6)
    ring = np.abs(np.sqrt(qx**2 + qy**2) * (1.0 - 1.0 / r)) - 4.0
    body = np.maximum(np.maximum(ring, np.abs(p[2] + 96.0) - 8.0), 18.0 - p[1])
    rami = np.minimum.reduce(
        [_np_ellipsoid_sd(p, (sx * 40.0, 14.0, -76.0), (4.0, 9.0, 24.0)) for sx in (-1, 1)]
    )
    return np.minimum(body, rami)


# Analytic extra-cerebral structures in template (MNI) mm: (centre, semi-axes). Positions were
# placed against the template's brain and checked on rendered slices.
_EYES = [((-32.0, 68.0, -38.0), (12.0, 12.0, 12.0)), ((32.0, 68.0, -38.0), (12.0, 12.0, 12.0))]
_ORBITS = [((-30.0, 52.0, -38.0), (15.0, 26.0, 14.0)), ((30.0, 52.0, -38.0), (15.0, 26.0, 14.0))]
_WALLED_AIR = [  # sinuses with a bony wall
    ((-26.0, 50.0, -58.0), (12.0, 17.0, 16.0)),  # maxillary sinuses
    ((26.0, 50.0, -58.0), (12.0, 17.0, 16.0)),
    ((0.0, 58.0, -52.0), (10.0, 28.0, 18.0)),  # nasal cavity and ethmoid cells
]
_OTHER_AIR = [
    ((0.0, 18.0, -42.0), (11.0, 11.0, 9.0)),  # sphenoid sinus
    ((0.0, 73.0, -4.0), (13.0, 6.0, 12.0)),  # frontal sinus (inside the frontal bone)
    ((-50.0, -30.0, -44.0), (8.0, 10.0, 9.0)),  # mastoid air cells
    ((50.0, -30.0, -44.0), (8.0, 10.0, 9.0)),
    ((0.0, 18.0, -62.0), (12.0, 13.0, 9.0)),  # nasopharynx
]
_WALL_MM = 1.5


@functools.lru_cache(maxsize=1)
def _template() -> _Template:
    """Pad the atlas into a canvas holding the whole head; precompute distance maps (~1-2 s)."""
    from scipy import ndimage

    atlas = load_atlas()
    spacing = float(atlas["affine"][0, 0])
    pads = _CANVAS_PAD
    maps = {n: np.pad(atlas[n], pads) for n in ("gm", "wm", "csf", "brain")}
    affine = atlas["affine"].copy()
    affine[:3, 3] -= spacing * np.array([p[0] for p in pads])
    # The atlas stops at the medulla; continue it downwards as a spinal cord by repeating its
    # second-lowest slice (the lowest is only partly filled).
    k_cord = pads[2][0] + 1
    for name in maps:
        maps[name][:, :, :k_cord] = maps[name][:, :, k_cord : k_cord + 1]

    # Intracranial envelope: the brain mask smoothed enough to bridge sulci (sigma 4 mm).
    icv = ndimage.gaussian_filter(maps["brain"], 2.0) > 0.3
    sd_icv = _signed_distance(icv, spacing)

    # Outer head: cranium envelope, face and neck.
    shape = maps["brain"].shape
    p = tuple(
        (affine[a, a] * np.arange(n) + affine[a, 3]).astype(np.float32).reshape(
            [n if b == a else 1 for b in range(3)]
        )
        for a, n in enumerate(shape)
    )
    head = sd_icv < _BASE_ENVELOPE_MM
    head |= _np_ellipsoid_sd(p, (0, 42, -48), (58, 50, 40)) < 0  # mid-face, orbits, maxilla
    head |= _np_ellipsoid_sd(p, (0, 28, -82), (46, 48, 26)) < 0  # mouth, mandible, chin
    head |= _np_ellipsoid_sd(p, (0, 88, -50), (11, 14, 22)) < 0  # external nose
    head |= _np_cylinder_sd(p, (0.0, -22.0), (52.0, 56.0), -40.0) < 0  # neck
    head = ndimage.gaussian_filter(head.astype(np.float32), 2.0) > 0.5
    sd_head = _signed_distance(head, spacing)

    sd_eye = np.minimum.reduce([_np_ellipsoid_sd(p, c, s) for c, s in _EYES])
    sd_orbit = np.minimum.reduce([_np_ellipsoid_sd(p, c, s) for c, s in _ORBITS])
    walled = [_np_ellipsoid_sd(p, c, s) for c, s in _WALLED_AIR]
    sd_wall = np.minimum.reduce(walled) - _WALL_MM  # wall plus the air it encloses
    sd_wall = np.minimum(sd_wall, _np_mandible_sd(p))
    # Nasal septum: a 2 mm slab at the midline cut out of the nasal cavity.
    walled[2] = np.maximum(walled[2], 1.0 - np.abs(p[0]))
    sd_air = np.minimum.reduce(walled + [_np_ellipsoid_sd(p, c, s) for c, s in _OTHER_AIR])
    sd_air = np.minimum(sd_air, _np_cylinder_sd(p, (0.0, 2.0), (13.0, 8.0), -62.0))  # pharynx
    # Cervical vertebral bodies below the skull base; a disc (~4 mm, 1 where sin < -0.75, with
    # a soft edge) every 16 mm.
    sd_vert = _np_cylinder_sd(p, (0.0, -24.0), (10.0, 9.0), -72.0)
    disc = np.clip(0.5 - (np.sin(2 * np.pi * p[2] / 16.0) + 0.75) / 0.3, 0.0, 1.0)
    disc = np.broadcast_to(disc, shape)

    stack = [maps["gm"], maps["wm"], sd_icv, sd_head, sd_eye, sd_orbit, sd_wall, sd_air, sd_vert,
             disc]  # fmt: skip
    idx = np.argwhere((maps["wm"] > 0.5) & (maps["brain"] > 0.9))
    sites = (idx * spacing + affine[:3, 3]).astype(np.float32)
    return _Template(maps=np.stack(stack).astype(np.float32), affine=affine, lesion_sites=sites)


_N_TISSUE_CHANNELS = 4  # gm, wm, sd_icv, sd_head; the others describe extra-cranial structures


@functools.lru_cache(maxsize=4)
def _template_tensors(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The canvas as (1, C, I, J, K) tensors: tissue channels and structure channels."""
    maps = torch.from_numpy(_template().maps).unsqueeze(0)
    return (
        maps[:, :_N_TISSUE_CHANNELS].contiguous().to(device),
        maps[:, _N_TISSUE_CHANNELS:].contiguous().to(device),
    )


# --------------------------------------------------------------------------------------------
# Small helpers (torch)
# --------------------------------------------------------------------------------------------


def _step(d: torch.Tensor, width: float) -> torch.Tensor:
    """Soft inside indicator of the region d < 0: a linear ramp ``width`` mm wide (partial volume)."""
    return (0.5 - d / width).clamp_(0.0, 1.0)


def _ellipsoid_sd(p: torch.Tensor, c: Sequence[float], s: Sequence[float]) -> torch.Tensor:
    """Torch version of :func:`_np_ellipsoid_sd` for points p (N, 3)."""
    q = p - p.new_tensor(c)
    r = torch.sqrt(((q / p.new_tensor(s)) ** 2).sum(-1)).clamp_min(1e-6)
    return q.norm(dim=-1) * (1.0 - 1.0 / r)


def _fourier_field(
    p: torch.Tensor,
    rng: np.random.Generator,
    n_terms: int,
    wavelength_mm: tuple[float, float],
    rms: float,
    dims: int = 1,
) -> torch.Tensor:
    """A smooth random field ``sum_k a_k sin(w_k . p + phi_k)`` at points p (N, 3) in mm.

    Wave vectors have random directions and wavelengths uniform in ``wavelength_mm``; amplitudes
    are Gaussian, scaled so that the field's RMS is ``rms`` per output dimension. Returns (N, dims).
    """
    direction = rng.normal(size=(n_terms, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    w = direction * (2 * np.pi / rng.uniform(*wavelength_mm, size=(n_terms, 1)))
    phase = rng.uniform(0, 2 * np.pi, size=n_terms)
    amp = rng.normal(size=(n_terms, dims)) * rms * math.sqrt(2.0 / n_terms)
    arg = p @ p.new_tensor(w.T) + p.new_tensor(phase)
    return torch.sin(arg) @ p.new_tensor(amp)


class _CoarseGrid:
    """Smooth random fields evaluated on a coarse grid (<= 6 mm), interpolated trilinearly.

    Fields with wavelengths >= 15 mm are smooth at that spacing, and evaluating their sinusoids on
    every voxel would dominate the generator's run time.
    """

    def __init__(self, shape: tuple[int, int, int], affine: np.ndarray, device: torch.device):
        spacing = float(abs(affine[0, 0]))
        factor = max(1, int(6.0 // spacing))
        self.shape = shape
        self.coarse = tuple(max(2, math.ceil((s - 1) / factor) + 1) for s in shape)
        axes = [
            np.linspace(affine[a, 3], affine[a, 3] + affine[a, a] * (n - 1), c)
            for a, (n, c) in enumerate(zip(shape, self.coarse, strict=True))
        ]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        self.points = torch.from_numpy(pts.astype(np.float32)).to(device)

    def field(self, rng: np.random.Generator, n_terms: int, wavelength_mm: tuple[float, float],
              rms: float, dims: int = 1) -> torch.Tensor:  # fmt: skip
        """A :func:`_fourier_field` on the coarse grid, (dims, ci, cj, ck)."""
        f = _fourier_field(self.points, rng, n_terms, wavelength_mm, rms, dims)
        return f.T.reshape(dims, *self.coarse).contiguous()


def _smooth_noise(
    shape: tuple[int, int, int], sigma_vox: float, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Unit-variance Gaussian noise smoothed by a Gaussian of ``sigma_vox`` voxels, (I, J, K).

    Drawn on the CPU (device-independent values), smoothed on ``device`` with a separable kernel.
    """
    x = torch.randn(shape, generator=gen).to(device)[None, None]
    if sigma_vox <= 0:
        return x[0, 0]
    r = max(1, int(math.ceil(3 * sigma_vox)))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / sigma_vox) ** 2)
    k = k / k.sum()
    for axis in range(3):
        size = [1, 1, 1]
        size[axis] = 2 * r + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(1, 1, *size))
    x = x[0, 0]
    return x / x.std().clamp_min(1e-6)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix R_z R_y R_x for Euler angles (radians)."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *stream])


def head_affine(shape: Sequence[int], spacing_mm: float) -> np.ndarray:
    """RAS+ affine of the generator's output grid: isotropic voxels, head centre in the middle."""
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    centre_vox = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(_HEAD_CENTRE_MM) - spacing_mm * centre_vox
    return affine


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------

# Voxels processed at once: the volume is rendered in slabs along its first axis so that working
# memory stays ~100 MB whatever the grid size (and the data stays cache-friendly).
_SLAB_VOXELS = 1 << 18
# Channels of the coarse random fields of one anatomy.
_FIELDS = ("elastic_x", "elastic_y", "elastic_z", "t_csf", "t_skull", "t_scalp", "t_fat", "fat")


@dataclass
class _Anatomy:
    """Every random draw of one head's anatomy; :func:`_fractions` renders it slab by slab."""

    shape: tuple[int, int, int]
    spacing_mm: float
    affine: np.ndarray  # output voxel -> RAS+ mm
    lin: np.ndarray  # (3, 3) output world -> template, about the head centre
    shift: np.ndarray  # (3,) mm
    fields: torch.Tensor  # (len(_FIELDS), ci, cj, ck) coarse fields, constants included
    t_skin: float
    deep_fat: float
    wm_sharpen: float
    atrophy: float
    lesions: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]  # centre, semi, rot, kind
    meta: dict[str, Any]


def _draw_anatomy(
    shape: tuple[int, int, int], spacing_mm: float, seed: int, lesions: bool, device: torch.device
) -> _Anatomy:
    """Draw the anatomy of head ``seed`` (stream ``(seed, 0)``) for an output grid."""
    rng = _rng(seed, 0)
    tpl = _template()
    affine = head_affine(shape, spacing_mm)
    coarse = _CoarseGrid(shape, affine, device)

    # Random similarity transform with small anisotropy (output world -> template space).
    angles = np.deg2rad(rng.uniform(-10, 10, size=3))
    scale = rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, size=3)
    shift = rng.uniform(-4, 4, size=3)
    lin = _rotation(angles) @ np.diag(1.0 / (_MNI_TO_NATIVE * scale))
    elastic_rms = rng.uniform(1.0, 3.0)
    elastic = coarse.field(rng, 12, (50.0, 140.0), elastic_rms, dims=3)
    t_csf = rng.uniform(1.0, 3.0) + coarse.field(rng, 6, (60, 160), 0.4)
    t_skull = rng.uniform(5.0, 8.0) + coarse.field(rng, 6, (60, 160), 1.0)
    t_scalp = rng.uniform(3.5, 7.0) + coarse.field(rng, 6, (60, 160), 1.0)
    t_skin = float(rng.uniform(1.5, 2.5))
    t_fat = rng.uniform(1.5, 5.0) + coarse.field(rng, 6, (40, 120), 1.0).clamp_min(0)
    deep_fat = float(rng.uniform(0.1, 0.35))
    fat_field = coarse.field(rng, 10, (15, 50), 1.0)
    # The template averages 152 brains, so its GM/WM boundary and sulci are blurred: sharpen the
    # WM share of brain tissue and open sulci and ventricles by random amounts (individual
    # variation, mild atrophy).
    wm_sharpen = float(rng.uniform(1.0, 2.0))
    atrophy = float(rng.uniform(0.0, 0.3))
    fields = torch.cat([elastic, t_csf, t_skull, t_scalp, t_fat, fat_field])

    lesion_list: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = []
    for _ in range(int(rng.integers(0, 4)) if lesions else 0):
        centre_mm = tpl.lesion_sites[rng.integers(len(tpl.lesion_sites))].astype(np.float64)
        semi = rng.uniform(3.0, 12.0, size=3)
        rot = _rotation(rng.uniform(-np.pi, np.pi, size=3))
        kind = str(rng.choice(list(LESION_INTENSITIES)))
        lesion_list.append((centre_mm, semi, rot, kind))

    meta = {
        "rotation_deg": [float(v) for v in np.rad2deg(angles)],
        "scale": [float(v) for v in scale],
        "shift_mm": [float(v) for v in shift],
        "elastic_rms_mm": float(elastic_rms),
        "wm_sharpen": wm_sharpen,
        "atrophy": atrophy,
        "lesions": [
            {"centre_mni_mm": [float(v) for v in c], "semi_axes_mm": [float(v) for v in s],
             "kind": k}
            for c, s, _, k in lesion_list
        ],
    }  # fmt: skip
    return _Anatomy(shape, float(spacing_mm), affine, lin, shift, fields, t_skin, deep_fat,
                    wm_sharpen, atrophy, lesion_list, meta)  # fmt: skip


def _slab_grid(shape: tuple[int, int, int], i0: int, i1: int, device: torch.device) -> torch.Tensor:
    """``grid_sample`` coordinates (1, i1 - i0, J, K, 3) of the voxels of slab ``i0:i1`` in a field
    spanning the whole grid (``align_corners=True``: -1 and 1 are the first and last voxels)."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device) for n in shape]
    gi, gj, gk = torch.meshgrid(axes[0][i0:i1], axes[1], axes[2], indexing="ij")
    return torch.stack([gk, gj, gi], dim=-1).unsqueeze(0)


def _interp(fields: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation of coarse fields (C, ci, cj, ck) at a slab grid -> (C, M)."""
    out = F.grid_sample(fields.unsqueeze(0), grid, mode="bilinear", padding_mode="border",
                        align_corners=True)  # fmt: skip
    return out.reshape(fields.shape[0], -1)


def _fractions(
    anat: _Anatomy, i0: int, i1: int
) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, str]]]:
    """Tissue fractions of the slab ``i0:i1`` (first axis) of a drawn anatomy.

    Returns the fractions of :data:`TISSUES` and (fraction, kind) per lesion, each of shape (M,)
    with M = (i1 - i0) * J * K in C order.
    """
    tpl = _template()
    device = anat.fields.device
    _, nj, nk = anat.shape
    sp = anat.spacing_mm
    axes = [
        torch.arange(i0, i1, device=device, dtype=torch.float32),
        torch.arange(nj, device=device, dtype=torch.float32),
        torch.arange(nk, device=device, dtype=torch.float32),
    ]
    x = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    x = x * sp + x.new_tensor(anat.affine[:3, 3])  # RAS+ mm (diagonal affine)
    fields = dict(zip(_FIELDS, _interp(anat.fields, _slab_grid(anat.shape, i0, i1, device)),
                      strict=True))  # fmt: skip

    c = x.new_tensor(_HEAD_CENTRE_MM)
    p = (x - c) @ x.new_tensor(anat.lin.T) + c + x.new_tensor(anat.shift)
    p = p + torch.stack([fields["elastic_x"], fields["elastic_y"], fields["elastic_z"]], dim=1)

    # Trilinear sampling of the template channels at p (grid_sample wants (k, j, i) order).
    inv = np.linalg.inv(tpl.affine)
    q = p @ p.new_tensor(inv[:3, :3].T) + p.new_tensor(inv[:3, 3])
    size = p.new_tensor(tpl.maps.shape[1:]) - 1.0
    grid = (2.0 * q / size - 1.0).flip(-1)
    tissue_maps, structure_maps = _template_tensors(str(device))
    gm_p, wm_p, sd_icv, sd_head = F.grid_sample(
        tissue_maps, grid.view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="border",
        align_corners=True,
    ).view(_N_TISSUE_CHANNELS, -1)  # fmt: skip
    # Extra-cranial structures only replace skull and soft tissue, which exist only outside the
    # brain and inside the head: sample and apply them on those voxels only (about a third).
    need = ((sd_icv > -4.0) & (sd_head < 20.0)).nonzero().squeeze(1)
    n_struct = structure_maps.shape[1]
    if need.numel():
        struct = F.grid_sample(
            structure_maps, grid[need].view(1, 1, 1, -1, 3), mode="bilinear",
            padding_mode="border", align_corners=True,
        ).view(n_struct, -1)  # fmt: skip
    else:
        struct = p.new_zeros((n_struct, 0))
    sd_eye, sd_orbit, sd_wall, sd_air, sd_vert, disc = struct

    vox = float(sp)
    t_csf = fields["t_csf"]
    t_skull = fields["t_skull"].clamp_min(3.0)
    t_scalp = fields["t_scalp"].clamp_min(2.0)
    t_off = t_csf + t_skull + t_scalp - _BASE_ENVELOPE_MM
    t_fat = fields["t_fat"]

    head = _step(sd_head - t_off, vox)
    icv = _step(sd_icv - t_csf, vox) * head
    skull = (_step(sd_icv - t_csf - t_skull, vox) * head - icv).clamp_min(0.0)
    soft = (head - icv - skull).clamp_min(0.0)

    u = (sd_icv - t_csf) / t_skull  # relative depth in the skull, 0 inner .. 1 outer surface
    dip = _step((u - 0.5).abs() * t_skull - 0.2 * t_skull, vox)
    fr: dict[str, torch.Tensor] = {}
    tissue = gm_p + wm_p
    share = (((wm_p / tissue.clamp_min(1e-6)) - 0.5) * anat.wm_sharpen + 0.5).clamp_(0.0, 1.0)
    tissue = ((tissue - anat.atrophy) / (1.0 - anat.atrophy)).clamp_(0.0, 1.0)
    fr["gm"] = icv * tissue * (1.0 - share)
    fr["wm"] = icv * tissue * share
    fr["csf"] = (icv - fr["gm"] - fr["wm"]).clamp_min(0.0)
    fr["diploe"] = skull * dip
    fr["cortical_bone"] = skull - fr["diploe"]
    depth = t_off - sd_head  # mm below the skin surface
    skin = soft * _step(depth - anat.t_skin, vox)
    sub_fat = (soft - skin) * _step(depth - anat.t_skin - t_fat, vox)
    rest = soft - skin - sub_fat
    mix = (torch.sigmoid(3.0 * (fields["fat"] - 1.0)) * 2.0 * anat.deep_fat).clamp(0.0, 1.0)
    fr["skin"] = skin
    fr["fat"] = sub_fat + rest * mix
    fr["muscle"] = rest * (1.0 - mix)
    fr["vitreous"] = torch.zeros_like(head)

    sub = {t: f[need] for t, f in fr.items()}  # fractions on the structure voxels

    def override(name: str, mask: torch.Tensor, targets: Sequence[str]) -> None:
        """Move the fraction ``mask`` of each target tissue to ``name`` ("air" removes it)."""
        for t in targets:
            moved = sub[t] * mask
            sub[t] = sub[t] - moved
            if name != "air":
                sub[name] = sub[name] + moved

    # Cervical vertebral bodies: marrow inside a cortex, intervertebral discs between them.
    override("cortical_bone", _step(sd_vert, vox) * (1 - disc), ("fat", "muscle"))
    override("diploe", _step(sd_vert + _WALL_MM, vox) * (1 - disc), ("cortical_bone",))
    override("muscle", _step(sd_vert, vox) * disc, ("fat",))
    # Orbital fat behind the globes, then the globes.
    override("fat", _step(sd_orbit, vox), ("muscle", "skin", "cortical_bone", "diploe"))
    override("vitreous", _step(sd_eye, vox), ("fat", "muscle", "skin", "cortical_bone", "diploe"))
    # Bony walls of the maxillary sinuses and nasal cavity, then all air spaces.
    override("cortical_bone", _step(sd_wall, vox), ("fat", "muscle", "diploe"))
    override("air", _step(sd_air, vox), ("fat", "muscle", "cortical_bone", "diploe"))
    for t, f in sub.items():
        fr[t][need] = f

    lesion_list: list[tuple[torch.Tensor, str]] = []
    for centre_mm, semi, rot, kind in anat.lesions:
        # Evaluate only near the lesion: points within its bounding box plus the soft edge.
        d = p - p.new_tensor(centre_mm)
        near = (d.abs() < float(semi.max()) + 2.0 * vox).all(dim=1).nonzero().squeeze(1)
        m = _step(_ellipsoid_sd(d[near] @ p.new_tensor(rot), (0.0, 0.0, 0.0), semi), 1.5 * vox)
        frac = torch.zeros_like(head)
        for t in ("gm", "wm"):
            moved = fr[t][near] * m
            fr[t][near] -= moved
            frac[near] += moved
        lesion_list.append((frac, kind))
    return fr, lesion_list


def _anatomy(
    shape: tuple[int, int, int], spacing_mm: float, seed: int, lesions: bool, device: torch.device
) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, str]], dict[str, Any]]:
    """Tissue fractions of the whole head ``seed`` (each (N,), N = prod(shape), C order), the
    (fraction, kind) of each lesion and the geometric parameters drawn. For inspection and tests;
    rendering goes slab by slab."""
    anat = _draw_anatomy(shape, spacing_mm, seed, lesions, device)
    fr, lesion_list = _fractions(anat, 0, shape[0])
    return fr, lesion_list, anat.meta


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _check_args(shape: Sequence[int], spacing_mm: float, modality: str, contrast: str) -> None:
    if len(shape) != 3 or any(int(s) < 2 for s in shape):
        raise ConfigError(f"shape must be three sizes of at least 2, got {tuple(shape)}.")
    if not spacing_mm > 0:
        raise ConfigError(f"spacing_mm must be positive, got {spacing_mm}.")
    if modality not in MODALITY_IDS:
        raise ConfigError(f"modality must be one of {sorted(MODALITY_IDS)}, got {modality!r}.")
    if modality == "MR" and contrast not in (*CONTRASTS, "random"):
        raise ConfigError(f"contrast must be one of T1, T2, PD or random, got {contrast!r}.")


def generate_head_tensor(
    shape: Sequence[int] = (96, 96, 96),
    spacing_mm: float = 2.0,
    modality: str = "MR",
    contrast: str = "random",
    seed: int = 0,
    lesions: bool = True,
    noise: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Render one synthetic head as a float32 tensor of ``shape`` on ``device``.

    Same arguments as :func:`generate_head`; returns ``(image (I, J, K), meta)`` where ``meta``
    records the seed, modality, contrast, tissue intensities, noise level and geometry drawn.
    Use this on a GPU inside a training loop; :func:`generate_head` wraps it in a Volume.
    """
    _check_args(shape, spacing_mm, modality, contrast)
    shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))
    dev = torch.device(device)
    seed = int(seed)
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}.")
    anat = _draw_anatomy(shape3, float(spacing_mm), seed, lesions, dev)

    # Appearance stream: depends on (seed, modality, contrast) but not on the anatomy's draws.
    mod_id = MODALITY_IDS[modality]
    if modality == "MR" and contrast == "random":
        contrast = CONTRASTS[int(_rng(seed, 1, 99).integers(len(CONTRASTS)))]
    con_id = CONTRASTS.index(contrast) if modality == "MR" else 9
    rng = _rng(seed, 1, mod_id, con_id)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    table = MR_INTENSITIES[contrast] if modality == "MR" else CT_HU
    tex_amp = _MR_TEXTURE if modality == "MR" else _CT_TEXTURE
    values = {t: float(rng.uniform(*table[t])) for t in TISSUES}
    key = contrast if modality == "MR" else "CT"
    lesion_values = [float(rng.uniform(*LESION_INTENSITIES[k][key])) for *_, k in anat.lesions]
    texture = _smooth_noise(shape3, 0.8, gen, dev)
    meta: dict[str, Any] = {
        "generator": "medrecon.priors.synthetic",
        "seed": seed,
        "modality": modality,
        "contrast": contrast if modality == "MR" else None,
        "tissue_values": values,
        "lesion_values": lesion_values,
        **anat.meta,
    }
    if modality == "MR":
        bias_rms = float(rng.uniform(0.05, 0.2))
        bias_field = _CoarseGrid(shape3, anat.affine, dev).field(rng, 4, (200.0, 450.0), bias_rms)
        meta["bias_rms"] = bias_rms

    img = torch.empty(shape3, device=dev)
    planes = max(1, _SLAB_VOXELS // (shape3[1] * shape3[2]))
    for i0 in range(0, shape3[0], planes):
        i1 = min(shape3[0], i0 + planes)
        fr, lesion_list = _fractions(anat, i0, i1)
        tex = texture[i0:i1].reshape(-1)
        slab = torch.zeros_like(tex)
        if modality == "MR":
            for t in TISSUES:
                slab += fr[t] * (values[t] * (1.0 + tex_amp[t] * tex))
            for (frac, _), v in zip(lesion_list, lesion_values, strict=True):
                slab += frac * v
            slab *= torch.exp(_interp(bias_field, _slab_grid(shape3, i0, i1, dev))[0])
        else:
            # HU of a mixture: attenuation is linear in the fractions, air fills the remainder.
            total = torch.zeros_like(tex)
            for t in TISSUES:
                slab += fr[t] * (values[t] + tex_amp[t] * tex)
                total += fr[t]
            for (frac, _), v in zip(lesion_list, lesion_values, strict=True):
                slab += frac * v
                total += frac
            slab += (1.0 - total).clamp_min(0.0) * CT_AIR_HU
        img[i0:i1] = slab.view(i1 - i0, shape3[1], shape3[2])

    if modality == "MR":
        flat = img.view(-1)
        sub = flat[:: max(1, flat.numel() // 200_000)]
        img /= torch.quantile(sub, 0.999).clamp_min(1e-6)
        snr = float(np.exp(rng.uniform(np.log(15.0), np.log(80.0))))
        if noise:
            sigma = 1.0 / snr
            n1 = torch.randn(shape3, generator=gen).to(dev)
            n2 = torch.randn(shape3, generator=gen).to(dev)
            img = torch.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)  # Rician magnitude
        meta["snr"] = snr if noise else None
    else:
        sigma_hu = float(rng.uniform(2.0, 10.0))
        if noise:
            img += sigma_hu * _smooth_noise(shape3, 0.6, gen, dev)
        img = img.clamp_(-1024.0, 3071.0)
        meta["noise_std_hu"] = sigma_hu if noise else None
    return img, meta


def generate_head(
    shape: Sequence[int] = (96, 96, 96),
    spacing_mm: float = 2.0,
    modality: str = "MR",
    contrast: str = "random",
    seed: int = 0,
    lesions: bool = True,
    noise: bool = True,
    device: str | torch.device = "cpu",
) -> Volume:
    """A synthetic head volume: anatomy from the MNI ICBM152 atlas plus procedural anatomy.

    Args:
        shape: output grid (I, J, K); voxel axes run towards Right, Anterior, Superior.
        spacing_mm: isotropic voxel size in mm; the head centre sits in the middle of the grid.
        modality: "MR" (magnitude scaled to ~[0, 1], units "a.u.") or "CT" (HU, air -1000,
            brain 20..45, bone up to ~1900).
        contrast: MR only: "T1", "T2", "PD" or "random" (one of the three, chosen by ``seed``).
        seed: selects the anatomy (shared by all modalities/contrasts) and the appearance.
            Use :data:`SPLITS` ranges to keep training and test heads apart.
        lesions: add 0..3 random soft-edged ellipsoidal lesions in the brain.
        noise: add Rician noise (MR) or correlated Gaussian HU noise (CT).
        device: torch device to compute on ("cpu" or "cuda"); the result is copied to numpy.

    Returns:
        Volume with float32 data of ``shape``, a RAS+ affine, modality, units and ``meta``
        recording every random draw (seed, contrast, tissue intensities, SNR, lesions, ...).

    Cost: the volume is rendered in slabs of ~260k voxels, so working memory is about 50 bytes
    per voxel (0.35 GB for 192^3); on one CPU thread roughly 0.5-2.5 s for 96^3-128^3 voxels,
    plus a one-off 1.5-3 s per process to build the template canvas.
    """
    img, meta = generate_head_tensor(
        shape, spacing_mm, modality, contrast, seed, lesions, noise, device
    )
    contrast_name = meta["contrast"] or "CT"
    return Volume(
        data=img.cpu().numpy(),
        affine=head_affine(tuple(int(s) for s in shape), float(spacing_mm)),
        modality=modality,
        units="HU" if modality == "CT" else "a.u.",
        series_description=f"synthetic head {contrast_name} seed {int(seed)}",
        meta=meta,
    )


# --------------------------------------------------------------------------------------------
# Dataset of patches
# --------------------------------------------------------------------------------------------


def split_seeds(split: str) -> range:
    """The seed range reserved for a split: "train", "val" or "test"."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {sorted(SPLITS)}, got {split!r}.")
    return SPLITS[split]


class SyntheticHeadDataset(torch.utils.data.Dataset):
    """Random 3D patches of synthetic heads, deterministic per index.

    Item ``idx`` comes from the volume with seed ``seeds[idx // patches_per_volume]`` and patch
    number ``idx % patches_per_volume``; its modality cycles with the seed over ``modalities``
    (balanced), its MR contrast is ``contrast`` ("random": chosen by the seed). Recently used
    volumes are kept in a small in-memory cache, so iterate in order (``shuffle=False``; the seeds
    themselves are random heads) or with a sampler that keeps a volume's patches together. With
    ``DataLoader(num_workers > 0)`` each worker has its own cache and receives whole batches, so
    use a ``batch_size`` that is a multiple of ``patches_per_volume`` to generate each volume once.

    Each item is a dict:
        ``image``: float32 tensor (1, P, P, P) in the volume's units (MR a.u., CT HU), passed
            through ``transform(image, modality)`` when given (e.g. the prior's normalisation);
        ``position``: float32 tensor (3,), the patch centre in normalised volume coordinates,
            ``2 * centre_index / (shape - 1) - 1`` per axis, in [-1, 1];
        ``modality``: int64 scalar tensor, :data:`MODALITY_IDS` of the volume;
        ``seed``: int64 scalar tensor, the volume's seed.

    Args:
        seeds: "train", "val", "test" (the :data:`SPLITS` ranges) or an explicit sequence.
        n_volumes: use only the first ``n_volumes`` seeds (None: all).
        patch_size: edge P of the cubic patches (<= every entry of ``shape``).
        patches_per_volume: patches drawn from each generated volume.
        shape, spacing_mm, contrast, lesions, noise: passed to :func:`generate_head_tensor`.
        modalities: modalities to cycle through ("MR", "CT").
        cache_size: number of generated volumes kept in memory (per worker process).
        transform: optional callable ``(image (1, P, P, P), modality) -> image``.
    """

    def __init__(
        self,
        seeds: str | Sequence[int] = "train",
        n_volumes: int | None = None,
        patch_size: int = 64,
        patches_per_volume: int = 8,
        shape: Sequence[int] = (96, 96, 96),
        spacing_mm: float = 2.0,
        modalities: Sequence[str] = ("MR", "CT"),
        contrast: str = "random",
        lesions: bool = True,
        noise: bool = True,
        cache_size: int = 2,
        transform: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
    ) -> None:
        self.seeds: Sequence[int] = split_seeds(seeds) if isinstance(seeds, str) else seeds
        if n_volumes is not None:
            self.seeds = self.seeds[:n_volumes]
        if len(self.seeds) == 0:
            raise ConfigError("SyntheticHeadDataset needs at least one seed.")
        self.shape = tuple(int(s) for s in shape)
        if patch_size < 1 or any(patch_size > s for s in self.shape):
            raise ConfigError(f"patch_size {patch_size} must fit inside the volume {self.shape}.")
        if patches_per_volume < 1:
            raise ConfigError("patches_per_volume must be at least 1.")
        for m in modalities:
            _check_args(self.shape, spacing_mm, m, contrast)
        if not modalities:
            raise ConfigError("modalities must name at least one of MR, CT.")
        self.patch_size = int(patch_size)
        self.patches_per_volume = int(patches_per_volume)
        self.spacing_mm = float(spacing_mm)
        self.modalities = tuple(modalities)
        self.contrast = contrast
        self.lesions = lesions
        self.noise = noise
        self.cache_size = max(0, int(cache_size))
        self.transform = transform
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.seeds) * self.patches_per_volume

    def modality_of(self, seed: int) -> str:
        """The modality rendered for a volume seed (cycles over ``modalities``)."""
        return self.modalities[int(seed) % len(self.modalities)]

    def volume(self, seed: int) -> torch.Tensor:
        """The full generated volume (I, J, K) for a seed, from the cache when present."""
        seed = int(seed)
        if seed in self._cache:
            self._cache.move_to_end(seed)
            return self._cache[seed]
        img, _ = generate_head_tensor(
            self.shape, self.spacing_mm, self.modality_of(seed), self.contrast, seed,
            self.lesions, self.noise,
        )  # fmt: skip
        if self.cache_size:
            self._cache[seed] = img
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return img

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= idx < len(self):
            raise IndexError(idx)
        idx = idx % len(self)
        seed = int(self.seeds[idx // self.patches_per_volume])
        k = idx % self.patches_per_volume
        img = self.volume(seed)
        rng = _rng(seed, 2, k)
        corner = [int(rng.integers(0, s - self.patch_size + 1)) for s in self.shape]
        sl = tuple(slice(c0, c0 + self.patch_size) for c0 in corner)
        patch = img[sl].unsqueeze(0).clone()
        modality = self.modality_of(seed)
        if self.transform is not None:
            patch = self.transform(patch, modality)
        centre = np.asarray(corner, dtype=np.float64) + (self.patch_size - 1) / 2.0
        extent = np.maximum(np.asarray(self.shape, dtype=np.float64) - 1.0, 1.0)
        position = torch.tensor(2.0 * centre / extent - 1.0, dtype=torch.float32)
        return {
            "image": patch,
            "position": position,
            "modality": torch.tensor(MODALITY_IDS[modality], dtype=torch.int64),
            "seed": torch.tensor(seed, dtype=torch.int64),
        }


# --------------------------------------------------------------------------------------------
# Preview figure
# --------------------------------------------------------------------------------------------


def preview_figure(
    path: str,
    seeds: Sequence[int] = (SPLITS["test"].start, SPLITS["test"].start + 1),
    shape: Sequence[int] = (96, 96, 96),
    spacing_mm: float = 2.0,
    dpi: int = 60,
) -> None:
    """Write a PNG of central orthogonal slices (sagittal, coronal, axial) of T1, T2, PD and CT
    renderings of each seed (CT in a brain window, W 120 / L 40, and a bone window, W 2500 /
    L 250)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medrecon.io.atomic import atomic_file

    panels: list[tuple[str, np.ndarray, tuple[float, float]]] = []
    for seed in seeds:
        for modality, contrast in (("MR", "T1"), ("MR", "T2"), ("MR", "PD"), ("CT", "T1")):
            vol = generate_head(shape, spacing_mm, modality, contrast, seed)
            if modality == "MR":
                panels.append((f"seed {seed} MR {contrast}", vol.data, (0.0, 1.0)))
            else:
                panels.append((f"seed {seed} CT brain", vol.data, (-20.0, 100.0)))
                panels.append((f"seed {seed} CT bone", vol.data, (-1000.0, 1500.0)))
    fig, axes = plt.subplots(3, len(panels), figsize=(1.25 * len(panels), 4.0))
    for col, (title, data, (lo, hi)) in enumerate(panels):
        ci, cj, ck = (s // 2 for s in data.shape)
        views = (data[ci].T, data[:, cj].T, data[:, :, ck].T)  # sagittal, coronal, axial
        for row, view in enumerate(views):
            ax = axes[row, col]
            ax.imshow(view, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="none")
            ax.set_axis_off()
        axes[0, col].set_title(title, fontsize=6)
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.0, top=0.93, wspace=0.02, hspace=0.02)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


if __name__ == "__main__":  # python -m medrecon.priors.synthetic OUT.png [SEED ...]
    import sys

    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m medrecon.priors.synthetic OUT.png [SEED ...]")
    preview_figure(sys.argv[1], [int(a) for a in sys.argv[2:]] or SPLITS["test"][:2])
