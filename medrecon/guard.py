"""Self-tuned diffusion and the guard: never (knowingly) worse than the classical baseline.

A user has no reference image, so both the diffusion sampler's data-consistency weight and the
decision whether to trust diffusion at all are made on **held-out data**, the split of the
classical self-tuning (:mod:`medrecon.recon.autotune`): ~15 % of the k-space samples outside
the calibration box (MR) or every 7th view (CT); the split, :class:`HeldOut` (how an image
predicts the held-out data) and :func:`blend_weight` live in :mod:`medrecon.holdout`. With
``err(x) = ||M_h (A x - y)|| / ||M_h y||``:

1. **Weight** (``lam`` auto, samplers with a weight: dds, diffpir): one posterior sample (K = 1,
   the run's seed and steps, so every candidate sees the same noise) from the training part for
   each ``lam`` in ``centre * (1/4, 1, 4)`` around the modality default (MR 0.1, CT 1), one
   more step of 4 outwards when the best lies at an end; the smallest ``err`` wins
   (:func:`medrecon.recon.autotune.tune_weight` without its midpoints). At most 4 sampling
   runs on the training data. ``tune_steps`` (default 20) below ``steps`` ranks the candidates
   on shorter runs; the guard then scores one more training-part run at the chosen weight and
   the run's own steps, so its comparison is the one it would make with that weight given.
   20-step runs chose the same weight as 50-step ones on all four real settings measured
   (H100: brain R = 4 and 8, abdomen MR R = 8, abdomen CT 30 views; PSNR equal to 0.01 dB) and
   cut the default path by 7-15 s per run (synthetic 256^3 CT end to end: 85 -> 62 s;
   benchmarks/RESULTS_autotune.md). The weight is not rescaled for all the data: it weighs
   the prior against the likelihood, whose noise model does not change with the number of
   samples (unlike the classical MR rule of :mod:`medrecon.recon.autotune`, a 1.18x factor at
   most, below the grid's resolution).
2. **Guard** (``guard`` on): the classical baseline is the self-tuned classical method of the
   modality (:data:`GUARD_METHODS`: MR l1-wavelet and TV, CT TV) that predicts the held-out
   data best (:func:`classical_runs`): each is run on the same training part with its chosen
   weight and the coil maps of its final run (MR without maps in the file: the two ESPIRiT map
   sets both methods use), and scored the same way, through its own operator (with map sets, on
   the per-set images), so its error is the one its self-tuning saw at that weight on the split
   (MR: its first fold, :func:`~medrecon.recon.autotune.mr_holdout_folds`; the self-tuning's
   reported errors pool all its folds). If diffusion predicts the held-out data at least as
   well, the result is diffusion. Otherwise the blend ``w x_diffusion + (1 - w) x_classical``
   whose held-out residual is smallest is taken (``w`` in [0, 1] in closed form,
   :func:`blend_weight`), provided it predicts the held-out data at least :data:`MIN_GAIN`
   (1 %) better than the classical result alone, by :data:`MIN_GAIN_T` standard errors over
   the held-out positions (:meth:`HeldOut.gain_t`); else the classical result alone (``w = 0``);
   then the final sampling run is made only where K >= 2 asks for a std map.

MR without coil maps in the file (fastMRI): the ESPIRiT maps are estimated once, from all the
data, before anything else, with the classical methods' two map sets; diffusion (the tuning's
runs and the final one) uses the first set, which is ESPIRiT's one-set estimate bit for bit
(:func:`_estimate_maps_once`), so every run sees the maps it would have estimated itself (the
path used to estimate them three times: 1, 2 and again 1 set; 1.6 + 3.5 + 1.6 s on the
fastMRI-format brain of benchmarks/kspace_fastmri.py, 128 x 96 x 24 with 8 coils, loaded
CPU). The held-out samples are drawn once too, for both splits and both classical methods'
self-tuning (the same draw: it depends only on the sampling mask, the calibration and the
seed).

The final result always uses all the data: diffusion with the chosen weight and the run's K
samples, the classical method with its own self-tuned weight, blended with ``w`` (MR: the
magnitudes, CT: HU, which is affine in mu). ``info["guard"]`` and ``info["guard_line"]``
record the errors, the choice and ``w``.

**Long volumes: choose on a slab** (``tune_slab``, default 64 rows on MR volumes over 96
rows along the readout, 3D, or the slices, 2D multi-slice, and on parallel- and fan-beam CT
volumes over 96 slices; :mod:`medrecon.slab`). A slab of a separable acquisition is an exact
sub-problem of the measurement (MR: same mask, same noise per sample, the coil maps' rows; CT:
the slices' detector rows, the same views and dose), and the weights are absolute (per sample
against per voxel), so
everything that chooses runs on the slab of the rows holding the most signal: the split, the
weight's runs, the two chains (and with them the std map's ``alpha``, a ratio of error to
spread, applied to the whole), both classical methods' self-tuning and the comparison. All the
data serve only the result: the final sampling run (unless the classical result is chosen)
and the chosen classical method's one solve at its slab-chosen weight, only where it is used
(fallback or blend). The lines say which rows (``info["tune_slab"]``). CT's sampling runs on
the slab weigh the data by the whole volume's noise std (the sampler's one std for all rays,
the RMS over them: what the final run uses; the slab's own, over its most attenuating rows, is
larger and would shift the weight chosen there); the held-out statistics keep the slab's.
Small volumes, cone-beam CT and ``--set tune_slab=0`` run on the whole volume.

The weight is scored on one sample (K = 1) per candidate. The output is the mean of K samples,
which averages most of one sample's posterior spread away, so with K > 1 the guard scores two
fresh chains at the chosen weight and the run's steps (the tuning's chain is the best of
several, so its error is biased low) and compares the error they predict for the mean of K
(:meth:`HeldOut.mean_error`); with K = 1 it scores one chain. On the real brain at R = 8
(benchmarks/RESULTS_autotune.md, H100) the single-sample comparison fell back to L1-wavelet,
1.2 dB under oracle TV; the two-chain estimate kept diffusion there (+0.37 dB over oracle TV,
with l1-wavelet as the only MR classical method).

**The std map** (K > 1, :func:`~medrecon.holdout.heldout_std`). The same two chains calibrate it on this
measurement: the module :mod:`medrecon.priors.calibration` models the output's error as
``alpha`` times the chains' spread, and on the held-out data both are seen (the two chains'
difference gives the spread, their blended mean's residual less the noise the error), so
``alpha`` comes from the measurement itself (:meth:`HeldOut.std_alpha`) instead of from the
synthetic heads of the prior's JSON, which a real scan need not resemble: on the real DWI volume
(6 x 10 x 10 voxels of 2.5 mm, R = 4) the heads' alpha covered 60 % of the errors at 2 std; the
held-out alpha was 13.3 against 11.6 measured in the image (CPU, 50 steps). Where the held-out
data cannot tell ``alpha`` (noise level unknown, an error within the noise, no spread) the
prior's factor stays, and the line printed beside the std output says which.

A blend or the classical result (``w`` < 1; :func:`~medrecon.holdout.offset_std`) is not a
posterior mean, so its map is the posterior expected error of the output: the posterior's
spread (the prior's alpha at the chosen weight) and the output's distance ``(1 - w) (x_classical
- mean)`` from the posterior mean (:func:`~medrecon.priors.calibration.output_std`), times one
factor from the held-out data (:meth:`HeldOut.std_scale`: the same model on the two chains of
the training part must predict the held-out error energy; CT weighs that energy by the ramp,
:class:`~medrecon.holdout.SpectralEnergy`, so that it stands for the image's). The distance
carries the map here:
where the guard rejects diffusion, the posterior's spread does not follow the classical
result's error (on the real DWI volume the correlation of either term with the error was
0.11-0.16), and the former map, ``w`` times the spread, covered 67 % of the errors at
``w`` = 0.07. H100 / H200, 50 steps, K = 4 (benchmarks/RESULTS_std_calibration.md):
90.2-95.7 % on the nine real rows where the guard falls back (MR brain and abdomen, three CT
slices at 30 and 60 views), 94.2 % on the DWI blend at R = 8, 67.8 % at R = 4 (3 held-out
k-space lines); without the held-out factor 94-100 %.

Cost: at most 4 sampling runs of one chain on the training part (at ``tune_steps``), two
chains at the run's steps (one with K = 1), each classical method's self-tuning (7-9 training
solves, twice that with SURE, one on all the data; its training-part solve at the chosen
weight is scored, not made again, except CT TV's at a parabola vertex between the tried
weights), on top of the final run (skipped when the classical result is chosen and K = 1);
on a slab all but the final run are the slab's size, plus the chosen classical method's
all-data solve where it is used. Measured on
a loaded CPU, 6 steps, tiny volumes, with one classical method: 4.6x (CT) and 10x (MR) the
wall time of one plain run (benchmarks/RESULTS_autotune.md); MR's second method, TV (300-step
PDHG solves), costs 0.9-4.5x l1-wavelet's on the real MR files there. On an H100 the
classical self-tuning was 107 s of the 174 s default path of a 256^3 8-coil MR study
(benchmarks/RESULTS_sampling.md 3e). The classical methods run after the sampling runs, in
the same thread and stream: run beside them on a second stream, they saved 2.8-5.3 s on an
H100 but died of a CUDA illegal memory access when another process shared the GPU
(RESULTS_sampling.md 3e.2).

MR runs both l1-wavelet and TV because neither is best everywhere: self-tuned l1-wavelet is
as good as or better than self-tuned TV on the synthetic MR cases (up to +2.8 dB on the head)
and the real brain at R = 4, TV better on the real brain at R = 8 (+1.2 dB) and the DWI volume
(+0.3 / +0.6 dB) (benchmarks/RESULTS_autotune.md). The held-out choice picked the method with
the better PSNR on 8 of 10 MR cases there, not on the DWI volume, where the held-out samples
prefer l1-wavelet by 16-19 %. CT keeps TV alone: at 256^2 with its default 300 iterations
SIRT and CGLS lie 8-12 dB under it (benchmarks/RESULTS_ct.md); only on a 24^2 slab with TV
cut to 80 iterations did self-tuned SIRT lead (by 1.0 / 0.4 dB, RESULTS_autotune.md's first
table). Neither is measured on the real CT slices.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medrecon.holdout import (
    HeldOut,
    HoldoutSplit,
    blend_weight,
    heldout_std,
    holdout_split,
    offset_std,
    prior_alpha,
)
from medrecon.problem import (
    ct_noise_std,
    estimate_maps,
    estimated_maps_source,
    measurement_problem,
)
from medrecon.recon import ct, mri
from medrecon.recon.autotune import TuneReport, tune_weight
from medrecon.recon.base import ReconOptions, ReconOutput
from medrecon.slab import Slab, measurement_slab

if TYPE_CHECKING:
    from medrecon.io.measurement import Measurement
    from medrecon.priors import Prior
    from medrecon.sampling.api import PosteriorResult
    from medrecon.sampling.config import DiffusionConfig

__all__ = [
    "DIFFUSION_FACTORS",
    "GUARD_METHODS",
    "MIN_GAIN",
    "MIN_GAIN_T",
    "ClassicalRun",
    "TUNED_SAMPLERS",
    "GuardReport",
    "classical_runs",
    "guard_choice",
    "guarded_diffusion",
]

#: The classical methods the guard may compare with, per modality (each self-tuned; MR: the
#: one that predicts the held-out data better, see the docstring).
GUARD_METHODS: dict[str, tuple[str, ...]] = {"MR": ("l1-wavelet", "tv"), "CT": ("tv",)}
_CLASSICAL: dict[tuple[str, str], Callable[..., ReconOutput]] = {
    ("MR", "l1-wavelet"): mri.l1_wavelet, ("MR", "tv"): mri.total_variation,
    ("CT", "tv"): ct.tv_method}
#: The default settings of the MR guard methods: the same coil maps (ESPIRiT, two map sets)
#: for both, so one estimate and one split serve both (:func:`_classical_maps`).
_MR_SETTINGS = {"l1-wavelet": mri.L1WaveletSettings, "tv": mri.TVSettings}
#: Grid of the diffusion weight, as factors of the modality default.
DIFFUSION_FACTORS = (0.25, 1.0, 4.0)
#: Samplers whose data-consistency weight ``lam`` is self-tuned (dps and pc do not use it).
TUNED_SAMPLERS = ("dds", "diffpir")
#: A blend must predict the held-out data this much better (relative) than the classical
#: result alone, else the classical result is taken.
MIN_GAIN = 0.01
#: ... and its gain must stand this many standard errors above 0 over the held-out positions
#: (on many positions a one-sided test at about 2.3 %): a blend fitted to a few of them can gain
#: several per cent by their chance alone. On the real DWI b0 volume at R = 4 (6 x 10 x 10,
#: 18 held-out positions) a 7 % blend gained 5.5 % at t = 1.4 and cost 0.2-0.4 dB in the image
#: (benchmarks/RESULTS_autotune.md).
MIN_GAIN_T = 2.0


@dataclass(frozen=True)
class GuardReport:
    """What the guard compared and chose (JSON-ready through :meth:`as_dict`).

    Attributes:
        method: the classical method compared with: of :data:`GUARD_METHODS`, the one with
            the smallest held-out error.
        classical_lam: its self-tuned weight on all data.
        diffusion_error, classical_error: relative held-out residuals of the two, each
            reconstructed from the training part.
        choice: "diffusion", "blend" or "classical".
        weight: the weight of diffusion in the result (1: diffusion, 0: classical).
        blend_error: held-out residual of the blend with ``weight``.
        holdout: what was held out, in words.
        samples: K, the samples whose mean is the output.
        chains: chains the diffusion error was estimated from: 1 (that chain's error) or 2
            (the error expected of the mean of K, :meth:`HeldOut.mean_error`).
        classical_errors: the held-out error of every classical method scored (``method``'s
            is ``classical_error``), by name.
        blend_t: where diffusion predicted worse, the t statistic of the best blend's gain
            over the held-out positions (:meth:`HeldOut.gain_t`); None where not computed.
    """

    method: str
    classical_lam: float
    diffusion_error: float
    classical_error: float
    choice: str
    weight: float
    blend_error: float
    holdout: str
    samples: int = 1
    chains: int = 1
    classical_errors: dict[str, float] = dataclasses.field(default_factory=dict)
    blend_t: float | None = None

    def line(self) -> str:
        """One line for the CLI and the DICOM derivation text."""
        basis = (f" (mean of {self.samples}, estimated from 2 chains)" if self.chains == 2
                 else "")
        others = ", ".join(f"{k} {v:.4g}" for k, v in self.classical_errors.items()
                           if k != self.method)
        errors = (f"held-out error diffusion {self.diffusion_error:.4g}{basis}, {self.method} "
                  f"{self.classical_error:.4g}" + (f" (chosen over {others})" if others else ""))
        if self.choice == "diffusion":
            return f"guard kept diffusion: {errors} ({self.holdout})"
        t = f" t {self.blend_t:.2g}" if self.blend_t is not None else ""
        if self.choice == "classical":
            weak = (f"; a blend's gain was within the held-out data's scatter ({t.strip()} < "
                    f"{MIN_GAIN_T:g})" if self.blend_t is not None and self.blend_t < MIN_GAIN_T
                    else "")
            return (f"guard fell back to {self.method} (lam {self.classical_lam:.3g}): diffusion "
                    f"predicts held-out data worse, {errors}{weak} ({self.holdout})")
        return (f"guard blended {self.weight:.2f} diffusion + {1 - self.weight:.2f} "
                f"{self.method} (lam {self.classical_lam:.3g}): diffusion predicts held-out data "
                f"worse, {errors}, blend {self.blend_error:.4g}{t} ({self.holdout})")

    def short(self) -> str:
        """A few characters for a series description."""
        if self.choice == "diffusion":
            return "guard kept"
        if self.choice == "classical":
            return f"guard: {self.method}"
        return f"guard blend {self.weight:.2f}"

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "classical_lam": float(self.classical_lam),
                "diffusion_error": float(self.diffusion_error),
                "classical_error": float(self.classical_error), "choice": self.choice,
                "weight": float(self.weight), "blend_error": float(self.blend_error),
                "holdout": self.holdout, "samples": int(self.samples),
                "chains": int(self.chains),
                "classical_errors": {k: float(v) for k, v in self.classical_errors.items()},
                "blend_t": None if self.blend_t is None else float(self.blend_t)}


@dataclass(frozen=True)
class ClassicalRun:
    """One self-tuned classical method as the guard scores it (:func:`classical_runs`).

    Attributes:
        method: its name (of :data:`GUARD_METHODS`).
        output: its self-tuned reconstruction from all the data of the measurement it was
            run on (the guard's slab, where it chose on one: then not the output's).
        lam: the weight it chose for all the data (the whole volume's too: it is absolute).
        prediction: the held-out prediction of its solution on the training part at the
            weight its self-tuning chose there.
        error: that prediction's relative held-out error (:meth:`HeldOut.prediction_error`).
        seconds: wall time of its self-tuned run and, where made, the training-part run.
    """

    method: str
    output: ReconOutput
    lam: float
    prediction: torch.Tensor
    error: float
    seconds: float


def classical_runs(measurement: Measurement, split: HoldoutSplit, device: torch.device, *,
                   tol: float = 1e-4, cmeas: Measurement | None = None) -> list[ClassicalRun]:
    """Each classical method of :data:`GUARD_METHODS` for ``measurement``'s modality,
    self-tuned on all the data (its own hold-out: MR the samples of ``split``, handed over;
    CT the same views, drawn the same way), and its solution on the training part of the
    split at the weight it chose there scored on the held-out data, through its own operator
    (with map sets, on the per-set images), so its error is the one its self-tuning saw at
    that weight. That solution is the tuning's own solve where it made one
    (``ReconOutput.training_solution``: MR, whose weight is a tried one, and CT TV where the
    weight is a tried one); else (CT TV's parabola vertex) the method runs once more on the
    training part. ``cmeas``: the measurement carrying the classical methods' coil maps
    (:func:`_estimate_maps_once`; default ``measurement``). In the order of
    :data:`GUARD_METHODS`."""
    cmeas = measurement if cmeas is None else cmeas
    mod = measurement.modality
    csplit = _classical_split(measurement, cmeas, split, device)
    # MR: the self-tuning holds out the samples of ``split`` (drawn already), not a new draw
    shared = {} if split.masks is None else {"holdout_masks": split.masks}
    runs = []
    for name in GUARD_METHODS[mod]:
        t0 = time.perf_counter()
        run = _CLASSICAL[(mod, name)]
        full = run(cmeas, ReconOptions(tol=tol), device, keep_training=True, **shared)
        lam = float(full.info["lam"])
        part = full.training_solution  # the tuning's own solve at that weight, if it made one
        if part is None:  # CT TV's parabola vertex lies between the tried weights
            tuned = full.info.get("autotune") or {}
            part = run(csplit.train, ReconOptions(lam=lam / float(tuned.get("scale", 1.0)),
                                                  tol=tol), device).solution
        full.training_solution = None  # not kept past the scoring
        assert part is not None and full.solution is not None
        b = csplit.held.predict(part)
        runs.append(ClassicalRun(name, full, lam, b, csplit.held.prediction_error(b),
                                 time.perf_counter() - t0))
    return runs


def guarded_diffusion(measurement: Measurement, config: DiffusionConfig, prior: Prior,
                      device: torch.device, *, tol: float = 1e-4,
                      progress: bool = False) -> ReconOutput:
    """Diffusion posterior sampling with the self-tuned weight and the guard (module docstring).

    ``config.lam`` None: tuned (dds, diffpir; the sampler's default for the others);
    ``config.guard`` False: no classical comparison. Neither: one plain sampling run.
    ``ReconOutput.image`` is the result in reference units, ``info["std_image"]`` its std map
    (when there is one); ``info`` records ``autotune`` / ``autotune_line`` (the weight) and
    ``guard`` / ``guard_line`` (the decision). ``tol`` is the classical method's tolerance.
    The sampling runs share the network's patch function and, on CUDA, its graphs
    (:func:`~medrecon.sampling.denoiser.shared_network_calls`).
    """
    from medrecon.sampling.denoiser import prior_on_device, shared_network_calls

    prior = prior_on_device(prior, device)  # moved once, not once per sampling run
    with shared_network_calls():
        return _guarded_diffusion(measurement, config, prior, device, tol, progress)


def _guarded_diffusion(measurement: Measurement, config: DiffusionConfig, prior: Prior,
                       device: torch.device, tol: float, progress: bool) -> ReconOutput:
    from medrecon.sampling.api import check_sample_memory

    t0 = time.perf_counter()
    check_sample_memory(measurement, config.samples, device)  # before the tuning's runs
    mod = measurement.modality
    centre = config.sampler_options(mod).lam
    weighted = config.sampler in TUNED_SAMPLERS
    tune = config.lam is None and weighted
    info: dict[str, Any] = {"lam": centre} if weighted else {}
    if not (tune or config.guard):
        res = _sample(measurement, prior, config, centre, config.samples, device, progress)
        return _diffusion_output(res, config, info, t0, device)

    # Wall seconds per stage of the default path (info["stage_seconds"]; issue 14's profile).
    stages: dict[str, float] = {}
    lap = [time.perf_counter()]

    def stage(name: str) -> None:
        now = time.perf_counter()
        stages[name] = stages.get(name, 0.0) + now - lap[0]
        lap[0] = now

    # the guard scores the mean of K >= 2 samples on two chains (which also calibrate the std)
    two = config.guard and config.samples > 1
    dmeas, cmeas, maps_info = _estimate_maps_once(measurement, device, config.guard)
    # Long volumes: everything that chooses (weights, chains, classical tuning, the guard's
    # comparison) runs on the exact sub-problem of a slab; all the data only for the result.
    mapped = time.perf_counter()
    sdmeas, scmeas, slab = _tuning_slab(dmeas, cmeas, device, config.tune_slab)
    split_stage = "maps and split"
    if slab is not None:  # the maps' seconds apart from the slab's
        stages["maps" if mod == "MR" else "set-up"], lap[0] = mapped - lap[0], mapped
        split_stage = f"slab ({slab.text}) and split"
    if slab is not None and mod == "CT" and config.noise_std is None:
        # The sampler weighs the data by one noise std for all rays (the RMS over them): the
        # whole volume's, so that a run on the slab is the rows' part of the final run (the
        # slab's own RMS, over its most attenuating rows, is larger and would shift the
        # weight chosen there). The held-out statistics keep the slab's own noise.
        config = dataclasses.replace(config, noise_std=ct_noise_std(dmeas))
    split = holdout_split(sdmeas, device)
    held_text = split.text if slab is None else f"{split.text}, on {slab.text}"
    if slab is not None:
        info["tune_slab"] = slab.as_dict()
    stage(split_stage)
    best: dict[str, Any] = {}

    def heldout_error(lam: float, cfg: DiffusionConfig = config) -> float:
        x = _sample(split.train, prior, cfg, lam, 1, device, progress, not best).image
        err = split.held.error(x)
        if not best or err < best["error"]:
            best.update(error=err, lam=lam, image=x)
        return err

    if tune:
        short = config.tune_steps is not None and config.tune_steps < config.steps
        tcfg = dataclasses.replace(config, steps=config.tune_steps) if short else config
        lam, grid, errors = tune_weight(lambda v: heldout_error(v, tcfg), centre,
                                        DIFFUSION_FACTORS, refine=False)
        report = TuneReport("lam", lam, tuple(grid), tuple(errors), 1.0, held_text,
                            f"ranked on {tcfg.steps}-step runs" if short else "")
        if slab is not None:
            report = report.noted(f"weight chosen on {slab.text}")
        info.update(lam=lam, autotune=report.as_dict(), autotune_line=report.line())
        stage(f"weight ({len(grid)} runs, {tcfg.steps} steps)")
        if two:  # the two chains below replace the tuning's best sample: not kept on
            best.clear()  # the device through them and the classical methods
        elif short and config.guard:  # K = 1: the guard scores a sample at the run's steps
            x = _sample(split.train, prior, config, lam, 1, device, progress, first=False).image
            best.update(error=split.held.error(x), lam=lam, image=x)
            stage(f"guard: rescore at {config.steps} steps")
    else:
        lam = centre
        if not two:
            heldout_error(lam)
            stage("guard: training-part run")
    if not config.guard:
        res = _sample(dmeas, prior, config, lam, config.samples, device, progress,
                      first=False)
        stage("final run")
        return _diffusion_output(res, config, {**info, **maps_info, "stage_seconds": stages},
                                 t0, device)
    if two:
        # The output is the mean of K samples, which averages most of one sample's posterior
        # spread away: its held-out error is estimated from two fresh chains at the run's
        # steps (the tuning's chain is the best of several, so its error is biased low), and
        # the same two chains calibrate the std map on this measurement (HeldOut.std_alpha).
        a1, a2 = (split.held.predict(_sample(
            split.train, prior, dataclasses.replace(config, seed=config.seed + i), lam, 1,
            device, progress, first=not tune and i == 1).image) for i in (1, 2))
        d_err, a = split.held.mean_error(a1, a2, config.samples)
        stage(f"guard: two chains at {config.steps} steps")
    else:
        d_err = float(best["error"])
        a = split.held.predict(best["image"])

    # The classical baseline: each of the modality's methods self-tuned on all data (its own
    # hold-out, the same split), scored by its solution on the training part at the weight it
    # chose there; the best predictor of the held-out data is compared with and blended with.
    runs = classical_runs(measurement, split, device, tol=tol, cmeas=scmeas)
    stage("guard: classical methods")
    chosen = min(runs, key=lambda r: r.error)  # ties: the first of GUARD_METHODS
    errors = {r.method: r.error for r in runs}
    del runs, scmeas  # the other method's result and the slab: not through the sampling
    name, full, b, c_lam = chosen.method, chosen.output, chosen.prediction, chosen.lam
    c_err = chosen.error
    choice, w, b_err, gain_t = guard_choice(split.held, a, d_err, b, c_err)
    guard = GuardReport(name, c_lam, d_err, c_err, choice, w, b_err, held_text,
                        samples=config.samples, chains=2 if two else 1,
                        classical_errors=errors, blend_t=gain_t)
    if slab is not None and choice != "diffusion":  # used: its one solve on all the data
        full = _CLASSICAL[(mod, name)](cmeas, ReconOptions(lam=c_lam, tol=tol), device)
        stage("guard: classical all-data solve")
    del cmeas
    info.update(guard=guard.as_dict(), guard_line=guard.line(), classical_lam=c_lam,
                classical_iterations=full.iterations, stage_seconds=stages)
    if choice == "classical" and not two:  # no final sampling run: nothing would use it
        info.update(seconds=time.perf_counter() - t0, device=str(device))
        return ReconOutput(image=full.image, residual=full.residual,
                           iterations=config.steps, info=info, solution=full.solution)
    res = _sample(dmeas, prior, config, lam, config.samples, device, progress,
                  first=False)
    stage("final run" if choice != "classical" else "final run (std map)")
    out = _diffusion_output(res, config, {**info, **maps_info}, t0, device)
    # the whole volume's problem (support, residual): the split's unless it is the slab's
    whole = split.problem if slab is None or not (two or choice == "blend") else (
        measurement_problem(dmeas, device))
    if two and "std_image" in out.info:
        if w == 1.0:
            heldout_std(out, whole.support, split.held.std_alpha(a1, a2), config.samples)
        else:  # a blend or the classical result: its distance from the posterior mean too
            scale = split.held.std_scale(a1, a2, w, b, prior_alpha(out.info))
            offset_std(out, whole.support, w, full.image - out.image, scale, config.samples)
    if choice == "classical":  # the classical result, with the std map of the posterior
        out.image, out.residual, out.solution = full.image, full.residual, full.solution
        out.info["seconds"] = time.perf_counter() - t0
        return out
    if choice == "blend":
        out.image = (w * out.image + (1 - w) * full.image).astype(np.float32)
        # the blended image's residual under the diffusion's operator (one map set)
        x = w * res.image + (1 - w) * mri.combine_sets(full.solution).to(res.image.device)
        out.residual = whole.residual(x.to(whole.y.device))
        out.solution = x.detach().cpu()
    return out


def guard_choice(held: HeldOut, a: torch.Tensor, d_err: float, b: torch.Tensor,
                 c_err: float) -> tuple[str, float, float, float | None]:
    """The guard's decision (module docstring, step 2) from the held-out predictions ``a`` of
    diffusion (its expected error ``d_err``) and ``b`` of the classical result (error
    ``c_err``): (choice, the weight ``w`` of diffusion in the result, the result's held-out
    error, the blend's gain t or None). Diffusion where it predicts at least as well; else the
    best blend where it gains :data:`MIN_GAIN` over the classical result and its gain stands
    :data:`MIN_GAIN_T` standard errors above 0 over the held-out positions
    (:meth:`HeldOut.gain_t`; fewer than 2 positions: the gain alone decides); else the
    classical result (``w = 0``)."""
    if d_err <= c_err:
        return "diffusion", 1.0, d_err, None
    w = blend_weight(a, b, held.y)
    b_err = held.prediction_error(w * a + (1 - w) * b)
    t = held.gain_t(a, b, w)[0] if w > 0.0 else None
    if b_err < (1.0 - MIN_GAIN) * c_err and (t is None or t >= MIN_GAIN_T):
        return "blend", w, b_err, t
    return "classical", 0.0, c_err, t


def _tuning_slab(dmeas: Measurement, cmeas: Measurement, device: torch.device,
                 rows: int) -> tuple[Measurement, Measurement, Slab | None]:
    """The measurements the guarded path chooses on: the slabs of diffusion's ``dmeas`` and
    the classical methods' ``cmeas`` (the same rows; :func:`~medrecon.slab.measurement_slab`)
    and the rows, where one of ``rows`` applies; else the two as they are and None."""
    found = measurement_slab(dmeas, device, rows)
    if found is None:
        return dmeas, cmeas, None
    sub, slab = found
    if cmeas is dmeas:
        return sub, sub, slab
    maps = np.ascontiguousarray(slab.take(cmeas.coil_maps))  # not a view of the full maps
    return sub, dataclasses.replace(sub, coil_maps=maps), slab


def _estimate_maps_once(measurement: Measurement, device: torch.device,
                        guard: bool) -> tuple[Measurement, Measurement, dict[str, str]]:
    """The measurements of the guarded path's runs: (diffusion's, the classical methods',
    the diffusion output's ``info["coil_maps"]`` where it must be said).

    MR without coil maps in the file, several coils: the ESPIRiT maps are estimated here,
    once, for every run (the tuning's, the classical methods', the final one); with the guard
    the classical methods' map sets (:func:`_classical_maps`: two),
    whose first set is diffusion's one-set estimate bit for bit (:func:`~medrecon.operators.
    coils.espirit` finds the first eigenvector before it deflates for the next; measured
    equal on simulated 2D and 3D cases and the fastMRI-format brain at R = 3.3, 4, 8), so
    one estimate serves both; without the guard one set. The info keeps the label of the
    maps diffusion would have estimated itself (its measurement carries them as "file"
    maps). Else (CT, maps in the file, one coil): the measurement itself, no info."""
    if (measurement.modality != "MR" or measurement.coil_maps is not None
            or measurement.n_coils == 1):
        return measurement, measurement, {}
    maps_method, map_sets = _classical_maps()
    # on the host, as the file's maps would be (each run moves what it uses to the device)
    details: dict[str, Any] = {}
    maps = estimate_maps(measurement, device, maps_method=maps_method,
                         map_sets=map_sets if guard else 1, details=details).cpu().numpy()
    # diffusion's own copy of the first set: the sets need not stay through its sampling
    first = maps[0].copy() if maps.ndim == 5 else maps
    dmeas = dataclasses.replace(measurement, coil_maps=first)
    cmeas = dataclasses.replace(measurement, coil_maps=maps) if guard else dmeas
    return dmeas, cmeas, {"coil_maps": estimated_maps_source(maps_method, first.shape, details)}


def _classical_maps() -> tuple[str, int]:
    """(maps_method, map_sets) of the MR guard methods run with their default settings
    (ESPIRiT, two map sets for both l1-wavelet and tv): the same maps, so one estimate and
    one split serve every classical run of the guard."""
    found = {(s.maps_method, s.map_sets) for s in (c() for c in _MR_SETTINGS.values())}
    assert len(found) == 1, f"the MR guard methods' default coil maps differ: {found}"
    return found.pop()


def _classical_split(measurement: Measurement, cmeas: Measurement, split: HoldoutSplit,
                     device: torch.device) -> HoldoutSplit:
    """The split with the coil maps of the guard's classical methods (those of ``cmeas``,
    :func:`_estimate_maps_once`): MR l1-wavelet and tv with their default settings
    (:func:`_classical_maps`: ESPIRiT, two map sets) where the file has no maps or has map
    sets, with the sample masks of ``split``; else (CT, single-set maps, one coil) the
    diffusion's ``split``, whose maps are the same."""
    maps = measurement.coil_maps
    if measurement.modality != "MR" or measurement.n_coils == 1 or (
            maps is not None and np.ndim(maps) == 4):
        return split
    maps_method, map_sets = _classical_maps()
    return holdout_split(cmeas, device, maps_method=maps_method, map_sets=map_sets,
                         masks=split.masks)


def _sample(measurement: Measurement, prior: Prior, config: DiffusionConfig, lam: float,
            samples: int, device: torch.device, progress: bool,
            first: bool = True) -> PosteriorResult:
    """One sampling run; after the ``first``, the prior's voxel-size notice is not repeated
    (by argument, not by a warnings filter: those are process-wide, and a caller's other
    threads would see them)."""
    from medrecon.sampling import posterior_sample

    return posterior_sample(
        measurement, prior, sampler=config.sampler, steps=config.steps, samples=samples,
        seed=config.seed, device=device, tiling=config.tiling, precision=config.precision,
        options=dataclasses.replace(config, lam=lam).sampler_options(measurement.modality),
        memory_budget_gb=config.memory_budget_gb, noise_std=config.noise_std,
        progress=progress, voxel_size_warning=first)


def _diffusion_output(res: PosteriorResult, config: DiffusionConfig, info: dict[str, Any],
                      t0: float, device: torch.device) -> ReconOutput:
    """The ReconOutput of one final sampling run, ``info`` (tuning, guard) merged in."""
    out: dict[str, Any] = {
        k: v for k, v in res.info.items()
        if isinstance(v, int | float | str | bool | list) or v is None
        or k == "std_calibration"}
    out.update(info)
    out.update(nfe=res.nfe, seconds=time.perf_counter() - t0,
               sampling_seconds=res.timings["total"], network_seconds=res.timings["network"],
               network_fraction=res.timings["network_fraction"], device=str(device))
    if res.std is not None:
        out["std_image"] = res.std
    solution = None if res.image is None else res.image.detach().cpu()
    return ReconOutput(image=res.mean, residual=res.residual, iterations=config.steps,
                       info=out, solution=solution)
