"""Denoising PSNR of priors on held-out rendered patches, per patch group: old vs new prior on
the distribution the voxel-size-aware prior trains on.

Patches come from :class:`medrecon.priors.data.RenderedPatchSource` with a seed no training
run uses (``--seed``, default 10 000; training uses its config seed and seed + 1), half at
voxel sizes drawn by ``sample_spacings`` and half at the reference 2 mm, MR and CT half each,
no augmentation. Each patch is noised with x + sigma n (noise seeded per sigma) and denoised
once; PSNR in model space with data range 1, overall and per group: MR, CT, ``ref`` (2 mm
isotropic), ``fine`` (smallest voxel size below 1 mm) and ``coarse`` (largest above 3 mm).
A prior without a voxel-size input simply does not see it.

    python benchmarks/prior_rendered_quality.py --prior default --prior RUN/prior/default.json \
        --patches 64 --device cuda --out benchmarks/prior_training/rendered_quality.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from medrecon.priors import load_prior
from medrecon.priors.config import DataConfig
from medrecon.priors.data import PatchBatch, RenderedPatchSource
from medrecon.priors.evaluation import group_masks, validation_psnr
from medrecon.priors.normalisation import Normalisation

SIGMAS = (0.02, 0.1, 0.5)
REFERENCE_MM = (2.0, 2.0, 2.0)


def held_out_batch(patches: int, seed: int, device: torch.device,
                   patch_size: tuple[int, int, int] = (64, 64, 64)) -> PatchBatch:
    """``patches`` rendered patches (half drawn voxel sizes, half 2 mm), no augmentation."""
    cfg = DataConfig(source="rendered", patch_size=patch_size, spacing_mm=REFERENCE_MM)
    src = RenderedPatchSource(cfg, Normalisation(), seed, augment=False)
    parts = [src.batch(0, patches - patches // 2, device, stream=1),
             src.batch(0, patches // 2, device, stream=2, spacing=REFERENCE_MM)]
    return PatchBatch(*(torch.cat([getattr(b, f) for b in parts])
                        for f in ("x", "modality", "position", "spacing")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prior", action="append", required=True)
    ap.add_argument("--patches", type=int, default=32)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--sigma", type=float, action="append")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    dev = torch.device(a.device)
    sigmas = tuple(a.sigma or SIGMAS)
    t0 = time.perf_counter()
    batch = held_out_batch(a.patches, a.seed, dev)
    masks = group_masks(batch, REFERENCE_MM)
    masks["coarse"] = batch.spacing.max(dim=1).values > 3.0
    render_s = time.perf_counter() - t0
    results = {}
    for name in a.prior:
        prior = load_prior(name, dev)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            results[name] = validation_psnr(prior.denoiser, batch, sigmas, a.seed, masks)
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "patches": a.patches, "seed": a.seed,
            "groups": {k: int(v.sum()) for k, v in masks.items()},
            "render_seconds": round(render_s, 1),
            "seconds": round(time.perf_counter() - t0, 1), "psnr_db": results}
    groups = ["", *masks]
    lines = ["| prior | sigma | noisy | " + " | ".join(g or "all" for g in groups) + " |",
             "|---|---|---|" + "---|" * len(groups)]
    for name, res in results.items():
        for s in sigmas:
            cells = [f"{res[f'psnr_{s:g}' + (f'_{g}' if g else '')]:.2f}"
                     if f"psnr_{s:g}" + (f"_{g}" if g else "") in res else "-" for g in groups]
            lines.append(f"| {name} | {s:g} | {res[f'noisy_{s:g}']:.1f} | "
                         + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(json.dumps({k: v for k, v in info.items() if k != "psnr_db"}))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({**info, "table": lines}, indent=1))


if __name__ == "__main__":
    main()
