"""The registry of reconstruction methods: name -> function + what a caller needs to know.

Every method, classical (:mod:`medrecon.recon`) or diffusion posterior sampling
(:mod:`medrecon.sampling`), is one :class:`MethodSpec` here: its function
``fn(measurement, options, device) -> ReconOutput``, whether it has a regularisation weight
(``lam``), whether it is iterative, its default weight and iteration count, and the frozen
dataclass of its own options (``ReconOptions.extra``, the CLI's ``--set KEY=VALUE``)::

    from medrecon.methods import available_methods, get_method

    available_methods("MR")      # ['cg-sense', 'diffusion', 'l1-wavelet', 'tv', 'zero-filled']
    spec = get_method("CT", "sirt")
    spec.weighted, spec.iterative, spec.default_iterations   # False, True, 100
    spec(measurement, ReconOptions(iterations=20), device)   # runs the method

This module sits above recon and sampling, which never import each other;
:func:`medrecon.reconstruct.reconstruct` and ``medrecon reconstruct`` look methods up here and
check ``lam`` and ``iterations`` against the metadata, so the CLI holds no method facts. A new
method needs one function and one entry in :data:`_SPECS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medrecon.errors import InputError
from medrecon.recon import ct, mri
from medrecon.recon.base import ReconMethod, ReconOptions, ReconOutput, method_settings
from medrecon.sampling.api import MODALITY_DEFAULTS
from medrecon.sampling.config import DiffusionConfig

if TYPE_CHECKING:
    import torch

    from medrecon.io.measurement import Measurement
    from medrecon.priors import Prior

__all__ = [
    "MethodSpec",
    "available_methods",
    "diffusion_config",
    "diffusion_method",
    "get_method",
    "normalise_modality",
]


@dataclass(frozen=True)
class MethodSpec:
    """One reconstruction method for one modality.

    Attributes:
        name: the method's name ("cg-sense", "fbp", "diffusion", ...).
        modality: "MR" or "CT".
        run: ``fn(measurement, options, device) -> ReconOutput``.
        weighted: it has a regularisation weight (``ReconOptions.lam``; diffusion: the prior's
            weight against the data).
        iterative: it runs a number of iterations (``ReconOptions.iterations``; diffusion:
            steps); False for direct methods.
        default_lam: the default weight: a number, or the rule that chooses it from the data
            ("auto: ..." for the self-tuned ones); None without a weight.
        default_iterations: the default iteration count; None for direct methods (sirt,
            cgls: the cap of half the early-stopping run on held-out views, which chooses
            the count).
        settings: the frozen dataclass of its options (``ReconOptions.extra``).
        summary: one line on what it solves.
    """

    name: str
    modality: str
    run: ReconMethod
    weighted: bool
    iterative: bool
    default_lam: float | str | None
    default_iterations: int | None
    settings: type
    summary: str

    def __call__(self, measurement: Measurement, options: ReconOptions,
                 device: torch.device) -> ReconOutput:
        return self.run(measurement, options, device)

    @property
    def option_names(self) -> tuple[str, ...]:
        """The keys ``ReconOptions.extra`` (``--set``) accepts for this method."""
        return tuple(f.name for f in dataclasses.fields(self.settings))

    def resolve_settings(self, extra: Mapping[str, Any]) -> Any:
        """``extra`` as this method's settings dataclass (defaults filled in); a bad key or
        value is one :class:`~medrecon.errors.ConfigError` sentence."""
        return method_settings(self.settings, extra, self.name)


# ---------------------------------------------------------------------------------------------
# Diffusion posterior sampling as a method
# ---------------------------------------------------------------------------------------------
_PRIOR_CACHE: dict[tuple[str, str], Any] = {}


def diffusion_config(options: ReconOptions) -> DiffusionConfig:
    """The :class:`~medrecon.sampling.config.DiffusionConfig` of ``options``: ``extra`` as the
    config, with ``options.lam`` as the prior weight and ``options.iterations`` as the steps
    unless ``extra`` sets ``lam`` / ``steps`` itself."""
    extra = dict(options.extra)
    if "lam" not in extra and options.lam is not None:
        extra["lam"] = options.lam
    if "steps" not in extra and options.iterations is not None:
        extra["steps"] = options.iterations
    return method_settings(DiffusionConfig, extra, "diffusion")


def _load_prior(name: str, device: torch.device) -> Prior:
    from medrecon.priors import load_prior, resolve_prior_path

    key = (str(resolve_prior_path(name)), str(device))
    if key not in _PRIOR_CACHE:  # reuse a loaded prior across calls in one process
        _PRIOR_CACHE.clear()
        _PRIOR_CACHE[key] = load_prior(name, device=device)
    return _PRIOR_CACHE[key]


def diffusion_method(measurement: Measurement, options: ReconOptions, device: torch.device,
                     prior: Prior | None = None) -> ReconOutput:
    """Posterior-mean reconstruction (and std map) of an MR or CT measurement, with the
    self-tuned weight and the guard of :mod:`medrecon.guard`.

    The settings come from :func:`diffusion_config`; ``prior`` (a loaded
    :class:`~medrecon.priors.Prior`) replaces loading ``config.prior``. ``ReconOutput.image``
    is the posterior mean (MR magnitude / CT HU), or what the guard chose instead (the
    self-tuned classical result, or a blend; ``info["guard_line"]`` says which);
    ``info["std_image"]`` the per-voxel standard deviation (float32 array; absent for one
    sample and when the guard chose the classical result); every other ``info`` entry is
    JSON-serialisable.
    """
    from medrecon.guard import guarded_diffusion

    config = diffusion_config(options)
    if prior is None:
        prior = _load_prior(config.prior, device)
    return guarded_diffusion(measurement, config, prior, device, tol=options.tol,
                             progress=options.progress)


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------
_SCALED = ("auto: held-out k-space over x1/8..x8 of alpha x 99th percentile of |A^H y|, "
           "alpha = {alpha:g}")

_SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("zero-filled", "MR", mri.zero_filled, False, False, None, None,
               mri.ZeroFilledSettings, "adjoint (SENSE) or root-sum-of-squares image"),
    MethodSpec("cg-sense", "MR", mri.cg_sense, True, True, mri.DEFAULT_ALPHA["cg-sense"],
               mri.DEFAULT_ITERATIONS["cg-sense"], mri.SenseSettings,
               "min ||Ax - y||^2 + lam ||x||^2 by conjugate gradients"),
    MethodSpec("l1-wavelet", "MR", mri.l1_wavelet, True, True,
               _SCALED.format(alpha=mri.DEFAULT_ALPHA["l1-wavelet"]),
               mri.DEFAULT_ITERATIONS["l1-wavelet"], mri.L1WaveletSettings,
               "min 1/2 ||Ax - y||^2 + lam ||Wx||_1 by FISTA"),
    MethodSpec("tv", "MR", mri.total_variation, True, True,
               _SCALED.format(alpha=mri.DEFAULT_ALPHA["tv"]), mri.DEFAULT_ITERATIONS["tv"],
               mri.TVSettings, "min 1/2 ||Ax - y||^2 + lam TV(x) by PDHG"),
    MethodSpec("fbp", "CT", ct.fbp_method, False, False, None, None, ct.FBPSettings,
               "filtered backprojection (FDK for cone-beam data)"),
    MethodSpec("fdk", "CT", ct.fdk_method, False, False, None, None, ct.FBPSettings,
               "Feldkamp-Davis-Kress (FBP for parallel and fan-beam data)"),
    MethodSpec("sirt", "CT", ct.sirt_method, False, True, None, ct.DEFAULT_ITERATIONS["sirt"],
               ct.SIRTSettings, "simultaneous iterative reconstruction, x >= 0"),
    MethodSpec("cgls", "CT", ct.cgls_method, False, True, None, ct.DEFAULT_ITERATIONS["cgls"],
               ct.CGLSSettings, "least squares by CG, regularised by early stopping"),
    MethodSpec("tv", "CT", ct.tv_method, True, True,
               f"auto: held-out views over x1/8..x8 of {ct.DEFAULT_TV_LAM:g}",
               ct.DEFAULT_ITERATIONS["tv"], ct.TVSettings,
               "min 1/2 ||Ax - y||^2 / ||A||^2 + lam TV(x), x >= 0, by PDHG"),
    *(MethodSpec("diffusion", mod, diffusion_method, True, True,
                 f"auto: held-out {'k-space' if mod == 'MR' else 'views'} over x1/4..x4 of "
                 f"{MODALITY_DEFAULTS[(mod, 'dds')]['lam']:g}", DiffusionConfig().steps,
                 DiffusionConfig, "posterior sampling with a learned 3D diffusion prior")
      for mod in ("MR", "CT")),
)
_REGISTRY: dict[tuple[str, str], MethodSpec] = {(s.modality, s.name): s for s in _SPECS}


def normalise_modality(modality: str) -> str:
    """Map user spellings ("mri", "MR", "ct") onto the DICOM codes "MR" and "CT"."""
    m = str(modality).strip().upper()
    if m in ("MR", "MRI"):
        return "MR"
    if m == "CT":
        return "CT"
    raise InputError(f"Unknown modality {modality!r}; use MR or CT.")


def available_methods(modality: str | None = None) -> list[str] | dict[str, list[str]]:
    """Method names for ``modality``, or a dict modality -> names when ``None``."""
    if modality is None:
        out: dict[str, list[str]] = {}
        for mod, name in sorted(_REGISTRY):
            out.setdefault(mod, []).append(name)
        return out
    mod = normalise_modality(modality)
    return sorted(name for m, name in _REGISTRY if m == mod)


def get_method(modality: str, name: str) -> MethodSpec:
    """The method ``name`` for ``modality`` (callable like its function); a clear error when
    there is none."""
    mod = normalise_modality(modality)
    key = (mod, name.strip().lower())
    if key not in _REGISTRY:
        known = ", ".join(available_methods(mod))  # type: ignore[arg-type]
        raise InputError(f"Unknown reconstruction method {name!r} for {mod} measurements; "
                         f"choose one of: {known}.")
    return _REGISTRY[key]
