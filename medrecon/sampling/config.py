"""The settings of diffusion reconstruction as a typed, validated config (``--method diffusion``).

:class:`DiffusionConfig` is a frozen dataclass like the simulation settings: it loads from a
mapping or YAML with :func:`medrecon.config.from_dict` / :func:`~medrecon.config.load_config`
(unknown keys, wrong types and out-of-range values are one sentence naming the key), and its
resolved form is written next to every reconstruction::

    from medrecon.config import from_dict
    from medrecon.sampling.config import DiffusionConfig

    cfg = from_dict(DiffusionConfig, {"samples": 4, "tiling": "roll"})
    cfg.sampler_options("MR")        # the SamplerOptions posterior_sample runs with

=================  ===========================================  =========================
key                meaning                                      default
=================  ===========================================  =========================
prior              prior name, its NAME.json or its folder      "default" (the shipped one)
sampler            dds, dps, pc or diffpir                      "dds"
steps              diffusion steps                              50
samples            posterior samples K (K >= 2: std map)         1
seed               random seed                                  0
tiling             fit, shift, roll or blend                    "fit"
precision          network precision: auto, bf16 (autocast),    auto: bf16 on CUDA and on
                   bf16-full (bf16 network) or fp32             CPUs with bf16, else fp32
memory_budget_gb   bound on network activation memory (GB)      automatic
noise_std          measurement noise std override (per real     from the file
                   part of the data; MR: complex std / sqrt 2)
lam                prior weight vs data (< 1 trusts the data)   auto: on held-out data
                                                                around MR 0.1, CT 1
guard              compare with the self-tuned classical result  on
                   on held-out data; fall back or blend if worse
tune_steps         steps of the auto weight's candidate runs    20
tune_slab          MR, parallel/fan CT: rows (CT: slices) of    64 (volumes over 96
                   the slab that the weight, the guard and the  rows; 0: off)
                   classical tuning run on
eta                DDS re-noising stochasticity in [0, 1]       0.85
cg_iters           CG iterations per data-consistency step      per modality (MR 10, CT 5)
cg_iters_high      DDS: CG iterations at the steps followed by  per modality: MR 2,
                   sigma > 5 (the noisiest 40 %)                else cg_iters
zeta               DPS step / DiffPIR fresh-noise share         1.0 / 0.3
coil_energy        MR: virtual coils keeping this fraction of   MR 1 (all coils)
                   the signal energy (coil compression)
=================  ===========================================  =========================

Per-modality defaults: :data:`medrecon.sampling.api.MODALITY_DEFAULTS`. An auto ``lam`` (None)
and the ``guard`` are carried out by :mod:`medrecon.guard` (``medrecon reconstruct --method
diffusion`` and :func:`medrecon.reconstruct.reconstruct`); :meth:`DiffusionConfig.sampler_options`
alone uses the modality default for an auto weight.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from medrecon.config import option
from medrecon.sampling.api import SAMPLERS, SamplerOptions
from medrecon.sampling.denoiser import PRECISIONS
from medrecon.sampling.tiling import TILINGS
from medrecon.slab import SLAB_ROWS

__all__ = ["TILINGS", "DiffusionConfig"]

_WEIGHT_FILES = (".safetensors", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class DiffusionConfig:
    """Settings of posterior-sampling reconstruction (see the module table).

    ``None`` for eta, cg_iters, cg_iters_high, zeta and coil_energy means the sampler's
    default for the modality (:meth:`resolved` fills them in; coil_energy only for MR, where 1
    means all coils); ``None`` for lam means self-tuned on held-out data
    (:mod:`medrecon.guard`), centred on that default.
    """

    prior: str = option("default", help="Prior name (`medrecon priors`), NAME.json or folder.")
    sampler: str = option("dds", help="dds, dps, pc or diffpir.")
    steps: int = option(50, ge=1, help="Diffusion steps.")
    samples: int = option(1, ge=1, help="Posterior samples; 2 or more give a std map.")
    seed: int = option(0, ge=0, help="Random seed: same seed and device, same result.")
    tiling: str = option("fit", help="fit, shift, roll or blend.")
    precision: str = option("auto", help="Network precision: auto, bf16 (autocast), "
                                         "bf16-full or fp32.")
    memory_budget_gb: float | None = option(None, gt=0.0, help="Network activation memory.")
    noise_std: float | None = option(None, ge=0.0, help="Measurement noise std override, "
                                                        "per real part of the data.")
    lam: float | None = option(None, gt=0.0, help="Prior weight against the data "
                                                  "(None: chosen on held-out data).")
    eta: float | None = option(None, ge=0.0, le=1.0, help="DDS re-noising stochasticity.")
    cg_iters: int | None = option(None, ge=1, help="CG iterations per consistency step.")
    cg_iters_high: int | None = option(None, ge=1, help="DDS: CG iterations at the steps "
                                                        "followed by sigma > 5.")
    zeta: float | None = option(None, ge=0.0, help="DPS step size / DiffPIR noise share.")
    coil_energy: float | None = option(None, gt=0.0, le=1.0,
                                       help="MR: compress the coils onto the fewest virtual "
                                            "coils keeping this fraction of the signal energy "
                                            "(1: all coils).")
    tune_steps: int | None = option(20, ge=1, help="Steps of the auto weight's candidate "
                                                   "runs, when fewer than steps (None: steps).")
    tune_slab: int = option(SLAB_ROWS, ge=0, help="MR volumes more than 1.5x this many rows "
                                                  "long (3D: readout, 2D: slices) and "
                                                  "parallel/fan CT volumes of more slices: "
                                                  "the weight, "
                                                  "the guard's runs and the classical tuning "
                                                  "on the slab of this many rows holding the "
                                                  "most signal; 0: on the whole volume.")
    guard: bool = option(True, help="Fall back to (or blend with) the self-tuned classical "
                                    "result where it predicts held-out data better.")

    def __post_init__(self) -> None:
        # Spellings are forgiving (" DDS" works); everything else is validated here.
        object.__setattr__(self, "sampler", self.sampler.strip().lower())
        object.__setattr__(self, "tiling", self.tiling.strip().lower())
        if self.sampler not in SAMPLERS:
            raise ValueError(f"Unknown sampler {self.sampler!r}; choose one of: "
                             f"{', '.join(SAMPLERS)}")
        if self.tiling not in TILINGS:
            raise ValueError(f"Unknown diffusion tiling {self.tiling!r}; use "
                             f"{', '.join(TILINGS)}")
        object.__setattr__(self, "precision", self.precision.strip().lower())
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown network precision {self.precision!r}; use "
                             f"{', '.join(PRECISIONS)}")
        if self.prior.lower().endswith(_WEIGHT_FILES):
            raise ValueError(f"prior {self.prior} is a weights file; give the prior's "
                             f"NAME.json or its folder")
        if self.sampler == "diffpir" and self.zeta is not None and self.zeta > 1:
            raise ValueError(f"DiffPIR's zeta must lie in [0, 1], got {self.zeta:g}")

    def sampler_options(self, modality: str) -> SamplerOptions:
        """The sampler hyper-parameters: the per-modality defaults of this sampler with this
        config's lam, eta, cg_iters, cg_iters_high, zeta and (MR) coil_energy on top."""
        overrides: dict[str, float | int] = {}
        if self.lam is not None:
            overrides["lam"] = self.lam
        if self.eta is not None:
            overrides["eta"] = self.eta
        if self.cg_iters is not None:
            overrides["cg_iters"] = self.cg_iters
        if self.cg_iters_high is not None:
            overrides["cg_iters_high"] = self.cg_iters_high
        if self.zeta is not None:
            overrides["zeta_diffpir" if self.sampler == "diffpir" else "zeta_dps"] = self.zeta
        if self.coil_energy is not None and modality.upper() == "MR":
            overrides["coil_energy"] = self.coil_energy
        return SamplerOptions.defaults(modality, self.sampler, **overrides)

    def resolved(self, modality: str, lam: float | None = None) -> DiffusionConfig:
        """This config with the per-modality defaults filled in (what a run used); ``lam``:
        the weight the run chose (self-tuned), else this config's or the default."""
        opt = self.sampler_options(modality)
        return dataclasses.replace(
            self, lam=lam if lam is not None else opt.lam, eta=opt.eta, cg_iters=opt.cg_iters,
            cg_iters_high=opt.cg_iters_high if self.sampler == "dds" else None,
            zeta=opt.zeta_diffpir if self.sampler == "diffpir" else opt.zeta_dps,
            coil_energy=(1.0 if opt.coil_energy is None else opt.coil_energy)
            if modality.upper() == "MR" else None)
