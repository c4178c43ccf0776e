"""Random draws of the synthetic data: intensity tables, and every draw of the training patches.

Two families:

* **Held-out volumes** (``generate_head``): the intensity tables below; their geometry draws
  (numpy streams per seed, frozen distributions) live in :mod:`.volumes`.
* **Training patches** (:func:`draw_heads`, :func:`draw_scans`, :func:`draw_appearance`,
  :func:`sample_spacings`, used by ``render_patches``): a batch of heads, scans and contrasts,
  every number drawn from one CPU ``torch.Generator``. Wider ranges than the held-out heads and
  SynthSeg-style domain randomisation (Billot et al. 2023): per-tissue MR contrast drawn at
  random (besides T1/T2/PD/FLAIR-like), bias field, gamma, blur, slice thickness, Rician noise;
  CT noise strength and reconstruction kernel, vessels with or without contrast agent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from medrecon.priors.synthetic.anatomy import TISSUES, load_template_sites
from medrecon.priors.synthetic.body import BodyParams

__all__ = [
    "CONTRASTS",
    "CT_AIR_HU",
    "CT_HU",
    "LESION_INTENSITIES",
    "MODALITY_IDS",
    "MR_INTENSITIES",
    "sample_spacings",
]

#: Integer ids of the modalities, as used for network conditioning.
MODALITY_IDS: dict[str, int] = {"MR": 0, "CT": 1}
#: MR contrasts of the held-out volumes (``generate_head``).
CONTRASTS: tuple[str, ...] = ("T1", "T2", "PD")

# Per-contrast uniform ranges of relative MR magnitude (before bias, scaling and noise). Orders
# follow the usual appearance at 1.5-3 T: T1 (MPRAGE-like) WM > GM > CSF, fat bright; T2 (TSE)
# CSF > GM > WM, fat moderately bright; PD: small contrast, CSF ~ GM > WM; FLAIR (training
# patches only): CSF suppressed, GM > WM. Cortical bone has almost no signal; diploe is fatty
# marrow.
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
_FLAIR: dict[str, tuple[float, float]] = {
    "gm": (0.55, 0.70), "wm": (0.42, 0.55), "csf": (0.02, 0.10), "cortical_bone": (0.0, 0.04),
    "diploe": (0.40, 0.70), "skin": (0.40, 0.60), "fat": (0.60, 0.90), "muscle": (0.25, 0.40),
    "vitreous": (0.02, 0.10),
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
    # oedema / demyelination / infarct: T1 dark, T2, PD and FLAIR bright, CT hypodense
    "oedema": {"T1": (0.22, 0.42), "T2": (0.70, 0.95), "PD": (0.84, 0.98),
               "FLAIR": (0.75, 1.0), "CT": (12.0, 22.0)},
    # subacute haemorrhage: T1 bright (methaemoglobin), T2 dark, CT hyperdense
    "haemorrhage": {"T1": (0.88, 1.0), "T2": (0.05, 0.2), "PD": (0.45, 0.6),
                    "FLAIR": (0.5, 0.9), "CT": (55.0, 85.0)},
}  # fmt: skip
LESION_KINDS: tuple[str, ...] = tuple(LESION_INTENSITIES)

# Texture amplitude per tissue of the held-out volumes: fraction of the intensity (MR) or HU (CT).
MR_TEXTURE = {"gm": 0.03, "wm": 0.03, "csf": 0.03, "cortical_bone": 0.1, "diploe": 0.12,
              "skin": 0.06, "fat": 0.05, "muscle": 0.08, "vitreous": 0.02}  # fmt: skip
CT_TEXTURE = {"gm": 1.5, "wm": 1.5, "csf": 2.0, "cortical_bone": 80.0, "diploe": 80.0,
              "skin": 5.0, "fat": 8.0, "muscle": 5.0, "vitreous": 2.0}  # fmt: skip

#: Tissues of the training patches, in the column order of :class:`Appearance` values; lung,
#: liver and organ (heart, kidneys, bowel wall) occur in trunks only.
PATCH_TISSUES: tuple[str, ...] = (*TISSUES, "vessel", "lung", "liver", "organ")
# Trunk tissues per MR contrast (relative magnitude) and in CT (HU).
_BODY_MR: dict[str, dict[str, tuple[float, float]]] = {
    "T1": {"lung": (0.0, 0.06), "liver": (0.50, 0.65), "organ": (0.35, 0.50)},
    "T2": {"lung": (0.0, 0.05), "liver": (0.18, 0.30), "organ": (0.40, 0.65)},
    "PD": {"lung": (0.02, 0.10), "liver": (0.55, 0.68), "organ": (0.60, 0.78)},
    "FLAIR": {"lung": (0.0, 0.05), "liver": (0.35, 0.48), "organ": (0.40, 0.58)},
}
_BODY_CT: dict[str, tuple[float, float]] = {"lung": (-900.0, -780.0), "liver": (45.0, 75.0),
                                            "organ": (20.0, 50.0)}


# --------------------------------------------------------------------------------------------
# Training patches (one CPU torch.Generator per call)
# --------------------------------------------------------------------------------------------

MNI_TO_NATIVE = 0.9  # MNI space is larger than an average adult head
SPACING_RANGE_MM = (0.4, 4.0)  # in-plane voxel sizes of the training distribution
MAX_THICKNESS_MM = 6.0  # through-plane


def uniform(gen: torch.Generator, lo: float, hi: float, *size: int) -> torch.Tensor:
    """Uniform float32 draws in [lo, hi) of the given size."""
    return lo + (hi - lo) * torch.rand(size, generator=gen)


def _log_u(gen: torch.Generator, lo: float | torch.Tensor, hi: float | torch.Tensor,
           *size: int) -> torch.Tensor:
    """Log-uniform draws in [lo, hi) (bounds may be tensors of ``size``)."""
    llo, lhi = torch.log(torch.as_tensor(lo)), torch.log(torch.as_tensor(hi))
    return torch.exp(llo + (lhi - llo) * torch.rand(size, generator=gen))


def sample_spacings(n: int, generator: torch.Generator) -> torch.Tensor:
    """Voxel sizes (n, 3) float32 in mm per axis (i, j, k): the training distribution.

    In-plane size log-uniform in 0.4-4 mm; 30 % isotropic voxels, else the second in-plane size
    equals the first (70 %) or differs by up to a factor 1.33, and the through-plane size is
    log-uniform between the in-plane size and 6 mm. The slice axis (the one with the largest
    size) is i, j or k at random.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    ip = _log_u(generator, *SPACING_RANGE_MM, n)
    second = ip * torch.where(torch.rand(n, generator=generator) < 0.7, torch.ones(n),
                              _log_u(generator, 0.75, 1.33, n))
    second = second.clamp(*SPACING_RANGE_MM)
    thick = _log_u(generator, torch.maximum(ip, second), torch.full((n,), MAX_THICKNESS_MM), n)
    iso = torch.rand(n, generator=generator) < 0.3
    sp = torch.stack([ip, torch.where(iso, ip, second), torch.where(iso, ip, thick)], dim=1)
    # Put the slice (last) column on a random axis, keeping the in-plane pair's order random too.
    perm = torch.argsort(torch.rand(n, 3, generator=generator), dim=1)
    return torch.gather(sp, 1, perm).to(torch.float32)


@dataclass
class Fourier:
    """Batched smooth random fields ``f(x) = offset + sum_k amp_k sin(w_k . x + phase_k)``.

    Attributes: w (n, T, 3) rad/mm, phase (n, T), amp (n, T, D), offset (n, D).
    """

    w: torch.Tensor
    phase: torch.Tensor
    amp: torch.Tensor
    offset: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Fields at points x (n, M, 3) mm -> (n, M, D)."""
        arg = torch.baddbmm(self.phase[:, None, :], x, self.w.transpose(1, 2))
        return torch.bmm(torch.sin(arg), self.amp) + self.offset[:, None, :]

    def to(self, device: torch.device) -> Fourier:
        return Fourier(*(t.to(device) for t in (self.w, self.phase, self.amp, self.offset)))


def draw_fourier(gen: torch.Generator, n: int,
                 specs: list[tuple[int, tuple[float, float], torch.Tensor, torch.Tensor, int]],
                 ) -> Fourier:  # fmt: skip
    """One :class:`Fourier` holding several independent fields (block structure).

    ``specs``: per field (terms T, wavelength range mm, RMS (n,), offset (n,), dims D); the
    output channels are the fields' dims in order.
    """
    t_all = sum(s[0] for s in specs)
    d_all = sum(s[4] for s in specs)
    amp = torch.zeros(n, t_all, d_all)
    offset = torch.zeros(n, d_all)
    t0 = d0 = 0
    ws, phases = [], []
    for terms, (lo, hi), rms, off, dims in specs:
        direction = torch.randn(n, terms, 3, generator=gen)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        ws.append(direction * (2 * math.pi / uniform(gen, lo, hi, n, terms, 1)))
        phases.append(uniform(gen, 0.0, 2 * math.pi, n, terms))
        a = torch.randn(n, terms, dims, generator=gen) * math.sqrt(2.0 / terms)
        amp[:, t0:t0 + terms, d0:d0 + dims] = a * rms.view(n, 1, 1)
        offset[:, d0:d0 + dims] = off.view(n, 1)
        t0, d0 = t0 + terms, d0 + dims
    return Fourier(torch.cat(ws, 1), torch.cat(phases, 1), amp, offset)


#: Output channels of :attr:`HeadDraws.fields`.
PATCH_FIELDS = ("elastic_x", "elastic_y", "elastic_z", "t_csf", "t_skull", "t_scalp", "t_fat",
                "fat", "bias")  # fmt: skip


@dataclass
class HeadDraws:
    """Anatomy of n training heads (all tensors on the CPU until :meth:`to`).

    ``lin`` (n, 3, 3) and ``shift`` (n, 3) map head-world mm to template mm about the head
    centre; ``fields`` gives :data:`PATCH_FIELDS` at world points (the bias field is an
    appearance draw but shares the evaluation); scalars are (n, 1); lesions are padded to 3.
    ``detail_rot`` (n, 7, 3, 3), ``detail_off`` (n, 7, 3): random orientations and offsets of
    the detail texture for sulci, WM jitter, two vessel fields, trabeculae, tissue texture and
    the smooth field of trunks (bowel);
    ``detail`` (n, 8):
    sulcal wavelength and width, WM-jitter wavelength and amplitude, vessel wavelength and
    radius, trabecular wavelength and bone fraction (mm or fractions).
    """

    lin: torch.Tensor
    shift: torch.Tensor
    fields: Fourier
    t_skin: torch.Tensor
    deep_fat: torch.Tensor
    wm_sharpen: torch.Tensor
    atrophy: torch.Tensor
    lesion_centre: torch.Tensor
    lesion_semi: torch.Tensor
    lesion_rot: torch.Tensor
    lesion_on: torch.Tensor
    lesion_kind: torch.Tensor  # (n, 3) int64 index into LESION_KINDS
    detail_rot: torch.Tensor
    detail_off: torch.Tensor
    detail: torch.Tensor

    def to(self, device: torch.device) -> HeadDraws:
        out = {k: (v.to(device) if isinstance(v, (torch.Tensor, Fourier)) else v)
               for k, v in self.__dict__.items()}  # fmt: skip
        return HeadDraws(**out)


def random_rotations(gen: torch.Generator, n: int, max_deg: float | None = None) -> torch.Tensor:
    """(n, 3, 3) rotations: uniform on SO(3) (``max_deg`` None) or Euler angles within
    +-``max_deg`` about each axis."""
    if max_deg is None:
        q = torch.randn(n, 4, generator=gen)
        q = q / q.norm(dim=1, keepdim=True)
        w, x, y, z = q.unbind(1)
        return torch.stack([
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ], dim=1).view(n, 3, 3)  # fmt: skip
    a = torch.deg2rad(uniform(gen, -max_deg, max_deg, n, 3))
    c, s = torch.cos(a), torch.sin(a)
    one, zero = torch.ones(n), torch.zeros(n)
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1)
    return rz.view(n, 3, 3) @ ry.view(n, 3, 3) @ rx.view(n, 3, 3)


def draw_heads(gen: torch.Generator, n: int, bias_rms: torch.Tensor) -> HeadDraws:
    """Anatomy of n training heads; ``bias_rms`` (n,) is the MR bias field's RMS (0 for CT)."""
    scale = uniform(gen, 0.88, 1.12, n, 1) * uniform(gen, 0.95, 1.05, n, 3)
    rot = random_rotations(gen, n, 12.0)
    lin = rot @ torch.diag_embed(1.0 / (MNI_TO_NATIVE * scale))
    shift = uniform(gen, -4.0, 4.0, n, 3)

    def const(lo: float, hi: float) -> torch.Tensor:
        return uniform(gen, lo, hi, n)

    zeros = torch.zeros(n)
    fields = draw_fourier(gen, n, [
        (12, (50.0, 140.0), const(1.0, 3.5), zeros, 3),  # elastic displacement (mm)
        (6, (60.0, 160.0), torch.full((n,), 0.4), const(0.8, 3.5), 1),  # extra-cerebral CSF
        (6, (60.0, 160.0), torch.ones(n), const(4.5, 8.5), 1),  # skull
        (6, (60.0, 160.0), torch.ones(n), const(3.0, 8.0), 1),  # scalp
        (6, (40.0, 120.0), torch.ones(n), const(1.5, 6.0), 1),  # subcutaneous fat
        (10, (15.0, 50.0), torch.ones(n), zeros, 1),  # fat islands in muscle
        (4, (150.0, 450.0), bias_rms, zeros, 1),  # MR bias field (log)
    ])  # fmt: skip
    sites = torch.from_numpy(load_template_sites())
    lesion_on = (torch.arange(3)[None, :] < torch.randint(0, 4, (n, 1), generator=gen)).float()
    lesion_on = lesion_on * (torch.rand(n, 1, generator=gen) < 0.6)  # 40 % without lesions
    centre = sites[torch.randint(len(sites), (n, 3), generator=gen)].float()
    detail = torch.stack([
        uniform(gen, 5.0, 10.0, n), uniform(gen, 0.4, 1.2, n),  # sulci: wavelength, width
        uniform(gen, 4.0, 9.0, n), uniform(gen, 0.05, 0.3, n),  # WM jitter: wavelength, amplitude
        uniform(gen, 10.0, 25.0, n), uniform(gen, 0.3, 1.0, n),  # vessels: wavelength, radius (mm)
        uniform(gen, 1.2, 2.5, n), uniform(gen, 0.2, 0.45, n),  # trabeculae: wavelength, BV/TV
    ], dim=1)  # fmt: skip
    return HeadDraws(
        lin=lin, shift=shift, fields=fields,
        t_skin=const(1.2, 2.8)[:, None], deep_fat=const(0.05, 0.4)[:, None],
        wm_sharpen=const(1.0, 2.5)[:, None], atrophy=const(0.0, 0.35)[:, None],
        lesion_centre=centre, lesion_semi=uniform(gen, 2.0, 14.0, n, 3, 3),
        lesion_rot=random_rotations(gen, 3 * n).view(n, 3, 3, 3), lesion_on=lesion_on,
        lesion_kind=torch.randint(len(LESION_KINDS), (n, 3), generator=gen),
        detail_rot=random_rotations(gen, 7 * n).view(n, 7, 3, 3),
        detail_off=torch.rand(n, 7, 3, generator=gen), detail=detail,
    )  # fmt: skip


@dataclass
class ScanDraws:
    """Geometry of n virtual scans and where each patch lies in its scan.

    ``axes`` (n, 3, 3): column a is the world direction of array axis a; ``centre`` (n, 3) the
    scan centre in head-world mm; ``shape`` (n, 3) the scan's voxels per axis; ``origin`` (n, 3)
    the patch's first voxel; ``slice_axis`` (n,) the axis of the largest voxel size.
    """

    axes: torch.Tensor
    centre: torch.Tensor
    shape: torch.Tensor
    origin: torch.Tensor
    slice_axis: torch.Tensor


def _signed_permutations(gen: torch.Generator, n: int) -> torch.Tensor:
    """(n, 3, 3) random signed permutation matrices (axis order and flips)."""
    perm = torch.argsort(torch.rand(n, 3, generator=gen), dim=1)
    sign = torch.where(torch.rand(n, 3, generator=gen) < 0.5, -1.0, 1.0)
    eye = torch.eye(3)[perm]  # row a = unit vector of world axis perm[a]
    return (eye * sign[:, :, None]).transpose(1, 2)  # column a: world direction of array axis a


def draw_scans(gen: torch.Generator, modality: str, spacing: torch.Tensor,
               patch: tuple[int, int, int], body: torch.Tensor) -> ScanDraws:
    """Scan geometry for n patches of the given voxel sizes (n, 3) mm.

    MR: any acquisition plane (random signed axis permutation) tilted by up to 15 deg, field of
    view 170-260 mm in-plane. CT: axial slices (the slice axis is superior-inferior), gantry
    and pose tilt up to 12 deg, display field of view 180-360 mm. Through-plane coverage is
    log-uniform in 30-220 mm. The scan is centred within +-15/20 mm of the head centre in
    x/y and anywhere from the neck (-90 mm) to the vertex (+50 mm) in z for axial slices.
    Trunks (``body`` (n,) True): in-plane field of view 300-480 mm (CT) or 300-420 mm (MR),
    centred within 20 mm of the body axis, anywhere along it.
    """
    n = spacing.shape[0]
    # The slice axis: the largest voxel size (ties, e.g. isotropic voxels, broken at random).
    slice_axis = torch.argmax(spacing * (1.0 + 1e-3 * torch.rand(n, 3, generator=gen)), dim=1)
    base = _signed_permutations(gen, n)
    if modality == "CT":
        # Make the slice axis the superior-inferior (world z) direction: swap columns so that
        # the column holding +-z is the slice axis.
        zcol = torch.argmax(base[:, 2].abs(), dim=1)
        cols = torch.arange(3).expand(n, 3).clone()
        cols[torch.arange(n), zcol] = slice_axis
        cols[torch.arange(n), slice_axis] = zcol
        base = torch.gather(base, 2, cols[:, None, :].expand(n, 3, 3))
        tilt = random_rotations(gen, n, 12.0)
        fov = torch.where(body[:, None], uniform(gen, 300.0, 480.0, n, 1),
                          uniform(gen, 180.0, 360.0, n, 1)).expand(n, 3).clone()
    else:
        tilt = random_rotations(gen, n, 15.0)
        fov = torch.where(body[:, None], uniform(gen, 300.0, 420.0, n, 3),
                          uniform(gen, 170.0, 260.0, n, 3))
    axes = tilt @ base
    cover = _log_u(gen, 30.0, 220.0, n)
    fov[torch.arange(n), slice_axis] = cover
    shape = torch.clamp(torch.round(fov / spacing), min=1).to(torch.int64)
    # Scan centre (world offset from the head centre): axial coverage anywhere from the neck to
    # the vertex, other planes within a few cm of the centre.
    axial = axes[torch.arange(n), 2, slice_axis].abs() > 0.7
    z = torch.where(axial, uniform(gen, -90.0, 50.0, n), uniform(gen, -40.0, 30.0, n))
    z = torch.where(body, uniform(gen, -200.0, 200.0, n), z)
    centre = torch.stack([uniform(gen, -15.0, 15.0, n), uniform(gen, -20.0, 20.0, n), z], dim=1)
    # Patch placement: 85 % centred on a random point of the head and neck (an ellipsoid of
    # semi-axes 75, 95, 100 mm) or of the trunk (150, 110, 60 mm about the scan centre's
    # height), the rest anywhere in the scan (background included).
    p = torch.tensor(patch, dtype=torch.int64)
    room = (shape - p).clamp_min(0)
    anywhere = torch.floor(torch.rand(n, 3, generator=gen) * (room + 1)).to(torch.int64)
    ball = torch.randn(n, 3, generator=gen)
    ball = ball / ball.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=gen) ** (1 / 3)
    target = torch.where(body[:, None], ball * torch.tensor([150.0, 110.0, 60.0]),
                         ball * torch.tensor([75.0, 95.0, 100.0]) + torch.tensor([0.0, 0.0, -10.0]))
    target[:, 2] += torch.where(body, centre[:, 2], torch.zeros(n))
    idx = (axes.transpose(1, 2) @ (target - centre)[:, :, None])[:, :, 0] / spacing
    idx = idx + (shape - 1) / 2.0 - (p // 2)
    aimed = torch.minimum(torch.round(idx).to(torch.int64).clamp_min(0), room)
    origin = torch.where(torch.rand(n, 1, generator=gen) < 0.85, aimed, anywhere)
    return ScanDraws(axes, centre, shape, origin, slice_axis)


@dataclass
class Appearance:
    """Per-sample appearance: tissue values (n, len(PATCH_TISSUES)), lesion values (n, 3),
    texture amplitudes (n, len(PATCH_TISSUES)) and scalars (n,): texture wavelength (mm),
    gamma, blur (factor >= 1 widening the partial-volume ramps), noise level (MR: sigma
    relative to the scale; CT: HU for 1 mm^3 voxels),
    CT kernel cut-off (fraction of Nyquist), CT table height (mm below the head centre) and
    whether the sample is noisy."""

    values: torch.Tensor
    lesion_values: torch.Tensor
    texture: torch.Tensor
    texture_mm: torch.Tensor
    gamma: torch.Tensor
    blur: torch.Tensor
    noise: torch.Tensor
    kernel: torch.Tensor
    table_mm: torch.Tensor
    noisy: torch.Tensor


#: Physical MR contrasts of the training patches; the rest are SynthSeg-style random contrasts.
PATCH_CONTRASTS: tuple[str, ...] = ("T1", "T2", "PD", "FLAIR")


def draw_appearance(gen: torch.Generator, modality: str, n: int, lesion_kind: torch.Tensor,
                    random_contrast: float, noise_prob: float) -> Appearance:
    """Appearance of n patches.

    MR: with probability ``random_contrast`` every tissue's intensity is uniform in [0, 1]
    (cortical bone in [0, 0.1]: it has no MR signal in any sequence), else a T1, T2, PD or
    FLAIR-like table widened by +-0.08; vessels are flow voids (60 %) or bright; texture up to
    10 %; gamma exp(U(-0.35, 0.35)); blur: ramps 1-2 times wider for 30 %; Rician SNR
    log-uniform 8-150. CT: the HU table (marrow -60..140 HU between trabeculae, vessels 30-60
    HU or 150-400 HU with contrast agent for 25 %, which also enhances organs by up to 120 HU),
    noise 4-25 HU for 1 mm^3 voxels, kernel
    cut-off 0.45-1 Nyquist. ``noise_prob``: the share of noisy samples.
    """
    k = len(PATCH_TISSUES)
    values = torch.zeros(n, k)
    if modality == "MR":
        table_id = torch.randint(len(PATCH_CONTRASTS), (n,), generator=gen)
        rand = torch.rand(n, generator=gen) < random_contrast
        tables = [{**(_FLAIR if c == "FLAIR" else MR_INTENSITIES[c]), **_BODY_MR[c]}
                  for c in PATCH_CONTRASTS]
        names = [t for t in PATCH_TISSUES if t != "vessel"]
        cols = [PATCH_TISSUES.index(t) for t in names]
        lo = torch.tensor([[t[name][0] for name in names] for t in tables])[table_id]
        hi = torch.tensor([[t[name][1] for name in names] for t in tables])[table_id]
        u = torch.rand(n, len(names), generator=gen)
        values[:, cols] = (lo - 0.08 + u * (hi - lo + 0.16)).clamp(0.0, 1.0)
        void = torch.rand(n, generator=gen) < 0.6  # flow void, else bright (inflow, contrast)
        values[:, PATCH_TISSUES.index("vessel")] = torch.where(
            void, uniform(gen, 0.0, 0.1, n), uniform(gen, 0.6, 1.0, n))
        les = torch.tensor([[LESION_INTENSITIES[kind][c] for c in PATCH_CONTRASTS]
                            for kind in LESION_KINDS])  # (kinds, contrasts, 2)
        bounds = les[lesion_kind, table_id[:, None]]  # (n, 3, 2)
        u = torch.rand(n, 3, generator=gen)
        lesion_values = bounds[..., 0] + u * (bounds[..., 1] - bounds[..., 0])
        random_values = torch.rand(n, k, generator=gen)
        random_values[:, TISSUES.index("cortical_bone")] *= 0.1
        random_values[:, PATCH_TISSUES.index("lung")] *= 0.1  # air-filled: no signal
        values = torch.where(rand[:, None], random_values, values)
        lesion_values = torch.where(rand[:, None], torch.rand(n, 3, generator=gen),
                                    lesion_values)
        tex = uniform(gen, 0.0, 0.10, n, k)
        gamma = torch.exp(uniform(gen, -0.35, 0.35, n))
        blur = torch.where(torch.rand(n, generator=gen) < 0.3, uniform(gen, 1.0, 2.0, n),
                           torch.ones(n))
        noise = 1.0 / _log_u(gen, 8.0, 150.0, n)
    else:
        ct = dict(CT_HU, cortical_bone=(1200.0, 2000.0), diploe=(-60.0, 140.0), **_BODY_CT)
        for j, t in enumerate(PATCH_TISSUES):
            if t != "vessel":
                values[:, j] = uniform(gen, *ct[t], n)
        contrast_agent = torch.rand(n, generator=gen) < 0.25
        values[:, PATCH_TISSUES.index("vessel")] = torch.where(
            contrast_agent, uniform(gen, 150.0, 400.0, n), uniform(gen, 30.0, 60.0, n))
        organ = PATCH_TISSUES.index("organ")  # enhancing organs with contrast agent
        values[:, organ] += contrast_agent * uniform(gen, 0.0, 120.0, n)
        bounds = torch.tensor([LESION_INTENSITIES[kind]["CT"] for kind in LESION_KINDS])
        bounds = bounds[lesion_kind]  # (n, 3, 2)
        u = torch.rand(n, 3, generator=gen)
        lesion_values = bounds[..., 0] + u * (bounds[..., 1] - bounds[..., 0])
        amp = torch.tensor([CT_TEXTURE.get(t, 5.0) for t in PATCH_TISSUES])
        tex = amp * uniform(gen, 0.3, 1.5, n, 1)
        gamma = torch.ones(n)
        blur = torch.ones(n)
        noise = _log_u(gen, 4.0, 25.0, n)
    texture_mm = _log_u(gen, 1.0, 6.0, n)
    kernel = uniform(gen, 0.45, 1.0, n)
    table_mm = uniform(gen, 115.0, 140.0, n)
    noisy = torch.rand(n, generator=gen) < noise_prob
    return Appearance(values, lesion_values, tex, texture_mm, gamma, blur, noise, kernel,
                      table_mm, noisy)  # fmt: skip


def take(obj: Any, idx: torch.Tensor) -> Any:
    """The draws of the samples ``idx`` of a batch: every tensor field (and every field of a
    nested :class:`Fourier`) of a dataclass indexed along its first dimension."""
    out = {}
    for key, value in obj.__dict__.items():
        if isinstance(value, torch.Tensor):
            out[key] = value[idx]
        elif isinstance(value, Fourier):
            out[key] = take(value, idx)
        else:
            out[key] = value
    return type(obj)(**out)


def move(obj: Any, device: torch.device) -> Any:
    """A dataclass of draws with every tensor field moved to ``device``."""
    return type(obj)(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                        for k, v in obj.__dict__.items()})  # fmt: skip


def draw_bodies(gen: torch.Generator, n: int) -> BodyParams:
    """Trunk parameters of n samples (chest or abdomen, adult sizes); ``vox`` is set to 1 mm
    here and replaced by the renderer."""
    def u(lo: float, hi: float) -> torch.Tensor:
        return uniform(gen, lo, hi, n, 1)

    harm = torch.cat([uniform(gen, -0.04, 0.04, n, 3), uniform(gen, 0.0, 2 * math.pi, n, 3)], 1)
    return BodyParams(
        kind=torch.randint(0, 2, (n, 1), generator=gen).float(), a=u(130.0, 190.0),
        b=u(90.0, 135.0), harm=harm, t_skin=u(1.2, 2.5), t_fat=u(4.0, 40.0),
        t_muscle=u(6.0, 20.0), z0=u(0.0, 100.0), vert_pitch=u(24.0, 36.0), disc=u(5.0, 10.0),
        vert_depth=u(50.0, 75.0), rib_pitch=u(20.0, 32.0), rib_drop=u(20.0, 60.0),
        rib_r=u(4.0, 7.0), heart_x=u(-40.0, -15.0), aorta_r=u(9.0, 15.0), gas=u(0.8, 2.0),
        vox=torch.ones(n, 1),
    )  # fmt: skip
