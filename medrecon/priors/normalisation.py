"""Intensity mapping between physical units and the prior's model space.

Both maps are *linear* (no offset) in the quantity the measurement operators act on, so data
consistency stays linear in model space, and both send background/air to 0 and typical tissue
into (0, 1]:

* MR (magnitude prior): x_model = |x| / s, where s is a robust scale of the volume, by default
  its 99.5th percentile of magnitudes inside the head (voxels above 5 % of the maximum). For
  complex MRI data the prior acts on the magnitude; samplers keep the phase of their data-
  consistent estimate (or of the zero-filled reconstruction) and apply the prior to |x|.
* CT: x_model = (HU - hu_min) / (hu_max - hu_min), with the window [hu_min, hu_max] =
  [-1000, 2000] HU by default, i.e. x_model = 0 for air, 1/3 for water, 1 for dense bone.
  Since attenuation mu = mu_water (1 + HU / 1000), x_model = mu / (3 mu_water) for the default
  window: proportional to attenuation. Values outside the window are not clipped by the map.

The mapping travels inside every checkpoint (``to_dict``/``from_dict``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from medrecon.errors import ConfigError, InputError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

MODALITY_IDS: dict[str, int] = {"MR": 0, "CT": 1}


def modality_id(modality: str) -> int:
    """Class label of a modality code ("MR" -> 0, "CT" -> 1)."""
    try:
        return MODALITY_IDS[modality.upper()]
    except KeyError:
        raise InputError(
            f"Modality {modality!r} is not supported by the prior; use MR or CT."
        ) from None


@dataclass(frozen=True)
class Normalisation:
    """Per-modality linear maps to model space (see module docstring).

    Attributes:
        mr_percentile: percentile of in-head magnitudes that maps to 1.0 for MR.
        mr_foreground_fraction: voxels above this fraction of the maximum count as "in head"
            when computing the MR percentile.
        ct_hu_min, ct_hu_max: CT window in HU mapped linearly to [0, 1].
    """

    mr_percentile: float = 99.5
    mr_foreground_fraction: float = 0.05
    ct_hu_min: float = -1000.0
    ct_hu_max: float = 2000.0

    def __post_init__(self) -> None:
        if not 50.0 <= self.mr_percentile <= 100.0:
            raise ConfigError("normalisation.mr_percentile must lie in [50, 100].")
        if not self.ct_hu_min < self.ct_hu_max:
            raise ConfigError("normalisation.ct_hu_min must be below ct_hu_max.")

    # -- scale ------------------------------------------------------------------------------
    def mr_scale(self, data: np.ndarray | torch.Tensor) -> float:
        """Robust MR scale s: the ``mr_percentile`` of |data| over the foreground (> 0)."""
        mag = np.abs(data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else data)
        mag = np.asarray(mag, dtype=np.float64).ravel()
        top = float(mag.max()) if mag.size else 0.0
        if top <= 0:
            return 1.0
        fg = mag[mag > self.mr_foreground_fraction * top]
        s = float(np.percentile(fg, self.mr_percentile))
        return s if s > 0 else top

    # -- maps -------------------------------------------------------------------------------
    def to_model(self, x: ArrayT, modality: str, scale: float | None = None) -> ArrayT:
        """Physical units -> model space. MR: |x| / scale (scale from :meth:`mr_scale` if None);
        CT: (HU - hu_min) / (hu_max - hu_min). Works on numpy arrays and torch tensors."""
        m = modality.upper()
        if m == "MR":
            s = self.mr_scale(x) if scale is None else float(scale)
            return abs(x) / s
        if m == "CT":
            return (x - self.ct_hu_min) / (self.ct_hu_max - self.ct_hu_min)
        modality_id(m)  # raises the user-facing error
        raise AssertionError("unreachable")

    def from_model(self, y: ArrayT, modality: str, scale: float | None = None) -> ArrayT:
        """Model space -> physical units (MR: y * scale, scale required; CT: HU)."""
        m = modality.upper()
        if m == "MR":
            if scale is None:
                raise ValueError("MR from_model needs the scale used by to_model")
            return y * float(scale)
        if m == "CT":
            return y * (self.ct_hu_max - self.ct_hu_min) + self.ct_hu_min
        modality_id(m)
        raise AssertionError("unreachable")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalisation:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"Unknown normalisation option(s): {', '.join(sorted(unknown))}.")
        return cls(**d)
