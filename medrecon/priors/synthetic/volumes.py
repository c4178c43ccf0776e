"""Held-out synthetic head volumes: ``generate_head`` and ``generate_head_tensor``.

One whole head per integer seed on an isotropic grid, with a T1-, T2- or PD-like MR contrast or
as CT in Hounsfield units. These are the heads of the benchmarks, demos and ``medrecon phantom
--kind head``; their distributions (:func:`.randomisation.draw_volume_anatomy`) are frozen so
that numbers measured on them stay comparable. Training patches at any voxel size come from
:mod:`.rendering` instead.

Generation of one head, all in torch (CPU or CUDA):

1. **Geometry.** Each output voxel centre ``x`` (RAS+ mm, ``Volume.affine @ (i, j, k, 1)``) is
   mapped into template (MNI) space by ``p = c + R diag(1 / (s0 s)) (x - c) + t + u(x)`` where
   ``c`` is the head centre, ``s0 = 0.9`` shrinks MNI space (larger than native heads) to an
   average adult head, ``R`` a random rotation (each Euler angle uniform in +-10 deg), ``s`` a
   scale (isotropic 0.92..1.08 times +-3 % per axis), ``t`` a shift (+-4 mm) and ``u`` a smooth
   elastic displacement (12 random sinusoids of wavelength 50..140 mm, RMS 1..3 mm per axis).
2. **Anatomy** (:func:`.anatomy.head_fractions`): tissue fractions from the template and
   procedural structures, with layer thicknesses from smooth random fields; WM sharpening
   1..2, CSF threshold 0..0.3; 0..3 oedema- or haemorrhage-like lesions.
3. **Appearance.** ``image = sum_t f_t(x) I_t (1 + a_t n(x))`` with tissue fractions ``f_t``,
   per-volume intensities ``I_t`` drawn uniformly from the ranges in ``MR_INTENSITIES`` and
   ``CT_HU`` and a smooth texture field ``n``. MR: times a smooth bias field ``exp(b(x))``
   (RMS of ``b`` 0.05..0.2), scaled so that the 99.9th percentile is 1, then Rician noise
   ``|m + sigma (n1 + i n2)|`` with SNR ``1/sigma`` log-uniform in 15..80. CT: HU with air at
   -1000, plus spatially correlated Gaussian noise (std 2..10 HU).

Determinism: the anatomy depends on ``seed`` only (the same seed gives the same head in T1, T2,
PD and CT); appearance streams depend on ``(seed, modality, contrast)``. All random numbers are
drawn on the CPU, so a seed gives the same head on CPU and CUDA (up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrecon.errors import ConfigError
from medrecon.io.volume import Volume
from medrecon.priors.synthetic.anatomy import (
    HEAD_CENTRE_MM,
    TISSUES,
    HeadParams,
    head_fractions,
    load_template_sites,
)
from medrecon.priors.synthetic.randomisation import (
    CONTRASTS,
    CT_AIR_HU,
    CT_HU,
    CT_TEXTURE,
    LESION_INTENSITIES,
    MODALITY_IDS,
    MR_INTENSITIES,
    MR_TEXTURE,
)

__all__ = ["generate_head", "generate_head_tensor", "head_affine", "volume_fractions"]

MNI_TO_NATIVE = 0.9  # MNI space is larger than an average adult head

# --------------------------------------------------------------------------------------------
# Draws of a held-out head (numpy streams per seed; frozen distributions)
# --------------------------------------------------------------------------------------------


def rng(seed: int, *stream: int) -> np.random.Generator:
    """The numpy stream ``(seed, *stream)`` of a held-out volume."""
    return np.random.default_rng([int(seed), *stream])


def rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix R_z R_y R_x for Euler angles (radians)."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# --------------------------------------------------------------------------------------------
# Held-out volumes (numpy streams per seed; frozen distributions)
# --------------------------------------------------------------------------------------------


def fourier_field(p: torch.Tensor, gen: np.random.Generator, n_terms: int,
                  wavelength_mm: tuple[float, float], rms: float, dims: int = 1) -> torch.Tensor:
    """A smooth random field ``sum_k a_k sin(w_k . p + phi_k)`` at points p (N, 3) in mm.

    Wave vectors have random directions and wavelengths uniform in ``wavelength_mm``; amplitudes
    are Gaussian, scaled so that the field's RMS is ``rms`` per output dimension. Returns (N, dims).
    """
    direction = gen.normal(size=(n_terms, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    w = direction * (2 * np.pi / gen.uniform(*wavelength_mm, size=(n_terms, 1)))
    phase = gen.uniform(0, 2 * np.pi, size=n_terms)
    amp = gen.normal(size=(n_terms, dims)) * rms * math.sqrt(2.0 / n_terms)
    arg = p @ p.new_tensor(w.T) + p.new_tensor(phase)
    return torch.sin(arg) @ p.new_tensor(amp)


class CoarseGrid:
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

    def field(self, gen: np.random.Generator, n_terms: int, wavelength_mm: tuple[float, float],
              rms: float, dims: int = 1) -> torch.Tensor:  # fmt: skip
        """A :func:`fourier_field` on the coarse grid, (dims, ci, cj, ck)."""
        f = fourier_field(self.points, gen, n_terms, wavelength_mm, rms, dims)
        return f.T.reshape(dims, *self.coarse).contiguous()


#: Channels of the coarse random fields of one held-out anatomy.
VOLUME_FIELDS = ("elastic_x", "elastic_y", "elastic_z", "t_csf", "t_skull", "t_scalp", "t_fat",
                 "fat")  # fmt: skip


@dataclass
class VolumeAnatomy:
    """Every random draw of one held-out head's anatomy (stream ``(seed, 0)``)."""

    lin: np.ndarray  # (3, 3) output world -> template, about the head centre
    shift: np.ndarray  # (3,) mm
    fields: torch.Tensor  # (len(VOLUME_FIELDS), ci, cj, ck) coarse fields, constants included
    t_skin: float
    deep_fat: float
    wm_sharpen: float
    atrophy: float
    lesions: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]]  # centre, semi, rot, kind
    meta: dict[str, Any]


def draw_volume_anatomy(coarse: CoarseGrid, seed: int, lesions: bool) -> VolumeAnatomy:
    """Draw the anatomy of held-out head ``seed`` with its fields on ``coarse``."""
    gen = rng(seed, 0)
    # Random similarity transform with small anisotropy (output world -> template space).
    angles = np.deg2rad(gen.uniform(-10, 10, size=3))
    scale = gen.uniform(0.92, 1.08) * gen.uniform(0.97, 1.03, size=3)
    shift = gen.uniform(-4, 4, size=3)
    lin = rotation(angles) @ np.diag(1.0 / (MNI_TO_NATIVE * scale))
    elastic_rms = gen.uniform(1.0, 3.0)
    elastic = coarse.field(gen, 12, (50.0, 140.0), elastic_rms, dims=3)
    t_csf = gen.uniform(1.0, 3.0) + coarse.field(gen, 6, (60, 160), 0.4)
    t_skull = gen.uniform(5.0, 8.0) + coarse.field(gen, 6, (60, 160), 1.0)
    t_scalp = gen.uniform(3.5, 7.0) + coarse.field(gen, 6, (60, 160), 1.0)
    t_skin = float(gen.uniform(1.5, 2.5))
    t_fat = gen.uniform(1.5, 5.0) + coarse.field(gen, 6, (40, 120), 1.0).clamp_min(0)
    deep_fat = float(gen.uniform(0.1, 0.35))
    fat_field = coarse.field(gen, 10, (15, 50), 1.0)
    # The template averages 152 brains, so its GM/WM boundary and sulci are blurred: sharpen the
    # WM share of brain tissue and open sulci and ventricles by random amounts (individual
    # variation, mild atrophy).
    wm_sharpen = float(gen.uniform(1.0, 2.0))
    atrophy = float(gen.uniform(0.0, 0.3))
    fields = torch.cat([elastic, t_csf, t_skull, t_scalp, t_fat, fat_field])

    sites = load_template_sites()
    lesion_list: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = []
    for _ in range(int(gen.integers(0, 4)) if lesions else 0):
        centre_mm = sites[gen.integers(len(sites))].astype(np.float64)
        semi = gen.uniform(3.0, 12.0, size=3)
        rot = rotation(gen.uniform(-np.pi, np.pi, size=3))
        kind = str(gen.choice(list(LESION_INTENSITIES)))
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
    return VolumeAnatomy(lin, shift, fields, t_skin, deep_fat, wm_sharpen, atrophy, lesion_list,
                         meta)  # fmt: skip

# Voxels processed at once: the volume is rendered in slabs along its first axis so that working
# memory stays ~100 MB whatever the grid size (and the data stays cache-friendly).
_SLAB_VOXELS = 1 << 18


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


def head_affine(shape: Sequence[int], spacing_mm: float) -> np.ndarray:
    """RAS+ affine of the generator's output grid: isotropic voxels, head centre in the middle."""
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    centre_vox = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(HEAD_CENTRE_MM) - spacing_mm * centre_vox
    return affine


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


def _slab_fractions(
    anat: VolumeAnatomy, shape: tuple[int, int, int], affine: np.ndarray, spacing_mm: float,
    i0: int, i1: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Tissue fractions (M,) of the slab ``i0:i1`` (first axis), C order, and the lesion
    fractions (L, M)."""
    device = anat.fields.device
    _, nj, nk = shape
    axes = [
        torch.arange(i0, i1, device=device, dtype=torch.float32),
        torch.arange(nj, device=device, dtype=torch.float32),
        torch.arange(nk, device=device, dtype=torch.float32),
    ]
    x = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    x = x * spacing_mm + x.new_tensor(affine[:3, 3])  # RAS+ mm (diagonal affine)
    fields = dict(zip(VOLUME_FIELDS, _interp(anat.fields, _slab_grid(shape, i0, i1, device)),
                      strict=True))  # fmt: skip
    c = x.new_tensor(HEAD_CENTRE_MM)
    p = (x - c) @ x.new_tensor(anat.lin.T) + c + x.new_tensor(anat.shift)
    p = p + torch.stack([fields["elastic_x"], fields["elastic_y"], fields["elastic_z"]], dim=1)

    def scalar(v: float) -> torch.Tensor:
        return torch.tensor([[v]], device=device, dtype=torch.float32)

    les = anat.lesions
    prm = HeadParams(
        t_csf=fields["t_csf"][None], t_skull=fields["t_skull"][None],
        t_scalp=fields["t_scalp"][None], t_fat=fields["t_fat"][None], fat=fields["fat"][None],
        t_skin=scalar(anat.t_skin), deep_fat=scalar(anat.deep_fat),
        wm_sharpen=scalar(anat.wm_sharpen), atrophy=scalar(anat.atrophy),
        vox=scalar(spacing_mm),
        lesion_centre=x.new_tensor(np.array([c_ for c_, *_ in les]).reshape(1, -1, 3)),
        lesion_semi=x.new_tensor(np.array([s for _, s, *_ in les]).reshape(1, -1, 3)),
        lesion_rot=x.new_tensor(np.array([r for _, _, r, _ in les]).reshape(1, -1, 3, 3)),
        lesion_on=x.new_ones((1, len(les))),
    )  # fmt: skip
    fr, lesion_fr = head_fractions(p[None], prm)
    return {t: f[0] for t, f in fr.items()}, lesion_fr[0]


def volume_fractions(
    shape: tuple[int, int, int], spacing_mm: float, seed: int, lesions: bool,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, Any]]:
    """Tissue fractions of the whole held-out head ``seed`` (each (N,), N = prod(shape), C
    order), the lesion fractions (L, N) and the geometric parameters drawn. For inspection and
    tests; rendering goes slab by slab."""
    dev = torch.device(device)
    affine = head_affine(shape, spacing_mm)
    anat = draw_volume_anatomy(CoarseGrid(shape, affine, dev), seed, lesions)
    fr, lesion_fr = _slab_fractions(anat, shape, affine, spacing_mm, 0, shape[0])
    return fr, lesion_fr, anat.meta


def check_args(shape: Sequence[int], spacing_mm: float, modality: str, contrast: str) -> None:
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
    check_args(shape, spacing_mm, modality, contrast)
    shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))
    dev = torch.device(device)
    seed = int(seed)
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}.")
    affine = head_affine(shape3, float(spacing_mm))
    coarse = CoarseGrid(shape3, affine, dev)
    anat = draw_volume_anatomy(coarse, seed, lesions)

    # Appearance stream: depends on (seed, modality, contrast) but not on the anatomy's draws.
    mod_id = MODALITY_IDS[modality]
    if modality == "MR" and contrast == "random":
        contrast = CONTRASTS[int(rng(seed, 1, 99).integers(len(CONTRASTS)))]
    con_id = CONTRASTS.index(contrast) if modality == "MR" else 9
    app = rng(seed, 1, mod_id, con_id)
    gen = torch.Generator().manual_seed(int(app.integers(2**62)))
    table = MR_INTENSITIES[contrast] if modality == "MR" else CT_HU
    tex_amp = MR_TEXTURE if modality == "MR" else CT_TEXTURE
    values = {t: float(app.uniform(*table[t])) for t in TISSUES}
    key = contrast if modality == "MR" else "CT"
    lesion_values = [float(app.uniform(*LESION_INTENSITIES[k][key])) for *_, k in anat.lesions]
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
        bias_rms = float(app.uniform(0.05, 0.2))
        bias_field = coarse.field(app, 4, (200.0, 450.0), bias_rms)
        meta["bias_rms"] = bias_rms

    img = torch.empty(shape3, device=dev)
    planes = max(1, _SLAB_VOXELS // (shape3[1] * shape3[2]))
    for i0 in range(0, shape3[0], planes):
        i1 = min(shape3[0], i0 + planes)
        fr, lesion_fr = _slab_fractions(anat, shape3, affine, float(spacing_mm), i0, i1)
        tex = texture[i0:i1].reshape(-1)
        slab = torch.zeros_like(tex)
        if modality == "MR":
            for t in TISSUES:
                slab += fr[t] * (values[t] * (1.0 + tex_amp[t] * tex))
            for frac, v in zip(lesion_fr, lesion_values, strict=True):
                slab += frac * v
            slab *= torch.exp(_interp(bias_field, _slab_grid(shape3, i0, i1, dev))[0])
        else:
            # HU of a mixture: attenuation is linear in the fractions, air fills the remainder.
            total = torch.zeros_like(tex)
            for t in TISSUES:
                slab += fr[t] * (values[t] + tex_amp[t] * tex)
                total += fr[t]
            for frac, v in zip(lesion_fr, lesion_values, strict=True):
                slab += frac * v
                total += frac
            slab += (1.0 - total).clamp_min(0.0) * CT_AIR_HU
        img[i0:i1] = slab.view(i1 - i0, shape3[1], shape3[2])

    if modality == "MR":
        flat = img.view(-1)
        sub = flat[:: max(1, flat.numel() // 200_000)]
        img /= torch.quantile(sub, 0.999).clamp_min(1e-6)
        snr = float(np.exp(app.uniform(np.log(15.0), np.log(80.0))))
        if noise:
            sigma = 1.0 / snr
            n1 = torch.randn(shape3, generator=gen).to(dev)
            n2 = torch.randn(shape3, generator=gen).to(dev)
            img = torch.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)  # Rician magnitude
        meta["snr"] = snr if noise else None
    else:
        sigma_hu = float(app.uniform(2.0, 10.0))
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


