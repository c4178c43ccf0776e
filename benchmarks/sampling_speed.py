"""Speed of diffusion reconstruction: seconds, network evaluations, peak memory, network share.

Cases (issue 6): 8-coil 128^3 MRI with 50 steps, 8-coil 256^3 MRI, 256^3 CT (parallel beam,
60 views); (issue 15 item 8) ``ct_slice``: one 128 x 128 CT slice (60 views) and ``mr_slab``: a
thin 8-coil 128 x 96 x 24 MR slab (2D multi-slice random lines, R = 4). Each case simulates a
held-out synthetic head (test seed range), runs ``posterior_sample`` once with 2 steps to warm
up kernels, then times the real run. ``slab_tiling.py`` compares the thin cases' tilings.

    python benchmarks/sampling_speed.py --out results_speed.jsonl [--prior default]
        [--device cuda] [--steps 50] [--cases mr128,mr256,ct256] [--tiling shift] [--quick]
    nice -n 10 python benchmarks/sampling_speed.py --out slab.jsonl --device cpu --steps 4 \
        --cases ct_slice,mr_slab

One JSON line per case is appended as soon as it finishes (a run cut short keeps what it
measured). ``--quick`` shrinks every case to 24^3 (thin cases: 24 x 24 x 1 and 24 x 24 x 6) for
a CPU smoke test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch


def _case_measurement(case: str, quick: bool, device: str):
    from medrecon.priors.synthetic import generate_head, split_seeds
    from medrecon.simulate import CTSettings, MRISettings, SimulationConfig, simulate

    n = 24 if quick else (128 if case == "mr128" else 256)
    seed = split_seeds("test")[0]
    if case == "ct_slice":
        n = 24 if quick else 128
        # the central slice of a 3-slice head (the generator needs two slices at least)
        thick = generate_head((n, n, 3), 2.0, "CT", seed=seed, noise=False, device=device)
        affine = thick.affine.copy()
        affine[:3, 3] = thick.affine[:3, :3] @ [0, 0, 1] + thick.affine[:3, 3]
        vol = dataclasses.replace(thick, data=thick.data[:, :, 1:2].copy(), affine=affine)
        cfg = SimulationConfig(modality="ct", seed=seed, ct=CTSettings(views=60, dose_i0=1e5))
        return simulate(vol, cfg, device=device), vol
    if case == "mr_slab":
        shape = (24, 24, 6) if quick else (128, 96, 24)
        vol = generate_head(shape, 2.0, "MR", seed=seed, noise=False, device=device)
        cfg = SimulationConfig(modality="mri", seed=seed,
                               mri=MRISettings(coils=8, acceleration=4.0, dims="2d",
                                               mask="random", snr=30.0, coil_model="birdcage"))
        return simulate(vol, cfg, device=device), vol
    if case.startswith("mr"):
        vol = generate_head((n, n, n), 2.0, "MR", seed=seed, noise=False, device=device)
        cfg = SimulationConfig(modality="mri", seed=seed,
                               mri=MRISettings(coils=8, acceleration=8.0, calibration=6 if quick else 24,
                                               snr=30.0, coil_model="birdcage"))
    else:
        vol = generate_head((n, n, n), 2.0, "CT", seed=seed, noise=False, device=device)
        cfg = SimulationConfig(modality="ct", seed=seed,
                               ct=CTSettings(views=60, dose_i0=1e5))
    return simulate(vol, cfg, device=device), vol


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prior", default="default")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sampler", default="dds")
    ap.add_argument("--cases", default="mr128,mr256,ct256")
    ap.add_argument("--tiling", default="shift", help="shift, roll, fit or blend")
    ap.add_argument("--precision", default="auto", help="auto, bf16, bf16-full or fp32")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-cuda-graphs", action="store_true",
                    help="eager network calls (the default replays CUDA graphs on CUDA)")
    args = ap.parse_args(argv)
    if args.no_cuda_graphs:
        import functools

        import medrecon.sampling.api as api

        api.prior_denoiser = functools.partial(api.prior_denoiser, cuda_graphs=False)

    from medrecon.priors import load_prior
    from medrecon.sampling import posterior_sample

    dev = torch.device(args.device)
    prior = load_prior(args.prior, device=dev)
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    for case in args.cases.split(","):
        try:
            t0 = time.perf_counter()
            m, vol = _case_measurement(case, args.quick, args.device)
            t_sim = time.perf_counter() - t0
            # Warm-up on the same problem with 2 steps (kernels, cuDNN autotuning, allocator).
            posterior_sample(m, prior, sampler=args.sampler, steps=2, device=dev,
                             tiling=args.tiling, precision=args.precision)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            res = posterior_sample(m, prior, sampler=args.sampler, steps=args.steps,
                                   samples=1, seed=0, device=dev, tiling=args.tiling, precision=args.precision)
        except Exception as exc:  # record the failure, go on with the other cases
            row = {"case": case, "error": f"{type(exc).__name__}: {exc}"}
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            continue
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        row = {
            "case": case, "shape": list(vol.shape), "modality": m.modality,
            "tiling": args.tiling, "precision": args.precision,
            "cuda_graphs": dev.type == "cuda" and not args.no_cuda_graphs,
            "sampler": args.sampler, "steps": args.steps, "seconds": res.timings["total"],
            "network_seconds": res.timings["network"],
            "network_only_seconds": res.timings.get("network_only"),
            "tiling_seconds": res.timings.get("tiling"),
            "consistency_seconds": res.timings["other"],
            "network_fraction": res.timings["network_fraction"], "nfe": res.nfe,
            "patches": res.info.get("patches"), "network_calls": res.info.get("network_calls"),
            "peak_gib": peak, "residual": res.residual, "simulate_seconds": t_sim,
            "device": card, "torch": torch.__version__, "prior": prior.name,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
