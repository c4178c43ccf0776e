"""Running the demo: simulate, reconstruct, evaluate, and write the outputs atomically.

:func:`run_demo` checks the options and the prior, then :func:`run_modality` runs each
:class:`~medrecon.demo.plan.DemoPlan` through :func:`medrecon.reconstruct.reconstruct` (the
classical baseline and the diffusion posterior) and writes volumes, measurement, figure and
``metrics.json``; see :mod:`medrecon.demo`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medrecon.demo.plan import (
    DEFAULT_SAMPLES,
    DemoPlan,
    baseline_lam,
    normalise_modalities,
    plan_demo,
)
from medrecon.errors import InputError

if TYPE_CHECKING:
    from medrecon.io.volume import Volume

__all__ = ["DemoResult", "MethodResult", "ModalityResult", "print_table", "run_demo",
           "run_modality"]

#: Output file names inside each modality folder.
REFERENCE_FILE = "reference.nii.gz"
MEASUREMENT_FILE = "measurement.h5"
MEAN_FILE = "diffusion_mean.nii.gz"
STD_FILE = "diffusion_std.nii.gz"
FIGURE_FILE = "figure.png"
METRICS_FILE = "metrics.json"
#: Display window of CT figures (HU): W 300 / L 50, soft tissue and brain.
CT_WINDOW = (-100.0, 200.0)
#: Upper end of the CT error-map window (HU); larger errors saturate.
CT_ERROR_MAX = 100.0


@dataclass
class MethodResult:
    """One reconstruction of the demo and its evaluation."""

    name: str
    label: str
    image: np.ndarray
    metrics: Any  # medrecon.metrics.EvaluationResult
    residual: float
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        d = self.metrics.to_dict()
        return {"label": self.label, "residual": self.residual, "seconds": self.seconds,
                "metrics": d["volume"], "slice_summary": d["slice_summary"],
                "slices": d["slices"], "info": self.info}


@dataclass
class ModalityResult:
    """What the demo produced for one modality."""

    plan: DemoPlan
    reference: Volume
    baseline: MethodResult
    diffusion: MethodResult
    std: np.ndarray
    calibration_2std: float
    region: str
    data_range: float
    files: dict[str, str]
    timings: dict[str, float]
    cpu_timings: dict[str, float] = field(default_factory=dict)
    calibration_2std_raw: float = math.nan
    std_calibration: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.plan.to_dict(),
            "reference": {"series_description": self.reference.series_description,
                          "units": self.reference.units,
                          "contrast": self.reference.meta.get("contrast"),
                          "seed": self.plan.head_seed, "split": "test"},
            "region": self.region,
            "data_range": self.data_range,
            "methods": {self.baseline.name: self.baseline.summary(),
                        "diffusion": self.diffusion.summary()},
            "diffusion_std": {
                "mean_in_region": float(self.diffusion.info.get("std_mean_in_region", math.nan)),
                "calibration_2std": self.calibration_2std,
                "calibration_2std_uncalibrated": self.calibration_2std_raw,
                "std_factor": self.diffusion.info.get("std_factor"),
                "std_calibration": self.std_calibration,
                "calibration_definition": "fraction of region voxels with |mean - reference| "
                                          "<= 2 std (about 0.95 if calibrated); "
                                          "_uncalibrated: with the raw std of the samples"},
            "files": self.files,
            "timings_s": self.timings,
            "cpu_s": self.cpu_timings,
        }


@dataclass
class DemoResult:
    """All modalities of one demo run."""

    out: Path
    results: list[ModalityResult]
    seconds: float
    metrics_path: Path
    prior: dict[str, Any]


Echo = Callable[[str], None]


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _target_paths(out: Path, plans: Sequence[DemoPlan]) -> dict[str, Path]:
    """Relative name -> final path of every file this run writes."""
    paths = {METRICS_FILE: out / METRICS_FILE}
    for p in plans:
        for name in (REFERENCE_FILE, MEASUREMENT_FILE, f"baseline_{p.baseline.method}.nii.gz",
                     MEAN_FILE, STD_FILE, FIGURE_FILE):
            rel = f"{p.folder}/{name}"
            paths[rel] = out / rel
    return paths


def _check_out(out: Path, targets: dict[str, Path]) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder.")
    for p in targets.values():
        if p.is_dir():
            raise InputError(f"{p} is a folder; the demo would write a file there. "
                             f"Move it or choose another --out.")
        if p.parent.exists() and not p.parent.is_dir():
            raise InputError(f"{p.parent} is a file; the demo needs a folder there.")


def _read_prior(prior: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The prior's ``NAME.json`` and its description, after reading (and so checking) all its
    files: a broken prior is refused before the slow work, in the words of ``load_prior``."""
    from medrecon.priors import resolve_prior_path
    from medrecon.priors.checkpoint import read_prior_files

    path = resolve_prior_path(prior)
    doc, _ = read_prior_files(path)
    return path, doc


def _evaluate(image: np.ndarray, reference: Volume, mask: np.ndarray) -> Any:
    from medrecon.evaluation import compare_volumes

    vol = reference.with_data(image)
    result, _ = compare_volumes(vol, reference, mask=mask)
    return result


def run_modality(plan: DemoPlan, prior: Path, prior_name: str, staging: Path, echo: Echo,
                 progress: bool = True) -> ModalityResult:
    """Run one modality of the demo, writing its files into ``staging / plan.folder``.

    ``prior`` is the prior's ``NAME.json``, ``prior_name`` its name for the step line.
    """
    import torch

    from medrecon.evaluation import foreground_mask
    from medrecon.io import save_volume
    from medrecon.io.measurement import write_measurement
    from medrecon.priors.synthetic import generate_head
    from medrecon.recon.base import ReconOptions
    from medrecon.reconstruct import reconstruct
    from medrecon.sampling import calibration
    from medrecon.sampling.config import DiffusionConfig
    from medrecon.simulate import simulate

    name = "MRI" if plan.modality == "MR" else "CT"
    folder = staging / plan.folder
    folder.mkdir(parents=True, exist_ok=True)
    device = torch.device(plan.device)
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    files: dict[str, str] = {}
    clock = {"wall": 0.0, "cpu": 0.0}

    def stage(i: int, text: str) -> None:
        echo(f"[{name} {i}/5] {text}")
        clock["wall"], clock["cpu"] = time.perf_counter(), time.process_time()

    def done(key: str) -> None:
        # Wall time, and CPU time of this process (all threads): the latter does not grow
        # when other programs share the CPU, so it tells what the stage costs.
        timings[key] = time.perf_counter() - clock["wall"]
        cpu[key] = time.process_time() - clock["cpu"]

    def save(key: str, volume: Volume, file: str) -> None:
        save_volume(volume, folder / file)
        files[key] = f"{plan.folder}/{file}"

    # 1. Reference -------------------------------------------------------------------------
    stage(1, f"Held-out synthetic head (test seed {plan.head_seed}, "
             f"{plan.contrast}), {'x'.join(map(str, plan.shape))} voxels at "
             f"{plan.spacing_mm:g} mm")
    ref = generate_head(plan.shape, plan.spacing_mm, modality=plan.modality,
                        contrast="T1" if plan.modality == "MR" else "random",
                        seed=plan.head_seed, lesions=True, noise=False, device=device)
    ref.series_description = (f"medrecon demo reference ({plan.contrast}, "
                              f"test seed {plan.head_seed})")
    save("reference", ref, REFERENCE_FILE)
    mask = foreground_mask(ref.data)
    done("reference")

    # 2. Measurement -----------------------------------------------------------------------
    stage(2, f"Simulating {plan.acquisition_text()}")
    meas = simulate(ref, plan.simulation_config(), device=device)
    write_measurement(meas, folder / MEASUREMENT_FILE)
    files["measurement"] = f"{plan.folder}/{MEASUREMENT_FILE}"
    done("simulate")
    if plan.modality == "MR":
        echo(f"    achieved acceleration R = {meas.acquisition['acceleration']:.2f}, "
             f"noise sigma {meas.noise.get('sigma', 0.0):.3g}")

    # 3. Baseline --------------------------------------------------------------------------
    b = plan.baseline
    lam = baseline_lam(meas, b, device)
    stage(3, f"Baseline {b.method} (lam {lam:.3g}, {b.iterations} iterations)")
    rec = reconstruct(meas, b.method, ReconOptions(lam=lam, iterations=b.iterations, tol=0.0,
                                                    device=plan.device, progress=progress))
    done("baseline")
    save("baseline", rec.volume, f"baseline_{b.method}.nii.gz")
    baseline = MethodResult(
        name=b.method, label=_label(b.method), image=rec.volume.data,
        metrics=_evaluate(rec.volume.data, ref, mask), residual=float(rec.residual),
        seconds=timings["baseline"],
        info={"lam": lam, "weight": b.weight, "iterations": int(rec.output.iterations),
              "sweep": b.sweep})
    echo(f"    {_fmt_seconds(timings['baseline'])}, PSNR "
         f"{baseline.metrics.volume['psnr']:.2f} dB, residual {baseline.residual:.3g}")

    # 4. Diffusion -------------------------------------------------------------------------
    stage(4, f"Diffusion posterior sampling ({plan.sampler.upper()}, {plan.steps} steps, "
             f"{plan.samples} samples, prior {prior_name!r})")
    # The sampler itself at the modality's fixed weight, like the baseline's fixed weight: no
    # self-tuning and no guard, which would add sampling runs and could replace the diffusion
    # result that the demo shows.
    post = reconstruct(meas, "diffusion", ReconOptions(
        device=plan.device, progress=progress,
        extra={"prior": str(prior), "sampler": plan.sampler, "steps": plan.steps,
               "samples": plan.samples, "seed": plan.seed, "guard": False,
               "lam": DiffusionConfig(sampler=plan.sampler).sampler_options(plan.modality).lam}))
    done("diffusion")
    assert post.std_volume is not None  # samples >= 2 (plan_demo)
    mean, std = post.volume.data, post.std_volume.data
    save("diffusion_mean", post.volume, MEAN_FILE)
    save("diffusion_std", post.std_volume, STD_FILE)
    calib = calibration(mean, std, ref.data, k=2.0, mask=mask)
    # The std map is the prior's calibrated one; the raw spread of the samples, for comparison.
    factor = post.output.info.get("std_factor")
    calib_raw = calibration(mean, std / factor, ref.data, k=2.0, mask=mask) if factor else calib
    std_line = str(post.output.info.get("std_calibration_line", ""))
    diff_info = {k: v for k, v in post.output.info.items()
                 if isinstance(v, int | float | str | bool) or v is None}
    diff_info["std_mean_in_region"] = float(std[mask].mean())
    diffusion = MethodResult(
        name="diffusion", label=f"Diffusion mean (K={plan.samples})", image=mean,
        metrics=_evaluate(mean, ref, mask), residual=float(post.residual),
        seconds=timings["diffusion"], info=diff_info)
    echo(f"    {_fmt_seconds(timings['diffusion'])}, PSNR "
         f"{diffusion.metrics.volume['psnr']:.2f} dB, residual {diffusion.residual:.3g}, "
         f"{100 * calib:.0f}% of voxels within 2 std"
         + (f" (raw spread of the samples: {100 * calib_raw:.0f}%)" if factor else ""))
    if std_line:
        echo(f"    {std_line}")

    # 5. Figure ----------------------------------------------------------------------------
    stage(5, "Figure")
    _figure(plan, ref, baseline, diffusion, std, mask, folder / FIGURE_FILE)
    files["figure"] = f"{plan.folder}/{FIGURE_FILE}"
    done("figure")
    n_in = int(mask.sum())
    region = (f"automatic foreground mask of the reference ({n_in} of {mask.size} voxels, "
              f"{100.0 * n_in / mask.size:.1f}%)")
    return ModalityResult(plan=plan, reference=ref, baseline=baseline, diffusion=diffusion,
                          std=std, calibration_2std=calib, region=region,
                          data_range=float(baseline.metrics.data_range), files=files,
                          timings=timings, cpu_timings=cpu, calibration_2std_raw=calib_raw,
                          std_calibration=std_line)


def _label(method: str) -> str:
    return {"l1-wavelet": "L1-wavelet", "cg-sense": "CG-SENSE", "tv": "TV", "fbp": "FBP",
            "zero-filled": "Zero-filled"}.get(method, method)


def _figure(plan: DemoPlan, ref: Volume, baseline: MethodResult, diffusion: MethodResult,
            std: np.ndarray, mask: np.ndarray, path: Path) -> None:
    from medrecon.report import orthogonal_slices_figure

    def note(m: MethodResult) -> str:
        v = m.metrics.volume
        return f"PSNR {v['psnr']:.2f} dB, SSIM {v['ssim']:.3f}"

    volumes = {"Reference": ref.data, baseline.label: baseline.image,
               diffusion.label: diffusion.image}
    if plan.modality == "MR":
        title = (f"MRI demo: T1 head (held-out seed {plan.head_seed}), "
                 f"{plan.acquisition_text()}")
        window = (0.0, float(np.percentile(ref.data, 99.9)))
        error_max = None
    else:
        title = f"CT demo: head (held-out seed {plan.head_seed}), {plan.acquisition_text()}"
        window = CT_WINDOW
        # Skull edges err by hundreds of HU; cap the error window so brain errors show.
        error_max = CT_ERROR_MAX
    orthogonal_slices_figure(
        volumes, path, affine=ref.affine, std={"Posterior std": std},
        annotations={baseline.label: note(baseline), diffusion.label: note(diffusion)},
        window=window, error_max=error_max, units=ref.units, title=title)


def _move_into_place(staging: Path, targets: dict[str, Path]) -> None:
    for rel, final in targets.items():
        src = staging / rel
        if not src.exists():
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, final)


def print_table(results: Sequence[ModalityResult]) -> str:
    """A compact comparison table: one row per modality and method."""
    head = (f"{'Modality':<8} {'Method':<22} {'PSNR dB':>8} {'SSIM':>7} {'NMSE':>9} "
            f"{'HFEN':>7} {'Residual':>9} {'Time':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        mod = "MRI" if r.plan.modality == "MR" else "CT"
        for m in (r.baseline, r.diffusion):
            v = m.metrics.volume
            lines.append(f"{mod:<8} {m.label:<22} {v['psnr']:>8.2f} {v['ssim']:>7.4f} "
                         f"{v['nmse']:>9.3g} {v['hfen']:>7.3f} {m.residual:>9.3g} "
                         f"{_fmt_seconds(m.seconds):>8}")
        gain = r.diffusion.metrics.volume["psnr"] - r.baseline.metrics.volume["psnr"]
        lines.append(f"{'':<8} {'diffusion - baseline':<22} {gain:>+8.2f}   "
                     f"(std calibration: {100 * r.calibration_2std:.0f}% within 2 std)")
    return "\n".join(lines)


def run_demo(out: str | os.PathLike[str] = "medrecon-demo", modality: str = "both",
             device: str = "auto", samples: int = DEFAULT_SAMPLES, steps: int | None = None,
             seed: int = 0, prior: str | os.PathLike[str] = "default", size: int | None = None,
             sampler: str = "dds", baseline_iterations: int | None = None,
             progress: bool = True, echo: Echo = print) -> DemoResult:
    """Run the demo and write its outputs into ``out`` (see the module docstring).

    Args:
        out: output folder (created; only the demo's own files in it are replaced).
        modality: "mri", "ct" or "both".
        device: "auto", "cpu", "cuda" or "cuda:N".
        samples: posterior samples K (>= 2).
        steps: diffusion steps (default per device).
        seed: held-out head number and seed of mask, noise and sampler.
        prior: prior name or path (``medrecon priors``).
        size: cube side in voxels instead of the per-device default grid.
        sampler: "dds" (default), "dps", "pc" or "diffpir".
        baseline_iterations: override the baseline's tuned iteration count (quick tests).
        progress: show tqdm bars for the solvers and the sampler.
        echo: where the step lines go.

    Returns:
        :class:`DemoResult`; the metrics are also in ``out/metrics.json``.
    """
    import torch

    from medrecon import __version__
    from medrecon.device import resolve_device
    from medrecon.io.atomic import atomic_file
    from medrecon.jsonutil import jsonable
    from medrecon.report import METRIC_DEFINITIONS
    from medrecon.sampling import SAMPLERS

    t_start, c_start = time.perf_counter(), time.process_time()
    if sampler not in SAMPLERS:
        raise InputError(f"Unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}.")
    dev = resolve_device(device)
    out_path = Path(out).expanduser()
    mods = normalise_modalities(modality)
    # Check every option before reading the prior; the grid spacing comes from the prior.
    plan_demo(mods, device=str(dev), samples=samples, steps=steps, seed=seed, size=size,
              sampler=sampler, baseline_iterations=baseline_iterations)
    _check_out(out_path, {})
    prior_path, desc = _read_prior(prior)
    training = desc.get("training")
    prior_info = {"name": str(desc["name"]), "modalities": [str(m) for m in desc["modalities"]],
                  "patch_size": [int(n) for n in desc["patch_size"]],
                  "spacing_mm": [float(v) for v in desc["spacing_mm"]],
                  "training_steps": training.get("steps") if isinstance(training, dict) else None}
    missing = [m for m in mods if m not in prior_info["modalities"]]
    if missing:
        raise InputError(f"The prior {prior_info['name']!r} was trained on "
                         f"{', '.join(prior_info['modalities'])} only, not {', '.join(missing)}.")
    spacing = prior_info["spacing_mm"][0]
    plans = plan_demo(mods, device=str(dev), samples=samples, steps=steps, seed=seed,
                      size=size, spacing_mm=spacing, sampler=sampler,
                      baseline_iterations=baseline_iterations)
    targets = _target_paths(out_path, plans)
    _check_out(out_path, targets)
    threads = torch.get_num_threads()
    echo(f"medrecon {__version__} demo on {dev} ({threads} CPU threads), prior "
         f"{prior_info['name']!r} ({', '.join(prior_info['modalities'])}, {spacing:g} mm, "
         f"patch {'x'.join(map(str, prior_info['patch_size']))}); outputs in {out_path}")
    p0 = plans[0]
    echo(f"Chosen for this device: {'x'.join(map(str, p0.shape))} voxels at {spacing:g} mm "
         f"({' x '.join(f'{n * spacing:g}' for n in p0.shape)} mm), {p0.steps} diffusion steps, "
         f"{p0.samples} posterior samples; change with --size, --steps and --samples.")

    out_path.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".medrecon-demo-", suffix=".tmp", dir=out_path))
    try:
        results = [run_modality(p, prior_path, prior_info["name"], staging, echo, progress)
                   for p in plans]
        seconds = time.perf_counter() - t_start
        doc = {
            "medrecon_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "medrecon demo",
            "device": str(dev),
            "cpu_threads": threads,
            "prior": prior_info,
            "seconds_total": seconds,
            "cpu_seconds_total": time.process_time() - c_start,
            "modalities": {("MRI" if r.plan.modality == "MR" else "CT"): r.to_dict()
                           for r in results},
            "metric_definitions": dict(METRIC_DEFINITIONS),
        }
        with atomic_file(staging / METRICS_FILE) as tmp:
            tmp.write_text(json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n",
                           encoding="utf-8")
        _move_into_place(staging, targets)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    echo("")
    for r in results:
        echo(f"Region ({'MRI' if r.plan.modality == 'MR' else 'CT'}): {r.region}; "
             f"data range: reference max - min ({r.data_range:.4g} {r.reference.units})")
    echo(print_table(results))
    echo("")
    for r in results:
        for key in ("reference", "measurement", "baseline", "diffusion_mean", "diffusion_std",
                    "figure"):
            echo(f"  {out_path / r.files[key]}")
    echo(f"  {out_path / METRICS_FILE}")
    total = time.perf_counter() - t_start
    echo(f"Done in {_fmt_seconds(total)} ({time.process_time() - c_start:.0f} s of CPU time).")
    return DemoResult(out=out_path, results=results, seconds=total,
                      metrics_path=out_path / METRICS_FILE, prior=prior_info)
