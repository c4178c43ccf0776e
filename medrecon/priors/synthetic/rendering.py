"""Training patches rendered directly at any voxel size: :func:`render_patches`.

Each patch is a window of a *virtual scan*: a head (anatomy of :mod:`.anatomy`, drawn by
:func:`.randomisation.draw_heads`) imaged on a grid of the requested voxel size, field of view
and orientation (:func:`.randomisation.draw_scans`). Nothing is resampled: the coordinate-based
anatomy is evaluated at the patch's own voxel centres, so a 0.4 mm patch holds 0.4 mm detail
and a 4 mm patch is a 4 mm image of the same kind of head.

Per patch (batched over the n patches, heavy work in torch on ``device``):

1. **Grid.** Voxel (i, j, k) of the scan sits at ``x = c + A ((i, j, k) - (N - 1) / 2) * s`` in
   head-world mm (scan centre ``c``, axes ``A``, shape ``N``, spacing ``s``). A scan axis shorter
   than the patch is reflected, exactly as :class:`medrecon.sampling.tiling.TiledDenoiser` pads
   a small volume, and the patch position follows the tiling's convention.
2. **Partial volume and slice thickness.** Boundaries are ramps as wide as the in-plane voxel;
   along the slice axis, S sub-samples spread over the slice thickness are averaged (a box
   slice profile), so thick slices look thick, not merely coarse.
3. **Sub-millimetre detail** the 2 mm atlas lacks (:class:`.anatomy.Detail`), from a periodic
   band-limited noise texture sampled at random orientations: sulcal CSF sheets in grey matter,
   a rough GM/WM boundary, vessels (curves where two fields vanish), trabecular plates in
   marrow, tissue texture. Where the voxel is coarser than a detail's wavelength the detail is
   replaced by its mean (what averaging over the voxel gives).
4. **MR**: tissue intensities (physical or random contrast), smooth bias field; scaled by the
   99.5th percentile of in-head magnitudes of the *whole scan* (like
   :meth:`medrecon.priors.normalisation.Normalisation.mr_scale`), estimated from random probe
   voxels of the scan rendered alongside the patch; gamma; Rician noise. A random blur widens
   the partial-volume ramps (so the probes see it too).
   **CT** (HU): tissue HU, trabecular bone, scanner table and head rest, noise that went
   through filtered back-projection (white noise ramp-filtered in the slice plane with a Hann
   window of random cut-off), and -1024 HU outside the reconstruction circle.

Randomness: every draw comes from the caller's CPU ``torch.Generator``; device noise comes from
a device generator seeded from it. The same generator state gives the same patches on the same
device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from medrecon.errors import ConfigError
from medrecon.priors.synthetic.anatomy import (
    HEAD_CENTRE_MM,
    Detail,
    HeadParams,
    head_fractions,
)
from medrecon.priors.synthetic.body import BodyParams, body_fractions
from medrecon.priors.synthetic.randomisation import (
    CT_AIR_HU,
    PATCH_TISSUES,
    Appearance,
    HeadDraws,
    ScanDraws,
    draw_appearance,
    draw_bodies,
    draw_heads,
    draw_scans,
    move,
    take,
    uniform,
)

__all__ = ["RenderedPatches", "render_patches"]

CT_OUTSIDE_HU = -1024.0  # value outside the reconstruction circle (no data there)
_TILE = 64  # voxels per period of the detail texture
_TILE_CYCLES = 8.0  # dominant wavelengths per period: one wavelength spans 8 tile voxels
_BLEND = 4.0 * math.log(2.0)  # detail weight exp(-_BLEND (voxel / wavelength)^2): 1/2 at lambda/2


@dataclass
class RenderedPatches:
    """Output of :func:`render_patches`.

    Attributes:
        image: (n, *patch_size) float32 on the device. MR: magnitude divided by the whole
            scan's in-head 99.5th percentile (~1); CT: HU (air -1000, -1024 outside the
            reconstruction circle).
        position: (n, 3) float32 in [-1, 1]: the patch centre in its scan,
            ``2 (origin + P // 2) / (N - 1) - 1`` per axis (the tiling's convention), clipped.
        spacing: (n, 3) float32 voxel sizes in mm (i, j, k).
        scan_shape: (n, 3) int64 voxels of each virtual scan; origin: (n, 3) int64 first voxel
            of each patch in its scan (0 on axes where the scan is shorter than the patch).
    """

    image: torch.Tensor
    position: torch.Tensor
    spacing: torch.Tensor
    scan_shape: torch.Tensor
    origin: torch.Tensor


@functools.lru_cache(maxsize=4)
def _detail_tile(device: str) -> torch.Tensor:
    """A periodic, band-limited Gaussian random field, unit variance, one dominant wavelength of
    ``_TILE / _TILE_CYCLES`` voxels, padded circularly by one voxel: (1, 1, T+2, T+2, T+2).
    Fixed seed: the per-patch randomness is the orientation and offset it is sampled at."""
    g = torch.Generator().manual_seed(20240612)
    white = torch.randn(_TILE, _TILE, _TILE, generator=g, dtype=torch.float64)
    f = torch.fft.fftfreq(_TILE, d=1.0 / _TILE, dtype=torch.float64)
    k = torch.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    shell = torch.exp(-0.5 * ((k - _TILE_CYCLES) / 1.5) ** 2)
    field = torch.fft.ifftn(torch.fft.fftn(white) * shell).real
    field = (field - field.mean()) / field.std()
    field = F.pad(field[None, None], (1, 1, 1, 1, 1, 1), mode="circular")
    return field.to(device=device, dtype=torch.float32)


def _sample_tile(p: torch.Tensor, rot: torch.Tensor, off: torch.Tensor,
                 wavelength: torch.Tensor) -> torch.Tensor:
    """Detail fields at points p (n, Q, 3) mm for F orientations: rot (n, F, 3, 3), off (n, F, 3)
    in periods, wavelength (n, F) mm -> (n, F, Q), unit variance, dominant wavelength as given."""
    n, q, _ = p.shape
    nf = rot.shape[1]
    period = (_TILE_CYCLES * wavelength)[:, :, None, None]  # mm per tile period
    u = torch.einsum("nqa,nfba->nfqb", p, rot) / period + off[:, :, None, :]
    u = torch.frac(torch.frac(u) + 1.0)  # in [0, 1): wrap into one period
    grid = (2.0 * (u * _TILE + 1.0) / (_TILE + 1) - 1.0).flip(-1)
    tile = _detail_tile(str(p.device))
    out = F.grid_sample(tile, grid.reshape(1, 1, 1, -1, 3), mode="bilinear",
                        padding_mode="border", align_corners=True)  # fmt: skip
    return out.view(n, nf, q)


def _blend(frac: torch.Tensor, mean: torch.Tensor, vox: torch.Tensor,
           wavelength: torch.Tensor) -> torch.Tensor:
    """Detail ``frac`` (n, Q) where the voxel resolves it, its mean (n, 1) where it does not."""
    a = torch.exp(-_BLEND * (vox / wavelength) ** 2)  # (n, 1)
    return a * frac + (1.0 - a) * mean


def _detail(p: torch.Tensor, heads: HeadDraws, ramp: torch.Tensor, vox: torch.Tensor,
            texture_mm: torch.Tensor) -> tuple[Detail, torch.Tensor, torch.Tensor]:
    """Sub-millimetre detail, the tissue texture (n, Q) and a smooth field (n, Q) of
    wavelength 30 mm (bowel content of trunks) at points p (n, Q, 3) mm."""
    d = heads.detail  # (n, 8): see HeadDraws
    lam = torch.stack([d[:, 0], d[:, 2], d[:, 4], d[:, 4], d[:, 6], texture_mm,
                       torch.full_like(texture_mm, 30.0)], dim=1)  # fmt: skip
    f = _sample_tile(p, heads.detail_rot, heads.detail_off, lam)
    to_mm = lam[:, :, None] / (2.0 * math.pi)  # |n| / |grad n| ~ distance to the zero set (mm)
    col = [v[:, None] for v in d.unbind(1)]
    # Sulci: sheets of width w around the zero set of field 0.
    half = col[1] / 2
    sulci = (0.5 - (f[:, 0].abs() * to_mm[:, 0] - half) / ramp).clamp(0.0, 1.0)
    sulci = _blend(sulci, torch.erf(half / to_mm[:, 0] / math.sqrt(2.0)), vox, col[0])
    wm = col[3] * f[:, 1] * torch.exp(-_BLEND * (vox / col[2]) ** 2)
    # Vessels: tubes of radius r around the curves where fields 2 and 3 both vanish.
    dist = torch.sqrt(f[:, 2] ** 2 + f[:, 3] ** 2) * to_mm[:, 2]
    vessel = (0.5 - (dist - col[5]) / ramp).clamp(0.0, 1.0)
    rho = col[5] / to_mm[:, 2]
    vessel = _blend(vessel, 1.0 - torch.exp(-0.5 * rho**2), vox, col[4])
    # Trabecular plates: |n| < t with P(|n| < t) = the bone fraction.
    t = math.sqrt(2.0) * torch.erfinv(col[7])
    trab = (0.5 - (f[:, 4].abs() - t) * to_mm[:, 4] / ramp).clamp(0.0, 1.0)
    trab = _blend(trab, col[7], vox, col[6])
    texture = f[:, 5] * torch.exp(-_BLEND * (vox / texture_mm[:, None]) ** 2)
    return Detail(sulci=sulci, wm_jitter=wm, vessel=vessel, trabecular=trab), texture, f[:, 6]


def _fold(raw: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Scan indices of patch voxels: reflect (without repeating the edge) beyond the scan's end,
    as the tiling pads a volume shorter than a patch. raw (n, P), size (n, 1) -> (n, P)."""
    period = (2 * (size - 1)).clamp_min(1)
    r = raw % period
    folded = torch.where(r >= size, period - r, r)
    return torch.where(size == 1, torch.zeros_like(raw), folded)


def _table_hu(x: torch.Tensor, table_mm: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
    """HU of the background (air, scanner table, pad) at points x (n, Q, 3) relative to the
    head centre or the body axis.

    The table top is a shallow curved plate (radius 800 mm) ``table_mm`` below that centre:
    2 mm carbon-fibre skins (+300 HU) around a 15 mm foam core (-900 HU), 460 mm wide, with a
    25 mm foam pad (-800 HU) on top."""
    lateral = x[..., 0]
    top = -table_mm[:, None] + lateral**2 / 1600.0
    depth = top - x[..., 1]  # mm below the table top (negative: above)
    width = (0.5 - (lateral.abs() - 230.0) / ramp).clamp(0.0, 1.0)

    def band(lo: float, hi: float) -> torch.Tensor:
        return ((0.5 - (lo - depth) / ramp).clamp(0.0, 1.0)
                * (0.5 - (depth - hi) / ramp).clamp(0.0, 1.0))  # fmt: skip

    hu = torch.full_like(depth, CT_AIR_HU)
    hu = hu + width * (band(0.0, 2.0) + band(17.0, 19.0)) * (300.0 - CT_AIR_HU)
    hu = hu + width * band(2.0, 17.0) * (-900.0 - CT_AIR_HU)
    return hu + width * band(-25.0, 0.0) * (-800.0 - CT_AIR_HU)


def _ct_noise(shape: Sequence[int], slice_axis: int, cutoff: float, gen: torch.Generator,
              device: torch.device) -> torch.Tensor:
    """Unit-variance noise of filtered back-projection: white noise filtered in each slice by
    ``|k| * hann(k / cutoff)`` (k radial frequency in units of Nyquist), independent slices."""
    x = torch.randn(tuple(shape), generator=gen, device=device)
    x = x.movedim(slice_axis, 0)
    fy = torch.fft.fftfreq(x.shape[1], device=device) * 2.0
    fz = torch.fft.rfftfreq(x.shape[2], device=device) * 2.0
    k = torch.sqrt(fy[:, None] ** 2 + fz[None, :] ** 2)
    h = k * torch.where(k < cutoff, 0.5 * (1.0 + torch.cos(math.pi * k / cutoff)), 0.0)
    y = torch.fft.irfft2(torch.fft.rfft2(x) * h, s=x.shape[1:])
    y = y / y.std().clamp_min(1e-12)
    return y.movedim(0, slice_axis)


def render_patches(
    modality: str,
    n: int,
    spacing_mm: torch.Tensor,
    patch_size: Sequence[int] = (64, 64, 64),
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    *,
    noise_prob: float = 0.5,
    random_contrast: float = 0.4,
    body_fraction: float | None = None,
    max_subsamples: int = 4,
    probe_points: int = 8192,
) -> RenderedPatches:
    """Render n training patches of synthetic heads at the given voxel sizes.

    Args:
        modality: "MR" or "CT".
        n: number of patches.
        spacing_mm: (n, 3) voxel sizes in mm per axis (i, j, k), e.g. from
            :func:`~medrecon.priors.synthetic.sample_spacings`.
        patch_size: (X, Y, Z) voxels per patch.
        generator: CPU generator of every random draw (None: a fresh unseeded one).
        device: where the rendering runs and the outputs live.
        noise_prob: share of patches with noise (MR Rician, CT FBP-filtered; the rest clean).
        random_contrast: MR only: share of patches with random per-tissue intensities instead
            of a T1/T2/PD/FLAIR-like table.
        body_fraction: share of patches from trunks (chest, abdomen) instead of heads; None:
            0.35 for CT, 0.25 for MR.
        max_subsamples: most sub-samples across a thick slice (cost grows linearly).
        probe_points: MR only: random voxels of the whole scan rendered to find its scale.

    Returns:
        :class:`RenderedPatches`.

    Cost: about ``n * S * (prod(patch_size) + probe_points)`` point evaluations of the anatomy
    (S: sub-samples across the slice, at most ``max_subsamples``), a few hundred bytes of
    working memory each.
    """
    if modality not in ("MR", "CT"):
        raise ConfigError(f"modality must be MR or CT, got {modality!r}.")
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}.")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ConfigError(f"patch_size must be three positive sizes, got {tuple(patch_size)}.")
    spacing = torch.as_tensor(spacing_mm, dtype=torch.float32).detach().cpu()
    if spacing.shape != (n, 3) or not bool((spacing > 0).all()):
        raise ConfigError(f"spacing_mm must be {n} rows of three positive sizes in mm.")
    gen = generator if generator is not None else torch.Generator()
    dev = torch.device(device)

    # Draw order: anatomy and appearance do not depend on the voxel size, so the same generator
    # state gives the same heads at any spacing.
    bias_rms = uniform(gen, 0.05, 0.3, n) if modality == "MR" else torch.zeros(n)
    if body_fraction is None:
        body_fraction = 0.35 if modality == "CT" else 0.25
    body = torch.rand(n, generator=gen) < body_fraction
    heads = draw_heads(gen, n, bias_rms)
    bodies = draw_bodies(gen, n)
    app = draw_appearance(gen, modality, n, heads.lesion_kind, random_contrast, noise_prob)
    # The table lies under the head or, a few mm below the back, under a trunk.
    app.table_mm = torch.where(body, bodies.b[:, 0] + uniform(gen, 0.0, 5.0, n), app.table_mm)
    scans = draw_scans(gen, modality, spacing, patch, body)
    probes = torch.rand(n, probe_points if modality == "MR" else 0, 3, generator=gen)
    dev_seed = int(torch.randint(2**62, (1,), generator=gen))
    dev_gen = torch.Generator(device=dev).manual_seed(dev_seed)

    clean, folds = _render_clean(modality, heads.to(dev), take(bodies, body.nonzero()[:, 0]),
                                 body, app, scans, spacing, patch, probes.to(dev),
                                 max_subsamples, dev)  # fmt: skip
    image = _finish(modality, clean, folds, app, scans, spacing, patch, dev_gen, dev)

    half = torch.tensor([p // 2 for p in patch], dtype=torch.float64)
    extent = (scans.shape.double() - 1.0).clamp_min(1.0)
    position = (2.0 * (scans.origin.double() + half) / extent - 1.0).clamp(-1.0, 1.0)
    return RenderedPatches(
        image=image,
        position=position.to(device=dev, dtype=torch.float32),
        spacing=spacing.to(dev),
        scan_shape=scans.shape.to(dev),
        origin=scans.origin.to(dev),
    )


def _render_clean(modality: str, heads: HeadDraws, bodies: BodyParams, body: torch.Tensor,
                  app: Appearance, scans: ScanDraws, spacing: torch.Tensor,
                  patch: tuple[int, int, int], probes: torch.Tensor, max_subsamples: int,
                  dev: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Noise-free patches (n, *patch) (MR: divided by the scan scale) and the per-axis scan
    indices (n, P_a) of the patch voxels relative to the patch origin (for folding noise).
    ``body`` (n,) marks the trunk samples, ``bodies`` holds their parameters."""
    n = spacing.shape[0]
    m = math.prod(patch)
    sp = spacing.to(dev)
    shape = scans.shape.to(dev)
    ar = torch.arange(n)
    slice_axis = scans.slice_axis
    ramp = spacing.median(dim=1).values  # largest in-plane size
    thick = spacing[ar, slice_axis]
    ramp = ramp * app.blur  # a blurrier point-spread function widens every boundary
    s = int(min(max_subsamples, max(1, math.ceil(float((thick / ramp).max())))))
    vox = torch.maximum(ramp, thick / s).to(dev)[:, None]  # detail resolution
    ramp_d = ramp.to(dev)[:, None]

    # Patch voxel centres in scan-local mm, (n, M, 3), and the probes, (n, K, 3).
    folds, local = [], []
    for a in range(3):
        raw = scans.origin[:, a, None] + torch.arange(patch[a])[None, :]
        idx = _fold(raw, scans.shape[:, a, None]).to(dev)
        folds.append(idx - scans.origin[:, a, None].to(dev))
        local.append((idx.float() - (shape[:, a, None] - 1) / 2.0) * sp[:, a, None])
    grid = torch.stack(torch.broadcast_tensors(local[0][:, :, None, None],
                                               local[1][:, None, :, None],
                                               local[2][:, None, None, :]), dim=-1)
    pts = grid.reshape(n, m, 3)
    if probes.shape[1]:
        pts = torch.cat([pts, (probes - 0.5) * (shape * sp)[:, None, :]], dim=1)
    # Sub-samples across the slice thickness beyond what the in-plane ramp already averages.
    frac = (torch.arange(s, dtype=torch.float32) + 0.5) / s - 0.5
    offs = frac[None, :] * (thick - ramp).clamp_min(0.0)[:, None]  # (n, S)
    e = F.one_hot(slice_axis, 3).float()
    pts = pts[:, None] + (offs[:, :, None, None] * e[:, None, None, :]).to(dev)
    q = pts.shape[1] * pts.shape[2]
    c = sp.new_tensor(HEAD_CENTRE_MM)
    x = c + scans.centre.to(dev)[:, None, :] + torch.bmm(pts.reshape(n, q, 3),
                                                          scans.axes.to(dev).transpose(1, 2))

    fields = heads.fields(x)  # (n, Q, 9)
    p = torch.bmm(x - c, heads.lin.transpose(1, 2)) + c + heads.shift[:, None, :]
    p = p + fields[..., 0:3]
    detail, texture, smooth = _detail(p, heads, ramp_d, vox, app.texture_mm.to(dev))
    fr = {t: torch.zeros_like(texture) for t in PATCH_TISSUES}
    lesions = texture.new_zeros((n, heads.lesion_on.shape[1], q))
    hi = (~body).nonzero()[:, 0].to(dev)
    if hi.numel():
        h = take(heads, hi)
        f = fields[hi]
        prm = HeadParams(
            t_csf=f[..., 3], t_skull=f[..., 4], t_scalp=f[..., 5],
            t_fat=f[..., 6].clamp_min(0.5), fat=f[..., 7], t_skin=h.t_skin,
            deep_fat=h.deep_fat, wm_sharpen=h.wm_sharpen, atrophy=h.atrophy, vox=ramp_d[hi],
            lesion_centre=h.lesion_centre, lesion_semi=h.lesion_semi, lesion_rot=h.lesion_rot,
            lesion_on=h.lesion_on, detail=take(detail, hi),
        )  # fmt: skip
        head_fr, head_lesions = head_fractions(p[hi], prm)
        for t, v in head_fr.items():
            fr[t][hi] = v
        lesions[hi] = head_lesions
    bi = body.nonzero()[:, 0].to(dev)
    if bi.numel():
        bp = replace(move(bodies, dev), vox=ramp_d[bi])
        body_fr = body_fractions(x[bi] - c, bp, smooth[bi], take(detail, bi))
        for t, v in body_fr.items():
            fr[t][bi] = v

    values = app.values.to(dev)
    tex_amp = app.texture.to(dev)
    img = torch.zeros_like(texture)
    total = torch.zeros_like(texture)
    for j, t in enumerate(PATCH_TISSUES):
        if modality == "MR":
            img = img + fr[t] * values[:, j, None] * (1.0 + tex_amp[:, j, None] * texture)
        else:
            img = img + fr[t] * (values[:, j, None] + tex_amp[:, j, None] * texture)
        total = total + fr[t]
    img = img + (lesions * app.lesion_values.to(dev)[:, :, None]).sum(1)
    if modality == "MR":
        img = img * torch.exp(fields[..., 8])
    else:
        total = total + lesions.sum(1)
        img = img + (1.0 - total).clamp_min(0.0) * _table_hu(x - c, app.table_mm.to(dev), ramp_d)
    img = img.view(n, s, -1).mean(1)  # box profile across the slice
    if modality == "MR":
        probe = img[:, m:]
        fg = probe > 0.05 * probe.amax(dim=1, keepdim=True)
        scale = torch.nanquantile(torch.where(fg, probe, torch.nan), 0.995, dim=1)
        img = img[:, :m] / scale.clamp_min(1e-6)[:, None]
    return img.view(n, *patch), folds


def _finish(modality: str, img: torch.Tensor, folds: list[torch.Tensor], app: Appearance,
            scans: ScanDraws, spacing: torch.Tensor, patch: tuple[int, int, int],
            gen: torch.Generator, dev: torch.device) -> torch.Tensor:
    """Gamma and noise (MR) or FBP noise, clipping and the reconstruction circle (CT)."""
    n = img.shape[0]
    out = torch.empty_like(img)
    for b in range(n):
        x = img[b]
        sa = int(scans.slice_axis[b])
        inplane = [a for a in range(3) if a != sa]
        fi, fj, fk = (f[b] for f in folds)
        # Noise is read at the patch's scan voxels: equal where the patch repeats a voxel.
        at = (fi[:, None, None], fj[None, :, None], fk[None, None, :])

        if modality == "MR":
            x = x.clamp_min(0.0) ** float(app.gamma[b])
            if bool(app.noisy[b]):
                sigma = float(app.noise[b])
                n1 = torch.randn(patch, generator=gen, device=dev)[at]
                n2 = torch.randn(patch, generator=gen, device=dev)[at]
                x = torch.sqrt((x + sigma * n1) ** 2 + (sigma * n2) ** 2)
        else:
            if bool(app.noisy[b]):
                vol = float(spacing[b].prod())
                sigma = min(100.0, max(1.0, float(app.noise[b]) / math.sqrt(vol)))
                x = x + sigma * _ct_noise(patch, sa, float(app.kernel[b]), gen, dev)[at]
            x = x.clamp(CT_OUTSIDE_HU, 3071.0)
            # Reconstruction circle: the in-plane field of view's inscribed circle.
            shape = scans.shape[b]
            r2 = torch.zeros((), device=dev)
            for a, f in zip(range(3), (fi, fj, fk), strict=True):
                if a in inplane:
                    idx = f + scans.origin[b, a].to(dev)
                    mm = (idx.float() - (float(shape[a]) - 1) / 2.0) * float(spacing[b, a])
                    view = [1, 1, 1]
                    view[a] = -1
                    r2 = r2 + mm.view(view) ** 2
            radius = 0.5 * min(float(shape[a]) * float(spacing[b, a]) for a in inplane)
            x = torch.where(r2 <= radius**2, x, torch.full_like(x, CT_OUTSIDE_HU))
        out[b] = x
    return out
