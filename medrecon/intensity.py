"""CT intensities: Hounsfield units <-> linear attenuation coefficients.

The CT operators work on the linear attenuation coefficient mu in 1/mm (line integrals of mu are
dimensionless); volumes on disk and reconstructions shown to users are in Hounsfield units.
The mapping is the definition of the HU scale at one effective (monoenergetic) energy::

    HU = 1000 (mu - mu_water) / mu_water          mu = mu_water (1 + HU / 1000)

with ``mu_water`` = :data:`MU_WATER_PER_MM` = 0.0193 / mm, water's attenuation at an effective
energy of about 70 keV (NIST XCOM: mu/rho = 0.1929 cm^2/g at 70 keV, rho = 1 g/cm^3), typical of
a 120 kVp clinical spectrum. Air is -1000 HU (mu = 0); values below -1000 HU (noise, padding
such as -2048 or -3024 outside the scan circle) would mean negative attenuation and are clipped
to mu = 0 on the way in; on the way out nothing is clipped, so noisy reconstructions keep their
(possibly below -1000) values.

Functions accept numpy arrays, torch tensors or floats and return the same kind, except
:func:`looks_like_hu`, which tells from the values alone whether an unlabelled volume (a NIfTI
file from another tool carries no modality) is CT in HU.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

__all__ = ["MU_WATER_PER_MM", "EFFECTIVE_ENERGY_KEV", "HU_AIR", "hu_to_mu", "looks_like_hu",
           "mu_to_hu"]

#: Linear attenuation of water at :data:`EFFECTIVE_ENERGY_KEV`, in 1/mm.
MU_WATER_PER_MM: float = 0.0193
#: The effective energy that :data:`MU_WATER_PER_MM` belongs to, in keV.
EFFECTIVE_ENERGY_KEV: float = 70.0
#: Air on the HU scale (mu = 0).
HU_AIR: float = -1000.0

T = TypeVar("T")

#: HU values this close to air (-1000 +- 100; scanners store air as -1000 or -1024) count as air.
AIR_BAND_HU: tuple[float, float] = (-1100.0, -900.0)
#: Fraction of voxels that must lie in :data:`AIR_BAND_HU` for a volume to hold air in HU. MR
#: images with a few negative voxels (interpolation ringing) have far fewer; CT has air around
#: the patient or in the sinuses.
AIR_FRACTION = 0.005
#: A maximum at or above this is bone (cortical bone is > 300 HU at any CT energy).
BONE_HU = 300.0
#: Above this 99th percentile the values are not HU (e.g. Siemens phase images span +-4096).
MAX_P99_HU = 3000.0


def hu_to_mu(hu: T, mu_water: float = MU_WATER_PER_MM, clip_air: bool = True) -> T:
    """Linear attenuation in 1/mm from Hounsfield units: ``mu_water * (1 + HU / 1000)``.

    Args:
        hu: HU values (array, tensor or float).
        mu_water: water's attenuation in 1/mm at the effective energy.
        clip_air: clip the result at 0 (HU below -1000 would be negative attenuation).
    """
    if mu_water <= 0:
        raise ValueError(f"mu_water must be positive, got {mu_water}")
    mu = mu_water * (1.0 + hu / 1000.0)  # type: ignore[operator]
    if not clip_air:
        return mu  # type: ignore[no-any-return]
    if isinstance(mu, np.ndarray):
        return np.maximum(mu, 0.0)  # type: ignore[return-value]
    if hasattr(mu, "clamp"):
        return mu.clamp(min=0.0)  # type: ignore[no-any-return]
    return max(float(mu), 0.0)  # type: ignore[return-value]


def mu_to_hu(mu: T, mu_water: float = MU_WATER_PER_MM) -> T:
    """Hounsfield units from linear attenuation in 1/mm: ``1000 (mu - mu_water) / mu_water``."""
    if mu_water <= 0:
        raise ValueError(f"mu_water must be positive, got {mu_water}")
    return 1000.0 * (mu - mu_water) / mu_water  # type: ignore[operator,no-any-return]


def looks_like_hu(data: np.ndarray, need_bone: bool = True) -> bool:
    """True when the values of an unlabelled volume are CT Hounsfield units.

    The evidence is air and, with ``need_bone``, bone: at least :data:`AIR_FRACTION` of the
    finite voxels lie within 100 HU of air (-1000), the maximum reaches :data:`BONE_HU` and the
    99th percentile stays below :data:`MAX_P99_HU`. MR magnitude images (including those with
    a few slightly negative voxels from resampling) hold no such band of air values. Large
    volumes are judged on an evenly strided subsample of about a million voxels.

    Args:
        data: the voxel values, any shape.
        need_bone: also require bone (False: air alone suffices, for warnings).
    """
    flat = np.asarray(data).ravel()
    step = max(1, flat.size // 1_000_000)
    values = flat[::step].astype(np.float64, copy=False)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return False
    lo, hi = AIR_BAND_HU
    air = float(np.count_nonzero((values >= lo) & (values <= hi))) / values.size
    if air < AIR_FRACTION:
        return False
    if not need_bone:
        return True
    return float(values.max()) >= BONE_HU and float(np.percentile(values, 99)) < MAX_P99_HU
