"""Fit and check the calibration of the posterior std map (issue 13, item 3).

``fit``: posterior samples on synthetic heads of the *validation* split (seeds 1,000,100 + i:
never trained on, and not the test heads the demo and ``check`` report on), for each modality
over the acquisitions the benchmarks cover (MR: 8 coils, 3D Poisson-disc R = 4 and 8, SNR 30,
as the demo; CT: 30 and 60 parallel-beam views, I0 = 1e5). The coverage region is the
automatic foreground mask of the reference, as in the demo. From N chains per case it takes
disjoint groups of K = 2, 3, ..., N chains and fits the large-K scale alpha of
:mod:`medrecon.priors.calibration` so that 2 calibrated std cover 95.4 % of the errors, averaged
over K; it prints per case and per K the raw and calibrated coverage (and alpha fitted per K
alone, which tests the Student-t correction), and with ``--write`` stores the entry in the
prior's JSON (replacing one for the same modality, sampler, options and steps).

``rescore``: the rows of a ``check`` as a markdown table, scored with the calibration the prior
holds now (from each row's quantiles of |error| / raw std).

``check``: coverage of the calibrated std map of the prior as shipped, through
:func:`medrecon.sampling.posterior_sample` (the path ``reconstruct`` takes), per case:

* held-out synthetic heads (test split 2,000,000 + i, the demo's heads), same acquisitions;
* ``--real``: the real validation files of ``benchmarks/real_quality.py`` (validation only:
  nothing is fitted on them), its acquisitions (MR R = 4, 8; CT 30, 60 views), its regions (MR
  above 5 % of the reference maximum, CT above -900 HU); ``--real-crop N`` crops them to their
  central N x N x <= 8 voxels at native voxel size so that a CPU can run them.

Commands (results and machine: ``benchmarks/RESULTS_std_calibration.md``)::

    # CPU, the demo's size and steps (64^3 at 2 mm, 8 steps)
    python benchmarks/std_calibration.py fit --size 64 --steps 8 --heads 3 --chains 6 \\
        --device cpu --write medrecon/priors/weights/default.json
    python benchmarks/std_calibration.py check --size 64 --steps 8 --heads 2 --samples 3 \\
        --device cpu --real --real-crop 64
    # GPU, the CLI's default steps (50); the check at the whole head (96 x 112 x 112)
    python benchmarks/std_calibration.py fit --size 64 --steps 50 --heads 4 --chains 8 \\
        --device cuda --write medrecon/priors/weights/default.json
    # the self-tuned weight's other candidates (one entry per weight)
    python benchmarks/std_calibration.py fit --size 64 --steps 50 --heads 2 --chains 4 \\
        --lam-factors 0.0625,0.25,4,16 --device cuda --write medrecon/priors/weights/default.json
    python benchmarks/std_calibration.py check --shape 96,112,112 --steps 50 --heads 2 \\
        --samples 4 --device cuda --real --cases-dir out/real_cases

The GPU machine has neither dipy nor pydicom-data: export the real volumes first with
``python benchmarks/real_quality.py --export out/real_cases`` and carry that folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

FIT_SEEDS_START = 1_000_100  # validation split; benchmarks/demo_baselines.py uses 1,000,000
SETTINGS = {"MR": ("mr4", "mr8"), "CT": ("ct30", "ct60")}


def _config(modality: str, setting: str, shape: tuple[int, ...], seed: int) -> Any:
    from medrecon.demo.plan import calibration_size
    from medrecon.simulate import CTSettings, MRISettings, SimulationConfig

    if modality == "MR":
        return SimulationConfig(modality="mri", seed=seed, mri=MRISettings(
            coils=8, acceleration=float(setting[2:]), mask="poisson",
            calibration=calibration_size(shape[1]), snr=30.0))
    return SimulationConfig(modality="ct", seed=seed, ct=CTSettings(
        geometry="parallel", views=int(setting[2:]), dose_i0=1e5))


def _head(modality: str, shape: tuple[int, ...], spacing: float, seed: int, device: str) -> Any:
    from medrecon.priors.synthetic import generate_head

    return generate_head(shape, spacing, modality=modality,
                         contrast="random", seed=seed,
                         lesions=True, noise=False, device=device)


def _sample(meas: Any, prior: Any, args: argparse.Namespace, samples: int, seed: int,
            options: Any = None) -> Any:
    from medrecon.sampling import SamplerOptions, posterior_sample

    if options is None and args.extra:
        options = SamplerOptions.defaults(meas.modality, args.sampler, **args.extra)
    return posterior_sample(meas, prior, sampler=args.sampler, steps=args.steps,
                            samples=samples, seed=seed, device=args.device, keep_samples=True,
                            options=options)


def _shape(args: argparse.Namespace) -> tuple[int, int, int]:
    if args.shape:
        i, j, k = (int(v) for v in args.shape.split(","))
        return i, j, k
    return args.size, args.size, args.size


def _emit(path: Path | None, row: dict[str, Any]) -> None:
    line = json.dumps(row)
    if path is not None:
        with path.open("a") as f:
            f.write(line + "\n")
    print(line, flush=True)


def fit(args: argparse.Namespace, prior: Any, common: dict[str, Any]) -> int:
    import dataclasses

    from medrecon.evaluation import foreground_mask
    from medrecon.priors.calibration import (
        SPREAD_OPTIONS,
        CalibrationEntry,
        coverage,
        error_ratios,
        fit_alpha,
        std_factor,
        write_calibration,
    )
    from medrecon.sampling import SamplerOptions
    from medrecon.simulate import simulate

    shape = _shape(args)
    spacing = float(prior.spacing_mm[0])
    groups = list(range(2, args.chains + 1))
    entries = []
    for modality, factor in ((m, f) for m in args.modalities for f in args.lam_factors):
        opt = SamplerOptions.defaults(modality, args.sampler, **args.extra)
        if factor != 1.0:  # the self-tuned weight's other candidates (guard.DIFFUSION_FACTORS)
            opt = dataclasses.replace(opt, lam=opt.lam * factor)
        ratios: dict[int, list[np.ndarray]] = {g: [] for g in groups}
        cases = []
        for setting in SETTINGS[modality]:
            for i in range(args.heads):
                seed = FIT_SEEDS_START + i
                t0 = time.perf_counter()
                ref = _head(modality, shape, spacing, seed, args.device)
                meas = simulate(ref, _config(modality, setting, shape, i), device=args.device)
                res = _sample(meas, prior, args, args.chains, seed=i, options=opt)
                mask = foreground_mask(ref.data, modality=modality)
                x = res.samples[:, mask]
                t = ref.data[mask]
                row = {"step": "fit", "modality": modality, "setting": setting, "head": seed,
                       "lam": opt.lam,
                       "seconds": round(time.perf_counter() - t0, 1), "voxels": int(mask.sum())}
                for g in groups:
                    r = error_ratios(x, t, g)
                    ratios[g].append(r.ravel())
                    row[f"raw_cov_K{g}"] = round(coverage(r, 1.0), 4)
                cases.append(row)
                print(json.dumps(row), flush=True)  # progress; the rows with alpha come last
        pooled = {g: np.concatenate(v) for g, v in ratios.items()}
        alpha = fit_alpha(pooled)
        by_k = {g: coverage(pooled[g], std_factor(alpha, g)) for g in groups}
        per_k_alpha = {g: fit_alpha({g: pooled[g]}) for g in groups}
        for row in cases:  # calibrated coverage per case, with the pooled alpha
            _emit(args.out, {**row, "alpha": alpha, **common})
        options = {k: v for k, v in dataclasses.asdict(opt).items()
                   if k in SPREAD_OPTIONS[args.sampler]}
        entry = CalibrationEntry(
            modality=modality, sampler=args.sampler, steps=args.steps, options=options,
            alpha=round(alpha, 4), coverage=round(float(np.mean(list(by_k.values()))), 4),
            coverage_by_samples={g: round(c, 4) for g, c in by_k.items()},
            cases=len(cases),
            basis=(f"{args.heads} synthetic validation heads (seeds {FIT_SEEDS_START}-"
                   f"{FIT_SEEDS_START + args.heads - 1}) x {', '.join(SETTINGS[modality])}, "
                   f"{'x'.join(map(str, shape))} at {spacing:g} mm, foreground mask, "
                   f"{args.chains} chains in groups of K = 2..{args.chains}"),
            fitted=f"{common['date'][:10]}, {common['device']}")
        entries.append(entry)
        _emit(args.out, {"step": "fit-summary", "modality": modality, "lam": opt.lam,
                         "alpha": alpha,
                         "coverage_by_samples": by_k, "alpha_by_samples": per_k_alpha,
                         "entry": entry.to_dict(), **common})
    if args.write is not None:
        write_calibration(args.write, entries)
        print(f"wrote {len(entries)} entries into {args.write}", flush=True)
    return 0


def _coverage_row(res: Any, truth: np.ndarray, region: np.ndarray) -> dict[str, Any]:
    from medrecon.sampling import calibration

    factor = res.info.get("std_factor")
    raw = res.std / factor if factor else res.std
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(res.mean - truth)[region] / raw[region]
    r = np.where(np.isnan(r), 0.0, r)
    return {"raw_ratio_quantiles": [round(float(q), 4) for q in  # rescoring at any factor
                                    np.quantile(r, np.linspace(0.0, 1.0, 201))],
            "coverage_2std": round(calibration(res.mean, res.std, truth, 2.0, region), 4),
            "raw_coverage_2std": round(calibration(res.mean, raw, truth, 2.0, region), 4),
            "coverage_1std": round(calibration(res.mean, res.std, truth, 1.0, region), 4),
            "std_factor": factor, "line": res.info.get("std_calibration_line"),
            "region_voxels": int(region.sum())}


def _capture_offset() -> dict[str, Any]:
    """Wrap the guard's :func:`~medrecon.holdout.offset_std` (until the next call) so that the
    dict returned is filled with its inputs: the chains' raw spread, the offset, the weight,
    the held-out scale, K and the prior's alpha (``--dump``)."""
    import medrecon.guard as guard
    from medrecon.holdout import offset_std, prior_alpha

    parts: dict[str, Any] = {}

    def wrapped(out: Any, support: Any, weight: float, offset: np.ndarray, scale: float | None,
                samples: int) -> None:
        std = np.asarray(out.info["std_image"], np.float32)
        parts.update(raw=std / float(out.info.get("std_factor") or 1.0), offset=offset,
                     weight=weight, scale=np.nan if scale is None else scale, samples=samples,
                     alpha=prior_alpha(out.info))
        if support is not None:
            parts["support"] = support.cpu().numpy()
        offset_std(out, support, weight, offset, scale, samples)
        guard.offset_std = offset_std

    guard.offset_std = wrapped
    return parts


def _guarded_row(meas: Any, prior: Any, args: argparse.Namespace, truth: np.ndarray,
                 region: np.ndarray, seed: int, name: str = "row") -> dict[str, Any]:
    """``--guarded``: the default path (self-tuned weight, guard) of ``reconstruct``; the
    coverage of its std map (calibrated on the measurement's held-out data where it could be)
    and of the prior's synthetic-head calibration on the same run (``prior_factor``). With
    ``--dump DIR`` a row whose map is the blend's or the classical result's also writes
    ``DIR/name.npz`` (the output, the truth, the region and :func:`_capture_offset`'s parts)."""
    import torch

    from medrecon.guard import guarded_diffusion
    from medrecon.metrics import std_map_check
    from medrecon.sampling import calibration
    from medrecon.sampling.config import DiffusionConfig

    cfg = DiffusionConfig(sampler=args.sampler, steps=args.steps, samples=args.samples,
                          seed=seed, **args.extra)
    parts = _capture_offset() if args.dump else {}
    out = guarded_diffusion(meas, cfg, prior, torch.device(args.device))
    if parts:  # the offset map's inputs, to score other forms of it on the CPU
        args.dump.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.dump / f"{name}.npz", image=np.asarray(out.image, np.float32),
                            truth=truth.astype(np.float32), region=region,
                            **{k: np.asarray(v) for k, v in parts.items()})
    guard = out.info.get("guard", {})
    row: dict[str, Any] = {"guard": guard.get("choice"), "weight": guard.get("weight"),
                           "lam": out.info.get("lam")}
    std = out.info.get("std_image")
    if std is None:
        return row
    cal = out.info.get("std_calibration") or {}
    # coverage at 1 and 2 std, and sharpness: a map can cover by being wide everywhere
    check = std_map_check(out.image, std, truth, region)["volume"]
    row.update(alpha=cal.get("alpha"), scale=cal.get("scale"),
               prior_alpha=cal.get("prior_alpha"), std_factor=out.info.get("std_factor"),
               line=out.info.get("std_calibration_line"),
               coverage_2std=round(check["coverage_2std"], 4),
               coverage_1std=round(check["coverage_1std"], 4),
               std_over_error_rms=round(check["std_rms_over_error_rms"], 3))
    before, factor = cal.get("prior_factor"), out.info.get("std_factor")
    if cal.get("scale"):  # the same map without this measurement's factor
        row["prior_coverage_2std"] = round(calibration(
            out.image, std / float(cal["scale"]), truth, 2.0, region), 4)
    elif before and factor:  # the prior's factor instead of the held-out alpha
        row["prior_coverage_2std"] = round(calibration(
            out.image, std * (before / factor), truth, 2.0, region), 4)
    return row


def check(args: argparse.Namespace, prior: Any, common: dict[str, Any]) -> int:
    from medrecon.evaluation import foreground_mask
    from medrecon.simulate import simulate

    shape = _shape(args)
    spacing = float(prior.spacing_mm[0])
    if args.heads:
        for modality in args.modalities:
            for setting in SETTINGS[modality]:
                if args.settings and setting not in args.settings:
                    continue
                for i in range(args.heads):
                    seed = 2_000_000 + i
                    t0 = time.perf_counter()
                    ref = _head(modality, shape, spacing, seed, args.device)
                    meas = simulate(ref, _config(modality, setting, shape, i),
                                    device=args.device)
                    region = foreground_mask(ref.data, modality=modality)
                    row = (_guarded_row(meas, prior, args, ref.data, region, i,
                                        f"head{seed}_{setting}") if args.guarded else
                           _coverage_row(_sample(meas, prior, args, args.samples, seed=i),
                                         ref.data, region))
                    _emit(args.out, {"step": "check", "case": f"synthetic test head {seed}",
                                     "modality": modality, "setting": setting,
                                     "shape": list(shape), "samples": args.samples, **row,
                                     "seconds": round(time.perf_counter() - t0, 1), **common})
    if args.real:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import real_quality as rq

        names = [c.strip() for c in args.cases.split(",") if c.strip()] or list(rq.CASES)
        for name, vol, note in rq.load_cases(names, args.cases_dir):
            if vol is None or vol.modality not in args.modalities:
                if vol is None:
                    _emit(args.out, {"step": "check", "case": name, "skipped": note, **common})
                continue
            if args.real_crop:
                vol = rq._crop(vol, args.real_crop, 8)
            ref = vol.data.astype(np.float32)
            region = ref > (0.05 * ref.max() if vol.modality == "MR" else -900.0)
            for setting in rq.SETTINGS[vol.modality]:
                if args.settings and setting not in args.settings:
                    continue
                t0 = time.perf_counter()
                if vol.modality == "MR":
                    cfg = rq._mri_config(vol.shape, float(setting[2:]))
                else:
                    cfg = _config("CT", setting, vol.shape, 0)
                try:
                    meas = simulate(vol, cfg, device=args.device)
                    row = (_guarded_row(meas, prior, args, ref, region, 0, f"{name}_{setting}")
                           if args.guarded
                           else _coverage_row(_sample(meas, prior, args, args.samples, seed=0),
                                              ref, region))
                except Exception as exc:  # record it, go on with the other cases
                    row = {"error": f"{type(exc).__name__}: {exc}"}
                _emit(args.out, {"step": "check", "case": name, "modality": vol.modality,
                                 "setting": setting, "shape": list(vol.shape),
                                 "spacing_mm": [round(float(s), 3) for s in vol.spacing],
                                 "samples": args.samples, **row,
                                 "seconds": round(time.perf_counter() - t0, 1), **common})
    return 0


def rescore(args: argparse.Namespace, prior: Any) -> int:
    """A markdown table of the ``check`` rows of ``--rows``: 2-std coverage with the raw std
    and with the calibration of ``--prior`` (from each row's quantiles of |error| / raw std,
    so rows checked before the prior held a calibration are scored with it too)."""
    import dataclasses

    from medrecon.priors.calibration import calibrate_std
    from medrecon.sampling import SamplerOptions

    print("| case | setting | voxels | K | raw 2 std | calibrated 2 std | factor |")
    print("|---|---|---|---|---|---|---|")
    for line in args.rows.read_text().splitlines():
        row = json.loads(line)
        if row.get("step") != "check" or "raw_ratio_quantiles" not in row:
            if row.get("step") == "check":
                print(f"| {row['case']} | {row.get('setting', '')} | "
                      f"{row.get('skipped') or row.get('error')} | | | | |")
            continue
        opt = dataclasses.asdict(SamplerOptions.defaults(row["modality"], row["sampler"],
                                                         **args.extra))
        _, note = calibrate_std(np.ones(1), prior.std_calibration, modality=row["modality"],
                                sampler=row["sampler"], steps=row["steps"],
                                samples=row["samples"], options=opt, prior_name=prior.name)
        q = np.asarray(row["raw_ratio_quantiles"])
        levels = np.linspace(0.0, 1.0, q.size)

        def cov(factor: float, q: np.ndarray = q, levels: np.ndarray = levels) -> float:
            # The fraction of voxels whose ratio is <= 2 factor: the quantile curve inverted.
            return float(np.interp(2.0 * factor, q, levels, left=0.0, right=1.0))

        cal = f"{100 * cov(note.factor):.1f} %" if note.factor else "uncalibrated"
        fac = f"{note.factor:.3g}" if note.factor else ""
        print(f"| {row['case']} | {row['setting']} | {row['region_voxels']} | "
              f"{row['samples']} | {100 * cov(1.0):.1f} % | {cal} | {fac} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("fit", "check", "rescore"))
    ap.add_argument("--prior", default="default")
    ap.add_argument("--sampler", default="dds")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=64, help="cube side of the synthetic heads")
    ap.add_argument("--shape", default="", help="I,J,K instead of --size")
    ap.add_argument("--heads", type=int, default=2, help="heads per acquisition")
    ap.add_argument("--chains", type=int, default=6, help="fit: chains per case")
    ap.add_argument("--samples", type=int, default=4, help="check: K")
    ap.add_argument("--modalities", default="MR,CT")
    ap.add_argument("--settings", default="", help="check: only these, e.g. mr8,ct30")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--lam-factors", default="1",
                    help="fit: one entry per weight, these multiples of the modality's "
                         "default (e.g. 0.0625,0.25,4,16: the self-tuned weight's candidates)")
    ap.add_argument("--write", type=Path, help="fit: store the entries in this prior JSON")
    ap.add_argument("--real", action="store_true", help="check: the real validation files")
    ap.add_argument("--guarded", action="store_true",
                    help="check: the default path (self-tuned weight, guard; the std map "
                         "calibrated on held-out data) instead of plain sampling")
    ap.add_argument("--cases", default="", help="check --real: only these files")
    ap.add_argument("--real-crop", type=int, default=0, help="check: crop real files to N x N")
    ap.add_argument("--cases-dir", type=Path, help="real files exported by real_quality.py")
    ap.add_argument("--out", type=Path, help="append the JSON lines to this file")
    ap.add_argument("--rows", type=Path, help="rescore: the JSON lines of a check")
    ap.add_argument("--dump", type=Path, metavar="DIR",
                    help="check --guarded: the offset map's inputs of each blend or fallback "
                         "row as DIR/<case>_<setting>.npz")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a sampler setting instead of its default, e.g. cg_iters=30 (fit, "
                         "check, rescore)")
    args = ap.parse_args(argv)
    from medrecon.cli.reconstruct import _parse_settings  # the CLI's --set: YAML scalars

    args.extra = _parse_settings(args.set)
    args.modalities = [m.strip().upper() for m in args.modalities.split(",") if m.strip()]
    args.settings = [v.strip() for v in args.settings.split(",") if v.strip()]
    args.lam_factors = [float(v) for v in args.lam_factors.split(",") if v.strip()]

    import torch

    from medrecon.device import resolve_device
    from medrecon.priors import load_prior

    dev = resolve_device(args.device)
    args.device = str(dev)
    prior = load_prior(args.prior, device=dev)
    common = {"prior": prior.name, "sampler": args.sampler, "steps": args.steps,
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), **({"set": args.extra} if args.extra else {})}
    if args.action == "rescore":
        return rescore(args, prior)
    return fit(args, prior, common) if args.action == "fit" else check(args, prior, common)


if __name__ == "__main__":
    raise SystemExit(main())
