"""``medrecon demo``: the whole job on a held-out synthetic head, in minutes on a laptop CPU.

For each modality the demo runs the data flow of the package end to end:

1. **Reference.** A procedural head (:func:`medrecon.priors.synthetic.generate_head`) with a seed
   from the held-out *test* split (``SPLITS["test"]``, seeds 2,000,000 + ``seed``; the prior
   never saw them), rendered noise-free so that it is the ground truth, on an isotropic grid
   at the prior's voxel size (2 mm for the default prior) centred on the head. MR: T1-like
   magnitude (a.u.); CT: HU.
2. **Measurement** (:func:`medrecon.simulate.simulate`), written as ``measurement.h5``:

   * MR: 8 receive coils, 3D variable-density Poisson-disc undersampling of the phase-encode
     plane at R = 8 with a fully sampled calibration box of 3/16 of the matrix (12 x 12 at
     64^3), complex Gaussian noise at SNR 30 and a smooth synthetic phase;
   * CT: 30 parallel-beam views over 180 degrees (sparse-view CT, where filtered
     backprojection streaks), Poisson noise with I0 = 1e5 photons per ray.

3. **Baseline**: the best classical method with a weight chosen by a sweep on *validation*
   heads (see :data:`BASELINES` and :func:`sweep_baseline`): MR L1-wavelet (FISTA, db4), CT
   isotropic TV (PDHG, warm-started from FBP).
4. **Diffusion**: posterior sampling with the prior (:func:`medrecon.sampling.posterior_sample`,
   DDS by default), K samples; their mean is the reconstruction and their per-voxel standard
   deviation the uncertainty map.
5. **Evaluation** (:func:`medrecon.evaluation.compare_volumes`): PSNR, SSIM, NMSE and HFEN over the
   automatic foreground mask of the reference with data range = reference max - min, plus the
   calibration of the std map (fraction of foreground voxels whose error is within 2 std) and
   the data-consistency residual ``||A x - y|| / ||y||``.
6. **Outputs** in ``OUT/mri`` and ``OUT/ct``: ``reference.nii.gz``, ``measurement.h5``,
   ``baseline_<method>.nii.gz``, ``diffusion_mean.nii.gz``, ``diffusion_std.nii.gz`` and
   ``figure.png`` (orthogonal slices of reference, baseline and diffusion mean, their error
   maps and the std map), and ``OUT/metrics.json`` with every number and setting. Everything is
   first written into a hidden staging folder inside ``OUT`` and moved into place at the end, so
   an interrupted run leaves the previous outputs untouched; only these files are replaced,
   anything else in ``OUT`` is left alone.

Sizes and steps (:func:`plan_demo`): the default prior is a 64^3-patch U-Net, so on a CPU the demo
uses one 64^3 volume (a 128 mm cube through the centre of the head at 2 mm: one patch per
chain per step) and :data:`CPU_STEPS` steps, which keeps ``--modality both`` under five minutes
on two cores (measured: 1 min 50 s wall, 207 s of CPU time, on a 2-core AMD EPYC with
torch 2.13 CPU, 2026-11-26; the diffusion sampling is ~90 % of it); on a GPU it uses a
96 x 112 x 112 volume (the whole head; tiled into patches) and :data:`GPU_STEPS` steps
(measured: 58 s wall on an NVIDIA H200, 25 s of it sampling).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medrecon.errors import InputError

if TYPE_CHECKING:
    import torch

    from medrecon.io.measurement import Measurement
    from medrecon.io.volume import Volume
    from medrecon.priors import Prior

__all__ = [
    "BASELINES",
    "CPU_SHAPE",
    "CPU_STEPS",
    "GPU_SHAPE",
    "GPU_STEPS",
    "BaselineChoice",
    "DemoPlan",
    "DemoResult",
    "ModalityResult",
    "plan_demo",
    "run_demo",
    "sweep_baseline",
]

#: Grid of the demo volume on a CPU: one 64^3 patch of the default prior per chain.
CPU_SHAPE: tuple[int, int, int] = (64, 64, 64)
#: Grid of the demo volume on a GPU: the whole synthetic head at 2 mm (192 x 224 x 224 mm).
GPU_SHAPE: tuple[int, int, int] = (96, 112, 112)
#: Diffusion steps on a CPU (``--modality both`` in under 5 minutes on 2 cores).
CPU_STEPS = 8
#: Diffusion steps on a GPU.
GPU_STEPS = 50
#: Default number of posterior samples.
DEFAULT_SAMPLES = 3

#: Output file names inside each modality folder.
REFERENCE_FILE = "reference.nii.gz"
MEASUREMENT_FILE = "measurement.h5"
MEAN_FILE = "diffusion_mean.nii.gz"
STD_FILE = "diffusion_std.nii.gz"
FIGURE_FILE = "figure.png"
METRICS_FILE = "metrics.json"
#: Modality -> output folder name.
FOLDERS: dict[str, str] = {"MR": "mri", "CT": "ct"}


@dataclass(frozen=True)
class BaselineChoice:
    """The classical method the demo compares against, with its tuned weight.

    Attributes:
        method: registered method name ("l1-wavelet", "tv", ...).
        weight: MR: relative weight ``alpha``; the absolute ``lam = alpha * s`` with ``s`` the
            99th percentile of the zero-filled magnitude ``|A^H y|`` (so it transfers across
            intensity scales). CT TV: the dimensionless ``lam`` of
            :func:`medrecon.recon.ct.tv_method` (image in units of water).
        iterations: solver iterations.
        sweep: the sweep it was chosen by (for the record in ``metrics.json``).
    """

    method: str
    weight: float
    iterations: int
    sweep: str = ""


# Chosen with sweep_baseline() on the first validation head (seed 1,000,000; 64^3 at 2 mm; the
# demo's acquisition and iteration counts), foreground PSNR in dB (2026-11-26, CPU):
#   MR l1-wavelet alpha 2.5e-4: 31.66, 5e-4: 31.58, 1e-3: 31.13, 2e-3: 30.12, 4e-3: 28.58,
#      8e-3: 26.67 (100 iterations); cg-sense lam 1e-3: 30.46, 1e-2: 29.03, 1e-1: 22.35 (30 it.)
#   CT tv lam 1.25e-4: 29.60, 2.5e-4: 29.94, 5e-4: 29.89, 1e-3: 29.24 (100 iterations)
# Reproduce: python -c "from medrecon.demo import sweep_baseline as s;
#                       print(s('mri', 'l1-wavelet', [2.5e-4, 5e-4, 1e-3, 2e-3], seeds=(0,)))"
BASELINES: dict[str, BaselineChoice] = {
    "MR": BaselineChoice(
        method="l1-wavelet", weight=2.5e-4, iterations=100,
        sweep="validation head 1000000: l1-wavelet alpha 2.5e-4 31.66 dB, 5e-4 31.58, 1e-3 "
              "31.13, 2e-3 30.12, 4e-3 28.58, 8e-3 26.67; cg-sense best 30.46 (lam 1e-3)"),
    "CT": BaselineChoice(
        method="tv", weight=2.5e-4, iterations=100,
        sweep="validation head 1000000: tv lam 1.25e-4 29.60 dB, 2.5e-4 29.94, 5e-4 "
              "29.89, 1e-3 29.24"),
}

#: Held-out acquisition settings of the demo.
MR_COILS = 8
MR_ACCELERATION = 8.0
MR_SNR = 30.0
CT_VIEWS = 30
CT_DOSE_I0 = 1e5
#: Display window of CT figures (HU): W 300 / L 50, soft tissue and brain.
CT_WINDOW = (-100.0, 200.0)
#: Upper end of the CT error-map window (HU); larger errors saturate.
CT_ERROR_MAX = 100.0


def calibration_size(n_phase: int) -> int:
    """Side of the fully sampled calibration box for a phase-encode matrix of ``n_phase``.

    3/16 of the matrix (12 at 64, 24 at 128), at least 4: a box of 24 x 24 would be 14 % of a
    64 x 64 plane, more than the 12.5 % that R = 8 allows in total.
    """
    return max(4, int(round(3 * n_phase / 16)))


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoPlan:
    """Everything one modality of the demo does, resolved before anything runs.

    Attributes:
        modality: "MR" or "CT".
        shape: grid (I, J, K) of the reference; spacing_mm: isotropic voxel size (mm).
        head_seed: seed of the synthetic head (from the held-out test split).
        contrast: MR contrast ("T1"); "CT" for CT.
        baseline: the classical method and weight.
        sampler, steps, samples, seed: diffusion settings.
        device: "cpu" or "cuda[:N]".
    """

    modality: str
    shape: tuple[int, int, int]
    spacing_mm: float
    head_seed: int
    contrast: str
    baseline: BaselineChoice
    sampler: str
    steps: int
    samples: int
    seed: int
    device: str

    @property
    def folder(self) -> str:
        return FOLDERS[self.modality]

    def acquisition_text(self) -> str:
        """One line describing the simulated acquisition."""
        if self.modality == "MR":
            c = calibration_size(self.shape[1])
            return (f"{MR_COILS}-coil 3D Poisson-disc R = {MR_ACCELERATION:g}, calibration "
                    f"{c} x {c}, SNR {MR_SNR:g}")
        return f"{CT_VIEWS} parallel-beam views over 180 deg, Poisson noise I0 = {CT_DOSE_I0:.0e}"

    def simulation_config(self) -> Any:
        """The :class:`~medrecon.simulate.SimulationConfig` of this plan."""
        from medrecon.simulate import CTSettings, MRISettings, SimulationConfig

        if self.modality == "MR":
            return SimulationConfig(
                modality="mri", seed=self.seed,
                mri=MRISettings(coils=MR_COILS, acceleration=MR_ACCELERATION, mask="poisson",
                                calibration=calibration_size(self.shape[1]), snr=MR_SNR))
        return SimulationConfig(modality="ct", seed=self.seed,
                                ct=CTSettings(geometry="parallel", views=CT_VIEWS,
                                              dose_i0=CT_DOSE_I0))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["acquisition"] = self.acquisition_text()
        d["fov_mm"] = [n * self.spacing_mm for n in self.shape]
        return d


def _normalise_modalities(modality: str | Sequence[str]) -> list[str]:
    if isinstance(modality, str):
        key = modality.strip().lower()
        table = {"mri": ["MR"], "mr": ["MR"], "ct": ["CT"], "both": ["MR", "CT"]}
        if key not in table:
            raise InputError(f"--modality must be mri, ct or both, got {modality!r}.")
        return table[key]
    out: list[str] = []
    for m in modality:
        for n in _normalise_modalities(m):
            if n not in out:
                out.append(n)
    return out


def plan_demo(modality: str | Sequence[str] = "both", device: str = "cpu",
              samples: int = DEFAULT_SAMPLES, steps: int | None = None, seed: int = 0,
              size: int | None = None, spacing_mm: float = 2.0,
              sampler: str = "dds", baseline_iterations: int | None = None) -> list[DemoPlan]:
    """Resolve the demo's settings for each modality.

    Args:
        modality: "mri", "ct", "both" (or a list of "MR"/"CT").
        device: the resolved device name ("cpu", "cuda", "cuda:1").
        samples: posterior samples K (at least 2, for the std map).
        steps: diffusion steps; default :data:`CPU_STEPS` on a CPU, :data:`GPU_STEPS` on a GPU.
        seed: offset into the held-out seed range (the head) and seed of mask, noise, sampler.
        size: voxels along each axis (cube) instead of the per-device default grid.
        spacing_mm: voxel size; the prior's own voxel size (it was trained at it).
        sampler: posterior sampler ("dds", "dps", "pc", "diffpir").
        baseline_iterations: solver iterations of the baseline instead of its tuned number
            (for quick tests; fewer iterations than tuned make the baseline look worse).
    """
    from medrecon.priors.synthetic import split_seeds

    mods = _normalise_modalities(modality)
    if samples < 2:
        raise InputError(f"The demo draws at least 2 posterior samples so that it can show their "
                         f"standard deviation; got --samples {samples}.")
    if steps is not None and steps < 2:
        raise InputError(f"--steps must be at least 2, got {steps}.")
    if seed < 0:
        raise InputError(f"--seed must be 0 or more, got {seed}.")
    test = split_seeds("test")
    if seed >= len(test):
        raise InputError(f"--seed must be below {len(test)} (the size of the held-out split).")
    if size is not None and not 8 <= size <= 512:
        raise InputError(f"--size must be between 8 and 512 voxels, got {size}.")
    if baseline_iterations is not None and baseline_iterations < 1:
        raise InputError(f"baseline_iterations must be at least 1, got {baseline_iterations}.")
    gpu = not device.startswith("cpu")
    shape = (size, size, size) if size is not None else (GPU_SHAPE if gpu else CPU_SHAPE)
    n_steps = steps if steps is not None else (GPU_STEPS if gpu else CPU_STEPS)
    return [
        DemoPlan(modality=m, shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
                 spacing_mm=float(spacing_mm), head_seed=test.start + seed,
                 contrast="T1" if m == "MR" else "CT",
                 baseline=(BASELINES[m] if baseline_iterations is None else
                           replace(BASELINES[m], iterations=int(baseline_iterations))),
                 sampler=sampler,
                 steps=int(n_steps), samples=int(samples), seed=int(seed), device=device)
        for m in mods
    ]


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------
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
                "calibration_definition": "fraction of region voxels with |mean - reference| "
                                          "<= 2 std (about 0.95 if calibrated)"},
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


def _resolve_prior(prior: Any, device: torch.device) -> Prior:
    from medrecon.priors import Prior, load_prior

    if isinstance(prior, Prior):
        prior.denoiser.to(device)
        return prior
    return load_prior(str(prior), device=device)


def _evaluate(image: np.ndarray, reference: Volume, mask: np.ndarray) -> Any:
    from medrecon.evaluation import compare_volumes

    vol = reference.with_data(image)
    result, _ = compare_volumes(vol, reference, mask=mask)
    return result


def run_modality(plan: DemoPlan, prior: Prior, staging: Path, echo: Echo,
                 progress: bool = True) -> ModalityResult:
    """Run one modality of the demo, writing its files into ``staging / plan.folder``."""
    import torch

    from medrecon.evaluation import foreground_mask
    from medrecon.io import save_volume
    from medrecon.io.measurement import write_measurement
    from medrecon.priors.synthetic import generate_head
    from medrecon.recon.classical import ReconOptions
    from medrecon.reconstruct import reconstruct, reconstruction_volume
    from medrecon.sampling import calibration, posterior_sample
    from medrecon.simulate import simulate

    name = "MRI" if plan.modality == "MR" else "CT"
    folder = staging / plan.folder
    folder.mkdir(parents=True, exist_ok=True)
    device = torch.device(plan.device)
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    files: dict[str, str] = {}
    n_stages = 5
    clock = {"wall": 0.0, "cpu": 0.0}

    def stage(i: int, text: str) -> None:
        echo(f"[{name} {i}/{n_stages}] {text}")
        clock["wall"], clock["cpu"] = time.perf_counter(), time.process_time()

    def done(key: str) -> float:
        # Wall time, and CPU time of this process (all threads): the latter does not grow
        # when other programs share the CPU, so it tells what the stage costs.
        timings[key] = time.perf_counter() - clock["wall"]
        cpu[key] = time.process_time() - clock["cpu"]
        return timings[key]

    # 1. Reference -------------------------------------------------------------------------
    stage(1, f"Held-out synthetic head (test seed {plan.head_seed}, "
                 f"{plan.contrast}), {'x'.join(map(str, plan.shape))} voxels at "
                 f"{plan.spacing_mm:g} mm")
    ref = generate_head(plan.shape, plan.spacing_mm, modality=plan.modality,
                        contrast="T1" if plan.modality == "MR" else "random",
                        seed=plan.head_seed, lesions=True, noise=False, device=device)
    ref.series_description = (f"medrecon demo reference ({plan.contrast}, "
                              f"test seed {plan.head_seed})")
    save_volume(ref, folder / REFERENCE_FILE)
    files["reference"] = f"{plan.folder}/{REFERENCE_FILE}"
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
    lam = _baseline_lam(meas, b, device)
    stage(3, f"Baseline {b.method} (lam {lam:.3g}, {b.iterations} iterations)")
    rec = reconstruct(meas, b.method, ReconOptions(lam=lam, iterations=b.iterations, tol=0.0,
                                                    device=str(device), progress=progress))
    done("baseline")
    base_img = rec.volume.data
    baseline_file = f"baseline_{b.method}.nii.gz"
    save_volume(rec.volume, folder / baseline_file)
    files["baseline"] = f"{plan.folder}/{baseline_file}"
    baseline = MethodResult(
        name=b.method, label=_label(b.method), image=base_img,
        metrics=_evaluate(base_img, ref, mask), residual=float(rec.residual),
        seconds=timings["baseline"],
        info={"lam": lam, "weight": b.weight, "iterations": int(rec.output.iterations),
              "sweep": b.sweep})
    echo(f"    {_fmt_seconds(timings['baseline'])}, PSNR "
         f"{baseline.metrics.volume['psnr']:.2f} dB, residual {baseline.residual:.3g}")

    # 4. Diffusion -------------------------------------------------------------------------
    stage(4, f"Diffusion posterior sampling ({plan.sampler.upper()}, {plan.steps} steps, "
                 f"{plan.samples} samples, prior {prior.name!r})")
    post = posterior_sample(meas, prior, sampler=plan.sampler, steps=plan.steps,
                            samples=plan.samples, seed=plan.seed, device=device,
                            progress=progress)
    done("diffusion")
    mean = np.asarray(post.mean, dtype=np.float32)
    std = np.asarray(post.std, dtype=np.float32)
    mean_vol = reconstruction_volume(meas, mean, "diffusion",
                                     {"sampler": plan.sampler, "steps": plan.steps,
                                      "samples": plan.samples, "seed": plan.seed})
    std_vol = reconstruction_volume(meas, std, "diffusion std",
                                    {"sampler": plan.sampler, "samples": plan.samples})
    save_volume(mean_vol, folder / MEAN_FILE)
    save_volume(std_vol, folder / STD_FILE)
    files["diffusion_mean"] = f"{plan.folder}/{MEAN_FILE}"
    files["diffusion_std"] = f"{plan.folder}/{STD_FILE}"
    calib = calibration(mean, std, ref.data, k=2.0, mask=mask)
    diff_info = {k: v for k, v in post.info.items()
                 if isinstance(v, int | float | str | bool) or v is None}
    diff_info.update(nfe=int(post.nfe), network_seconds=float(post.timings["network"]),
                     std_mean_in_region=float(std[mask].mean()))
    diffusion = MethodResult(
        name="diffusion", label=f"Diffusion mean (K={plan.samples})", image=mean,
        metrics=_evaluate(mean, ref, mask), residual=float(post.residual),
        seconds=timings["diffusion"], info=diff_info)
    echo(f"    {_fmt_seconds(timings['diffusion'])}, PSNR "
         f"{diffusion.metrics.volume['psnr']:.2f} dB, residual {diffusion.residual:.3g}, "
         f"{100 * calib:.0f}% of voxels within 2 std")

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
                          timings=timings, cpu_timings=cpu)


def _label(method: str) -> str:
    return {"l1-wavelet": "L1-wavelet", "cg-sense": "CG-SENSE", "tv": "TV", "fbp": "FBP",
            "zero-filled": "Zero-filled"}.get(method, method)


def _baseline_lam(meas: Measurement, choice: BaselineChoice, device: torch.device) -> float:
    """Absolute regularisation weight of the baseline for this measurement."""
    if meas.modality != "MR" or choice.method == "cg-sense":
        return float(choice.weight)
    import torch

    from medrecon.recon.mri import kspace_tensor, measurement_operator

    op = measurement_operator(meas, device)
    with torch.no_grad():
        zf = op.adjoint(kspace_tensor(meas, device)).abs().flatten()
    k = max(1, int(0.99 * zf.numel()))
    return float(choice.weight * float(zf.kthvalue(k).values))


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
             seed: int = 0, prior: Any = "default", size: int | None = None,
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
        prior: prior name or path, or a loaded :class:`~medrecon.priors.Prior`.
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
    from medrecon.io.atomic import atomic_file
    from medrecon.recon.classical import resolve_device
    from medrecon.report import METRIC_DEFINITIONS
    from medrecon.sampling import SAMPLERS

    t_start, c_start = time.perf_counter(), time.process_time()
    if sampler not in SAMPLERS:
        raise InputError(f"Unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}.")
    dev = resolve_device(device)
    out_path = Path(out).expanduser()
    mods = _normalise_modalities(modality)
    # Check every option before the (slow) prior load; the grid spacing comes from the prior.
    plan_demo(mods, device=str(dev), samples=samples, steps=steps, seed=seed, size=size,
              sampler=sampler, baseline_iterations=baseline_iterations)
    _check_out(out_path, {})
    loaded = _resolve_prior(prior, dev)
    missing = [m for m in mods if m not in loaded.modalities]
    if missing:
        raise InputError(f"The prior {loaded.name!r} was trained on "
                         f"{', '.join(loaded.modalities)} only, not {', '.join(missing)}.")
    spacing = float(loaded.spacing_mm[0])
    plans = plan_demo(mods, device=str(dev), samples=samples, steps=steps, seed=seed,
                      size=size, spacing_mm=spacing, sampler=sampler,
                      baseline_iterations=baseline_iterations)
    targets = _target_paths(out_path, plans)
    _check_out(out_path, targets)
    threads = torch.get_num_threads()
    echo(f"medrecon {__version__} demo on {dev} ({threads} CPU threads), prior "
         f"{loaded.name!r} ({', '.join(loaded.modalities)}, {spacing:g} mm, patch "
         f"{'x'.join(map(str, loaded.patch_size))}); outputs in {out_path}")
    p0 = plans[0]
    echo(f"Chosen for this device: {'x'.join(map(str, p0.shape))} voxels at {spacing:g} mm "
         f"({' x '.join(f'{n * spacing:g}' for n in p0.shape)} mm), {p0.steps} diffusion steps, "
         f"{p0.samples} posterior samples; change with --size, --steps and --samples.")

    out_path.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".medrecon-demo-", suffix=".tmp", dir=out_path))
    try:
        results = [run_modality(p, loaded, staging, echo, progress) for p in plans]
        prior_info = {"name": loaded.name, "modalities": list(loaded.modalities),
                      "patch_size": list(loaded.patch_size),
                      "spacing_mm": list(loaded.spacing_mm),
                      "training_steps": loaded.info.get("training", {}).get("steps")
                      if isinstance(loaded.info.get("training"), dict) else None}
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
            tmp.write_text(json.dumps(_jsonable(doc), indent=2, allow_nan=False) + "\n",
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


def _jsonable(v: Any) -> Any:
    """Strict JSON: numpy scalars to Python, non-finite floats to null."""
    if isinstance(v, dict):
        return {str(k): _jsonable(u) for k, u in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(u) for u in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


# ---------------------------------------------------------------------------------------------
# Choosing the baseline weights
# ---------------------------------------------------------------------------------------------
def sweep_baseline(modality: str, method: str, weights: Sequence[float],
                   seeds: Sequence[int] = (0, 1), shape: Sequence[int] = CPU_SHAPE,
                   spacing_mm: float = 2.0, iterations: int | None = None,
                   device: str = "cpu", echo: Echo = print) -> dict[float, float]:
    """Mean foreground PSNR of a classical method over validation heads, per weight.

    The heads come from the *validation* split (``SPLITS["val"]``, offsets ``seeds``), never
    from the test split the demo reports on; the acquisition is the demo's. ``weights`` are
    relative (MR, see :class:`BaselineChoice`) or absolute (CT TV) as in :data:`BASELINES`.

    Returns:
        weight -> mean PSNR (dB) over the heads.
    """
    import torch

    from medrecon.evaluation import foreground_mask
    from medrecon.priors.synthetic import generate_head, split_seeds
    from medrecon.recon.classical import ReconOptions, resolve_device
    from medrecon.reconstruct import reconstruct
    from medrecon.simulate import simulate

    mod = _normalise_modalities(modality)[0]
    dev = resolve_device(device)
    val = split_seeds("val")
    shape3 = tuple(int(s) for s in shape)
    plan = DemoPlan(modality=mod, shape=shape3, spacing_mm=spacing_mm,  # type: ignore[arg-type]
                    head_seed=0, contrast="T1" if mod == "MR" else "CT",
                    baseline=BASELINES[mod], sampler="dds", steps=2, samples=2, seed=0,
                    device=str(dev))
    scores: dict[float, list[float]] = {float(w): [] for w in weights}
    for s in seeds:
        ref = generate_head(shape3, spacing_mm, modality=mod,
                            contrast="T1" if mod == "MR" else "random", seed=val.start + s,
                            noise=False, device=dev)
        mask = foreground_mask(ref.data)
        meas = simulate(ref, replace(plan, seed=int(s)).simulation_config(), device=dev)
        for w in scores:
            choice = BaselineChoice(method=method, weight=w,
                                    iterations=iterations or BASELINES[mod].iterations)
            lam = _baseline_lam(meas, choice, dev)
            with torch.no_grad():
                rec = reconstruct(meas, method, ReconOptions(lam=lam, iterations=choice.iterations,
                                                             tol=0.0, device=str(dev)))
            psnr = float(_evaluate(rec.volume.data, ref, mask).volume["psnr"])
            scores[w].append(psnr)
            echo(f"{mod} {method} seed val+{s} weight {w:g}: PSNR {psnr:.2f} dB")
    return {w: float(np.mean(v)) for w, v in scores.items()}
