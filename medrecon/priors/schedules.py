"""Noise levels of the EDM formulation (Karras et al., NeurIPS 2022).

Sampling uses the rho-schedule

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,

i = 0..N-1, followed by sigma_N = 0; training draws ln(sigma) ~ Normal(P_mean, P_std^2).
Sigmas are in model-space intensity units (see :mod:`medrecon.priors.normalisation`).
"""

from __future__ import annotations

import torch


def edm_sigmas(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    append_zero: bool = True,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Decreasing noise levels, shape (num_steps,) or (num_steps + 1,) with a final 0.

    Uses float64 internally so that the first and last entries equal sigma_max and sigma_min
    to float32 precision.
    """
    if num_steps < 1:
        raise ValueError("num_steps must be at least 1")
    if not 0 < sigma_min < sigma_max:
        raise ValueError("need 0 < sigma_min < sigma_max")
    i = torch.arange(num_steps, dtype=torch.float64)
    if num_steps == 1:
        s = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
        s = (a + i / (num_steps - 1) * (b - a)) ** rho
    if append_zero:
        s = torch.cat([s, s.new_zeros(1)])
    return s.to(device=device, dtype=torch.float32)


def sample_training_sigmas(
    n: int,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Log-normal training noise levels: ln(sigma) ~ N(p_mean, p_std^2), shape (n,).

    The draw happens on ``generator``'s device (CPU by default) and is then moved, so the same
    seed gives the same sigmas on every device.
    """
    z = torch.randn(n, generator=generator, dtype=torch.float32)
    return torch.exp(p_mean + p_std * z).to(device)


def sigma_bands(
    edges: tuple[float, ...] = (0.002, 0.02, 0.1, 0.5, 2.0, 80.0),
) -> list[tuple[float, float]]:
    """Consecutive (low, high) sigma intervals used to report losses and PSNR per band."""
    return list(zip(edges[:-1], edges[1:], strict=True))
