"""MR self-tuned weights, held-out samples alone against held-out + SURE, synthetic heads.

For each case (the synthetic T1 head slab of benchmarks/autotune_quality.py, with
``--noisy-reference`` its Rician noise kept in the reference, 8 coils, SNR and R
as given; 3D Poisson-disc mask, or 2D multi-slice random lines with ``--mask lines``) and
method (l1-wavelet, tv), the self-tuned weight with ``sure=false`` (the former rule: held-out
samples alone) and with the default (held-out + SURE, :mod:`medrecon.recon.sure`), each
scored by PSNR against the reference (whole volume, data range = reference max - min), and the
oracle: the best PSNR over ``2^(e/2)`` times the fixed rule, e = -10..4 (``--no-oracle``: the
picks only). Cost and picks go to stdout and, with ``--json``, to a file.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/autotune_mr_sure.py --size 32 --snr 10 30 \\
        --accel 4 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrecon.io import Volume
from medrecon.methods import get_method
from medrecon.metrics import psnr
from medrecon.recon.base import ReconOptions
from medrecon.simulate import MRISettings, SimulationConfig, simulate

CPU = torch.device("cpu")
#: The simulation seed of every case (mask, coils, noise).
SIM_SEED = 1


def head(size: int, noisy: bool) -> Volume:
    """The synthetic T1 head slab of benchmarks/autotune_quality.py; ``noisy``: with the
    generator's Rician noise in the reference (as in a real magnitude image: detail that
    no sampled neighbour predicts)."""
    from medrecon.priors.synthetic import generate_head

    vol = generate_head((size, size, size), spacing_mm=192.0 / size, modality="MR",
                        contrast="T1", seed=900000, lesions=True, noise=noisy)
    half = slice(size // 4, size // 4 + size // 2)  # a slab keeps the CPU time small
    return Volume(np.ascontiguousarray(vol.data[:, :, half]), vol.affine, modality="MR")


def simulated(ref: Volume, accel: float, snr: float, mask: str) -> Any:
    """The measurement of one case: 8 coils, ``mask`` "poisson" (3D Poisson-disc) or "lines"
    (2D multi-slice random lines), a calibration region of a sixth of the grid (at least 6)."""
    kw: dict[str, Any] = {"mask": "random", "dims": "2d"} if mask == "lines" else {}
    return simulate(ref, SimulationConfig(seed=SIM_SEED, mri=MRISettings(
        coils=8, acceleration=accel, snr=snr, calibration=max(6, ref.shape[0] // 6), **kw)))


def run(m: Any, method: str, ref: np.ndarray, iters: int,
        oracle: bool = True) -> dict[str, Any]:
    spec = get_method("MR", method)
    row: dict[str, Any] = {}
    for key, extra in (("heldout", {"sure": False}), ("sure", {})):
        t0 = time.perf_counter()
        out = spec(m, ReconOptions(iterations=iters, extra=extra), CPU)
        row[key] = {"lam": out.info["lam"], "psnr": psnr(out.image, ref),
                    "seconds": round(time.perf_counter() - t0, 1),
                    "line": out.info["autotune_line"],
                    "folds": out.info["autotune"].get("folds", 1)}
    if not oracle:
        return row
    tuned = out.info["autotune"]
    grid = tuned["grid"]  # the coarse grid is the rule x 8^(k/2), k = -2..2: find its centre
    rule = next(g for g in grid if any(abs(h / g - 8.0) < 1e-6 for h in grid)
                and any(abs(g / h - 8.0) < 1e-6 for h in grid)) * tuned["scale"]
    scores = {}
    for e in range(-10, 5):
        lam = rule * 2.0 ** (e / 2)
        scores[lam] = psnr(spec(m, ReconOptions(lam=lam, iterations=iters), CPU).image, ref)
    best = max(scores, key=scores.__getitem__)
    row["oracle"] = {"lam": best, "psnr": scores[best],
                     "curve": {f"{k:.4g}": round(v, 3) for k, v in scores.items()}}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--snr", type=float, nargs="+", default=[10.0, 30.0])
    ap.add_argument("--accel", type=float, nargs="+", default=[4.0, 8.0])
    ap.add_argument("--methods", nargs="+", default=["l1-wavelet", "tv"])
    ap.add_argument("--noisy-reference", action="store_true",
                    help="the head with the generator's Rician noise (a textured reference)")
    ap.add_argument("--mask", choices=["poisson", "lines"], default="poisson")
    ap.add_argument("--no-oracle", action="store_true",
                    help="the two rules' picks only (no sweep of all-data weights)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ref = head(args.size, args.noisy_reference)
    rows = []
    for accel in args.accel:
        for snr in args.snr:
            m = simulated(ref, accel, snr, args.mask)
            for method in args.methods:
                r = run(m, method, ref.data, args.iterations, not args.no_oracle)
                if args.no_oracle:
                    print(f"R={accel:g} SNR={snr:g} {method:<10} held-out "
                          f"{r['heldout']['lam']:.4g} {r['heldout']['psnr']:.2f} dB | SURE "
                          f"{r['sure']['lam']:.4g} {r['sure']['psnr']:.2f} dB "
                          f"(folds {r['sure']['folds']})", flush=True)
                    rows.append({"accel": accel, "snr": snr, "method": method, **r})
                    continue
                o = r["oracle"]
                print(f"R={accel:g} SNR={snr:g} {method:<10} oracle {o['lam']:.4g} "
                      f"{o['psnr']:.2f} | held-out {r['heldout']['lam']:.4g} "
                      f"{o['psnr'] - r['heldout']['psnr']:+.2f} dB gap | SURE "
                      f"{r['sure']['lam']:.4g} {o['psnr'] - r['sure']['psnr']:+.2f} dB gap "
                      f"({r['heldout']['seconds']:.0f} s / {r['sure']['seconds']:.0f} s)",
                      flush=True)
                rows.append({"accel": accel, "snr": snr, "method": method, **r})
    if args.json:
        meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                "device": f"CPU ({platform.processor() or platform.machine()})",
                "args": vars(args)}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
