"""How a prior is watched while it trains: validation denoising PSNR and unconditional previews.

Validation: a fixed batch of held-out patches (:class:`~medrecon.priors.data.PatchBatch`) is
noised with x + sigma n (noise seeded per sigma) and denoised once; PSNR in model space with
data range 1, overall and per group of patches (modality; for rendered training also the
patches at the reference voxel size and the sub-millimetre ones).

Previews: the deterministic EDM Heun sampler (Karras et al. 2022, Alg. 1) draws one patch per
modality and preview voxel size; the orthogonal central slices are drawn by
:func:`medrecon.report.orthogonal_slices_figure`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from medrecon.priors.config import TrainConfig
from medrecon.priors.data import PatchBatch, _seed_int
from medrecon.priors.normalisation import MODALITY_IDS
from medrecon.priors.schedules import edm_sigmas

#: A validation patch is "fine" when its smallest voxel size is below this (mm).
FINE_SPACING_MM = 1.0


# --------------------------------------------------------------------------- previews
@torch.no_grad()
def edm_sample(denoiser: torch.nn.Module, shape: Sequence[int], modality: torch.Tensor | None,
               position: torch.Tensor | None, num_steps: int = 18,
               generator: torch.Generator | None = None, sigma_max: float | None = None,
               device: torch.device | str = "cpu",
               spacing: torch.Tensor | None = None) -> torch.Tensor:
    """Unconditional EDM Heun sampler (deterministic) for previews.

    ``spacing`` (B, 3) mm is passed to a denoiser conditioned on the voxel size. Returns
    samples of ``shape`` (B, 1, X, Y, Z) in model space.
    """
    smax = float(sigma_max if sigma_max is not None else denoiser.sigma_max)
    sig = edm_sigmas(num_steps, denoiser.sigma_min, smax, device=device)
    x = torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device) * sig[0]

    def d(z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return denoiser(z, s, modality=modality, position=position, spacing=spacing)

    for i in range(num_steps):
        s, s_next = sig[i], sig[i + 1]
        slope = (x - d(x, s)) / s
        x_next = x + (s_next - s) * slope
        if s_next > 0:  # Heun correction
            slope2 = (x_next - d(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * 0.5 * (slope + slope2)
        x = x_next
    return x


def save_preview_png(samples: torch.Tensor, labels: Sequence[str], path: Path,
                     vmin: float = 0.0, vmax: float = 1.0, title: str | None = None) -> None:
    """Orthogonal central slices of each sample (B, 1, X, Y, Z), one row per sample, grey
    window [vmin, vmax] (model space), through :func:`medrecon.report.orthogonal_slices_figure`
    (panels in voxel axes: the samples may have different voxel sizes)."""
    from medrecon.report import orthogonal_slices_figure

    vols = {label: samples[i, 0].float().cpu().numpy() for i, label in enumerate(labels)}
    path.parent.mkdir(parents=True, exist_ok=True)
    orthogonal_slices_figure(vols, path, window=(vmin, vmax), error_of=(), title=title,
                             footnote="Unconditional EMA samples in model space.", dpi=100)


def preview_spacings(config: TrainConfig) -> list[tuple[float, float, float]]:
    """Voxel sizes of the previews: the reference one, and for a prior conditioned on the
    voxel size also 0.5 mm isotropic (the fine end users bring)."""
    ref = tuple(float(v) for v in config.data.spacing_mm)
    out = [ref]
    if config.network.uses_spacing and ref != (0.5, 0.5, 0.5):
        out.append((0.5, 0.5, 0.5))
    return out  # type: ignore[return-value]


@torch.no_grad()
def write_preview(denoiser: torch.nn.Module, config: TrainConfig, path: Path,
                  device: torch.device) -> None:
    """One unconditional patch per modality and preview voxel size (EDM Heun,
    ``log.preview_steps`` steps, centre position), saved as orthogonal slices."""
    combos = [(m, sp) for sp in preview_spacings(config) for m in config.data.modalities]
    ids = torch.tensor([MODALITY_IDS[m] for m, _ in combos], device=device)
    spacing = torch.tensor([list(sp) for _, sp in combos], dtype=torch.float32, device=device)
    g = torch.Generator().manual_seed(_seed_int(config.seed, 1234))
    x = edm_sample(denoiser, (len(combos), 1, *config.data.patch_size), ids,
                   torch.zeros(len(combos), 3, device=device), config.log.preview_steps, g,
                   device=device, spacing=spacing)
    labels = [f"{m} {'x'.join(f'{v:g}' for v in sp)} mm" for m, sp in combos]
    save_preview_png(x, labels, path, title=f"{config.name}: {path.stem}")


# --------------------------------------------------------------------------- validation
def validation_groups(config: TrainConfig) -> list[str]:
    """Names of the patch groups :func:`validation_psnr` reports besides the overall PSNR."""
    groups = list(config.data.modalities)
    if config.data.source == "rendered":
        groups += ["ref", "fine"]
    return groups


def validation_fields(config: TrainConfig) -> list[str]:
    """Columns of ``val.csv``."""
    sig = config.log.val_sigmas
    return (["step"] + [f"psnr_{s:g}" for s in sig]
            + [f"psnr_{s:g}_{g}" for s in sig for g in validation_groups(config)])


def group_masks(batch: PatchBatch, reference_mm: Sequence[float]) -> dict[str, torch.Tensor]:
    """(B,) boolean masks of the validation groups: per modality, ``ref`` (patches at the
    reference voxel size) and ``fine`` (smallest voxel size below :data:`FINE_SPACING_MM`)."""
    out = {name: batch.modality == mid for name, mid in MODALITY_IDS.items()}
    ref = torch.as_tensor([float(v) for v in reference_mm], device=batch.spacing.device)
    out["ref"] = torch.isclose(batch.spacing, ref.expand_as(batch.spacing)).all(dim=1)
    out["fine"] = batch.spacing.min(dim=1).values < FINE_SPACING_MM
    return out


@torch.no_grad()
def validation_psnr(denoiser: torch.nn.Module, batch: PatchBatch, sigmas: Sequence[float],
                    seed: int, groups: Mapping[str, torch.Tensor] | None = None,
                    chunk: int = 4) -> dict[str, float]:
    """Denoising PSNR (dB, data range 1 in model space) of D(x + sigma n) against x, per sigma,
    overall (``psnr_<sigma>``) and per non-empty group (``psnr_<sigma>_<group>``, masks as from
    :func:`group_masks`); also the PSNR of the noisy input (``noisy_<sigma>``)."""
    out: dict[str, float] = {}
    x = batch.x
    dev = x.device
    for k, s in enumerate(sigmas):
        g = torch.Generator().manual_seed(_seed_int(seed, 99, k))
        noise = torch.randn(x.shape, generator=g).to(dev)
        den = torch.cat([denoiser(x[i:i + chunk] + s * noise[i:i + chunk], float(s),
                                  modality=batch.modality[i:i + chunk],
                                  position=batch.position[i:i + chunk],
                                  spacing=batch.spacing[i:i + chunk])
                         for i in range(0, x.shape[0], chunk)])
        mse = ((den - x) ** 2).flatten(1).mean(1)
        out[f"psnr_{s:g}"] = float(10 * torch.log10(1.0 / mse.mean()))
        out[f"noisy_{s:g}"] = float(10 * math.log10(1.0 / s**2))
        for name, sel in (groups or {}).items():
            if bool(sel.any()):
                out[f"psnr_{s:g}_{name}"] = float(10 * torch.log10(1.0 / mse[sel].mean()))
    return out
