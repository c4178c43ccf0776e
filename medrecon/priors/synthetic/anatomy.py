"""Anatomy of the synthetic heads: the template canvas and the tissue-fraction evaluator.

The template is the MNI ICBM152 2009a atlas at 2 mm (grey/white-matter and CSF probability maps,
shipped as package data ``medrecon/data/head_atlas_2mm.npz`` under the MNI licence, see
``ATLAS_LICENSE.txt``), padded into a canvas that holds the whole head and completed with signed
distance maps (mm) of procedural structures: the intracranial envelope (brain mask smoothed with
sigma 4 mm, spinal cord continued below the atlas), the outer head (cranium, face, jaw, nose and
neck shapes), eyes, orbits, bony sinus walls and mandible, air spaces (frontal, maxillary,
sphenoid and mastoid sinuses, nasal cavity with septum, pharynx) and cervical vertebral bodies
with discs.

:func:`head_fractions` turns template-space points plus per-head parameters (layer thicknesses,
white-matter sharpening, atrophy, lesions, optional sub-millimetre detail) into tissue
*fractions*: every boundary is a linear ramp one voxel wide, so partial volume is rendered, not
labels. It is deterministic; every random draw lives in :mod:`.randomisation`. It works on a
batch of heads at once: points (n, M, 3), per-head scalars (n, 1), per-point fields (n, M).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TISSUES", "Detail", "HeadParams", "head_fractions", "load_atlas", "step"]

TISSUES: tuple[str, ...] = (
    "gm", "wm", "csf", "cortical_bone", "diploe", "skin", "fat", "muscle", "vitreous",
)  # fmt: skip
"""Tissue classes of the head (lesions are separate; ``"vessel"`` only with :class:`Detail`)."""

_ATLAS_FILE = "head_atlas_2mm.npz"
HEAD_CENTRE_MM = (0.0, -8.0, 8.0)  # FOV centre in template (MNI) space
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


def load_template_sites() -> np.ndarray:
    """(M, 3) template (MNI) mm coordinates of white-matter-rich voxels: lesion centres."""
    return _template().lesion_sites


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
# Tissue fractions
# --------------------------------------------------------------------------------------------


def step(d: torch.Tensor, width: float | torch.Tensor) -> torch.Tensor:
    """Soft indicator of the region d < 0: a linear ramp ``width`` mm wide (partial volume)."""
    return (0.5 - d / width).clamp(0.0, 1.0)


def ellipsoid_sd(q: torch.Tensor, semi: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance (mm) of points q (..., 3), relative to an ellipsoid's centre and
    in its axes, to the ellipsoid with semi-axes ``semi`` (broadcast to (..., 3))."""
    r = torch.sqrt(((q / semi) ** 2).sum(-1)).clamp_min(1e-6)
    return q.norm(dim=-1) * (1.0 - 1.0 / r)


@dataclass
class Detail:
    """Sub-millimetre detail at the points, (n, M) each, already averaged over the voxel.

    Attributes:
        sulci: fraction of grey matter that is sulcal CSF (thin sheets the 2 mm atlas blurs).
        wm_jitter: added to the white-matter share of brain tissue before sharpening (gyral
            detail of the GM/WM boundary).
        vessel: fraction of soft tissue, brain and CSF that is a blood vessel.
        trabecular: fraction of marrow (diploe, vertebral bodies) that is trabecular bone.
    """

    sulci: torch.Tensor
    wm_jitter: torch.Tensor
    vessel: torch.Tensor
    trabecular: torch.Tensor


@dataclass
class HeadParams:
    """Per-head parameters of :func:`head_fractions` for a batch of n heads.

    Thickness fields (mm) are given at the points, (n, M), or per head, (n, 1); scalars (n, 1).

    Attributes:
        t_csf, t_skull, t_scalp, t_fat: extra-cerebral CSF, skull, scalp and subcutaneous fat
            thicknesses; ``fat``: smooth field whose high values put fat into the muscle layer.
        t_skin: skin thickness; deep_fat: share of fat in the muscle layer.
        wm_sharpen: factor sharpening the WM share of brain tissue; atrophy: tissue fraction
            below which brain tissue becomes CSF.
        vox: width (mm) of the partial-volume ramp of every boundary (the voxel size).
        lesion_centre, lesion_semi: (n, L, 3) template-space centres and semi-axes (mm);
        lesion_rot: (n, L, 3, 3) rotations (points are multiplied from the left, ``q = d @ R``);
        lesion_on: (n, L) 1 for a lesion, 0 for padding.
        detail: optional sub-millimetre detail (None: the atlas alone).
    """

    t_csf: torch.Tensor
    t_skull: torch.Tensor
    t_scalp: torch.Tensor
    t_fat: torch.Tensor
    fat: torch.Tensor
    t_skin: torch.Tensor
    deep_fat: torch.Tensor
    wm_sharpen: torch.Tensor
    atrophy: torch.Tensor
    vox: torch.Tensor
    lesion_centre: torch.Tensor
    lesion_semi: torch.Tensor
    lesion_rot: torch.Tensor
    lesion_on: torch.Tensor
    detail: Detail | None = None


def _sample(maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Trilinear samples (C, P) of template channels (1, C, I, J, K) at grid points (P, 3)."""
    out = F.grid_sample(maps, grid.view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="border",
                        align_corners=True)  # fmt: skip
    return out.view(maps.shape[1], -1)


def head_fractions(
    p: torch.Tensor, prm: HeadParams
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Tissue fractions of n heads at template-space points.

    Args:
        p: (n, M, 3) points in template (MNI) mm, after each head's geometric transform.
        prm: the heads' parameters.

    Returns:
        (fractions, lesions): fractions of :data:`TISSUES` (plus ``"vessel"`` with detail), each
        (n, M) in [0, 1], and the lesion fractions (n, L, M); all sum to at most 1 per point, the
        rest is air.
    """
    tpl = _template()
    n, m, _ = p.shape
    inv = np.linalg.inv(tpl.affine)
    q = p.reshape(-1, 3) @ p.new_tensor(inv[:3, :3].T) + p.new_tensor(inv[:3, 3])
    size = p.new_tensor(tpl.maps.shape[1:]) - 1.0
    grid = (2.0 * q / size - 1.0).flip(-1)  # grid_sample wants (k, j, i) order
    tissue_maps, structure_maps = _template_tensors(str(p.device))
    gm_p, wm_p, sd_icv, sd_head = _sample(tissue_maps, grid).view(_N_TISSUE_CHANNELS, n, m)
    # Extra-cranial structures only replace skull and soft tissue, which exist only outside the
    # brain and inside the head: sample them on those points only (about a third).
    near = (sd_icv > -4.0) & (sd_head < 20.0)
    idx = near.view(-1).nonzero().squeeze(1)
    struct = p.new_zeros((structure_maps.shape[1], n * m))
    if idx.numel():
        struct[:, idx] = _sample(structure_maps, grid[idx])
    sd_eye, sd_orbit, sd_wall, sd_air, sd_vert, disc = struct.view(-1, n, m)
    inside = near.to(p.dtype)

    vox = prm.vox
    t_csf = prm.t_csf
    t_skull = prm.t_skull.clamp_min(3.0)
    t_scalp = prm.t_scalp.clamp_min(2.0)
    t_off = t_csf + t_skull + t_scalp - _BASE_ENVELOPE_MM

    head = step(sd_head - t_off, vox)
    icv = step(sd_icv - t_csf, vox) * head
    skull = (step(sd_icv - t_csf - t_skull, vox) * head - icv).clamp_min(0.0)
    soft = (head - icv - skull).clamp_min(0.0)

    u = (sd_icv - t_csf) / t_skull  # relative depth in the skull, 0 inner .. 1 outer surface
    dip = step((u - 0.5).abs() * t_skull - 0.2 * t_skull, vox)
    fr: dict[str, torch.Tensor] = {}
    det = prm.detail
    tissue = gm_p + wm_p
    share = wm_p / tissue.clamp_min(1e-6) - 0.5
    if det is not None:
        share = share + det.wm_jitter
    share = (share * prm.wm_sharpen + 0.5).clamp(0.0, 1.0)
    tissue = ((tissue - prm.atrophy) / (1.0 - prm.atrophy)).clamp(0.0, 1.0)
    fr["gm"] = icv * tissue * (1.0 - share)
    fr["wm"] = icv * tissue * share
    if det is not None:
        fr["gm"] = fr["gm"] * (1.0 - det.sulci)
    fr["csf"] = (icv - fr["gm"] - fr["wm"]).clamp_min(0.0)
    fr["diploe"] = skull * dip
    fr["cortical_bone"] = skull - fr["diploe"]
    depth = t_off - sd_head  # mm below the skin surface
    skin = soft * step(depth - prm.t_skin, vox)
    sub_fat = (soft - skin) * step(depth - prm.t_skin - prm.t_fat, vox)
    rest = soft - skin - sub_fat
    mix = (torch.sigmoid(3.0 * (prm.fat - 1.0)) * 2.0 * prm.deep_fat).clamp(0.0, 1.0)
    fr["skin"] = skin
    fr["fat"] = sub_fat + rest * mix
    fr["muscle"] = rest * (1.0 - mix)
    fr["vitreous"] = torch.zeros_like(head)

    def override(name: str, mask: torch.Tensor, targets: Sequence[str]) -> None:
        """Move the fraction ``mask`` of each target tissue to ``name`` ("air" removes it)."""
        mask = mask * inside
        for t in targets:
            moved = fr[t] * mask
            fr[t] = fr[t] - moved
            if name != "air":
                fr[name] = fr[name] + moved

    # Cervical vertebral bodies: marrow inside a cortex, intervertebral discs between them.
    override("cortical_bone", step(sd_vert, vox) * (1 - disc), ("fat", "muscle"))
    override("diploe", step(sd_vert + _WALL_MM, vox) * (1 - disc), ("cortical_bone",))
    override("muscle", step(sd_vert, vox) * disc, ("fat",))
    # Orbital fat behind the globes, then the globes.
    override("fat", step(sd_orbit, vox), ("muscle", "skin", "cortical_bone", "diploe"))
    override("vitreous", step(sd_eye, vox), ("fat", "muscle", "skin", "cortical_bone", "diploe"))
    # Bony walls of the maxillary sinuses and nasal cavity, then all air spaces.
    override("cortical_bone", step(sd_wall, vox), ("fat", "muscle", "diploe"))
    override("air", step(sd_air, vox), ("fat", "muscle", "cortical_bone", "diploe"))

    if det is not None:
        # Trabecular bone inside marrow; vessels through brain, CSF and soft tissue.
        moved = fr["diploe"] * det.trabecular
        fr["diploe"] = fr["diploe"] - moved
        fr["cortical_bone"] = fr["cortical_bone"] + moved
        fr["vessel"] = torch.zeros_like(head)
        for t in ("gm", "wm", "csf", "fat", "muscle"):
            moved = fr[t] * det.vessel
            fr[t] = fr[t] - moved
            fr["vessel"] = fr["vessel"] + moved

    # Lesions replace grey and white matter, in order.
    n_les = prm.lesion_on.shape[1]
    lesions = p.new_zeros((n, n_les, m))
    for j in range(n_les):
        d = p - prm.lesion_centre[:, j, None, :]
        semi = prm.lesion_semi[:, j, None, :]
        box = (d.abs() < semi.amax(-1, keepdim=True) + 2.0 * vox[..., None]).all(-1)
        qd = torch.bmm(d, prm.lesion_rot[:, j])
        frac_in = step(ellipsoid_sd(qd, semi), 1.5 * vox) * box * prm.lesion_on[:, j, None]
        for t in ("gm", "wm"):
            moved = fr[t] * frac_in
            fr[t] = fr[t] - moved
            lesions[:, j] += moved
    return fr, lesions
