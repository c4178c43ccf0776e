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

3. **Baseline** (:func:`medrecon.reconstruct.reconstruct`): MR L1-wavelet (FISTA, db2), CT
   isotropic TV (PDHG, warm-started from FBP), at the fixed weights of :data:`BASELINES`
   (chosen once on a validation head, not from the measurement; see :class:`BaselineChoice`).
4. **Diffusion** (:func:`~medrecon.reconstruct.reconstruct` with method "diffusion"): posterior
   sampling with the prior (DDS by default), K samples; their mean is the reconstruction and
   their per-voxel standard deviation the uncertainty map. Like the baseline it runs at the
   modality's fixed weight, without the self-tuning and the guard of ``reconstruct``'s
   default (:mod:`medrecon.guard`): the demo shows the sampler itself.
5. **Evaluation** (:func:`medrecon.evaluation.compare_volumes`): PSNR, SSIM, NMSE and HFEN over the
   automatic foreground mask of the reference with data range = reference max - min, plus the
   calibration of the std map (fraction of foreground voxels whose error is within 2 std; the
   map is the prior's calibrated one, see :mod:`medrecon.priors.calibration`, and the raw
   spread's fraction is recorded beside it) and
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

:mod:`medrecon.demo.plan` resolves the settings (grid, acquisition, baseline, sampler);
:mod:`medrecon.demo.run` runs them and writes the outputs. The sweep that chose the baselines'
weights is a benchmark, ``benchmarks/demo_baselines.py``.
"""

from medrecon.demo.plan import (
    BASELINES,
    CPU_SHAPE,
    CPU_STEPS,
    GPU_SHAPE,
    GPU_STEPS,
    BaselineChoice,
    DemoPlan,
    baseline_lam,
    calibration_size,
    plan_demo,
)
from medrecon.demo.run import DemoResult, ModalityResult, run_demo

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
    "baseline_lam",
    "calibration_size",
    "plan_demo",
    "run_demo",
]
