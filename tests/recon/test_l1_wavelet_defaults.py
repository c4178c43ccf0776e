"""L1-wavelet's defaults on multi-slice k-space (issue 15, item 3: matching BART ``pics -l1``).

2D multi-slice data get in-plane wavelets, and the wavelet grid is shifted by a seeded random
offset at every iteration (BART's random cycle spinning), reproducibly.
"""

from __future__ import annotations

import numpy as np
import torch

from medrecon.io import Volume
from medrecon.methods import get_method
from medrecon.phantoms import shepp_logan_3d
from medrecon.recon.base import ReconOptions
from medrecon.simulate import MRISettings, SimulationConfig, simulate

CPU = torch.device("cpu")


def _measurement(dims: str):  # noqa: ANN202
    shape = (16, 16, 4)
    mask = "equispaced" if dims == "2d" else "poisson"
    cfg = SimulationConfig(mri=MRISettings(coils=2, acceleration=2.0, calibration=4, mask=mask,
                                           dims=dims, snr=30.0))
    return simulate(Volume(shepp_logan_3d(shape), np.eye(4), modality="MR"), cfg)


def test_multislice_gets_in_plane_wavelets_and_seeded_cycle_spinning() -> None:
    m = _measurement("2d")
    fn = get_method("MR", "l1-wavelet")
    opts = ReconOptions(lam=0.01, iterations=6, tol=0.0)
    one, two = fn(m, opts, CPU), fn(m, opts, CPU)
    assert one.info["wavelet_axes"] == [0, 1] and one.info["cycle_spin"] is True
    np.testing.assert_array_equal(one.image, two.image)  # seeded shifts: reproducible
    fixed = fn(m, ReconOptions(lam=0.01, iterations=6, tol=0.0, extra={"cycle_spin": False}),
               CPU)
    assert fixed.info["cycle_spin"] is False
    assert float(np.abs(fixed.image - one.image).max()) > 1e-4  # the shifts do something
    other = fn(m, ReconOptions(lam=0.01, iterations=6, tol=0.0,
                               extra={"wavelet_axes": [0, 1, 2]}), CPU)
    assert other.info["wavelet_axes"] == [0, 1, 2]


def test_3d_data_keep_3d_wavelets() -> None:
    out = get_method("MR", "l1-wavelet")(_measurement("3d"),
                                         ReconOptions(lam=0.01, iterations=3, tol=0.0), CPU)
    assert out.info["wavelet_axes"] == [0, 1, 2]
