"""Where CT TV's held-out views put the weight, against the PSNR optimum (issue 13, item 1).

On a synthetic head slab (test seeds, never trained on; 2 slices of ``--size``^2 at
``--spacing`` mm, parallel beam, I0 = 1e5) TV is solved on a fine weight grid (2^(e/2) x the
default 1e-3, e = -10..6, 200 PDHG iterations): on all views for the PSNR curve (region above
-900 HU, data range the reference's max - min), and on the training views of the self-tuning's
split (every 7th view held out, as :func:`medrecon.recon.autotune.ct_holdout_views`; with
``--every-4th`` also every 4th view, about twice the share), for their held-out error curves:
the relative residual ``||M_h (A x - y)|| / ||M_h y||`` and the same after a half-ramp filter
``sqrt|w|`` along the detector (``ramp``: by the Fourier slice theorem the ramp-weighted norm of
a projection residual over all angles is the image-domain error, which PSNR measures, where the
plain norm weighs low frequencies by 1 / |w|). One JSON line per run.

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


def ramp_residual(problem: ct.Problem, x: torch.Tensor) -> float:
    """``||sqrt(ramp) (A x - y)|| / ||sqrt(ramp) y||`` along the detector's last axis."""
    spacing = float(problem.geometry.pixel_cols_mm)  # type: ignore[union-attr]
    with torch.no_grad():
        r, y = problem.op(x) - problem.y, problem.y
        n = r.shape[-1]
        half = torch.as_tensor(np.sqrt(np.clip(ct.ramp_filter(n, spacing), 0.0, None)),
                               dtype=r.dtype)
        f = half[: half.numel() // 2 + 1]
        norm = [float(torch.linalg.vector_norm(torch.fft.rfft(v, n=half.numel(), dim=-1) * f))
                for v in (r, y)]
    return norm[0] / max(norm[1], 1e-30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--spacing", type=float, default=1.0)
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--head", type=int, default=0, help="index into the test seeds")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--every-4th", action="store_true", help="also hold out every 4th view")
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
    for share in (1 / 7, 2 / 7) if args.every_4th else (1 / 7,):
        train, held = ct_holdout_views(args.views, seed=0, fraction=share)
        sub, hp = (ct._problem(dataclasses.replace(m, mask=k), CPU) for k in (train, held))
        plain, ramp = [], []
        for lam in lams:
            x = solve(sub, lam) * mw
            plain.append(hp.residual(x))
            ramp.append(ramp_residual(hp, x))
        row[f"heldout_{share:.2f}"], row[f"heldout_ramp_{share:.2f}"] = plain, ramp
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
