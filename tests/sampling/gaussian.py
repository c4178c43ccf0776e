"""A Gaussian prior with its exact denoiser, and the closed-form linear-Gaussian posterior.

These are the analytic references the samplers are tested against (DESIGN convention 7): for a
prior ``x ~ N(mu, Sigma)`` in R^n and the VE noising ``x_t = x + sigma * eps`` the minimum
mean-square-error denoiser is exactly

    D(x_t, sigma) = E[x | x_t] = mu + Sigma (Sigma + sigma^2 I)^-1 (x_t - mu),

and for a measurement ``y = A x + n`` with ``n ~ N(0, sigma_y^2 I)`` (per real component) the
posterior is Gaussian with

    Sigma_post = (Sigma^-1 + Re(A^H A) / sigma_y^2)^-1,
    mu_post    = Sigma_post (Sigma^-1 mu + Re(A^H y) / sigma_y^2).

Everything works on flat vectors: a batch of states has shape (B, n). ``MatrixOperator`` wraps
a dense matrix as a :class:`~medrecon.operators.base.LinearOperator` so the samplers' data
consistency can run on it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medrecon.operators.base import LinearOperator

__all__ = ["GaussianPrior", "MatrixOperator", "gaussian_posterior", "whitened_moment_errors"]


class MatrixOperator(LinearOperator):
    """A dense matrix ``A`` (m, n) as a linear operator on vectors of shape (..., n)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2D, got shape {tuple(matrix.shape)}")
        super().__init__((matrix.shape[1],), (matrix.shape[0],))
        self.matrix = matrix

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.matrix.dtype) @ self.matrix.T

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y.to(self.matrix.dtype) @ self.matrix.conj()


@dataclass
class GaussianPrior:
    """``N(mu, Sigma)`` on R^n with its exact MMSE denoiser.

    Attributes:
        mean: (n,) prior mean.
        cov: (n, n) symmetric positive-definite prior covariance.
    """

    mean: torch.Tensor
    cov: torch.Tensor

    def __post_init__(self) -> None:
        evals, evecs = torch.linalg.eigh(self.cov)
        if float(evals.min()) <= 0:
            raise ValueError("prior covariance must be positive definite")
        self._evals, self._evecs = evals, evecs

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Exact ``E[x0 | x_t = x]`` for noise level ``sigma``.

        Args:
            x: (B, n) noisy states.
            sigma: (B,) or scalar noise standard deviation.
        Returns:
            (B, n) posterior means mu + U diag(l / (l + sigma^2)) U^T (x - mu).
        """
        sigma_t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1)
        coeff = (x - self.mean) @ self._evecs  # (B, n) in the eigenbasis
        gain = self._evals / (self._evals + sigma_t**2)  # (B or 1, n)
        return self.mean + (coeff * gain) @ self._evecs.T

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, dim) exact prior samples."""
        z = torch.randn(n, self.dim, generator=generator, dtype=self.mean.dtype)
        return self.mean + (z * self._evals.sqrt()) @ self._evecs.T


def gaussian_posterior(prior: GaussianPrior, matrix: torch.Tensor, y: torch.Tensor,
                       noise_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form posterior ``(mu_post (n,), Sigma_post (n, n))`` of a real x given y = A x + n.

    ``noise_std`` is the standard deviation of each real component of ``n`` (real and imaginary
    parts separately for complex ``A``); it must be positive (a noiseless posterior is
    degenerate: use the projection formula instead).
    """
    if noise_std <= 0:
        raise ValueError("gaussian_posterior needs noise_std > 0")
    prec_prior = torch.linalg.inv(prior.cov)
    ata = (matrix.conj().T @ matrix).real
    aty = (matrix.conj().T @ y).real
    prec = prec_prior + ata / noise_std**2
    cov = torch.linalg.inv(prec)
    cov = 0.5 * (cov + cov.T)
    mean = cov @ (prec_prior @ prior.mean + aty / noise_std**2)
    return mean, cov


def whitened_moment_errors(samples: torch.Tensor, mean: torch.Tensor,
                           cov: torch.Tensor) -> tuple[float, float]:
    """Scale-free distances between the empirical moments of ``samples`` and (mean, cov).

    With ``cov = L L^T``: ``mean_err = |L^-1 (m_hat - mean)|`` and
    ``cov_err = |L^-1 C_hat L^-T - I|_F``. For N exact samples in dimension n these are
    Monte-Carlo noise of size about sqrt(n / N) and sqrt(n (n + 1) / N).

    Args:
        samples: (N, n).
    """
    chol = torch.linalg.cholesky(cov)
    d = samples - mean
    w = torch.linalg.solve_triangular(chol, d.T, upper=False).T  # whitened samples (N, n)
    m = w.mean(dim=0)
    c = torch.cov(w.T)
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    return float(torch.linalg.vector_norm(m)), float(torch.linalg.matrix_norm(c - eye))
