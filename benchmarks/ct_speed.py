"""CT projector speed: forward and adjoint (and FDK/FBP) time for an N^3 volume.

Usage::

    python benchmarks/ct_speed.py --device cuda --size 256 --views 360            # cone beam
    python benchmarks/ct_speed.py --device cuda --size 256 --views 60 --geometry parallel \
        --method sparse                                  # 2D geometry, sparse system matrix
    python benchmarks/ct_speed.py --device cpu --size 64 --views 60   # a quick CPU check

``--geometry`` picks parallel, fan or cone (default cone, over 180 / 360 / 360 degrees);
``--method`` the projector's method (auto: the sparse system matrix for parallel and fan, rays
for cone; sparse; rays). Prints the device (card name), the geometry (detector, samples per
ray), the method actually used, the sparse matrix's build time, nonzeros and memory (2D sparse
only), the best-of-N wall time of A x, A^T y and FDK/FBP, ray throughput (for the sparse method
the equivalent rate of the ray-driven samples it replaces), and the peak GPU memory. ``--json``
also writes them.
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

from medrecon.errors import MedreconError
from medrecon.operators.ct_geometry import GEOMETRY_KINDS, default_geometry
from medrecon.operators.ct_projector import PROJECTOR_METHODS, make_projector
from medrecon.recon.ct_analytic import analytic_reconstruction


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
    parser.add_argument("--slices", type=int, default=None,
                        help="Number of slices K (default N): an N x N x K volume.")
    parser.add_argument("--views", type=int, default=360)
    parser.add_argument("--geometry", choices=list(GEOMETRY_KINDS), default="cone")
    parser.add_argument("--method", choices=list(PROJECTOR_METHODS), default="auto",
                        help="Projector method (auto: sparse for parallel/fan, rays for cone).")
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
    slices = args.size if args.slices is None else args.slices
    shape = (args.size, args.size, slices)
    spacing = (args.spacing,) * 3
    g = default_geometry(shape, spacing, args.geometry, args.views)
    try:
        op = make_projector(g, shape, spacing, device=device, dtype=dtype,
                            max_points=args.max_points, method=args.method)
    except MedreconError as exc:
        raise SystemExit(str(exc)) from None
    card = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else (platform.processor() or platform.machine()))
    print(f"device: {device} ({card}); torch {torch.__version__}; threads "
          f"{torch.get_num_threads()}")
    print(f"volume {shape} at {args.spacing} mm, {args.dtype}; {g.kind} beam, {g.views} views, "
          f"detector {g.detector_rows} x {g.detector_cols}, {op.n_samples} samples/ray "
          f"(step {op.step_mm} mm)")
    try:
        system = op.sparse_system(device, dtype)  # built here, so it is timed on its own
    except MedreconError as exc:
        raise SystemExit(str(exc)) from None
    method = "rays" if system is None else "sparse"
    print(f"method: {method} (asked: {args.method})")
    if system is not None:
        print(f"sparse matrix: built in {system.build_s:.3f} s, {system.nnz} nonzeros "
              f"({system.nnz / (g.views * g.detector_cols):.0f} per ray), A and A^T "
              f"{system.nbytes / 2**20:.1f} MiB")
    x = torch.rand(shape, dtype=dtype, device=device,
                   generator=torch.Generator(device=device).manual_seed(0))
    recon_name = "FDK" if g.kind == "cone" else "FBP"
    with torch.no_grad():
        y = op(x)  # warm-up (kernels, caches)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t_fwd = _timed(lambda: op(x), device, args.repeats)
        t_adj = _timed(lambda: op.H(y), device, args.repeats)
        t_fdk = None
        if not args.no_fdk:
            t_fdk = _timed(lambda: analytic_reconstruction(y, g, shape, spacing, "hann"),
                           device, args.repeats)
    rays = g.views * g.detector_rows * g.detector_cols
    peak = (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device), "card": card, "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": args.size, "slices": slices, "views": g.views, "dtype": args.dtype,
        "geometry": g.kind, "method_asked": args.method, "method": method,
        "detector": [g.detector_rows, g.detector_cols], "samples_per_ray": op.n_samples,
        "matrix_build_s": None if system is None else system.build_s,
        "matrix_nnz": None if system is None else system.nnz,
        "matrix_mib": None if system is None else system.nbytes / 2**20,
        "forward_s": t_fwd, "adjoint_s": t_adj, "fdk_s": t_fdk,
        "analytic_recon": recon_name,
        "forward_gsamples_per_s": rays / t_fwd / 1e9 * op.n_samples,
        "peak_gpu_memory_gib": peak,
    }
    equivalent = " equivalent" if system is not None else ""
    print(f"forward A x:   {t_fwd:8.3f} s  ({rays / t_fwd / 1e6:.2f} Mrays/s, "
          f"{rays * op.n_samples / t_fwd / 1e9:.2f} G{equivalent} samples/s)")
    print(f"adjoint A^T y: {t_adj:8.3f} s  ({rays / t_adj / 1e6:.2f} Mrays/s)")
    if t_fdk is not None:
        print(f"{recon_name} (hann):    {t_fdk:8.3f} s")
    if peak is not None:
        print(f"peak GPU memory: {peak:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
