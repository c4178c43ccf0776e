"""Posterior samplers: short pure loops over a denoiser, a sigma schedule and a generator.

All samplers use the variance-exploding (EDM) formulation ``x_t = x0 + sigma_t * eps`` and a
denoiser ``D(x, sigma) -> x0_hat`` with ``x`` of shape (B, *S) (B independent chains; any
trailing shape) and ``sigma`` of shape (B,). Data consistency never appears as a branch in
here: it arrives as a conditional denoiser (``consistency.ProximalDenoiser``), a step-level
correction ``dc(x, sigma, generator)`` or a differentiable residual for DPS.

* :func:`ddim` — DDIM with stochasticity ``eta`` (Song et al. 2021). Run on the proximal
  conditional denoiser it is DDS (Chung, Lee & Ye, ICLR 2024): denoise, a few CG iterations on
  the data term around ``x0_hat``, re-noise to the next level with ``eta``.
* :func:`diffpir` — DiffPIR (Zhu et al., CVPRW 2023): the same denoise / proximal step with
  DiffPIR's weight, then re-noising that mixes the estimated noise and fresh noise with ``zeta``.
* :func:`predictor_corrector` — reverse-diffusion predictor + Langevin corrector with a
  data-consistency step after each (Song et al., ICLR 2022; score-MRI, Chung & Ye 2022).
* :func:`dps` — diffusion posterior sampling (Chung et al., ICLR 2023): the gradient of the
  measurement residual of ``x0_hat`` taken through the denoiser by autograd, with gradient
  checkpointing to bound memory.

Every loop returns the final clean estimate (the schedule must end with sigma = 0) and calls
``callback(step, sigma, x, x0_hat)`` after each step for progress reporting.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = [
    "Callback",
    "Denoiser",
    "ddim",
    "ddim_step",
    "diffpir",
    "dps",
    "edm_sigmas",
    "initial_state",
    "predictor_corrector",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]
StepDC = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]

try:  # the prior owns the schedule; keep the samplers importable without it
    from medrecon.priors.schedules import edm_sigmas
except ImportError:  # pragma: no cover - only when priors is absent

    def edm_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   rho: float = 7.0, append_zero: bool = True,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """EDM rho-schedule (Karras et al. 2022), decreasing, with a final 0."""
        i = torch.arange(num_steps, dtype=torch.float64)
        a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
        s = (a + i / max(num_steps - 1, 1) * (b - a)) ** rho
        if append_zero:
            s = torch.cat([s, s.new_zeros(1)])
        return s.to(device=device, dtype=torch.float32)


def _randn(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device."""
    z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=generator.device)
    return z.to(like.device)


def _bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _sig(sigma: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)


def _check_schedule(sigmas: torch.Tensor) -> list[float]:
    s = [float(v) for v in sigmas]
    if len(s) < 2 or s[-1] != 0.0 or any(a <= b for a, b in zip(s[:-1], s[1:], strict=False)):
        raise ValueError("sigmas must be strictly decreasing and end with 0")
    return s


def initial_state(shape: tuple[int, ...], sigma_max: float, generator: torch.Generator,
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                  mean: torch.Tensor | None = None) -> torch.Tensor:
    """``x_T = mean + sigma_max * eps`` (mean 0 by default), shape ``shape`` = (B, *S)."""
    x = torch.randn(shape, generator=generator, dtype=dtype, device=generator.device)
    x = sigma_max * x.to(device)
    return x if mean is None else x + mean


def ddim_step(x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float, eta: float,
              generator: torch.Generator) -> torch.Tensor:
    """One DDIM step in VE form from level ``sigma`` to ``sigma_next``.

    ``x_next = x0 + sqrt(sigma_next^2 - c^2) * eps_hat + c * z`` with ``eps_hat = (x - x0) /
    sigma`` and ``c = eta * sigma_next * sqrt(1 - sigma_next^2 / sigma^2)``: eta = 0 is the
    deterministic DDIM (probability-flow) step, eta = 1 the ancestral (DDPM) step.
    """
    if sigma_next == 0.0:
        return x0
    c = eta * sigma_next * math.sqrt(max(0.0, 1.0 - (sigma_next / sigma) ** 2))
    eps_hat = (x - x0) / sigma
    out = x0 + math.sqrt(max(0.0, sigma_next**2 - c**2)) * eps_hat
    return out + c * _randn(x, generator) if c > 0 else out


def ddim(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator,
         eta: float = 0.85, callback: Callback | None = None) -> torch.Tensor:
    """DDIM sampling; with a proximal conditional denoiser this is DDS.

    Args:
        denoiser: D(x (B, *S), sigma (B,)) -> x0_hat (B, *S); conditional for posterior sampling.
        x: (B, *S) initial state at level ``sigmas[0]``.
        sigmas: (N + 1,) decreasing noise levels ending with 0.
        eta: re-noising stochasticity in [0, 1] (DDS uses 0.85 by default).
    Returns:
        (B, *S) final sample.
    """
    s = _check_schedule(sigmas)
    for i in range(len(s) - 1):
        x0 = denoiser(x, _sig(s[i], x))
        x = ddim_step(x, x0, s[i], s[i + 1], eta, generator)
        if callback is not None:
            callback(i, s[i], x, x0)
    return x


def diffpir(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
            generator: torch.Generator, zeta: float = 0.3,
            callback: Callback | None = None) -> torch.Tensor:
    """DiffPIR sampling (Zhu et al. 2023) in VE form.

    With ``x0 = D_y(x_t)`` the data-consistent estimate (pass a ``ProximalDenoiser`` built with
    ``consistency.diffpir_variance``) and ``eps_hat = (x_t - x0) / sigma_t``:

        x_next = x0 + sigma_next * (sqrt(1 - zeta) * eps_hat + sqrt(zeta) * z),

    so ``zeta = 0`` is deterministic and ``zeta = 1`` re-noises with fresh noise only.
    """
    if not 0.0 <= zeta <= 1.0:
        raise ValueError("zeta must lie in [0, 1]")
    s = _check_schedule(sigmas)
    for i in range(len(s) - 1):
        x0 = denoiser(x, _sig(s[i], x))
        if s[i + 1] == 0.0:
            x = x0
        else:
            eps_hat = (x - x0) / s[i]
            noise = _randn(x, generator) if zeta > 0 else torch.zeros_like(x)
            x = x0 + s[i + 1] * (math.sqrt(1 - zeta) * eps_hat + math.sqrt(zeta) * noise)
        if callback is not None:
            callback(i, s[i], x, x0)
    return x


def predictor_corrector(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                        generator: torch.Generator, dc: StepDC | None = None,
                        corrector_steps: int = 1, snr: float = 0.16,
                        callback: Callback | None = None) -> torch.Tensor:
    """Reverse-diffusion predictor + Langevin corrector, each followed by ``dc``.

    With the score ``s(x, sigma) = (D(x, sigma) - x) / sigma^2``:

    * predictor (Euler-Maruyama of the reverse VE SDE):
      ``x <- x + (sigma^2 - sigma_next^2) s(x, sigma) + sqrt(sigma^2 - sigma_next^2) z``;
      the last step (to sigma = 0) is the noise-free Tweedie step ``x <- D(x, sigma)``;
    * corrector (unadjusted Langevin at ``sigma_next``): ``x <- x + e s + sqrt(2 e) z`` with
      ``e = 2 (snr mean|z| / mean|s|)^2``, norms averaged over the batch (Song et al. 2021);
    * ``dc(x, sigma_next, generator)`` after the predictor and after every corrector step,
      e.g. ``LinearProblem.noised_projection`` (Song et al. 2022) — at sigma = 0 it must return
      the final data-consistent image.
    """
    s = _check_schedule(sigmas)
    for i in range(len(s) - 1):
        sig, nxt = s[i], s[i + 1]
        x0 = denoiser(x, _sig(sig, x))
        if nxt == 0.0:
            x = x0
        else:
            x = x + (1.0 - nxt**2 / sig**2) * (x0 - x)  # (sig^2 - nxt^2) * score
            x = x + math.sqrt(sig**2 - nxt**2) * _randn(x, generator)
        if dc is not None:
            x = dc(x, _sig(nxt, x), generator)
        if nxt > 0.0:
            for _ in range(corrector_steps):
                score = (denoiser(x, _sig(nxt, x)) - x) / nxt**2
                z = _randn(x, generator)
                # Batch-mean norms as in Song et al.'s code: a step that depends on each
                # chain's own state is not a Langevin step of a fixed target (heavy tails).
                zn = torch.linalg.vector_norm(z.reshape(z.shape[0], -1), dim=1).mean()
                sn = torch.linalg.vector_norm(score.reshape(z.shape[0], -1), dim=1).mean()
                step = 2.0 * (snr * zn / sn.clamp_min(1e-30)) ** 2
                x = x + step * score + torch.sqrt(2.0 * step) * z
                if dc is not None:
                    x = dc(x, _sig(nxt, x), generator)
        if callback is not None:
            callback(i, sig, x, x0)
    return x


def dps(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator,
        residual_norm: Callable[[torch.Tensor], torch.Tensor], zeta: float = 1.0,
        eta: float = 1.0, checkpoint: bool = True,
        callback: Callback | None = None) -> torch.Tensor:
    """Diffusion posterior sampling (Chung et al., ICLR 2023) in VE form.

    Each step: ``x0 = D(x_t)``; the unconditional DDIM step (``eta = 1``: ancestral, as in the
    paper) gives ``x'``; then ``x_next = x' - zeta * grad_{x_t} ||y - A x0(x_t)||``, i.e. the
    gradient of the squared residual scaled by ``zeta / ||y - A x0||`` (up to the factor 1/2 of
    the official implementation's normalisation).

    Args:
        residual_norm: x0 (B, *S) -> (B,) ``||y - A x0||`` per chain, differentiable.
        zeta: guidance step size (the problem should be scaled so that ||A|| ~ 1).
        checkpoint: recompute the denoiser in the backward pass instead of storing its
            activations (``torch.utils.checkpoint``): memory of one forward pass, ~1.5x time.
    """
    s = _check_schedule(sigmas)
    for i in range(len(s) - 1):
        x_in = x.detach().requires_grad_(True)
        sig = _sig(s[i], x)
        with torch.enable_grad():
            if checkpoint:
                x0 = _checkpoint(denoiser, x_in, sig, use_reentrant=False)
            else:
                x0 = denoiser(x_in, sig)
            rn = residual_norm(x0)
            (grad,) = torch.autograd.grad(rn.sum(), x_in)
        x0 = x0.detach()
        x = ddim_step(x_in.detach(), x0, s[i], s[i + 1], eta, generator) - zeta * grad
        if callback is not None:
            callback(i, s[i], x, x0)
    return x.detach()
