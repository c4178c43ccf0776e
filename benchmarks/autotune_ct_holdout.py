"""Where CT TV's held-out views put the weight, against the PSNR optimum (issue 13, item 1).

On a synthetic head slab (test seeds, never trained on; 2 slices of ``--size``^2 at
``--spacing`` mm, parallel beam, I0 = 1e5) TV is solved on a fine weight grid (2^(e/2) x the
default 1e-3, e = -10..6, 200 PDHG iterations): on all views for the PSNR curve (region above
-900 HU, data range the reference's max - min), and on the training views of the self-tuning's
split (every 7th view held out, as :func:`medrecon.recon.autotune.ct_holdout_views`) and of
every 4th view (about twice the share), for their held-out error curves. One JSON line per run.

    python benchmarks/autotune_ct_holdout.py --size 128 --spacing 1.0 --views 30 --out ct_holdout.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from medrecon.metrics import psnr
from medrecon.priors.synthetic import generate_head, split_seeds
from medrecon.recon import ct
from medrecon.recon.autotune import ct_holdout_views
from medrecon.simulate import CTSettings, SimulationConfig, simulate

CPU = torch.device("cpu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--spacing", type=float, default=1.0)
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--head", type=int, default=0, help="index into the test seeds")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    seed = split_seeds("test")[args.head]
    vol = generate_head((args.size, args.size, 2), args.spacing, "CT", seed=seed, noise=False)
    ref = vol.data
    m = simulate(vol, SimulationConfig(modality="ct", seed=seed,  # type: ignore[arg-type]
                                       ct=CTSettings(views=args.views, dose_i0=1e5)))
    region, data_range = ref > -900.0, float(ref.max() - ref.min())
    settings = ct.method_settings(ct.TVSettings, {}, "tv")
    lams = [ct.DEFAULT_TV_LAM * 2 ** (e / 2) for e in range(-10, 7)]

    def solve(problem: ct.Problem, lam: float) -> torch.Tensor:
        return ct._tv_solve(problem, lam, args.iterations, 1e-4, settings)[0].x

    full = ct._problem(m, CPU)
    mw = full.units.mu_water
    row: dict = {"size": args.size, "spacing_mm": args.spacing, "views": args.views,
                 "head_seed": seed, "lams": lams,
                 "psnr": [psnr(full.units.to_reference((solve(full, lam) * mw).numpy()), ref,
                               data_range=data_range, mask=region) for lam in lams]}
    for share in (1 / 7, 2 / 7):  # every 7th view (the self-tuning's split), every 4th
        train, held = ct_holdout_views(args.views, seed=0, fraction=share)
        sub, hp = (ct._problem(dataclasses.replace(m, mask=k), CPU) for k in (train, held))
        row[f"heldout_{share:.2f}"] = [hp.residual(solve(sub, lam) * mw) for lam in lams]
        row[f"views_held_{share:.2f}"] = int(held.sum())
    best = int(np.argmax(row["psnr"]))
    for key in [k for k in row if k.startswith("heldout_")]:
        pick = int(np.argmin(row[key]))
        row[key + "_pick"] = {"lam_ratio_to_psnr_optimum": lams[pick] / lams[best],
                              "psnr_loss_db": row["psnr"][best] - row["psnr"][pick]}
    row["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k.endswith("_pick") or k == "views"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
