"""CT TV's self-tuned weight against the PSNR optimum (issue 13, item 1).

A case is a synthetic head slab (test seeds, never trained on; ``--slices`` slices of
``--size``^2 at ``--spacing`` mm) or, with ``--volume``, the central ``--slices`` slices of a
CT NIfTI in HU (the real validation files: check only, never tune on them). Parallel beam,
``--views`` views over 180 deg, I0 = 1e5 (the ``ct30`` / ``ct60`` settings of
``benchmarks/real_quality.py``). TV is solved on a fine weight grid (2^(e/2) x the default
1e-3, e = ``--emin``..``--emax``, 200 PDHG iterations):

* on all views: PSNR (region above -900 HU, data range the reference's max - min), the
  misfit ``||A x - y||^2 / E||n||^2`` (:func:`medrecon.recon.sure.discrepancy`) and, with
  ``--sure``, SURE's in-sample risk (one more solve per weight from nudged data);
* on the training views of ``--splits`` interleaved splits (every 7th view held out; split 0
  is the library's, split j starts 2 j views later): the held-out error
  ``||M_h (A x - y)|| / ||M_h y||``, the training misfit, the power spectrum of the held-out
  residual along the detector and its energy per held-out view and slice; with ``--sure``
  also split 0's SURE on its training views (the library's criterion).

From these curves: the oracle (best PSNR on the grid), the held-out pick alone (the former
rule) and the held-out pick capped at the training misfit's crossing of 1, each with its loss
against the oracle (PSNR interpolated in log lam); ``benchmarks/autotune_ct_rules.py`` scores
more rules on the stored curves. With ``--default`` the library's own default (``tv`` without
lam: the summed risk of :mod:`medrecon.recon.ct_tune` on its coarse grid; ``--cap``: with
``discrepancy_cap=true``) is run as well and scored, with the held-out pick on the same grid
(``former``). ``--texture`` adds the generator's CT texture and noise. One JSON line per run.

    python benchmarks/autotune_ct_holdout.py --size 256 --spacing 0.75 --views 30 --splits 3 --sure --out ct.jsonl
    python benchmarks/autotune_ct_rules.py ct.jsonl
    python benchmarks/autotune_ct_holdout.py --volume .devrun/real_cases/ct_abdomen.nii.gz \
        --slices 1 --views 30 --default --no-curves --emin -6 --emax 2 --out ct.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from medrecon.metrics import psnr
from medrecon.problem import measurement_problem
from medrecon.recon import ct
from medrecon.recon.autotune import HOLDOUT_FRACTION, ct_holdout_views
from medrecon.recon.base import ReconOptions
from medrecon.recon.sure import discrepancy, discrepancy_weight, sure_probe
from medrecon.recon.sure import sure as sure_risk
from medrecon.simulate import CTSettings, SimulationConfig, simulate

CPU = torch.device("cpu")


def _case(args: argparse.Namespace) -> tuple[object, int]:
    """(reference Volume in HU, simulation seed)."""
    if args.volume is not None:
        from medrecon.io import load_volume

        vol = load_volume(args.volume)
        k0 = max(0, vol.shape[2] // 2 - args.slices // 2)
        data = np.ascontiguousarray(vol.data[:, :, k0:k0 + args.slices], dtype=np.float32)
        return dataclasses.replace(vol, data=data, modality="CT", units="HU"), 0
    from medrecon.priors.synthetic import generate_head, split_seeds

    seed = split_seeds("test")[args.head]
    return generate_head((args.size, args.size, args.slices), args.spacing, "CT", seed=seed,
                         noise=args.texture), seed


def _split_curves(m: object, j: int, lams: list[float],
                  solve: Callable[[ct.Problem, float], torch.Tensor], sure: bool = False) -> dict:
    """Held-out curves of the j-th interleaved split (every k-th view from the library's offset
    plus 2 j): the relative held-out error, the training misfit and the power spectrum of the
    held-out residual along the detector (summed over views and slices, one list per weight;
    ``y_spec`` that of the held-out data)."""
    views = int(np.asarray(m.data).shape[0])  # type: ignore[attr-defined]
    train0, held0 = ct_holdout_views(views, seed=int((m.acquisition or {})  # type: ignore[attr-defined]
                                                     .get("seed", 0) or 0))
    k = views // max(1, int(held0.sum()))
    k = int(round(1.0 / HOLDOUT_FRACTION)) if views >= 2 * round(1.0 / HOLDOUT_FRACTION) else k
    offset = (int(np.flatnonzero(held0)[0]) + 2 * j) % k
    held_mask = np.zeros(views, np.float32)
    held_mask[offset::k] = 1.0
    sub, held = (measurement_problem(dataclasses.replace(m, mask=w), CPU)  # type: ignore[type-var]
                 for w in (1.0 - held_mask, held_mask))

    def spectrum(r: torch.Tensor) -> list[float]:
        p = (torch.fft.rfft(r.double(), dim=-1).abs() ** 2).sum(dim=tuple(range(r.ndim - 1)))
        return [float(f"{v:.5g}") for v in p.tolist()]

    out: dict = {"offset": offset, "heldout": [], "train_misfit": [], "spec": [], "view_err": [],
                 "y_spec": spectrum(held.y)}
    probe = sure_probe(sub, seed=1) if sure else None  # as for all views in main()
    if probe is not None:
        out["sure"] = []
    for lam in lams:
        x = solve(sub, lam)
        with torch.no_grad():
            r = held.op(x) - held.y
        if probe is not None:  # SURE of the training views' in-sample risk
            out["sure"].append(sure_risk(sub, x, solve(probe.nudged, lam), probe))
        out["heldout"].append(held.residual(x))
        out["train_misfit"].append(discrepancy(sub, x))
        out["spec"].append(spectrum(r))
        out["view_err"].append([float(f"{v:.6g}") for v in  # per held-out view and slice
                                (r.double() ** 2).sum(dim=-1).flatten().tolist()])
    return out


def _at(lams: list[float], psnrs: list[float], lam: float) -> float:
    """PSNR at ``lam``, interpolated in log lam (clamped to the grid)."""
    return float(np.interp(np.log(lam), np.log(lams), psnrs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--spacing", type=float, default=1.0)
    ap.add_argument("--slices", type=int, default=2)
    ap.add_argument("--volume", type=Path, default=None, help="a CT NIfTI in HU instead")
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--head", type=int, default=0, help="index into the test seeds")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--emin", type=int, default=-10)
    ap.add_argument("--emax", type=int, default=6)
    ap.add_argument("--default", action="store_true", help="also run the library's default")
    ap.add_argument("--cap", action="store_true",
                    help="run the default with discrepancy_cap=true")
    ap.add_argument("--texture", action="store_true",
                    help="synthetic head with the generator's CT texture and noise")
    ap.add_argument("--splits", type=int, default=1,
                    help="held-out curves for this many interleaved splits (offsets o, o+2, ..)")
    ap.add_argument("--sure", action="store_true",
                    help="Monte-Carlo SURE of the in-sample risk (one more solve per weight)")
    ap.add_argument("--no-curves", action="store_true",
                    help="skip the fine-grid training curves (only PSNR and the default)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # shared cores

    vol, seed = _case(args)
    ref = vol.data  # type: ignore[attr-defined]
    m = simulate(vol, SimulationConfig(modality="ct", seed=seed,  # type: ignore[arg-type]
                                       ct=CTSettings(views=args.views, dose_i0=1e5)))
    region, data_range = ref > -900.0, float(ref.max() - ref.min())
    settings = ct.method_settings(ct.TVSettings, {}, "tv")
    lams = [ct.DEFAULT_TV_LAM * 2 ** (e / 2) for e in range(args.emin, args.emax + 1)]
    full = ct._problem(m, CPU)
    mw = full.units.mu_water
    assert mw is not None

    def solve(problem: ct.Problem, lam: float) -> torch.Tensor:
        return ct._tv_solve(problem, lam, args.iterations, 1e-4, settings)[0].x * mw

    def score(x: torch.Tensor) -> float:
        return psnr(full.units.to_reference(x.numpy()), ref, data_range=data_range,
                    mask=region)

    row: dict = {"case": str(args.volume) if args.volume else "synthetic head",
                 "shape": list(ref.shape), "spacing_mm": [float(s) for s in full.spacing_mm],
                 "views": args.views, "seed": seed, "texture": args.texture, "lams": lams,
                 "psnr": [], "misfit": []}
    # the library's SURE (one fixed Gaussian probe, the step a tenth of the noise level)
    probe = sure_probe(full, seed=1) if args.sure else None
    if probe is not None:
        row["sure"] = []
    for lam in lams:
        x = solve(full, lam)
        row["psnr"].append(score(x))
        row["misfit"].append(discrepancy(full, x))
        if probe is not None:
            row["sure"].append(sure_risk(full, x, solve(probe.nudged, lam), probe))
    best = int(np.argmax(row["psnr"]))
    oracle, top = lams[best], row["psnr"][best]
    row["oracle"] = {"lam": oracle, "psnr": top}
    row["noise_std"] = full.noise_std
    if not args.no_curves:
        # split 0 is the library's (holdout_problems)
        row["splits"] = [_split_curves(m, j, lams, solve, args.sure and j == 0)
                         for j in range(max(1, args.splits))]
        row["heldout"] = row["splits"][0]["heldout"]
        row["train_misfit"] = row["splits"][0]["train_misfit"]
        row["det_mm"] = float(full.geometry.pixel_cols_mm)  # type: ignore[union-attr]
        pick = lams[int(np.argmin(row["heldout"]))]
        cap = discrepancy_weight(lams, row["train_misfit"], below=pick)
        capped = min(pick, cap) if cap is not None else pick
        for key, lam in (("heldout_pick", pick), ("capped_pick", capped)):
            row[key] = {"lam": lam, "ratio": lam / oracle,
                        "loss_db": top - _at(lams, row["psnr"], lam)}
    if args.default:
        t0 = time.perf_counter()
        out = ct.tv_method(m, ReconOptions(iterations=args.iterations,
                                           extra={"discrepancy_cap": args.cap}), CPU)
        tuned = out.info["autotune"]
        former = tuned["grid"][int(np.argmin(tuned["heldout_errors"]))]
        row["default"] = {"lam": out.info["lam"], "ratio": out.info["lam"] / oracle,
                          "psnr": score(torch.as_tensor(out.solution)),
                          "note": tuned["note"], "former_lam": former,
                          "seconds": round(time.perf_counter() - t0, 1)}
        row["default"]["loss_db"] = top - row["default"]["psnr"]
        x = solve(full, former)  # the former rule's weight on its own grid
        row["default"]["former_loss_db"] = top - score(x)
    row["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: row[k] for k in ("case", "shape", "views", "oracle", "heldout_pick",
                                          "capped_pick", "default") if k in row}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
