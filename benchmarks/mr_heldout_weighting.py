"""MR self-tuned weights: how the held-out samples and SURE's in-sample risk are combined.

Experiment for issue 13 (default L1-wavelet and TV within 0.5 dB of the oracle). The image
error of a reconstruction is, by Parseval (orthonormal FFT, maps with sum_c |S_c|^2 = 1),
roughly the error summed over every k-space position: the measured ones (SURE's in-sample
risk estimates it there) and the unmeasured ones (the held-out samples stand in for them).
Rules compared on the same training solves (one run per case and method):

* ``heldout``: the held-out relative residual alone (the rule without a noise level);
* ``current``: SURE's per-component risk plus the held-out per-component risk (mean + mean);
* ``count``: ``n_train * SURE + n_unmeasured * held-out mean`` (positions of the training
  problem; the unmeasured outnumber the measured by about R - 1);
* ``importance``: as ``count``, but each held-out sample weighted by ``(1 - p (1 - f)) / p``
  (p the mask's sampling density in the sample's |k| shell outside the calibration box, f the
  held-out share), the weights summing to ``n_unmeasured``: under a variable-density mask the
  held-out samples lie nearer the centre than the unmeasured positions;
* ``heldout_imp``: the held-out relative residual with the same importance weights.

Each rule's weight is found as :func:`medrecon.recon.autotune.tune_weight` finds it (every
point it tries lies on ``centre * 8^(k/4)``, cached), then scaled by n_all / n_train and the
all-data reconstruction scored: synthetic heads by PSNR over the volume (as
benchmarks/autotune_mr_sure.py, oracle over the same lattice of all-data weights), real files
by real_quality's metrics (oracle: its sweep, recorded in benchmarks/RESULTS_autotune.md).

Usage::

    nice -n 10 python benchmarks/mr_heldout_weighting.py synth --size 48 --snr 30 --accel 4 \\
        --mask poisson --methods tv
    nice -n 10 python benchmarks/mr_heldout_weighting.py real --cases-dir .devrun/real_cases \\
        --cases mr_brain_piesno --settings mr4 --methods tv
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from medrecon.recon import mri  # noqa: E402
from medrecon.recon.autotune import (  # noqa: E402
    _calibration_box,
    mr_holdout_masks,
    tune_weight,
)
from medrecon.recon.base import ReconOptions, method_settings  # noqa: E402
from medrecon.recon.sure import heldout_risk, sure, sure_probe  # noqa: E402

CPU = torch.device("cpu")
RULES = ("heldout", "current", "count", "importance", "heldout_imp")
MIN_PER_BIN = 16  # sampled positions per density shell (relative error of p about 25 %)


def density_weights(mask: np.ndarray, train: np.ndarray, held: np.ndarray,
                    fft_dims: tuple[int, ...], calibration: int | None,
                    shape: tuple[int, ...]) -> np.ndarray:
    """Per-position weights (shape ``shape``, zero off the held-out samples) summing to the
    number of positions the training mask leaves unmeasured."""
    m = np.broadcast_to(np.asarray(mask) > 0, np.broadcast_shapes(np.shape(mask), np.shape(held)))
    m = np.asarray(m)
    phase = [d for d in fft_dims if d != 0 and m.shape[d] > 1]
    calib = _calibration_box(m.shape, phase, calibration)
    rho2 = np.zeros(m.shape)
    for d in phase:
        n = m.shape[d]
        idx = (np.arange(n) - n // 2) / (n / 2.0)
        view = [1] * m.ndim
        view[d] = n
        rho2 = rho2 + (idx ** 2).reshape(view)
    rho = np.broadcast_to(np.sqrt(rho2), m.shape)
    outside = ~calib
    sampled_out = m & outside
    n_s = int(sampled_out.sum())
    bins = max(1, min(16, n_s // MIN_PER_BIN))
    edges = np.quantile(rho[outside], np.linspace(0, 1, bins + 1))
    edges[-1] = np.inf
    which = np.clip(np.searchsorted(edges, rho, side="right") - 1, 0, bins - 1)
    p = np.ones(m.shape)
    for b in range(bins):
        sel = outside & (which == b)
        p[sel] = max(sampled_out[sel].sum(), 1) / max(sel.sum(), 1)
    h = np.broadcast_to(np.asarray(held) > 0, shape)
    t = np.broadcast_to(np.asarray(train) > 0, shape)
    f = float((np.asarray(held) > 0).sum()) / max(float(sampled_out.sum()), 1.0)
    p_full = np.broadcast_to(p, shape) if p.shape != shape else p
    w = np.where(h, (1.0 - p_full * (1.0 - f)) / p_full, 0.0)
    n_unmeas = float(np.prod(shape)) - float(t.sum())
    return w * (n_unmeas / max(float(w.sum()), 1e-30))


def collect(m: Any, method: str, iterations: int | None, x_true: torch.Tensor | None = None,
            ref: np.ndarray | None = None, region: np.ndarray | None = None) -> dict[str, Any]:
    """Per rule: the training weight, the all-data weight, and the score on the lattice.

    With ``x_true`` (the simulated complex image) each lattice point also records the true
    error of the training reconstruction summed over k-space positions (all coils and parts):
    on the training samples, on the held-out ones and on the never-sampled ones, the complex
    image error, and the magnitude error against ``ref`` (within ``region`` where given)."""
    options = ReconOptions(iterations=iterations)
    if method == "tv":
        settings = method_settings(mri.TVSettings, {}, "tv")
        default_axes = (0, 1, 2) if len(m.fft_dims) == 3 else (0, 1)
        iters = mri._iterations(options, "tv")

        def solve(p: Any, lam: float) -> Any:
            return mri._tv_solve(p, lam, settings, settings.tv_axes or default_axes, iters,
                                 options.tol, False, CPU)[0]
    else:
        settings = method_settings(mri.L1WaveletSettings, {}, "l1-wavelet")
        iters = mri._iterations(options, "l1-wavelet")

        def solve(p: Any, lam: float) -> Any:
            return mri._l1_solve(p, lam, settings, iters, options.tol, False, CPU)[0]

    problem, _ = mri._setup(m, settings, CPU)
    op = problem.op
    mask = op.mask.detach().cpu().numpy()
    acq = m.acquisition or {}
    calib = acq.get("calibration")
    seed = int(acq.get("seed", 0) or 0)
    train, held = mr_holdout_masks(mask, m.fft_dims, int(calib) if calib else None, seed=seed,
                                   image_shape=op.image_shape)
    parts = []
    for k in (train, held):
        k_t = torch.from_numpy(k)
        part_op = mri.SenseOperator(op.maps, k_t, fft_dims=op.fft_dims,
                                    coil_batch=op.coil_batch, image_shape=op.image_shape)
        parts.append(dataclasses.replace(problem, op=part_op, y=problem.y * (k_t > 0)))
    sub, held_p = parts
    sigma = m.noise_std  # per real part (the file's RMS complex sigma / sqrt 2)
    sub = dataclasses.replace(sub, noise_std=sigma)
    held_p = dataclasses.replace(held_p, noise_std=sigma)
    probe = sure_probe(sub, seed)
    shape = tuple(problem.y.shape[1:])
    coils = int(problem.y.shape[0])
    from medrecon.operators.coils import detect_calibration

    cal = int(calib) if calib else (detect_calibration(mask, mask.shape, m.fft_dims) or None)
    w = torch.from_numpy(density_weights(mask, train, held, tuple(m.fft_dims), cal, shape))
    hmask = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(held > 0, shape)))
    n_train = float(np.broadcast_to(train > 0, shape).sum())
    n_held = float(hmask.sum())
    n_unmeas = float(np.prod(shape)) - n_train
    noise_pos = 2.0 * coils * sigma ** 2  # E|n|^2 per position, summed over coils
    centre = mri.default_lam(method, sub.op.adjoint(sub.y))
    full_op = mri.SenseOperator(op.maps, torch.ones_like(op.mask), fft_dims=op.fft_dims,
                                coil_batch=op.coil_batch, image_shape=op.image_shape)
    tmask = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(train > 0, shape)))
    cache: dict[int, dict[str, float]] = {}

    def stats(lam: float) -> dict[str, float]:
        key = round(4.0 * math.log(lam / centre) / math.log(8.0))
        if key not in cache:
            x = solve(sub, lam).x
            with torch.no_grad():
                r = held_p.op(x) - held_p.y
                e = (torch.abs(r).double() ** 2).sum(0)
                yy = (torch.abs(held_p.y).double() ** 2).sum(0)
            in_pc = sigma ** 2 * sure(sub, x, solve(probe.nudged, lam).x, probe)
            e_h, y_h, w_h = e[hmask], yy[hmask], w[hmask]
            truth = {} if x_true is None else _truth(x, x_true, ref, region, full_op, tmask,
                                                      hmask)
            cache[key] = {
                "lam": lam,
                "sure_pc": in_pc,
                "held_pc": heldout_risk(held_p, x),
                "held_rel": float(torch.sqrt(e_h.sum() / y_h.sum())),
                "held_rel_imp": float(torch.sqrt((w_h * e_h).sum() / (w_h * y_h).sum())),
                # totals per position (summed over coils and parts): n * 2C * per-component
                "in_total": n_train * 2.0 * coils * in_pc,
                "held_total_count": n_unmeas / n_held * float((e_h - noise_pos).sum()),
                "held_total_imp": float((w_h * (e_h - noise_pos)).sum()),
                **truth,
            }
        return cache[key]

    score = {
        "heldout": lambda s: s["held_rel"],
        "current": lambda s: s["sure_pc"] + s["held_pc"],
        "count": lambda s: s["in_total"] + s["held_total_count"],
        "importance": lambda s: s["in_total"] + s["held_total_imp"],
        "heldout_imp": lambda s: s["held_rel_imp"],
    }
    picks = {}
    for rule in RULES:
        best, _, _ = tune_weight(lambda lam, r=rule: score[r](stats(lam)), centre)
        picks[rule] = best
    scale = float(((train > 0).sum() + (held > 0).sum()) / (train > 0).sum())
    wh = w[hmask]
    return {"centre": centre, "scale": scale, "train_picks": picks,
            "picks": {r: v * scale for r, v in picks.items()},
            "n_train": n_train, "n_held": n_held, "n_unmeas": n_unmeas,
            "w_held_min_max": [float(wh.min()), float(wh.max())],
            "lattice": sorted(cache.values(), key=lambda s: s["lam"])}


def _truth(x: torch.Tensor, x_true: torch.Tensor, ref: Any, region: Any, full_op: Any,
           tmask: torch.Tensor, hmask: torch.Tensor) -> dict[str, float]:
    """The true errors of one training reconstruction ``x`` (see :func:`collect`)."""
    with torch.no_grad():
        d = x - x_true
        et = (torch.abs(full_op(d)).double() ** 2).sum(0)  # per k-space position
        mag = (torch.abs(x).double() - torch.from_numpy(np.asarray(ref)).double()) ** 2
        if region is not None:
            mag = mag[torch.from_numpy(region)]
        return {"true_train": float(et[tmask].sum()), "true_held": float(et[hmask].sum()),
                "true_never": float(et[~tmask & ~hmask].sum()),
                "true_image": float((torch.abs(d).double() ** 2).sum()),
                "true_magnitude": float(mag.sum())}


def simulated_image(vol: Any, seed: int) -> torch.Tensor:
    """The complex image the simulator's smooth phase gives ``vol`` (its x_true)."""
    from medrecon.simulate import smooth_phase

    mag = np.abs(np.asarray(vol.data, dtype=np.float64))
    return torch.from_numpy((mag * np.exp(1j * smooth_phase(mag.shape, np.pi, seed)))
                            .astype(np.complex64))


def synth(args: argparse.Namespace) -> None:
    from autotune_mr_sure import SIM_SEED, head, simulated

    from medrecon.methods import get_method
    from medrecon.metrics import psnr

    ref = head(args.size, args.noisy_reference)
    for accel in args.accel:
        for snr in args.snr:
            m = simulated(ref, accel, snr, args.mask)
            for method in args.methods:
                t0 = time.perf_counter()
                xt = simulated_image(ref, SIM_SEED) if args.truth else None
                c = collect(m, method, args.iterations, xt, ref.data)
                spec = get_method("MR", method)
                full: dict[int, float] = {}

                def value(lam: float, c: dict = c, spec: Any = spec, full: dict = full,
                          m: Any = m) -> float:
                    k = round(4.0 * math.log(lam / (c["centre"] * c["scale"])) / math.log(8.0))
                    if k not in full:
                        img = spec(m, ReconOptions(lam=lam, iterations=args.iterations),
                                   CPU).image
                        full[k] = psnr(img, ref.data)
                    return full[k]

                if args.no_oracle:
                    _emit({"case": f"{args.mask} R={accel:g} SNR={snr:g}" + (
                           " noisy ref" if args.noisy_reference else ""), "method": method,
                           "picks": c["picks"], **_meta(c)}, args.out)
                    continue
                lattice = [c["centre"] * c["scale"] * 8.0 ** (k / 4.0) for k in range(-5, 6)]
                curve = {f"{lam:.4g}": round(value(lam), 3) for lam in lattice}
                best = max(lattice, key=value)
                row = {"case": f"{args.mask} R={accel:g} SNR={snr:g}"
                       + (" noisy ref" if args.noisy_reference else ""), "method": method,
                       "oracle": {"lam": best, "psnr": value(best)}, "curve": curve,
                       "rules": {r: {"lam": lam, "under_db": round(value(best) - value(lam), 3),
                                     "x_oracle": round(lam / best, 3)}
                                 for r, lam in c["picks"].items()},
                       "seconds": round(time.perf_counter() - t0, 1), **_meta(c)}
                _emit(row, args.out)


def real(args: argparse.Namespace) -> None:
    from real_quality import _metrics, _mri_config, load_cases

    from medrecon.reconstruct import reconstruct
    from medrecon.simulate import simulate

    for name, vol, note in load_cases(args.cases.split(","), args.cases_dir):
        if vol is None:
            print(json.dumps({"case": name, "skipped": note}), flush=True)
            continue
        ref = vol.data.astype(np.float32)
        region, data_range = ref > 0.05 * ref.max(), float(ref.max())
        for setting in args.settings.split(","):
            m = simulate(vol, _mri_config(vol.shape, float(setting[2:])), device="cpu")
            for method in args.methods:
                t0 = time.perf_counter()
                xt = simulated_image(vol, 0) if args.truth else None
                c = collect(m, method, None, xt, ref, region)
                done: dict[float, float] = {}
                for lam in c["picks"].values():
                    key = round(lam, 12)
                    if key not in done:
                        r = reconstruct(m, method, ReconOptions(lam=lam, device="cpu"))
                        done[key] = _metrics(r.volume.data, ref, region, data_range)["psnr"]
                row = {"case": name, "setting": setting, "method": method,
                       "rules": {r: {"lam": lam, "psnr": round(done[round(lam, 12)], 3)}
                                 for r, lam in c["picks"].items()},
                       "seconds": round(time.perf_counter() - t0, 1), **_meta(c)}
                _emit(row, args.out)


def _meta(c: dict[str, Any]) -> dict[str, Any]:
    return {k: c[k] for k in ("n_train", "n_held", "n_unmeas", "w_held_min_max", "lattice")}


def _emit(row: dict[str, Any], out: Path | None) -> None:
    row = {**row, "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "command": " ".join(sys.argv)}
    short = {k: v for k, v in row.items() if k not in ("lattice", "curve", "command")}
    print(json.dumps(short), flush=True)
    if out is not None:
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("synth")
    s.add_argument("--size", type=int, default=48)
    s.add_argument("--iterations", type=int, default=60)
    s.add_argument("--snr", type=float, nargs="+", default=[30.0])
    s.add_argument("--accel", type=float, nargs="+", default=[4.0])
    s.add_argument("--methods", nargs="+", default=["l1-wavelet", "tv"])
    s.add_argument("--noisy-reference", action="store_true")
    s.add_argument("--no-oracle", action="store_true", help="picks only (with --truth: the "
                                                              "error split, no all-data sweep)")
    s.add_argument("--mask", choices=["poisson", "lines"], default="poisson")
    r = sub.add_parser("real")
    r.add_argument("--cases-dir", type=Path, required=True)
    r.add_argument("--cases", default="mr_brain_piesno")
    r.add_argument("--settings", default="mr4")
    r.add_argument("--methods", nargs="+", default=["l1-wavelet", "tv"])
    for p in (s, r):
        p.add_argument("--out", type=Path, default=None)
        p.add_argument("--truth", action="store_true",
                       help="record the true k-space error split (the simulated image)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    (synth if args.what == "synth" else real)(args)


if __name__ == "__main__":
    main()
