"""Sweep of the classical baselines' weights on the demo's acquisitions (validation heads).

``medrecon demo`` compares diffusion against a classical method with a fixed weight
(:data:`medrecon.demo.BASELINES`). This script is how those weights were chosen: for each weight
it simulates the demo's acquisition (:func:`medrecon.demo.plan_demo`: MR 8 coils, 3D
Poisson-disc R = 8, SNR 30; CT 30 parallel-beam views, I0 = 1e5) of synthetic heads from the
*validation* split (``SPLITS["val"]``, never the test heads the demo reports on), reconstructs
with :func:`medrecon.reconstruct.reconstruct` and reports the foreground PSNR against the
reference (the demo's region and data range). Weights are relative for MR
(``lam = weight * p99 |A^H y|``, :func:`medrecon.demo.baseline_lam`) and absolute for CT TV.

Choosing a weight by PSNR against a reference is oracle tuning: fair for a benchmark, not
something a user without a reference can do.

Usage (CPU, 64^3 at 2 mm: the CPU demo's grid; minutes per weight)::

    python benchmarks/demo_baselines.py --modality mri --method l1-wavelet \\
        --weights 2.5e-4 5e-4 1e-3 2e-3 4e-3 8e-3 --seeds 0
    python benchmarks/demo_baselines.py --modality ct --method tv \\
        --weights 1.25e-4 2.5e-4 5e-4 1e-3 --seeds 0

Result (2026-11-26, CPU, validation head 1,000,000, 64^3 at 2 mm, the demo's iteration counts),
foreground PSNR in dB, recorded in ``BASELINES[...].sweep`` and ``metrics.json``:

* MR l1-wavelet (100 iterations): alpha 2.5e-4 31.66, 5e-4 31.58, 1e-3 31.13, 2e-3 30.12,
  4e-3 28.58, 8e-3 26.67; cg-sense (30 iterations) lam 1e-3 30.46, 1e-2 29.03, 1e-1 22.35.
* CT tv (100 iterations): lam 1.25e-4 29.60, 2.5e-4 29.94, 5e-4 29.89, 1e-3 29.24.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np


def sweep_baseline(modality: str, method: str, weights: Sequence[float],
                   seeds: Sequence[int] = (0, 1), size: int = 64, spacing_mm: float = 2.0,
                   iterations: int | None = None, device: str = "cpu") -> dict[float, float]:
    """Mean foreground PSNR (dB) of ``method`` over validation heads ``seeds``, per weight.

    Args:
        modality: "mri" or "ct".
        method: a classical method registered for the modality ("l1-wavelet", "tv", ...).
        weights: relative (MR) or absolute (CT) weights, as in :data:`medrecon.demo.BASELINES`.
        seeds: offsets into the validation split; also the seed of mask and noise.
        size: cube side in voxels; spacing_mm: voxel size (mm).
        iterations: solver iterations (default: the demo's baseline's).
        device: "cpu", "cuda", ...
    """
    import torch

    from medrecon.demo import BASELINES, BaselineChoice, baseline_lam, plan_demo
    from medrecon.device import resolve_device
    from medrecon.evaluation import compare_volumes, foreground_mask
    from medrecon.priors.synthetic import generate_head, split_seeds
    from medrecon.recon.base import ReconOptions
    from medrecon.reconstruct import reconstruct
    from medrecon.simulate import simulate

    dev = resolve_device(device)
    val = split_seeds("val")
    scores: dict[float, list[float]] = {float(w): [] for w in weights}
    for s in seeds:
        plan = plan_demo(modality, device=str(dev), seed=int(s), size=size,
                         spacing_mm=spacing_mm)[0]
        mod = plan.modality
        ref = generate_head(plan.shape, spacing_mm, modality=mod,
                            contrast="T1" if mod == "MR" else "random", seed=val.start + s,
                            noise=False, device=dev)
        mask = foreground_mask(ref.data)
        meas = simulate(ref, plan.simulation_config(), device=dev)
        for w in scores:
            choice = BaselineChoice(method=method, weight=w,
                                    iterations=iterations or BASELINES[mod].iterations)
            lam = baseline_lam(meas, choice, dev)
            with torch.no_grad():
                rec = reconstruct(meas, method, ReconOptions(
                    lam=lam, iterations=choice.iterations, tol=0.0, device=str(dev)))
            result, _ = compare_volumes(ref.with_data(rec.volume.data), ref, mask=mask)
            psnr = float(result.volume["psnr"])
            scores[w].append(psnr)
            print(f"{mod} {method} seed val+{s} weight {w:g}: PSNR {psnr:.2f} dB", flush=True)
    return {w: float(np.mean(v)) for w, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modality", choices=("mri", "ct"), required=True)
    ap.add_argument("--method", required=True, help="l1-wavelet, cg-sense, tv, ...")
    ap.add_argument("--weights", type=float, nargs="+", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                    help="validation heads (offsets into the validation split)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write {weight: mean PSNR} here")
    args = ap.parse_args(argv)
    scores = sweep_baseline(args.modality, args.method, args.weights, seeds=args.seeds,
                            size=args.size, spacing_mm=args.spacing,
                            iterations=args.iterations, device=args.device)
    for w, p in scores.items():
        print(f"weight {w:g}: mean PSNR {p:.2f} dB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"modality": args.modality, "method": args.method,
                       "seeds": args.seeds, "psnr_db": {str(w): p for w, p in scores.items()}},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
