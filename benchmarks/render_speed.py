"""Throughput of the training-patch renderer (:func:`medrecon.priors.synthetic.render_patches`).

Renders batches of patches at voxel sizes from :func:`sample_spacings` (the training
distribution) and prints one JSON line per (modality, batch size): patches/s after warm-up,
peak device memory.

    python benchmarks/render_speed.py --device cuda --patch 64 --batch 4 8 16 --repeats 5
    python benchmarks/render_speed.py --device cpu --patch 32 --batch 2 --repeats 2  # smoke
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from medrecon.priors.synthetic import render_patches, sample_spacings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[8])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    dev = torch.device(a.device)
    patch = (a.patch,) * 3
    for modality in ("MR", "CT"):
        for n in a.batch:
            gen = torch.Generator().manual_seed(0)
            render_patches(modality, n, sample_spacings(n, gen), patch, gen, dev)  # warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            for _ in range(a.repeats):
                render_patches(modality, n, sample_spacings(n, gen), patch, gen, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            dt = time.perf_counter() - t0
            row = {"modality": modality, "batch": n, "patch": a.patch, "device": str(dev),
                   "patches_per_s": round(a.repeats * n / dt, 2),
                   "s_per_batch": round(dt / a.repeats, 4)}  # fmt: skip
            if dev.type == "cuda":
                row["peak_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
                row["card"] = torch.cuda.get_device_name(dev)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
