"""Complex Gaussian receiver noise for simulated multi-coil k-space.

Noise model
-----------
Each acquired k-space sample of coil ``c`` receives circularly-symmetric complex Gaussian noise
``n_c``; across coils the noise is correlated with covariance ``E[n n^H] = sigma^2 Psi``:

* ``sigma`` is the RMS **complex** noise standard deviation per coil: ``E|n_c|^2 = sigma^2`` when
  ``Psi = I`` (the real and imaginary parts each have standard deviation ``sigma / sqrt(2)``).
  Because the FFT of :mod:`medrecon.operators.functional.fft` is orthonormal, a fully sampled
  coil image has the same per-voxel noise level ``sigma``.
* ``Psi`` (``covariance``, Hermitian positive definite, ``(C, C)``) is rescaled to unit mean
  diagonal so that ``sigma`` keeps that meaning; the noise is coloured as ``n = sigma L z`` with
  ``Psi = L L^H`` (Cholesky) and ``z`` white with ``E|z|^2 = 1``.

SNR
---
``snr`` fixes ``sigma`` from the signal:

    SNR = sqrt(mean |y|^2) / sigma

where the mean runs over *all* entries of the noise-free, **fully sampled** multi-coil k-space
``y`` (every coil, every position). By Parseval this is the RMS coil-image intensity over the field
of view divided by the per-voxel noise standard deviation of a fully sampled coil image, so the
same SNR gives the same noise level whatever mask is used later. :func:`add_noise` therefore takes
the fully sampled k-space and the mask, and returns masked noisy k-space (exact zeros where
nothing was acquired).
"""

from __future__ import annotations

import numpy as np
import torch

from medrecon.errors import InputError

__all__ = ["add_noise", "coil_noise_covariance", "prewhiten", "sigma_for_snr"]


def sigma_for_snr(kspace: torch.Tensor, snr: float) -> float:
    """``sigma = sqrt(mean |kspace|^2) / snr`` for fully sampled, noise-free ``kspace``."""
    if not np.isfinite(snr) or snr <= 0:
        raise InputError(f"The SNR must be a positive number, got {snr}.")
    rms = float(torch.sqrt(torch.mean(torch.abs(kspace).to(torch.float64) ** 2)))
    if rms == 0.0:
        raise InputError("Cannot set noise from an SNR: the k-space signal is zero.")
    return rms / float(snr)


def _normalised_covariance(covariance: torch.Tensor | np.ndarray, n_coils: int,
                           device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Cholesky factor of ``Psi`` rescaled to unit mean diagonal."""
    psi = torch.as_tensor(covariance).to(device=device, dtype=dtype)
    if psi.shape != (n_coils, n_coils):
        raise InputError(
            f"The coil noise covariance must have shape ({n_coils}, {n_coils}) for {n_coils} "
            f"coils, got {tuple(psi.shape)}."
        )
    if not torch.allclose(psi, psi.conj().T, rtol=1e-5, atol=1e-8 * float(psi.abs().max())):
        raise InputError("The coil noise covariance must be Hermitian.")
    psi = psi / torch.mean(torch.diagonal(psi).real)
    chol, info = torch.linalg.cholesky_ex(psi)
    if int(info) != 0:
        raise InputError("The coil noise covariance must be positive definite.")
    return chol


def add_noise(
    kspace: torch.Tensor,
    sigma: float | None = None,
    snr: float | None = None,
    mask: torch.Tensor | np.ndarray | None = None,
    covariance: torch.Tensor | np.ndarray | None = None,
    generator: torch.Generator | int | None = None,
) -> tuple[torch.Tensor, float]:
    """Add complex Gaussian noise to multi-coil k-space; return ``(noisy, sigma)``.

    Parameters
    ----------
    kspace:
        Noise-free complex k-space ``(C, I, J, K)`` (or any ``(C, ...)``), fully sampled when
        ``snr`` is used (see the module docstring for the SNR definition).
    sigma, snr:
        Exactly one: the complex noise standard deviation per coil, or the target SNR.
        ``sigma = 0`` returns the (masked) input unchanged.
    mask:
        Optional sampling mask broadcastable to ``kspace.shape[1:]``; the result is
        ``mask * (kspace + noise)`` so unacquired entries are exact zeros.
    covariance:
        Optional coil noise covariance ``(C, C)`` (rescaled to unit mean diagonal).
    generator:
        A ``torch.Generator`` or an integer seed (a CPU generator). The noise is drawn on the
        generator's device and moved to ``kspace``'s: with a CPU generator a seed gives the
        same noise whatever device holds the k-space (CUDA's generator draws other numbers).
    """
    if (sigma is None) == (snr is None):
        raise InputError("Give exactly one of a noise sigma or a target SNR.")
    if not kspace.is_complex():
        raise InputError("k-space must be complex to add complex Gaussian noise.")
    if sigma is None:
        assert snr is not None
        sigma = sigma_for_snr(kspace, snr)
    elif not np.isfinite(sigma) or sigma < 0:
        raise InputError(f"The noise sigma must be a non-negative number, got {sigma}.")
    sigma = float(sigma)

    weight: torch.Tensor | None = None
    if mask is not None:
        weight = torch.as_tensor(mask, device=kspace.device)
        try:
            torch.broadcast_shapes(weight.shape, kspace.shape[1:])
        except RuntimeError:
            raise InputError(
                f"The sampling mask of shape {tuple(weight.shape)} does not fit k-space of shape "
                f"{tuple(kspace.shape)}."
            ) from None
        weight = (weight != 0).to(kspace.real.dtype)

    if sigma == 0.0:
        return (kspace * weight if weight is not None else kspace.clone()), 0.0

    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    real_dtype = kspace.real.dtype
    draw = generator.device if generator is not None else torch.device("cpu")
    # z: white complex noise with E|z|^2 = 1
    z = torch.complex(
        torch.randn(kspace.shape, generator=generator, dtype=real_dtype, device=draw),
        torch.randn(kspace.shape, generator=generator, dtype=real_dtype, device=draw),
    ).to(kspace.device) * (0.5**0.5)
    if covariance is not None:
        chol = _normalised_covariance(covariance, kspace.shape[0], kspace.device, kspace.dtype)
        z = torch.tensordot(chol, z, dims=([1], [0]))
    noisy = kspace + sigma * z
    if weight is not None:
        noisy = noisy * weight
    return noisy, sigma


def coil_noise_covariance(n_coils: int, correlation: float = 0.15, spread: float = 0.2,
                          seed: int = 0) -> np.ndarray:
    """A realistic simulated coil noise covariance ``(C, C)`` (complex128, unit mean diagonal).

    Coils on a ring couple to their neighbours: ``Psi_ab = g_a g_b correlation^d(a, b)`` with
    ``d`` the ring distance and per-coil gains ``g`` drawn log-normally with ``spread``; a small
    seeded phase on the off-diagonals makes it complex Hermitian.
    """
    if n_coils < 1:
        raise InputError(f"The number of coils must be positive, got {n_coils}.")
    if not 0 <= correlation < 1:
        raise InputError(f"The coil noise correlation must be in [0, 1), got {correlation}.")
    rng = np.random.default_rng(seed)
    idx = np.arange(n_coils)
    d = np.abs(idx[:, None] - idx[None, :])
    d = np.minimum(d, n_coils - d)
    base = correlation ** d.astype(float)
    phase = rng.uniform(-0.3, 0.3, (n_coils, n_coils))
    phase = np.triu(phase, 1)
    phase = phase - phase.T
    psi = base * np.exp(1j * phase)
    # Diagonal dominance guard: shrink off-diagonals until positive definite.
    while np.linalg.eigvalsh(psi).min() <= 1e-6:
        psi = 0.5 * (psi + np.eye(n_coils))
    gain = np.exp(spread * rng.standard_normal(n_coils))
    psi = gain[:, None] * psi * gain[None, :]
    return psi / np.mean(np.diag(psi).real)


def prewhiten(kspace: torch.Tensor, covariance: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Decorrelate coil noise: ``L^{-1} y`` along the coil axis (``Psi = L L^H``, unit mean diag).

    After prewhitening the noise is white with the same ``sigma``; apply the same transform to
    coil maps or data that are combined with the prewhitened k-space.
    """
    chol = _normalised_covariance(covariance, kspace.shape[0], kspace.device, kspace.dtype)
    flat = kspace.reshape(kspace.shape[0], -1)
    return torch.linalg.solve_triangular(chol, flat, upper=False).reshape(kspace.shape)
