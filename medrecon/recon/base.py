"""What every reconstruction method takes and returns.

A method is a function ``fn(measurement, options, device) -> ReconOutput``: the classical ones
live in :mod:`medrecon.recon.mri` and :mod:`medrecon.recon.ct`, diffusion sampling is adapted to
the same form in :mod:`medrecon.methods`, whose registry holds every method with its metadata
(weight, iterative, defaults, typed options)::

    from medrecon.recon.base import ReconOptions
    from medrecon.reconstruct import reconstruct

    result = reconstruct(measurement, "l1-wavelet",
                         ReconOptions(iterations=50, extra={"wavelet": "db4"}))

``options.extra`` carries the method's own options (the CLI's ``--set KEY=VALUE``); each method
reads them into a frozen dataclass with :func:`method_settings`, so a misspelt key or a bad
value is one :class:`~medrecon.errors.ConfigError` sentence before any work is done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from medrecon.errors import InputError

if TYPE_CHECKING:  # imported for type hints only; keeps this module light
    import torch

    from medrecon.io.measurement import Measurement

__all__ = ["ReconMethod", "ReconOptions", "ReconOutput", "method_settings"]

T = TypeVar("T")


@dataclass(frozen=True)
class ReconOptions:
    """Options every method understands; method-specific ones go in ``extra``.

    Attributes:
        lam: regularisation weight; ``None`` or ``"auto"`` (the same) lets the method choose:
            l1-wavelet and tv (MR and CT) tune it on held-out data
            (:mod:`medrecon.recon.autotune`), and so does diffusion (dds, diffpir:
            :mod:`medrecon.guard`); cg-sense uses its fixed rule.
            Only for methods with a weight.
        iterations: maximum number of solver iterations (diffusion: steps); ``None`` uses the
            method's default (sirt and cgls: chosen by early stopping on held-out views).
            Only for iterative methods.
        tol: stopping tolerance on the relative change of the iterate (or the relative
            residual for CG); 0 runs all iterations.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        progress: show the solvers' progress bars (on a terminal only, see
            :mod:`medrecon.progress`).
        extra: the method's own options (e.g. ``{"wavelet": "db4", "levels": 3}``,
            ``{"filter": "hann"}`` for FBP, ``{"samples": 4}`` for diffusion); see each
            method's settings class.
    """

    lam: float | str | None = None
    iterations: int | None = None
    tol: float = 1e-4
    device: str = "auto"
    progress: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.lam, str):  # "auto" is the default spelled out
            if self.lam.strip().lower() != "auto":
                raise InputError(f"The regularisation weight must be a number or 'auto', "
                                 f"got {self.lam!r}.")
            object.__setattr__(self, "lam", None)
        if self.lam is not None and not (np.isfinite(float(self.lam)) and self.lam >= 0):
            raise InputError(f"The regularisation weight must be a finite number >= 0, "
                             f"got {self.lam}.")
        if self.iterations is not None and self.iterations < 1:
            raise InputError(f"The number of iterations must be at least 1, "
                             f"got {self.iterations}.")
        if not (np.isfinite(self.tol) and self.tol >= 0):
            raise InputError(f"The tolerance must be a finite number >= 0, got {self.tol}.")


@dataclass
class ReconOutput:
    """What a method returns.

    Attributes:
        image: float32 array of shape (I, J, K) on the reference grid, in the reference's
            intensity units (MR: magnitude in the reference's scale; CT: HU).
        residual: data-consistency residual ``||M(A x) - y|| / ||y||`` of the final estimate
            (MR: over the sampled k-space points of all coils; CT: over the sinogram).
        iterations: solver iterations actually run (0 for direct methods).
        info: method details worth recording (lam used, per-iteration history, maps source,
            timing, ...); JSON-serialisable values, except the optional ``"std_image"``
            (float32 (I, J, K) per-voxel standard deviation of sampling methods).
        solution: the estimate in the units the operator acts on (MR: complex image, CT: mu
            in 1/mm), a CPU tensor (I, J, K) (MR with M map sets: (M, I, J, K), one image per
            set), or None; the diffusion guard predicts held-out data from it
            (:mod:`medrecon.guard`), which the magnitude ``image`` cannot do.
        training_solution: like ``solution``, the self-tuning's own solve on its training
            part at the weight it chose there, where the caller asked for it (MR l1-wavelet
            and tv, CT tv: ``keep_training``) and the tuning made that solve; else None. The
            guard scores it instead of solving the training part again.
    """

    image: np.ndarray
    residual: float
    iterations: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    solution: torch.Tensor | None = None
    training_solution: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.image.ndim != 3:
            raise ValueError(f"ReconOutput.image must be 3D (I, J, K), got {self.image.shape}")


ReconMethod = Callable[["Measurement", ReconOptions, "torch.device"], ReconOutput]


def method_settings(cls: type[T], extra: Mapping[str, Any], method: str) -> T:
    """``extra`` read into the settings dataclass ``cls`` of ``method``, defaults filled in.

    Raises:
        ConfigError: an unknown key (with a "did you mean"), a wrong type or a bad value, in
            one sentence naming the method.
    """
    from medrecon.config import from_dict

    return from_dict(cls, dict(extra), source=f"{method} options")
