"""Fixtures for the sampling tests: a tiny exported prior and tiny MR/CT measurements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medrecon.io.volume import Volume


def _export_tiny_prior(directory: Path) -> Path:
    """A one-level MONAI U-Net prior with random weights, written as a real prior checkpoint."""
    from medrecon.priors.checkpoint import export_prior
    from medrecon.priors.config import DenoiserConfig
    from medrecon.priors.denoiser import EDMDenoiser
    from medrecon.priors.network import NetworkConfig, build_network
    from medrecon.priors.normalisation import Normalisation

    torch.manual_seed(0)
    net_cfg = NetworkConfig(channels=(8,), num_res_blocks=(1,), attention_levels=(False,),
                            num_head_channels=8, norm_num_groups=4, num_modalities=2,
                            position_channels=3)
    den_cfg = DenoiserConfig()
    den = EDMDenoiser(build_network(net_cfg), sigma_data=den_cfg.sigma_data,
                      sigma_min=den_cfg.sigma_min, sigma_max=den_cfg.sigma_max,
                      uses_position=True, num_modalities=2)
    info = {
        "network": net_cfg.to_dict(),
        "denoiser": {k: getattr(den_cfg, k) for k in ("sigma_data", "sigma_min", "sigma_max",
                                                      "p_mean", "p_std", "noise_embed_scale")},
        "normalisation": Normalisation().to_dict(),
        "modalities": ["MR", "CT"],
        "patch_size": [8, 8, 8],
        "spacing_mm": [2.0, 2.0, 2.0],
        "uses_position": True,
        "parameters": sum(p.numel() for p in den.parameters()),
        "training": {"steps": 0, "source": "random weights (test fixture)", "seed": 0},
    }
    return export_prior(directory, "tiny", den.state_dict(), info)


@pytest.fixture(scope="session")
def tiny_prior_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export_tiny_prior(tmp_path_factory.mktemp("prior"))


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
    cfg = SimulationConfig(modality="ct", seed=2, ct=CTSettings(views=20))
    return simulate(vol, cfg), vol
