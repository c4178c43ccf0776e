"""Small analytic volumes shared by the guard's tests."""

from __future__ import annotations

import numpy as np


def blob_head(shape: tuple[int, int, int]) -> np.ndarray:
    """A head-like float32 volume in [0, 1.9]: a ball of radius 0.8 (of the half-extent) with a
    brighter off-centre inner ball and a bright band across axis 1; zero outside."""
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(i**2 + j**2 + k**2)
    inner = np.sqrt((i - 0.2) ** 2 + j**2 + k**2) < 0.35
    return ((r < 0.8) * (1.0 + 0.6 * inner + 0.3 * (np.abs(j) < 0.15))).astype(np.float32)
