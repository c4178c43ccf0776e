"""``--method diffusion`` for MR and CT: posterior sampling registered in the recon registry.

The registry function receives :class:`~medrecon.recon.classical.ReconOptions`; the diffusion
settings travel in ``options.extra``:

=================  ===========================================  ==========
key                meaning                                      default
=================  ===========================================  ==========
prior              prior name or path (``medrecon priors``)     "default"
sampler            dds, dps, pc or diffpir                      "dds"
steps              diffusion steps (``options.iterations`` too)  50
samples            posterior samples K (K >= 2: std map)         1
seed               random seed                                  0
tiling             shift, roll or blend                         "shift"
memory_budget_gb   bound on network activation memory           automatic
noise_std          measurement noise std override               from file
lam                prior weight vs data (< 1 trusts the data)   per modality
eta                DDS re-noising stochasticity in [0, 1]       0.85
cg_iters           CG iterations per data-consistency step      per modality
zeta               DPS step / DiffPIR fresh-noise share         1.0 / 0.3
=================  ===========================================  ==========

Sampler defaults per modality: :data:`medrecon.sampling.api.MODALITY_DEFAULTS`.

``ReconOutput.image`` is the posterior mean (MR magnitude / CT HU) and
``ReconOutput.info["std_image"]`` the per-voxel standard deviation (float32 array, absent for
K = 1); every other ``info`` entry is JSON-serialisable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from medrecon.errors import InputError
from medrecon.recon.classical import ReconOptions, ReconOutput, register_method

if TYPE_CHECKING:
    from medrecon.io.measurement import Measurement

__all__ = ["diffusion_reconstruction"]

_PRIOR_CACHE: dict[tuple[str, str], Any] = {}

#: Every key of ``options.extra`` that ``--method diffusion`` understands.
OPTION_KEYS: tuple[str, ...] = ("prior", "sampler", "steps", "samples", "seed", "tiling",
                                "memory_budget_gb", "noise_std", "lam", "eta", "cg_iters", "zeta")
_TILINGS = ("shift", "roll", "blend")


def _int(extra: dict[str, Any], key: str, default: int) -> int:
    value = extra.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"The diffusion option {key} must be an integer, got {value!r}.") from None


def _positive_float(extra: dict[str, Any], key: str, allow_zero: bool = False) -> float | None:
    value = extra.get(key)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (number >= 0 if allow_zero else number > 0) or number == float("inf"):
        what = "a number >= 0" if allow_zero else "a positive number"
        raise InputError(f"The diffusion option {key} must be {what}, got {value!r}.")
    return number


def diffusion_reconstruction(measurement: Measurement, options: ReconOptions,
                             device: torch.device) -> ReconOutput:
    """Posterior-mean reconstruction (and std map) of an MR or CT measurement."""
    from medrecon.priors import load_prior, resolve_prior_path
    from medrecon.sampling.api import SamplerOptions, posterior_sample

    extra = options.extra  # read with .get only, so callers can see which keys were used
    unknown = [k for k in extra if k not in OPTION_KEYS]
    if unknown:
        raise InputError(f"Unknown diffusion option {unknown[0]!r}; the options are "
                         f"{', '.join(OPTION_KEYS)}.")
    prior_name = str(extra.get("prior", "default"))
    if prior_name.lower().endswith((".safetensors", ".pt", ".pth", ".ckpt")):
        raise InputError(f"--prior {prior_name} is a weights file; give the prior's NAME.json "
                         f"or its folder.")
    tiling = str(extra.get("tiling", "shift")).strip().lower()
    if tiling not in _TILINGS:
        raise InputError(f"Unknown diffusion tiling {tiling!r}; use {', '.join(_TILINGS)}.")
    key = (str(resolve_prior_path(prior_name)), str(device))
    if key not in _PRIOR_CACHE:  # reuse a loaded prior across calls in one process
        _PRIOR_CACHE.clear()
        _PRIOR_CACHE[key] = load_prior(prior_name, device=device)
    prior = _PRIOR_CACHE[key]
    steps = _int(extra, "steps", options.iterations or 50)
    samples = _int(extra, "samples", 1)
    seed = _int(extra, "seed", 0)
    budget = _positive_float(extra, "memory_budget_gb")
    noise = _positive_float(extra, "noise_std", allow_zero=True)
    sampler = str(extra.get("sampler", "dds")).strip().lower()
    settings: dict[str, Any] = {}
    lam = _positive_float(extra, "lam")
    lam = options.lam if lam is None else lam  # --lam or --set lam=
    if lam is not None:
        if lam <= 0:
            raise InputError(f"--lam must be a positive number, got {lam:g}.")
        settings["lam"] = lam
    eta = _positive_float(extra, "eta", allow_zero=True)
    if eta is not None:
        if eta > 1:
            raise InputError(f"The diffusion option eta must lie in [0, 1], got {eta:g}.")
        settings["eta"] = eta
    if extra.get("cg_iters") is not None:
        cg = _int(extra, "cg_iters", 0)
        if cg < 1:
            raise InputError(f"The diffusion option cg_iters must be at least 1, got {cg}.")
        settings["cg_iters"] = cg
    zeta = _positive_float(extra, "zeta", allow_zero=True)
    if zeta is not None:
        if sampler == "diffpir" and zeta > 1:
            raise InputError(f"DiffPIR's zeta must lie in [0, 1], got {zeta:g}.")
        settings["zeta_diffpir" if sampler == "diffpir" else "zeta_dps"] = zeta
    res = posterior_sample(
        measurement, prior, sampler=sampler, steps=steps,
        samples=samples, seed=seed, device=device, tiling=tiling,
        options=SamplerOptions.defaults(measurement.modality, sampler, **settings),
        memory_budget_gb=budget, noise_std=noise, progress=options.progress)
    info: dict[str, Any] = {
        k: v for k, v in res.info.items()
        if isinstance(v, int | float | str | bool | list) or v is None}
    info.update(nfe=res.nfe, seconds=res.timings["total"],
                network_seconds=res.timings["network"],
                network_fraction=res.timings["network_fraction"], device=str(device))
    if res.std is not None:
        info["std_image"] = res.std
    return ReconOutput(image=res.mean, residual=res.residual, iterations=steps, info=info)


register_method("MR", "diffusion")(diffusion_reconstruction)
register_method("CT", "diffusion")(diffusion_reconstruction)
