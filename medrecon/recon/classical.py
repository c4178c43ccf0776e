"""Registry of classical reconstruction methods, shared by MRI and CT.

A method is a function ``fn(measurement, options, device) -> ReconOutput`` registered under a
modality ("MR" or "CT") and a name (e.g. "cg-sense", "fbp")::

    @register_method("MR", "cg-sense")
    def cg_sense(measurement: Measurement, options: ReconOptions,
                 device: torch.device) -> ReconOutput: ...

:func:`get_method` imports :mod:`medrecon.recon.mri` and, where it exists,
:mod:`medrecon.recon.ct`, whose decorators fill the registry. ``medrecon reconstruct`` and the
Python API (:func:`medrecon.reconstruct.reconstruct`) look methods up here, so a new method only
needs a decorated function.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medrecon.errors import InputError

if TYPE_CHECKING:  # imported for type hints only; keeps this module light
    import torch

    from medrecon.io.measurement import Measurement

__all__ = [
    "ReconOptions",
    "ReconOutput",
    "ReconMethod",
    "register_method",
    "get_method",
    "available_methods",
    "normalise_modality",
]


@dataclass(frozen=True)
class ReconOptions:
    """Options every classical method understands; method-specific ones go in ``extra``.

    Attributes:
        lam: regularisation weight; ``None`` lets the method choose a default scaled to the
            data (each method documents its rule).
        iterations: maximum number of solver iterations; ``None`` uses the method's default.
        tol: stopping tolerance on the relative change of the iterate (or the relative
            residual for CG); 0 runs all iterations.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        progress: show a tqdm progress bar.
        extra: free-form method-specific options (e.g. ``{"wavelet": "db4", "levels": 3}``,
            ``{"filter": "hann"}`` for FBP).
    """

    lam: float | None = None
    iterations: int | None = None
    tol: float = 1e-4
    device: str = "auto"
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lam is not None and not (np.isfinite(self.lam) and self.lam >= 0):
            raise InputError(f"The regularisation weight must be a finite number >= 0, "
                             f"got {self.lam}.")
        if self.iterations is not None and self.iterations < 1:
            raise InputError(f"The number of iterations must be at least 1, "
                             f"got {self.iterations}.")
        if not (np.isfinite(self.tol) and self.tol >= 0):
            raise InputError(f"The tolerance must be a finite number >= 0, got {self.tol}.")


@dataclass
class ReconOutput:
    """What a classical method returns.

    Attributes:
        image: float32 array of shape (I, J, K) on the reference grid, in the reference's
            intensity units (MR: magnitude in the reference's scale; CT: HU).
        residual: data-consistency residual ``||M(A x) - y|| / ||y||`` of the final estimate
            (MR: over the sampled k-space points of all coils; CT: over the sinogram).
        iterations: solver iterations actually run (0 for direct methods).
        info: method details worth recording (lam used, per-iteration history, maps source,
            timing, ...); JSON-serialisable values, except the optional ``"std_image"``
            (float32 (I, J, K) per-voxel standard deviation of sampling methods).
    """

    image: np.ndarray
    residual: float
    iterations: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.image.ndim != 3:
            raise ValueError(f"ReconOutput.image must be 3D (I, J, K), got {self.image.shape}")


ReconMethod = Callable[["Measurement", ReconOptions, "torch.device"], ReconOutput]

_REGISTRY: dict[tuple[str, str], ReconMethod] = {}

# Modules whose import registers methods; optional ones are skipped when absent.
_METHOD_MODULES: tuple[str, ...] = ("medrecon.recon.mri", "medrecon.recon.ct",
                                   "medrecon.sampling.recon")
_loaded = False


def normalise_modality(modality: str) -> str:
    """Map user spellings ("mri", "MR", "ct") onto the DICOM codes "MR" and "CT"."""
    m = str(modality).strip().upper()
    if m in ("MR", "MRI"):
        return "MR"
    if m == "CT":
        return "CT"
    raise InputError(f"Unknown modality {modality!r}; use MR or CT.")


def register_method(modality: str, name: str) -> Callable[[ReconMethod], ReconMethod]:
    """Decorator registering ``fn`` as method ``name`` for ``modality`` ("MR" or "CT")."""
    key = (normalise_modality(modality), name.strip().lower())

    def decorator(fn: ReconMethod) -> ReconMethod:
        if key in _REGISTRY and _REGISTRY[key] is not fn:
            raise ValueError(f"reconstruction method {key} is already registered")
        _REGISTRY[key] = fn
        return fn

    return decorator


def _load_methods() -> None:
    global _loaded
    if _loaded:
        return
    for module in _METHOD_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    _loaded = True


def available_methods(modality: str | None = None) -> list[str] | dict[str, list[str]]:
    """Registered method names for ``modality``, or a dict modality -> names when ``None``."""
    _load_methods()
    if modality is None:
        out: dict[str, list[str]] = {}
        for mod, name in sorted(_REGISTRY):
            out.setdefault(mod, []).append(name)
        return out
    mod = normalise_modality(modality)
    return sorted(name for m, name in _REGISTRY if m == mod)


def get_method(modality: str, name: str) -> ReconMethod:
    """The method registered as ``name`` for ``modality``; a clear error when there is none."""
    _load_methods()
    mod = normalise_modality(modality)
    key = (mod, name.strip().lower())
    if key not in _REGISTRY:
        known = ", ".join(available_methods(mod)) or "none"  # type: ignore[arg-type]
        raise InputError(f"Unknown reconstruction method {name!r} for {mod} measurements; "
                         f"choose one of: {known}.")
    return _REGISTRY[key]
