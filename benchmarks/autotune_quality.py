"""Self-tuned (hold-out) against oracle-tuned classical reconstructions, synthetic data.

For each case the method runs once with its default (``lam`` / ``iterations`` None: chosen on
held-out data, :mod:`medrecon.recon.autotune`) and then over an oracle grid on all data, scored
by PSNR against the reference (data range = reference max - min, whole volume,
:func:`medrecon.metrics.psnr`). Oracle grids: weights at the self-tuning's grid scaled for all
data plus factors 2^k (k = -4..4) of the fixed rule; SIRT/CGLS every iteration up to twice the
default (PSNR tracked along one run). The oracle needs the reference, which a user lacks.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/autotune_quality.py --size 32 --json out.json

Cases: MR (8 coils, Poisson-disc mask, SNR 30) at R = 4 and 8 with l1-wavelet and tv, on the
3D Shepp-Logan and the synthetic T1 head; CT (parallel beam, I0 = 1e5) at 30 and 60 views with
tv, sirt and cgls on Shepp-Logan (HU) slabs.

``--diffusion-steps N`` (N > 0) adds, per case, diffusion with the default path (lam auto +
guard, :mod:`medrecon.guard`; the shipped prior unless ``--prior``, ``--samples`` K, seed 0)
against the oracle-tuned TV of that case, the branch the guard took, and diffusion at the fixed
modality weight without the guard (the former default). ``--methods`` and ``--cases`` (substrings
of the case names) restrict the run, e.g. to keep a CPU run short::

    OMP_NUM_THREADS=2 python benchmarks/autotune_quality.py --size 24 --methods tv \
        --diffusion-steps 6 --cases "head R=8" "30 views" --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from medrecon.io import Volume
from medrecon.methods import get_method
from medrecon.metrics import psnr
from medrecon.phantoms import shepp_logan_3d
from medrecon.recon.base import ReconOptions
from medrecon.simulate import CTSettings, MRISettings, SimulationConfig, simulate

CPU = torch.device("cpu")


def mr_phantom(name: str, size: int) -> Volume:
    if name == "shepp-logan":
        return Volume(shepp_logan_3d((size, size, size // 2)), np.eye(4), modality="MR")
    from medrecon.priors.synthetic import generate_head

    vol = generate_head((size, size, size), spacing_mm=192.0 / size, modality="MR",
                        contrast="T1", seed=900000, lesions=True, noise=False)
    half = slice(size // 4, size // 4 + size // 2)  # a slab keeps the CPU time small
    return Volume(np.ascontiguousarray(vol.data[:, :, half]), vol.affine, modality="MR")


def ct_phantom(size: int) -> Volume:
    hu = shepp_logan_3d((size, size, 4)) * 1000.0 - 1000.0
    return Volume(hu.astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), modality="CT",
                  units="HU")


def run_weight(m: Any, method: str, ref: np.ndarray, iters: int) -> dict[str, Any]:
    spec = get_method(m.modality, method)
    t0 = time.perf_counter()
    auto = spec(m, ReconOptions(iterations=iters), CPU)
    seconds = time.perf_counter() - t0
    tuned = auto.info["autotune"]
    rule = tuned["grid"][len(tuned["grid"]) // 2]  # near the rule's value
    lams = sorted({*(g * tuned["scale"] for g in tuned["grid"]),
                   *(rule * 2.0 ** k for k in range(-4, 5))})
    scores = {lam: psnr(spec(m, ReconOptions(lam=lam, iterations=iters), CPU).image, ref)
              for lam in lams}
    best = max(scores, key=scores.__getitem__)
    return {"auto_value": tuned["chosen"], "auto_psnr": psnr(auto.image, ref),
            "oracle_value": best, "oracle_psnr": scores[best], "auto_seconds": seconds}


def run_iterations(m: Any, method: str, ref: np.ndarray) -> dict[str, Any]:
    from medrecon.recon import ct

    spec = get_method("CT", method)
    t0 = time.perf_counter()
    auto = spec(m, ReconOptions(), CPU)
    seconds = time.perf_counter() - t0
    problem = ct._problem(m, CPU)
    forward, adjoint, y, x0 = ct._scaled(problem)
    mw = problem.units.mu_water
    curve: list[float] = []
    solver = ct.sirt if method == "sirt" else ct.cgls
    cap = 2 * ct.DEFAULT_ITERATIONS[method]
    with torch.no_grad():
        solver(forward, adjoint, y, x0, max_iter=cap, tol=0.0,
               callback=lambda k, x: curve.append(
                   psnr(problem.units.to_reference((x * mw).cpu().numpy()), ref)))
    best = int(np.argmax(curve)) + 1
    return {"auto_value": auto.iterations, "auto_psnr": psnr(auto.image, ref),
            "oracle_value": best, "oracle_psnr": curve[best - 1], "auto_seconds": seconds}


def run_diffusion(m: Any, ref: np.ndarray, oracle_tv: dict[str, Any],
                  args: argparse.Namespace) -> dict[str, Any]:
    """Default diffusion (lam auto + guard) and diffusion at the fixed weight without the
    guard, against the oracle-tuned TV row of the same case."""
    from medrecon.reconstruct import reconstruct
    from medrecon.sampling.config import DiffusionConfig

    extra = {"prior": args.prior, "steps": args.diffusion_steps, "samples": args.samples,
             "seed": 0}
    t0 = time.perf_counter()
    auto = reconstruct(m, "diffusion", ReconOptions(device="cpu", extra=extra))
    seconds = time.perf_counter() - t0
    info = auto.output.info
    guard = info["guard"]
    fixed_lam = DiffusionConfig().sampler_options(m.modality).lam
    t0 = time.perf_counter()
    plain = reconstruct(m, "diffusion", ReconOptions(device="cpu", extra={
        **extra, "lam": fixed_lam, "guard": False}))
    return {"auto_value": info["lam"], "auto_psnr": psnr(auto.volume.data, ref),
            "oracle_value": oracle_tv["oracle_value"], "oracle_psnr": oracle_tv["oracle_psnr"],
            "auto_seconds": seconds, "guard": guard["choice"], "guard_weight": guard["weight"],
            "diffusion_heldout": guard["diffusion_error"],
            "classical_heldout": guard["classical_error"],
            "autotune_grid": info["autotune"]["grid"],
            "autotune_errors": info["autotune"]["heldout_errors"],
            "fixed_lam": fixed_lam, "fixed_psnr": psnr(plain.volume.data, ref),
            "fixed_seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--mr-iterations", type=int, default=60)
    ap.add_argument("--ct-tv-iterations", type=int, default=100)
    ap.add_argument("--phantoms", nargs="+", default=["shepp-logan", "head"])
    ap.add_argument("--methods", nargs="+", default=["l1-wavelet", "tv", "sirt", "cgls"],
                    help="classical methods to compare (tv is needed for --diffusion-steps)")
    ap.add_argument("--cases", nargs="+", default=None,
                    help="run only cases whose name contains one of these strings")
    ap.add_argument("--diffusion-steps", type=int, default=0,
                    help="> 0: also default diffusion (auto + guard) with this many steps")
    ap.add_argument("--samples", type=int, default=1, help="diffusion samples K")
    ap.add_argument("--prior", default="default")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> dict[str, Any]:
        row["gap_db"] = row["oracle_psnr"] - row["auto_psnr"]
        rows.append(row)
        extra = ""
        if "guard" in row:
            extra = (f" | guard {row['guard']} w {row['guard_weight']:.2f}; fixed lam "
                     f"{row['fixed_lam']:g} no guard {row['fixed_psnr']:6.2f} dB")
        print(f"{row['case']:<28} {row['method']:<11} auto {row['auto_value']:<10.4g} "
              f"{row['auto_psnr']:6.2f} dB | oracle {row['oracle_value']:<10.4g} "
              f"{row['oracle_psnr']:6.2f} dB | gap {row['gap_db']:5.2f} dB "
              f"({row['auto_seconds']:.0f} s){extra}", flush=True)
        return row

    def wanted(case: str) -> bool:
        return args.cases is None or any(c in case for c in args.cases)

    def run_case(case: str, m: Any, ref: np.ndarray, weighted: tuple[str, ...],
                 iters: int) -> None:
        tv: dict[str, Any] | None = None
        for method in weighted:
            if method in args.methods or (method == "tv" and args.diffusion_steps > 0):
                row = report({"case": case, "method": method,
                              **run_weight(m, method, ref, iters)})
                tv = row if method == "tv" else tv
        for method in ("sirt", "cgls") if m.modality == "CT" else ():
            if method in args.methods:
                report({"case": case, "method": method, **run_iterations(m, method, ref)})
        if args.diffusion_steps > 0 and tv is not None:
            report({"case": case, "method": "diffusion", "oracle_method": "tv",
                    **run_diffusion(m, ref, tv, args)})

    for name in args.phantoms:
        ref = mr_phantom(name, args.size)
        for accel in (4.0, 8.0):
            case = f"MR {name} R={accel:g}"
            if not wanted(case):
                continue
            cfg = SimulationConfig(seed=1, mri=MRISettings(
                coils=8, acceleration=accel, snr=30.0, calibration=max(6, args.size // 6)))
            run_case(case, simulate(ref, cfg), ref.data, ("l1-wavelet", "tv"),
                     args.mr_iterations)
    ref = ct_phantom(args.size)
    for views in (30, 60):
        case = f"CT shepp-logan {views} views"
        if not wanted(case):
            continue
        m = simulate(ref, SimulationConfig(modality="ct", seed=1,  # type: ignore[arg-type]
                                           ct=CTSettings(views=views, dose_i0=1e5)))
        run_case(case, m, ref.data, ("tv",), args.ct_tv_iterations)
    if args.json:
        meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                "device": f"CPU ({platform.processor() or platform.machine()})",
                "data": "synthetic", "args": vars(args)}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
