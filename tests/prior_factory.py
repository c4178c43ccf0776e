"""A tiny randomly initialised prior, exported exactly like a trained one, for fast tests."""

from __future__ import annotations

from pathlib import Path

import torch


def export_tiny_prior(directory: Path, name: str = "tiny", patch: int = 8,
                      spacing_mm: float = 2.0, spacing_embed: int = 0,
                      spacing_range_mm: tuple[float, float] | None = None) -> Path:
    """Write a one-level MONAI U-Net prior (random weights) as a real prior checkpoint;
    ``spacing_embed > 0`` gives it a voxel-size input (its output layer random too, so that the
    voxel size changes the output), ``spacing_range_mm`` a recorded trained range."""
    from medrecon.priors.checkpoint import export_prior
    from medrecon.priors.config import DenoiserConfig
    from medrecon.priors.denoiser import EDMDenoiser
    from medrecon.priors.network import NetworkConfig, build_network
    from medrecon.priors.normalisation import Normalisation

    torch.manual_seed(0)
    net_cfg = NetworkConfig(channels=(8,), num_res_blocks=(1,), attention_levels=(False,),
                            num_head_channels=8, norm_num_groups=4, num_modalities=2,
                            position_channels=3, spacing_embed=spacing_embed)
    den_cfg = DenoiserConfig()
    den = EDMDenoiser(build_network(net_cfg), sigma_data=den_cfg.sigma_data,
                      sigma_min=den_cfg.sigma_min, sigma_max=den_cfg.sigma_max,
                      uses_position=True, num_modalities=2, uses_spacing=spacing_embed > 0)
    if spacing_embed:
        torch.nn.init.normal_(den.network.class_embedding.spacing[2].weight, std=0.5)
    info = {
        "network": net_cfg.to_dict(),
        "denoiser": {k: getattr(den_cfg, k) for k in ("sigma_data", "sigma_min", "sigma_max",
                                                      "p_mean", "p_std", "noise_embed_scale")},
        "normalisation": Normalisation().to_dict(),
        "modalities": ["MR", "CT"],
        "patch_size": [patch] * 3,
        "spacing_mm": [spacing_mm] * 3,
        "uses_position": True,
        "parameters": sum(p.numel() for p in den.parameters()),
        "training": {"steps": 0, "source": "random weights (test fixture)", "seed": 0},
    }
    if spacing_range_mm is not None:
        info["spacing_range_mm"] = list(spacing_range_mm)
    return export_prior(directory, name, den.state_dict(), info)


def export_broken_priors(directory: Path) -> Path:
    """``directory`` with good/ and three broken priors — corrupt/ (NAME.json not JSON),
    missing/ (no weights file), trunc/ (weights cut short) — and model.bin (binary bytes)."""
    for name in ("good", "corrupt", "missing", "trunc"):
        export_tiny_prior(directory / name, name=name)
    (directory / "corrupt" / "corrupt.json").write_text('{"format": "medrecon-prior", "name": ')
    (directory / "missing" / "missing.safetensors").unlink()
    weights = directory / "trunc" / "trunc.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    (directory / "model.bin").write_bytes(bytes(range(256)) * 8)
    return directory
