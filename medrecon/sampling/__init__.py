"""Posterior sampling: diffusion reconstruction of MRI and CT with data consistency.

Public API (see :mod:`medrecon.sampling.api`)::

    from medrecon.sampling import posterior_sample, SamplerOptions, calibration
    res = posterior_sample(measurement, prior, sampler="dds", steps=50, samples=4, seed=0)

Building blocks: :mod:`~medrecon.sampling.samplers` (DDIM/DDS, DiffPIR, predictor-corrector,
DPS loops), :mod:`~medrecon.sampling.consistency` (proximal CG step, projections, the
model-space <-> physical-unit map) and :mod:`~medrecon.sampling.tiling` (volumes larger than
the prior's patch). The exact Gaussian prior the samplers are tested against is a test helper,
``tests/sampling/gaussian.py``.
"""

from __future__ import annotations

from medrecon.sampling.api import (
    SAMPLERS,
    PosteriorResult,
    SamplerOptions,
    calibration,
    measurement_problem,
    posterior_sample,
    prior_denoiser,
    sample_problem,
)
from medrecon.sampling.consistency import LinearProblem, ProximalDenoiser
from medrecon.sampling.tiling import TiledDenoiser

__all__ = [
    "SAMPLERS",
    "LinearProblem",
    "PosteriorResult",
    "ProximalDenoiser",
    "SamplerOptions",
    "TiledDenoiser",
    "calibration",
    "measurement_problem",
    "posterior_sample",
    "prior_denoiser",
    "sample_problem",
]
