"""Posterior sampling: diffusion reconstruction of MRI and CT with data consistency.

Public API (see :mod:`medrecon.sampling.api`)::

    from medrecon.sampling import posterior_sample, SamplerOptions, calibration
    res = posterior_sample(measurement, prior, sampler="dds", steps=50, samples=4, seed=0)

``medrecon reconstruct --method diffusion`` and :func:`medrecon.reconstruct.reconstruct` run
the same with a typed :class:`~medrecon.sampling.config.DiffusionConfig`.

Building blocks: :mod:`~medrecon.sampling.samplers` (DDIM/DDS, DiffPIR, predictor-corrector,
DPS loops), :mod:`~medrecon.sampling.consistency` (the immutable :class:`LinearProblem` with
its proximal CG step and projections) and :mod:`~medrecon.sampling.tiling` (volumes larger than
the prior's patch). The exact Gaussian prior the samplers are tested against is a test helper,
``tests/sampling/gaussian.py``. The physics comes from :func:`medrecon.problem.measurement_problem`;
sampling never imports the classical methods of :mod:`medrecon.recon`.
"""

from __future__ import annotations

from medrecon.sampling.api import (
    SAMPLERS,
    PosteriorResult,
    SamplerOptions,
    calibration,
    posterior_sample,
    sample_problem,
)
from medrecon.sampling.config import DiffusionConfig
from medrecon.sampling.consistency import LinearProblem, ProximalDenoiser
from medrecon.sampling.denoiser import prior_denoiser, prior_on_device, shared_network_calls
from medrecon.sampling.tiling import TiledDenoiser

__all__ = [
    "SAMPLERS",
    "DiffusionConfig",
    "LinearProblem",
    "PosteriorResult",
    "ProximalDenoiser",
    "SamplerOptions",
    "TiledDenoiser",
    "calibration",
    "posterior_sample",
    "prior_denoiser",
    "prior_on_device",
    "sample_problem",
    "shared_network_calls",
]
