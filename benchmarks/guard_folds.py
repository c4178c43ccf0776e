"""Would the guard decide better on all the self-tuning's folds than on the first one?

The guard (:mod:`medrecon.guard`) scores diffusion and the classical methods on one hold-out
split: MR the first fold of :func:`~medrecon.recon.autotune.mr_holdout_folds`, which on the
real line masks holds out 1-12 lines. The classical self-tuning pools its held-out terms over
up to 7 disjoint folds. This script runs, per fold, the guard's two diffusion chains (at the
weight the default path chose) and each classical method on the fold's training part (at its
self-tuned weight), then makes the guard's decisions on fold 0 (what the library does) and on
all folds pooled (the candidate), and scores each against the reference: PSNR of the output,
coverage at 2 std of its map (:func:`~medrecon.priors.calibration.output_std`, the factor of
:meth:`~medrecon.holdout.HeldOut.std_scale`) and the map's rms over the error's. It also reports
the blend's significance over the held-out units (the gain per line, its t statistic, and the
gain of a blend weight fitted with each line left out), and the output's PSNR had the blend
been made of the complex images (what the held-out test scores) instead of the magnitudes.

Cases: the real MR validation files of ``benchmarks/real_quality.py`` (read from a folder its
``--export`` wrote; never tuned on), simulated and scored as there. 50 steps, K = 4, seed 0.
The DWI volume (6 x 10 x 10) takes about 2 min per setting on a 2-core CPU::

    python benchmarks/guard_folds.py --cases-dir .devrun/real_cases --cases mr_dwi_b0 \\
        --settings mr4,mr8 --out folds.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _decide(folds: list[dict[str, Any]], samples: int, alpha: float) -> dict[str, Any]:
    """The guard's decision on the pooled held-out data of ``folds`` (predictions of each
    fold's training-part runs concatenated; a single fold: the library's own)."""
    from medrecon.guard import guard_choice
    from medrecon.holdout import HeldOut

    def cat(key: str, sub: str | None = None) -> torch.Tensor:
        return torch.cat([(f[key] if sub is None else f[key][sub]).flatten() for f in folds])

    y = cat("y")
    # flattened: guard_choice's blend test counts every held-out sample as a position here
    # (the library pools the coils at each k-space position)
    held = HeldOut(lambda x: x, y, folds[0]["noise_var"], sum(f["noise_count"] for f in folds))
    a1, a2 = cat("a1"), cat("a2")
    d_err, mean = held.mean_error(a1, a2, samples)
    errors = {m: held.prediction_error(cat("b", m)) for m in folds[0]["b"]}
    method = min(errors, key=lambda m: errors[m])
    b = cat("b", method)
    choice, w, b_err, _ = guard_choice(held, mean, d_err, b, errors[method])
    row: dict[str, Any] = {"folds": len(folds), "diffusion_error": d_err,
                           "classical_errors": errors, "method": method, "choice": choice,
                           "weight": w, "blend_error": b_err}
    row["scale"] = held.std_scale(a1, a2, w, b, alpha) if w < 1.0 else None
    row.update(_units(folds, method))
    return row


def _units(folds: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """The blend's gain per held-out line: its share of the held-out energy, its t statistic
    over the lines, and the gain with each line's blend weight fitted on the others."""
    from medrecon.holdout import blend_weight

    units = []
    for f in folds:
        a, b, y = 0.5 * (f["a1"] + f["a2"]), f["b"][method], f["y"]
        lines = torch.nonzero(torch.sum(torch.abs(y) ** 2, dim=tuple(range(y.ndim - 2))) > 0)
        units += [((a - b)[..., j, k].flatten(), (y - b)[..., j, k].flatten()) for j, k in lines]

    def weight(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        # the guard's closed form on (a - b, y - b): a blend of a - b with 0 that fits y - b
        d = torch.cat([p[0] for p in parts])
        return blend_weight(d, torch.zeros_like(d), torch.cat([p[1] for p in parts]))

    def gain(w: float, d: torch.Tensor, e: torch.Tensor) -> float:
        return float(torch.sum(torch.abs(e) ** 2) - torch.sum(torch.abs(e - w * d) ** 2))

    w = weight(units)
    total = float(sum(torch.sum(torch.abs(e) ** 2) for _, e in units))
    g = np.array([gain(w, d, e) for d, e in units])
    loo = [gain(weight(units[:i] + units[i + 1:]), *units[i]) for i in range(len(units))
           if len(units) > 1]
    t = float(g.mean() / (g.std(ddof=1) / np.sqrt(g.size))) if g.size > 1 else None
    return {"lines": len(units), "blend_gain": float(g.sum()) / total, "blend_gain_t": t,
            "blend_gain_loo": float(np.sum(loo)) / total if loo else None}


def run_case(vol: Any, setting: str, args: argparse.Namespace) -> dict[str, Any]:
    import real_quality as rq

    from medrecon.guard import (
        _CLASSICAL,
        _classical_split,
        _estimate_maps_once,
        _sample,
        classical_runs,
        guarded_diffusion,
    )
    from medrecon.holdout import holdout_split, prior_alpha
    from medrecon.metrics import std_map_check
    from medrecon.priors import load_prior
    from medrecon.priors.calibration import output_std
    from medrecon.problem import measurement_problem
    from medrecon.recon import mri
    from medrecon.recon.autotune import mr_holdout_folds
    from medrecon.recon.base import ReconOptions
    from medrecon.sampling.config import DiffusionConfig
    from medrecon.simulate import simulate

    dev = torch.device(args.device)
    ref = vol.data.astype(np.float32)
    region = ref > 0.05 * ref.max()

    def psnr(x: np.ndarray) -> float:
        return float(rq._metrics(x, ref, region, float(ref.max()))["psnr"])

    m = simulate(vol, rq._mri_config(vol.shape, float(setting[2:])), device=args.device)
    prior = load_prior(args.prior)
    cfg = DiffusionConfig(steps=args.steps, samples=args.samples, seed=0)
    default = guarded_diffusion(m, cfg, prior, dev)
    lam = float(default.info["lam"])
    dmeas, cmeas, _ = _estimate_maps_once(m, dev, True)
    split = holdout_split(dmeas, dev)
    runs = classical_runs(m, split, dev, cmeas=cmeas)
    acq = dmeas.acquisition or {}
    op = split.problem.op
    masks = mr_holdout_folds(op.mask.cpu().numpy(), dmeas.fft_dims,  # type: ignore[union-attr]
                             int(acq["calibration"]) if acq.get("calibration") else None,
                             seed=int(acq.get("seed", 0) or 0),
                             image_shape=op.image_shape,  # type: ignore[union-attr]
                             first=split.masks)
    folds = []
    for fm in masks:
        sp = holdout_split(dmeas, dev, masks=fm)
        csp = _classical_split(dmeas, cmeas, sp, dev)
        a1, a2 = (sp.held.predict(_sample(sp.train, prior, dataclasses.replace(
            cfg, seed=cfg.seed + i), lam, 1, dev, False, False).image).cpu() for i in (1, 2))
        b = {}
        for r in runs:
            scale = float((r.output.info.get("autotune") or {}).get("scale", 1.0))
            part = _CLASSICAL[("MR", r.method)](csp.train, ReconOptions(lam=r.lam / scale), dev)
            b[r.method] = csp.held.predict(part.solution).cpu()
        folds.append({"a1": a1, "a2": a2, "b": b, "y": sp.held.y.cpu(),
                      "noise_var": sp.held.noise_var, "noise_count": sp.held.noise_count})
    final = _sample(dmeas, prior, cfg, lam, args.samples, dev, False, False)
    alpha = prior_alpha(final.info)
    raw = final.std / float(final.info.get("std_factor") or 1.0)
    units = measurement_problem(dmeas, dev).units
    full = {r.method: r.output for r in runs}
    row: dict[str, Any] = {"setting": setting, "lam": lam, "default_psnr": psnr(default.image),
                           "default_guard": default.info.get("guard_line"),
                           "diffusion_psnr": psnr(final.mean),
                           "classical_psnr": {k: psnr(v.image) for k, v in full.items()}}
    for label, subset in (("fold0", folds[:1]), ("pooled", folds)):
        d = _decide(subset, args.samples, alpha)
        c = full[d["method"]]
        w = d["weight"]
        out = w * final.mean + (1 - w) * c.image
        std = output_std(raw, c.image - final.mean, w, alpha, args.samples, d["scale"] or 1.0)
        check = std_map_check(out, std, ref, region)["volume"]
        complex_blend = units.to_reference(
            w * final.image + (1 - w) * mri.combine_sets(c.solution).to(final.image.device))
        d.update(psnr=psnr(out), complex_blend_psnr=psnr(complex_blend.cpu().numpy()),
                 coverage_2std=check["coverage_2std"],
                 std_over_error_rms=check["std_rms_over_error_rms"])
        row[label] = d
    return row


def main(argv: list[str] | None = None) -> int:
    import real_quality as rq

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases-dir", type=Path, required=True)
    ap.add_argument("--cases", default="mr_dwi_b0")
    ap.add_argument("--settings", default="mr4,mr8")
    ap.add_argument("--prior", default="default")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    for name, vol, note in rq.load_cases(args.cases.split(","), args.cases_dir):
        if vol is None or vol.modality != "MR":
            print(f"{name}: skipped ({note or 'not MR'})")
            continue
        for setting in args.settings.split(","):
            row = {**run_case(vol, setting, args), "case": name, "steps": args.steps,
                   "samples": args.samples, "device": args.device,
                   "date": datetime.now(UTC).isoformat(timespec="seconds")}
            line = json.dumps(row, default=float)
            print(line, flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
