"""Cone-beam projector speed: forward and adjoint (and FDK) time for an N^3 volume.

Usage::

    python benchmarks/ct_speed.py --device cuda --size 256 --views 360
    python benchmarks/ct_speed.py --device cpu --size 64 --views 60   # a quick CPU check

Prints the device (card name), the geometry (detector, samples per ray), the best-of-N wall time
of A x, A^T y and FDK, ray throughput, and the peak GPU memory. ``--json`` also writes them.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from medrecon.operators.ct import default_geometry, make_projector
from medrecon.recon.ct import fdk


def _timed(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=256, help="Volume size N (N^3 voxels).")
    parser.add_argument("--views", type=int, default=360)
    parser.add_argument("--spacing", type=float, default=1.0, help="Voxel size in mm.")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-points", type=int, default=None,
                        help="Sampled points per chunk (default: the projector's).")
    parser.add_argument("--no-fdk", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    shape = (args.size,) * 3
    spacing = (args.spacing,) * 3
    g = default_geometry(shape, spacing, "cone", args.views, 360.0)
    op = make_projector(g, shape, spacing, device=device, dtype=dtype,
                        max_points=args.max_points)
    card = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else (platform.processor() or platform.machine()))
    print(f"device: {device} ({card}); torch {torch.__version__}; threads "
          f"{torch.get_num_threads()}")
    print(f"volume {shape} at {args.spacing} mm, {args.dtype}; cone beam, {g.views} views, "
          f"detector {g.detector_rows} x {g.detector_cols}, {op.n_samples} samples/ray "
          f"(step {op.step_mm} mm)")
    x = torch.rand(shape, dtype=dtype, device=device,
                   generator=torch.Generator(device=device).manual_seed(0))
    with torch.no_grad():
        y = op(x)  # warm-up (kernels, caches)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t_fwd = _timed(lambda: op(x), device, args.repeats)
        t_adj = _timed(lambda: op.H(y), device, args.repeats)
        t_fdk = None
        if not args.no_fdk:
            t_fdk = _timed(lambda: fdk(y, g, shape, spacing, "hann"), device, args.repeats)
    rays = g.views * g.detector_rows * g.detector_cols
    peak = (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device), "card": card, "torch": torch.__version__,
        "size": args.size, "views": g.views, "dtype": args.dtype,
        "detector": [g.detector_rows, g.detector_cols], "samples_per_ray": op.n_samples,
        "forward_s": t_fwd, "adjoint_s": t_adj, "fdk_s": t_fdk,
        "forward_gsamples_per_s": rays / t_fwd / 1e9 * op.n_samples,
        "peak_gpu_memory_gib": peak,
    }
    print(f"forward A x:   {t_fwd:8.3f} s  ({rays / t_fwd / 1e6:.2f} Mrays/s, "
          f"{rays * op.n_samples / t_fwd / 1e9:.2f} G samples/s)")
    print(f"adjoint A^T y: {t_adj:8.3f} s  ({rays / t_adj / 1e6:.2f} Mrays/s)")
    if t_fdk is not None:
        print(f"FDK (hann):    {t_fdk:8.3f} s")
    if peak is not None:
        print(f"peak GPU memory: {peak:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
