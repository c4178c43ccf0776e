"""Fixtures for the sampling tests: a tiny exported prior and tiny MR/CT measurements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prior_factory import export_tiny_prior

from medrecon.io.volume import Volume


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every sampling test runs torch on one thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture(scope="session")
def tiny_prior_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_prior(tmp_path_factory.mktemp("prior"))


def _head(shape: tuple[int, int, int]) -> np.ndarray:
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(i**2 + j**2 + k**2)
    return (r < 0.8).astype(np.float32) * (1.0 + 0.5 * (np.sqrt((i - 0.2)**2 + j**2 + k**2) < 0.3))


@pytest.fixture(scope="session")
def mr_measurement():
    from medrecon.simulate import MRISettings, SimulationConfig, simulate

    shape = (12, 10, 9)
    vol = Volume(_head(shape) * 100.0, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR")
    cfg = SimulationConfig(modality="mri", seed=1,
                           mri=MRISettings(coils=2, acceleration=2.0, calibration=4, snr=40.0,
                                           coil_model="birdcage"))
    return simulate(vol, cfg), vol


@pytest.fixture(scope="session")
def ct_measurement():
    from medrecon.simulate import CTSettings, SimulationConfig, simulate

    shape = (12, 12, 3)
    hu = _head(shape) * 1000.0 - 1000.0  # air -1000, object 0, insert 500
    vol = Volume(hu, np.diag([2.0, 2.0, 2.0, 1.0]), modality="CT", units="HU")
    cfg = SimulationConfig(modality="ct", seed=2, ct=CTSettings(views=20, dose_i0=None))
    return simulate(vol, cfg), vol
