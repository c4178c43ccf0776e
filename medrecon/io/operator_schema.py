"""The measurement file's ``operator`` descriptions: what a file says about its forward model.

A measurement file (:mod:`medrecon.io.measurement`, layout in ``docs/formats.md``) stores, next to
the data, a JSON description of the operator that produced it: for MR the SENSE model's axes and
FFT convention, for CT the acquisition geometry, image grid and HU mapping. This module writes
those descriptions; it is plain data (no physics), so ``io`` needs nothing from
:mod:`medrecon.operators` (a CT geometry arrives as the dict of its ``to_dict()``, or as any
object that has one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from medrecon.intensity import EFFECTIVE_ENERGY_KEV, MU_WATER_PER_MM

__all__ = [
    "MRI_FFT_CONVENTION",
    "ct_operator_description",
    "mri_operator_description",
]

#: Value of ``operator["fft"]`` for MRI: the centred orthonormal FFT of
#: :mod:`medrecon.operators.functional.fft`.
MRI_FFT_CONVENTION = "centred-orthonormal"


class _GeometryLike(Protocol):
    """Anything describing itself as a CT geometry dict (e.g. ``CTGeometry``)."""

    def to_dict(self) -> dict[str, Any]: ...


def mri_operator_description(image_shape: tuple[int, int, int], n_coils: int,
                             dims: str) -> dict[str, Any]:
    """The ``operator`` dict of an MR measurement (see docs/formats.md)."""
    three_d = dims == "3d"
    return {
        "kind": "sense",
        "fft": MRI_FFT_CONVENTION,
        "fft_dims": [0, 1, 2] if three_d else [0, 1],
        "dims": "3d" if three_d else "2d",
        "image_shape": list(image_shape),
        "kspace_shape": [n_coils, *image_shape],
        "axes": (["coil", "readout (I)", "phase encode 1 (J)", "phase encode 2 (K)"]
                 if three_d else ["coil", "readout (I)", "phase encode (J)", "slice (K)"]),
    }


def ct_operator_description(geometry: _GeometryLike | Mapping[str, Any],
                            volume_shape: Sequence[int],
                            spacing_mm: Sequence[float]) -> dict[str, Any]:
    """The measurement file's ``operator`` entry for a CT sinogram (see docs/formats.md).

    ``{"kind": "ct", "geometry": {...CTGeometry.to_dict()...}, "image_shape": [I, J, K],
    "spacing_mm": [s_i, s_j, s_k], "mu_water_per_mm": ..., "effective_energy_kev": ...,
    "data": "line integrals of mu", "projector": "ray-driven trilinear"}``.
    """
    gdict = dict(geometry) if isinstance(geometry, Mapping) else geometry.to_dict()
    return {
        "kind": "ct",
        "geometry": gdict,
        "image_shape": [int(n) for n in volume_shape],
        "spacing_mm": [float(s) for s in spacing_mm],
        "mu_water_per_mm": float(gdict.get("mu_water_per_mm", MU_WATER_PER_MM)),
        "effective_energy_kev": float(gdict.get("effective_energy_kev", EFFECTIVE_ENERGY_KEV)),
        "data": "line integrals of the linear attenuation (dimensionless)",
        "projector": "ray-driven, trilinear/bilinear interpolation, matched adjoint",
    }
