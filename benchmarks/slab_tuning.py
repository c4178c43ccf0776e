"""Self-tuned classical weights chosen on a slab (medrecon.slab) against whole-volume tuning.

Issue 14: the classical self-tuning (l1-wavelet and TV, ~15 solves each) took 87 s of the
154 s default path at 256^3 on an H100, every solve full size. With ``tune_slab`` (default
64 rows, on volumes over 96 rows along the readout) the weight is chosen on the exact
sub-problem of the slab of rows holding the most signal, then one solve runs on all the
data. This script runs each method twice on the same synthetic head, ``tune_slab=0`` (the
whole volume) and ``tune_slab=ROWS``, and prints the chosen weights, their ratio, the PSNR
against the reference (data range: reference max - min, whole volume) and the seconds.

The head is a held-out test head (:func:`medrecon.priors.synthetic.split_seeds` "test", as
``medrecon phantom --kind head --seed ...`` in benchmarks/end_to_end_speed.py) of ``--shape``
at ``--spacing`` mm (2 by default; the end-to-end case is 256^3 at 2 mm, a 512 mm field of view around
the head); the measurement is that script's MR case (8 coils, 3D Poisson, SNR 30, coil maps in
the file) at each ``--accelerations``::

    OMP_NUM_THREADS=2 python benchmarks/slab_tuning.py --shape 64 48 48 --spacing 4 \
        --rows 24 --accelerations 4 8 --methods l1-wavelet tv --json slab.json

``--modality ct`` runs CT TV instead (the slab along K, the slices: parallel or fan beam,
``--geometry``), on a CT head simulated at each of ``--views`` with ``--dose`` photons per ray::

    OMP_NUM_THREADS=2 python benchmarks/slab_tuning.py --modality ct --shape 48 48 64 \
        --spacing 4 --rows 24 --views 30 60 --methods tv --json slab_ct.json

One JSON object per (R, method) row; ``--device cuda`` runs the solves on a GPU.
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

from medrecon.methods import get_method
from medrecon.metrics import psnr
from medrecon.recon.base import ReconOptions
from medrecon.simulate import CTSettings, MRISettings, SimulationConfig, simulate


def head(shape: tuple[int, int, int], spacing: float, device: torch.device,
         modality: str = "MR") -> Any:
    from medrecon.priors.synthetic import generate_head, split_seeds

    return generate_head(shape, spacing_mm=spacing, modality=modality, contrast="T1",
                         seed=int(split_seeds("test")[0]), device=device)


def run(m: Any, method: str, rows: int, ref: np.ndarray, device: torch.device
        ) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = get_method(m.modality, method)(m, ReconOptions(extra={"tune_slab": rows}), device)
    seconds = time.perf_counter() - t0
    tuned = out.info["autotune"]
    return {"lam": float(out.info["lam"]), "psnr": psnr(out.image, ref), "seconds": seconds,
            "slab": (out.info.get("tune_slab") or {}).get("text", "whole volume"),
            "grid": [g * tuned["scale"] for g in tuned["grid"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(96, 64, 64))
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--spacing", type=float, default=2.0, help="Voxel size in mm.")
    ap.add_argument("--accelerations", type=float, nargs="+", default=(4.0, 8.0))
    ap.add_argument("--methods", nargs="+", default=("l1-wavelet", "tv"))
    ap.add_argument("--modality", choices=("mr", "ct"), default="mr")
    ap.add_argument("--views", type=int, nargs="+", default=(60,),
                    help="CT: projection counts (in place of --accelerations).")
    ap.add_argument("--geometry", choices=("parallel", "fan"), default="parallel",
                    help="CT geometry.")
    ap.add_argument("--dose", type=float, default=1e5, help="CT: photons per ray (I0).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    ct = args.modality == "ct"
    vol = head(tuple(args.shape), args.spacing, device, "CT" if ct else "MR")
    ref = vol.data
    rows_out = []
    for r in (args.views if ct else args.accelerations):
        if ct:
            m = simulate(vol, SimulationConfig(modality="ct", seed=1, ct=CTSettings(
                geometry=args.geometry, views=int(r), dose_i0=args.dose)), device=device)
        else:
            m = simulate(vol, SimulationConfig(seed=1, mri=MRISettings(
                coils=8, acceleration=r, snr=30.0)), device=device)
        for method in args.methods:
            whole = run(m, method, 0, ref, device)
            slab = run(m, method, args.rows, ref, device)
            row = {"views" if ct else "R": r, "modality": m.modality, "method": method, "shape": list(args.shape), "rows": args.rows,
                   "whole": whole, "slab": slab, "lam_ratio": slab["lam"] / whole["lam"],
                   "psnr_diff": slab["psnr"] - whole["psnr"], "device": str(device),
                   "torch_threads": torch.get_num_threads(), "host": platform.node(),
                   "date": datetime.now(UTC).isoformat(timespec="seconds")}
            rows_out.append(row)
            print(f"{'views' if ct else 'R'}={r:g} {method:10s} whole: lam {whole['lam']:.4g} {whole['psnr']:.2f} dB "
                  f"{whole['seconds']:.1f} s | {slab['slab']}: lam {slab['lam']:.4g} "
                  f"{slab['psnr']:.2f} dB {slab['seconds']:.1f} s | ratio "
                  f"{row['lam_ratio']:.3f}, {row['psnr_diff']:+.2f} dB", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(rows_out, f, indent=1)


if __name__ == "__main__":
    main()
