"""The one path from a :class:`Measurement` and a method to a reconstructed :class:`Volume`.

``medrecon reconstruct`` and the Python API both call :func:`reconstruct`::

    from medrecon.io.measurement import read_measurement
    from medrecon.io import save_volume
    from medrecon.reconstruct import reconstruct
    from medrecon.recon.classical import ReconOptions

    result = reconstruct(read_measurement("t1_R8.h5"), "l1-wavelet", ReconOptions(iterations=50))
    print(result.residual)
    save_volume(result.volume, "t1_l1.nii.gz")

Classical methods are looked up in the registry of :mod:`medrecon.recon.classical` ("MR":
zero-filled, cg-sense, l1-wavelet, tv; "CT": fbp, fdk, sirt, cgls, tv). The result is a Volume in
the reference geometry of the measurement (same affine, shape, modality, units and DICOM header),
so writing it as NIfTI or as a derived DICOM series puts it where the reference study was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medrecon.device import resolve_device
from medrecon.io.measurement import Measurement
from medrecon.io.volume import Volume
from medrecon.recon.classical import ReconOptions, ReconOutput, get_method

__all__ = ["ReconstructionResult", "reconstruct", "reconstruction_volume"]


@dataclass
class ReconstructionResult:
    """A reconstruction and how it was made.

    Attributes:
        volume: the image in the reference geometry (float32 (I, J, K), reference units).
        output: the method's :class:`ReconOutput` (image, residual, iterations, info).
        method: the method name.
        modality: "MR" or "CT".
        options: the options used.
        seconds: wall-clock time of the method.
        std_volume: per-voxel standard deviation in the same geometry, for methods that
            return one (``output.info["std_image"]``, e.g. posterior sampling), else None.
    """

    volume: Volume
    output: ReconOutput
    method: str
    modality: str
    options: ReconOptions
    seconds: float
    std_volume: Volume | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def residual(self) -> float:
        """Data-consistency residual ``||M(A x) - y|| / ||y||``."""
        return self.output.residual


def reconstruction_volume(measurement: Measurement, image: np.ndarray, method: str,
                          info: dict[str, Any] | None = None) -> Volume:
    """Wrap ``image`` (I, J, K) as a Volume in ``measurement``'s reference geometry.

    The series description becomes "<reference description> (medrecon <method>)"; ``meta``
    records the method and the scalar entries of ``info`` (lam, iterations, residual, ...).
    """
    ref = measurement.reference
    base = ref.series_description.strip()
    description = f"{base} (medrecon {method})" if base else f"medrecon {method}"
    scalars = {k: v for k, v in (info or {}).items()
               if isinstance(v, int | float | str | bool) or v is None}
    return ref.volume(image, series_description=description[:64],
                      reconstruction={"method": method, **scalars})


def reconstruct(measurement: Measurement, method: str,
                options: ReconOptions | None = None) -> ReconstructionResult:
    """Reconstruct ``measurement`` with the classical ``method``.

    Args:
        measurement: an MR or CT measurement (from :func:`~medrecon.io.measurement.read_measurement`
            or :func:`~medrecon.simulate.simulate`).
        method: a method registered for the measurement's modality, e.g. "cg-sense".
        options: lam, iterations, tol, device, progress and method-specific extras.

    Raises:
        InputError: the method is unknown for the modality, or the device is unavailable.
    """
    import torch

    options = options or ReconOptions()
    fn = get_method(measurement.modality, method)
    device = resolve_device(options.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        output = fn(measurement, options, device)
    seconds = time.perf_counter() - t0
    info = {"residual": output.residual, "iterations": output.iterations,
            **{k: output.info[k] for k in ("lam", "converged") if k in output.info}}
    volume = reconstruction_volume(measurement, output.image, method, info)
    std = output.info.get("std_image")
    std_volume = None
    if isinstance(std, np.ndarray) and std.shape == volume.shape:
        std_volume = reconstruction_volume(measurement, std, f"{method} std", info)
    return ReconstructionResult(volume=volume, output=output, method=method.lower(),
                                modality=measurement.modality, options=options,
                                seconds=seconds, std_volume=std_volume,
                                meta={"device": str(device)})
