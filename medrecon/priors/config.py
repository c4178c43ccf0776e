"""Training configuration of a prior: frozen dataclasses loaded from YAML.

A config file has the sections ``network``, ``denoiser``, ``data``, ``optim``, ``log`` and
``normalisation`` plus ``name`` and ``seed``; every key is optional (defaults below) and
unknown keys are rejected with a clear error. The resolved config is written next to every
run's outputs (``RUN_DIR/config.yaml``) and stored in every checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrecon.errors import ConfigError
from medrecon.priors.network import NetworkConfig
from medrecon.priors.normalisation import Normalisation


@dataclass(frozen=True)
class DenoiserConfig:
    """EDM constants (model-space units; see :mod:`medrecon.priors.denoiser`)."""

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2
    noise_embed_scale: float = 250.0

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError("denoiser.sigma_min must be positive and below sigma_max.")
        if self.sigma_data <= 0 or self.p_std <= 0:
            raise ConfigError("denoiser.sigma_data and denoiser.p_std must be positive.")


@dataclass(frozen=True)
class DataConfig:
    """Where training volumes come from and how patches are drawn.

    Attributes:
        source: "files" (``--data`` paths: NIfTI files, DICOM series folders, or a manifest),
            "synthetic" (procedural heads from :mod:`medrecon.priors.synthetic`), "rendered"
            (patches rendered on the training device by
            :func:`medrecon.priors.synthetic.render_patches` at voxel sizes drawn by its
            ``sample_spacings``, a fresh batch every step), or "phantom" (randomised 3D
            Shepp-Logan ellipsoids; for tests and smoke runs).
        modalities: modalities the prior serves; files of other modalities are rejected.
        spacing_mm: every training volume is resampled to this voxel size (I, J, K); for
            "rendered", the voxel size of the previews and of a sampler that passes none.
        mr_fraction: "rendered" with MR and CT: each patch is MR with this probability.
        patch_size: training patch (X, Y, Z) in voxels; multiples of the network's
            downsampling factor.
        val_fraction: share of file volumes held out for validation (by a hash of the path).
        cache_dir: folder for preprocessed-volume caches (.npy); default RUN_DIR/cache.
        default_modality: modality assumed for files whose header says neither MR nor CT.
        synthetic_shape: grid of generated volumes (synthetic/phantom sources).
        train_volumes / val_volumes: generated volumes per modality (synthetic/phantom);
            validation volumes use a disjoint seed range.
        synthetic_noise: add measurement noise to synthetic heads (off: the prior models
            noiseless anatomy).
        render_noise_prob: "rendered": share of patches rendered with scanner noise (MR
            Rician, CT FBP-filtered); 0 gives clean targets, the anatomy alone.
        foreground_prob: probability that a patch is centred on a foreground voxel.
        flip_axes: voxel axes that may be mirrored (0 = left-right for RAS-like volumes).
        rotate_deg, scale: ranges of the small random affine (uniform in +-range).
        intensity: MR intensity augmentation: random gain and gamma in 1 +- intensity.
    """

    source: str = "files"
    modalities: tuple[str, ...] = ("MR", "CT")
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    mr_fraction: float = 0.5
    patch_size: tuple[int, int, int] = (64, 64, 64)
    val_fraction: float = 0.1
    cache_dir: str | None = None
    default_modality: str | None = None
    synthetic_shape: tuple[int, int, int] = (96, 112, 112)
    train_volumes: int = 48
    val_volumes: int = 4
    synthetic_noise: bool = False
    render_noise_prob: float = 0.5
    foreground_prob: float = 0.8
    flip_axes: tuple[int, ...] = (0,)
    rotate_deg: float = 5.0
    scale: float = 0.05
    intensity: float = 0.1

    def __post_init__(self) -> None:
        if self.source not in ("files", "synthetic", "rendered", "phantom"):
            raise ConfigError("data.source must be files, synthetic, rendered or phantom.")
        if not 0 <= self.mr_fraction <= 1:
            raise ConfigError("data.mr_fraction must lie in [0, 1].")
        if not 0 <= self.render_noise_prob <= 1:
            raise ConfigError("data.render_noise_prob must lie in [0, 1].")
        if not self.modalities or any(m not in ("MR", "CT") for m in self.modalities):
            raise ConfigError("data.modalities must list MR and/or CT.")
        if len(self.patch_size) != 3 or min(self.patch_size) < 4:
            raise ConfigError("data.patch_size must be three sizes of at least 4 voxels.")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ConfigError("data.spacing_mm must be three positive voxel sizes in mm.")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("data.val_fraction must lie in [0, 1).")
        if self.source == "synthetic" and len(set(self.spacing_mm)) != 1:
            raise ConfigError("data.spacing_mm must be isotropic for synthetic heads.")
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ConfigError("data.flip_axes may only contain 0, 1 and 2.")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, gradient clipping and an EMA of the weights.

    ``batch_size`` is per process (GPU); the global batch is batch_size x world size.
    """

    steps: int = 100_000
    batch_size: int = 4
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("optim.steps and optim.batch_size must be at least 1.")
        if self.lr <= 0 or not 0 <= self.ema_decay < 1:
            raise ConfigError("optim.lr must be positive and optim.ema_decay in [0, 1).")


@dataclass(frozen=True)
class LogConfig:
    """How often to log, validate, checkpoint and preview (in steps)."""

    log_every: int = 50
    val_every: int = 1000
    ckpt_every: int = 1000
    preview_every: int = 5000
    val_patches: int = 8
    val_sigmas: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    preview_steps: int = 18

    def __post_init__(self) -> None:
        if min(self.log_every, self.val_every, self.ckpt_every, self.preview_every) < 1:
            raise ConfigError("log.*_every must be at least 1.")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (data paths and output folder excepted).

    ``init_from`` names a prior (shipped name, NAME.json or run folder) whose weights start
    the run (model and EMA; the optimiser starts fresh): its network must equal ``network``
    except for inputs this config adds (``spacing_embed``), which start at zero, so step 0
    computes what that prior computes.
    """

    name: str = "prior"
    seed: int = 0
    init_from: str | None = None
    network: NetworkConfig = field(default_factory=NetworkConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    normalisation: Normalisation = field(default_factory=Normalisation)

    def __post_init__(self) -> None:
        f = self.network.downsampling_factor
        if any(p % f for p in self.data.patch_size):
            raise ConfigError(
                f"data.patch_size must be a multiple of {f} for {len(self.network.channels)} "
                "network levels."
            )
        if self.network.num_modalities not in (0, 2):
            raise ConfigError("network.num_modalities must be 0 (one modality) or 2 (MR and CT).")
        if self.network.num_modalities == 0 and len(self.data.modalities) > 1:
            raise ConfigError("A prior for both MR and CT needs network.num_modalities: 2.")

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> TrainConfig:
        """Validate a plain mapping (e.g. a checkpoint's JSON) into a config."""
        from medrecon.config import from_dict

        return from_dict(cls, d, source)

    def replace(self, **sections: Any) -> TrainConfig:
        """A copy with sections or fields replaced, e.g. ``replace(optim={"steps": 10})``."""
        kw: dict[str, Any] = {}
        for k, v in sections.items():
            cur = getattr(self, k)
            kw[k] = dataclasses.replace(cur, **v) if isinstance(v, dict) else v
        return dataclasses.replace(self, **kw)


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def load_train_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML prior config (None -> defaults) with ``key.sub=value`` overrides, through
    :func:`medrecon.config.load_config` (strict: unknown keys and bad types are ConfigErrors)."""
    from medrecon.config import load_config

    _check_overrides(overrides)
    if path is None:
        return load_config(None, TrainConfig, overrides=list(overrides))
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file {p} does not exist.")
    return load_config(p, TrainConfig, overrides=list(overrides))


def _check_overrides(overrides: Sequence[str]) -> None:
    """Refuse ``key=value`` overrides that contradict each other (``--steps 5 --set
    optim.steps=7``, or ``--set optim=3 --set optim.steps=2``), instead of the last one
    silently winning."""
    seen: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"Override {item!r} must look like section.key=value.")
        if key in seen and seen[key] != value:
            raise ConfigError(f"{key} is set twice, to {seen[key]!r} and {value!r}; keep one.")
        for other in seen:
            if other.startswith(key + ".") or key.startswith(other + "."):
                raise ConfigError(f"The settings {other} and {key} conflict: one is a section "
                                  f"holding the other; keep one.")
        seen[key] = value


def dump_train_config(config: TrainConfig) -> str:
    """The resolved config as YAML text."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)
