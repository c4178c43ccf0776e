"""The one path from a :class:`Measurement` and a method to a reconstructed :class:`Volume`.

``medrecon reconstruct``, the demo and the Python API all call :func:`reconstruct`, for the
classical methods and for diffusion posterior sampling alike::

    from medrecon.io import save_volume
    from medrecon.io.measurement import read_measurement
    from medrecon.reconstruct import ReconOptions, reconstruct

    m = read_measurement("t1_R8.h5")
    result = reconstruct(m, "l1-wavelet", ReconOptions(iterations=50))
    dm = reconstruct(m, "diffusion", ReconOptions(extra={"samples": 4}))  # shipped prior
    print(result.residual, dm.std_volume.shape)
    save_volume(result.volume, "t1_l1.nii.gz")

Methods and their metadata are in the registry of :mod:`medrecon.methods` ("MR": zero-filled,
cg-sense, l1-wavelet, tv, diffusion; "CT": fbp, fdk, sirt, cgls, tv, diffusion). ``lam`` and
``iterations`` are refused for methods without a weight or iterations, and the method's own
options (``ReconOptions.extra``) are validated before any work. The result is a Volume in the
reference geometry of the measurement (same affine, shape, units and DICOM header; modality
the measurement's, also where the reference file carried none), so writing it as NIfTI or as a derived DICOM series puts it where the reference study was;
``result.settings`` is what the run used (``medrecon reconstruct`` writes it next to the
output).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medrecon.config import to_dict
from medrecon.device import resolve_device
from medrecon.errors import InputError
from medrecon.guard import GuardReport
from medrecon.io.measurement import Measurement
from medrecon.io.volume import Volume
from medrecon.methods import (
    MethodSpec,
    available_methods,
    diffusion_config,
    diffusion_method,
    get_method,
)
from medrecon.recon.base import ReconOptions, ReconOutput

if TYPE_CHECKING:
    from medrecon.priors import Prior

__all__ = ["ReconOptions", "ReconstructionResult", "ReconstructionSettings", "reconstruct",
           "check_method", "reconstruction_volume", "settings_path", "std_path"]


@dataclass(frozen=True)
class ReconstructionSettings:
    """What a reconstruction ran with (YAML-ready; :func:`medrecon.config.load_config` reads it
    back, :meth:`recon_options` turns it into options that repeat the run).

    Attributes:
        method, modality: the method and the measurement's modality.
        lam, iterations, tol: as given (None: the method's default rule).
        device: the device the run used ("cpu", "cuda:0", ...).
        options: the method's options with every default filled in (diffusion: the resolved
            :class:`~medrecon.sampling.config.DiffusionConfig`, per-modality defaults included).
        resolved: what the defaults came to on this measurement: ``lam`` (the weight used),
            ``iterations`` (run), ``autotune`` (how a self-tuned value was chosen),
            for diffusion ``guard`` (the comparison with the classical result and its
            choice) and, with MR coil compression, ``virtual_coils`` and
            ``coil_energy_kept``; with a std map, ``std_calibration`` (its coverage basis, one
            line) and ``std_factor`` (the calibration factor applied, None: uncalibrated).
    """

    method: str
    modality: Literal["MR", "CT"]
    lam: float | None = None
    iterations: int | None = None
    tol: float = 1e-4
    device: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    resolved: dict[str, Any] = field(default_factory=dict)

    def recon_options(self, progress: bool = False) -> ReconOptions:
        """Options that repeat this reconstruction."""
        return ReconOptions(lam=self.lam, iterations=self.iterations, tol=self.tol,
                            device=self.device, progress=progress, extra=dict(self.options))


@dataclass
class ReconstructionResult:
    """A reconstruction and how it was made.

    Attributes:
        volume: the image in the reference geometry (float32 (I, J, K), reference units).
        output: the method's :class:`ReconOutput` (image, residual, iterations, info).
        method: the method name.
        modality: "MR" or "CT".
        options: the options given.
        seconds: wall-clock time of the method.
        settings: the resolved settings of the run.
        std_volume: per-voxel standard deviation in the same geometry, for methods that
            return one (``output.info["std_image"]``, e.g. posterior sampling), else None.
    """

    volume: Volume
    output: ReconOutput
    method: str
    modality: str
    options: ReconOptions
    seconds: float
    settings: ReconstructionSettings
    std_volume: Volume | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def residual(self) -> float:
        """Data-consistency residual ``||M(Ax) - y|| / ||y||``."""
        return self.output.residual


def reconstruction_volume(measurement: Measurement, image: np.ndarray, method: str,
                          info: dict[str, Any] | None = None, tag: str | None = None) -> Volume:
    """Wrap ``image`` (I, J, K) as a Volume in ``measurement``'s reference geometry.

    The series description becomes "<reference description> (medrecon <method>[, <tag>])"
    (the reference's part is shortened so that the medrecon part fits in 64 characters);
    ``meta`` records the method and the scalar entries of ``info`` (lam, iterations, residual,
    ``autotune_line``: the self-tuning's choice, grid and held-out errors, ...). The modality
    is the measurement's: an MR k-space reconstruction is MR even when its reference volume (a
    NIfTI from another tool) had none, so that a DICOM output is an MR series.
    """
    ref = measurement.reference
    base = ref.series_description.strip()
    ours = f"medrecon {method}" + (f", {tag}" if tag else "")
    base = base[:max(0, 64 - len(ours) - 3)].strip()
    description = f"{base} ({ours})" if base else ours
    scalars = {k: v for k, v in (info or {}).items()
               if isinstance(v, int | float | str | bool) or v is None}
    volume = ref.volume(image, series_description=description[:64],
                        reconstruction={"method": method, **scalars})
    volume.modality = measurement.modality
    return volume


def _check_options(method: str, options: ReconOptions, weighted: bool, iterative: bool,
                   modality: str) -> None:
    def having(flag: str) -> str:
        names = [n for n in available_methods(modality)  # type: ignore[union-attr]
                 if getattr(get_method(modality, n), flag)]
        return ", ".join(names)

    if options.lam is not None and not weighted:
        raise InputError(f"lam does not apply to the method {method}: it has no "
                         f"regularisation weight ({having('weighted')} have one).")
    if options.iterations is not None and not iterative:
        raise InputError(f"iterations does not apply to the method {method}, which is direct "
                         f"(not iterative).")


def check_method(modality: str, method: str, options: ReconOptions) -> tuple[MethodSpec, Any]:
    """Validate ``method`` and ``options`` for ``modality`` before any work.

    Returns:
        The method's registry entry and its settings with defaults filled in (diffusion: the
        :class:`~medrecon.sampling.config.DiffusionConfig`).

    Raises:
        InputError / ConfigError: as :func:`reconstruct` does for a bad method or option.
    """
    spec = get_method(modality, method)
    _check_options(spec.name, options, spec.weighted, spec.iterative, spec.modality)
    settings = (diffusion_config(options) if spec.run is diffusion_method
                else spec.resolve_settings(options.extra))
    return spec, settings


def reconstruct(measurement: Measurement, method: str, options: ReconOptions | None = None,
                *, prior: Prior | None = None) -> ReconstructionResult:
    """Reconstruct ``measurement`` with ``method`` (classical or "diffusion").

    Args:
        measurement: an MR or CT measurement (from :func:`~medrecon.io.measurement.read_measurement`
            or :func:`~medrecon.simulate.simulate`); it is not modified.
        method: a method registered for the measurement's modality, e.g. "cg-sense".
        options: lam, iterations, tol, device, progress and the method's own options.
        prior: diffusion only: a loaded prior to use instead of loading
            ``options.extra["prior"]`` (any device; the caller's object is not changed).

    Raises:
        InputError: the method is unknown for the modality, lam or iterations do not apply to
            it, a prior is given to a classical method, or the device is unavailable.
        ConfigError: a method option is unknown or invalid.
    """
    import torch

    options = options or ReconOptions()
    spec, settings_obj = check_method(measurement.modality, method, options)
    diffusion = spec.run is diffusion_method
    if prior is not None and not diffusion:
        raise InputError(f"A prior applies to the method diffusion, not {spec.name}.")
    device = resolve_device(options.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        if diffusion:
            output = diffusion_method(measurement, options, device, prior=prior)
        else:
            output = spec(measurement, options, device)
    seconds = time.perf_counter() - t0
    info = {"residual": output.residual, "iterations": output.iterations,
            **{k: output.info[k] for k in ("lam", "converged", "autotune_line", "guard_line")
               if k in output.info}}
    tuned = output.info.get("autotune")
    guard = output.info.get("guard")
    tags = []
    if isinstance(tuned, dict):  # e.g. "auto lam 0.00625" in the series description
        tags.append(f"auto {tuned['parameter']} {tuned['chosen']:.3g}")
    if isinstance(guard, dict):  # e.g. "guard blend 0.62"
        tags.append(GuardReport(**guard).short())
    # The DICOM derivation text carries the autotune line: the guard's decision goes with it.
    lines = [str(info[k]) for k in ("autotune_line", "guard_line") if info.get(k)]
    if lines:
        info["autotune_line"] = "; ".join(lines)
    volume = reconstruction_volume(measurement, output.image, spec.name, info,
                                   tag=", ".join(tags) or None)
    std = output.info.get("std_image")
    std_volume = None
    std_line = output.info.get("std_calibration_line")
    if isinstance(std, np.ndarray) and std.shape == volume.shape:
        # The description says whether 2 std is a calibrated ~95 % band (NIfTI, DICOM).
        factor = output.info.get("std_factor")
        std_tag = (None if std_line is None else "uncalibrated" if factor is None
                   else f"calibrated x{float(factor):.3g}")
        std_info = {**info, **({"std_calibration_line": std_line} if std_line else {})}
        std_volume = reconstruction_volume(measurement, std, f"{spec.name} std", std_info,
                                           tag=std_tag)
    if diffusion:
        settings_obj = settings_obj.resolved(measurement.modality, output.info.get("lam"))
        if prior is not None:
            settings_obj = dataclasses.replace(settings_obj, prior=prior.name)
    settings = ReconstructionSettings(
        method=spec.name, modality=spec.modality,  # type: ignore[arg-type]
        lam=options.lam, iterations=options.iterations, tol=options.tol, device=str(device),
        options=to_dict(settings_obj),
        resolved={"lam": output.info.get("lam"), "iterations": output.iterations,
                  **({"autotune": tuned} if isinstance(tuned, dict) else {}),
                  **({"guard": guard} if isinstance(guard, dict) else {}),
                  **({"stage_seconds": {k: round(v, 2) for k, v in
                                        output.info["stage_seconds"].items()}}
                     if "stage_seconds" in output.info else {}),
                  **{k: output.info[k] for k in ("virtual_coils", "coil_energy_kept")
                     if k in output.info},
                  **({"std_calibration": std_line, "std_factor": output.info.get("std_factor")}
                     if std_line and std_volume is not None else {})})
    return ReconstructionResult(volume=volume, output=output, method=spec.name,
                                modality=measurement.modality, options=options,
                                seconds=seconds, settings=settings, std_volume=std_volume,
                                meta={"device": str(device)})


def _split_output(out: Path) -> tuple[str, str]:
    """``recon.nii.gz`` -> ("recon", ".nii.gz"); a DICOM folder ``recon`` -> ("recon", "")."""
    name = out.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return name, ""


def std_path(out: Path) -> Path:
    """Where the std volume of output ``out`` goes: ``recon.nii.gz`` -> ``recon_std.nii.gz``,
    a DICOM folder ``recon`` -> ``recon_std``."""
    stem, suffix = _split_output(out)
    return out.with_name(f"{stem}_std{suffix}")


def settings_path(out: Path) -> Path:
    """Where the resolved settings of output ``out`` go: ``recon.nii.gz`` ->
    ``recon.reconstruct.yaml``, a DICOM folder ``recon`` -> ``recon.reconstruct.yaml`` beside
    it (as ``simulate`` writes ``<OUT stem>.simulate.yaml``)."""
    return out.with_name(f"{_split_output(out)[0]}.reconstruct.yaml")
