"""What the demo does, resolved before anything runs: grid, acquisition, baseline, sampler.

:func:`plan_demo` turns the command's options into one :class:`DemoPlan` per modality; the
acquisitions and the classical baselines (:data:`BASELINES`) are fixed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from medrecon.errors import InputError

if TYPE_CHECKING:
    import torch

    from medrecon.io.measurement import Measurement

__all__ = [
    "BASELINES",
    "CPU_SHAPE",
    "CPU_STEPS",
    "DEFAULT_SAMPLES",
    "GPU_SHAPE",
    "GPU_STEPS",
    "BaselineChoice",
    "DemoPlan",
    "baseline_lam",
    "calibration_size",
    "normalise_modalities",
    "plan_demo",
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

#: Modality -> output folder name.
FOLDERS: dict[str, str] = {"MR": "mri", "CT": "ct"}


@dataclass(frozen=True)
class BaselineChoice:
    """The classical method the demo compares against, with a fixed weight.

    The weight is a constant, not chosen from the measurement: it was picked once, by the
    reference-based sweep of ``benchmarks/demo_baselines.py`` on the first *validation* head
    (not the test heads the demo reports on), and the record of that sweep is kept in
    ``sweep``. A user without a reference cannot tune it this way; outside the demo's
    acquisitions it is only a starting point.

    Attributes:
        method: registered method name ("l1-wavelet", "tv", ...).
        weight: MR: relative weight ``alpha`` (:func:`baseline_lam` turns it into the absolute
            ``lam``); CT TV: the dimensionless ``lam`` of :func:`medrecon.recon.ct.tv_method`
            (image in units of water), used as it is.
        iterations: solver iterations.
        sweep: PSNR per weight of the sweep it was chosen by (recorded in ``metrics.json``).
    """

    method: str
    weight: float
    iterations: int
    sweep: str = ""


#: The demo's baselines; see :class:`BaselineChoice` and ``benchmarks/demo_baselines.py``.
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


def calibration_size(n_phase: int) -> int:
    """Side of the fully sampled calibration box for a phase-encode matrix of ``n_phase``.

    3/16 of the matrix (12 at 64, 24 at 128), at least 4: a box of 24 x 24 would be 14 % of a
    64 x 64 plane, more than the 12.5 % that R = 8 allows in total.
    """
    return max(4, int(round(3 * n_phase / 16)))


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


def normalise_modalities(modality: str | Sequence[str]) -> list[str]:
    if isinstance(modality, str):
        key = modality.strip().lower()
        table = {"mri": ["MR"], "mr": ["MR"], "ct": ["CT"], "both": ["MR", "CT"]}
        if key not in table:
            raise InputError(f"--modality must be mri, ct or both, got {modality!r}.")
        return table[key]
    out: list[str] = []
    for m in modality:
        for n in normalise_modalities(m):
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

    mods = normalise_modalities(modality)
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


def baseline_lam(meas: Measurement, choice: BaselineChoice, device: torch.device) -> float:
    """The absolute weight ``lam`` of ``choice`` for this measurement.

    MR (except CG-SENSE): ``choice.weight * s`` with ``s`` the 99th percentile of the
    zero-filled magnitude ``|A^H y|``, so that one relative weight serves any intensity scale.
    Otherwise ``choice.weight`` as it is.
    """
    if meas.modality != "MR" or choice.method == "cg-sense":
        return float(choice.weight)
    import torch

    from medrecon.problem import measurement_problem

    problem = measurement_problem(meas, device)
    with torch.no_grad():
        zf = problem.op.adjoint(problem.y).abs().flatten()
    k = max(1, int(0.99 * zf.numel()))
    return float(choice.weight * float(zf.kthvalue(k).values))
