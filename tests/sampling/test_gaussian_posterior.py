"""Samplers against the closed-form posterior of a Gaussian prior with its exact denoiser.

Setting: x in R^4, prior N(mu, s^2 I) with s = 0.5 = the samplers' sigma_data, a random 3x4
operator, measurement noise sigma_y = 0.1, N = 4000 chains run as one batch, EDM schedule
(sigma 80 -> 0.002, rho 7), float64.

Errors are scale-free (``whitened_moment_errors``): |L^-1 (mean - mu_post)| and
|L^-1 C L^-T - I|_F with Sigma_post = L L^T. With 4000 exact samples the Monte-Carlo parts
alone are about sqrt(4/4000) = 0.03 and sqrt(20/4000) = 0.07; the prior itself is 6.5 / 36
away from this posterior, so the bounds below are tight in comparison.

Why each sampler should meet its bound:
* DDS (DDIM on the proximal conditional denoiser): the calibrated proximal weight
  v = c_out(sigma)^2 makes ``D_y(x_t) = E[x0 | x_t, y]`` exact for this prior, so only time
  discretisation is left. Measured at 200 steps: eta = 0 -> (0.027, 0.10), eta = 0.85 ->
  (0.022, 0.16); both shrink with more steps (400 steps: 0.08 / 0.10 covariance).
* PC with the conditional score: exact score, so Euler-Maruyama + Langevin converges; measured
  (0.034, 0.081) at 200 steps.
* PC with Song et al.'s noised projection is exact when the prior is isotropic, A has
  orthonormal rows and the data are noiseless (measured and unmeasured parts decouple); it is
  tested there, on the null-space coordinates, and |A x - y| must vanish.
* DiffPIR re-noises with a fixed fraction zeta of fresh noise, which has no continuous-time
  limit and ignores Cov[x0 | x_t]: its samples are under-dispersed. Measured with the paper's
  weight rho = sigma_y^2 / sigma_t^2, zeta = 0.3, 200 steps: (0.17, 0.32). We test the mean
  tightly-ish and the covariance to the documented gap, and that its variance is not larger
  than the posterior's.
* DPS uses ||y - A x0_hat|| as if x0_hat were exact (it ignores Cov[x0 | x_t]) and a heuristic
  step: it is not a posterior sampler of this model. We test what it honestly does: its mean
  moves most of the way from the prior to the posterior (measured 0.91 vs 6.5 at zeta = 0.1).
"""

from __future__ import annotations

import pytest
import torch

from medrecon.sampling import samplers as S
from medrecon.sampling.consistency import (
    LinearProblem,
    ProximalDenoiser,
    calibrated_variance,
    diffpir_variance,
)
from tests.sampling.gaussian import (
    GaussianPrior,
    MatrixOperator,
    gaussian_posterior,
    whitened_moment_errors,
)

N_CHAINS = 4000
STEPS = 200
SD = 0.5



def _problem(iso: bool = True, noise: float = 0.1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, m = 4, 3
    if iso:
        cov = SD**2 * torch.eye(n, dtype=torch.float64)
    else:
        q = torch.randn(n, n, generator=g, dtype=torch.float64)
        cov = q @ q.T / n * 0.25 + 0.02 * torch.eye(n, dtype=torch.float64)
    mu = 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    prior = GaussianPrior(mu, cov)
    a = torch.randn(m, n, generator=g, dtype=torch.float64) / n**0.5
    x_true = prior.sample(1, g)[0]
    y = a @ x_true + noise * torch.randn(m, generator=g, dtype=torch.float64)
    return prior, a, y


def _run(fn, seed: int = 1, n: int = 4, chains: int = N_CHAINS) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = S.initial_state((chains, n), 80.0, gen, dtype=torch.float64)
    return fn(x, gen)


def _sigmas(steps: int = STEPS) -> torch.Tensor:
    return S.edm_sigmas(steps, 0.002, 80.0).double()


@pytest.mark.parametrize("eta,mean_tol,cov_tol", [(0.0, 0.08, 0.2), (0.85, 0.08, 0.25)])
def test_dds_matches_closed_form_posterior(eta: float, mean_tol: float, cov_tol: float) -> None:
    prior, a, y = _problem()
    mp, cp = gaussian_posterior(prior, a, y, 0.1)
    prob = LinearProblem(MatrixOperator(a), y, noise_std=0.1)
    d_y = ProximalDenoiser(prior.denoiser, prob, calibrated_variance(SD), cg_iters=5, tol=0.0)
    out = _run(lambda x, g: S.ddim(d_y, x, _sigmas(), g, eta=eta))
    mean_err, cov_err = whitened_moment_errors(out, mp, cp)
    assert mean_err < mean_tol
    assert cov_err < cov_tol
    # The prior alone is far away: the test can tell a posterior from a prior.
    assert whitened_moment_errors(prior.sample(N_CHAINS, torch.Generator().manual_seed(3)),
                                  mp, cp)[0] > 3.0


def test_pc_with_conditional_score_matches_posterior() -> None:
    prior, a, y = _problem()
    mp, cp = gaussian_posterior(prior, a, y, 0.1)
    prob = LinearProblem(MatrixOperator(a), y, noise_std=0.1)
    d_y = ProximalDenoiser(prior.denoiser, prob, calibrated_variance(SD), cg_iters=5, tol=0.0)
    out = _run(lambda x, g: S.predictor_corrector(d_y, x, _sigmas(), g, corrector_steps=1))
    mean_err, cov_err = whitened_moment_errors(out, mp, cp)
    assert mean_err < 0.1
    assert cov_err < 0.2


def test_pc_noised_projection_exact_for_orthonormal_rows_noiseless() -> None:
    g = torch.Generator().manual_seed(5)
    n, m = 5, 2
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = q[:m]  # orthonormal rows, not aligned with the coordinate axes
    null = q[m:]  # basis of the null space of a
    mu = 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    prior = GaussianPrior(mu, SD**2 * torch.eye(n, dtype=torch.float64))
    y = a @ prior.sample(1, g)[0]
    prob = LinearProblem(MatrixOperator(a), y, noise_std=0.0)

    def dc(x: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return prob.noised_projection(x, sigma, gen, iters=4)[0]

    out = _run(lambda x, gen: S.predictor_corrector(prior.denoiser, x, _sigmas(), gen, dc=dc),
               n=n)
    # Hard consistency: every sample reproduces the data to rounding error.
    assert float((out @ a.T - y).abs().max()) < 1e-10
    # Unmeasured coordinates follow the prior exactly: N(null mu, s^2 I).
    coords = out @ null.T
    mean_err, cov_err = whitened_moment_errors(coords, null @ mu,
                                               SD**2 * torch.eye(n - m, dtype=torch.float64))
    assert mean_err < 0.08
    assert cov_err < 0.15


def test_diffpir_mean_and_documented_underdispersion() -> None:
    prior, a, y = _problem()
    mp, cp = gaussian_posterior(prior, a, y, 0.1)
    prob = LinearProblem(MatrixOperator(a), y, noise_std=0.1)
    d_y = ProximalDenoiser(prior.denoiser, prob, diffpir_variance(1.0), cg_iters=5, tol=0.0)
    out = _run(lambda x, g: S.diffpir(d_y, x, _sigmas(), g, zeta=0.3))
    mean_err, cov_err = whitened_moment_errors(out, mp, cp)
    assert mean_err < 0.3
    assert cov_err < 0.45
    # Under-dispersed, never over-dispersed: total whitened variance below that of the posterior.
    w = torch.linalg.solve_triangular(torch.linalg.cholesky(cp), (out - mp).T, upper=False)
    assert float(w.var(dim=1).sum()) < 4.0


def test_diffpir_zeta0_with_calibrated_weight_is_deterministic_ddim() -> None:
    prior, a, y = _problem()
    prob = LinearProblem(MatrixOperator(a), y, noise_std=0.1)
    d_y = ProximalDenoiser(prior.denoiser, prob, calibrated_variance(SD), cg_iters=5, tol=0.0)
    sig = _sigmas(20)
    one = _run(lambda x, g: S.diffpir(d_y, x, sig, g, zeta=0.0), chains=16)
    two = _run(lambda x, g: S.ddim(d_y, x, sig, g, eta=0.0), chains=16)
    torch.testing.assert_close(one, two, rtol=1e-12, atol=1e-12)


def test_dps_moves_towards_posterior_but_is_approximate() -> None:
    prior, a, y = _problem()
    mp, cp = gaussian_posterior(prior, a, y, 0.1)
    prob = LinearProblem(MatrixOperator(a), y, noise_std=0.1)
    out = _run(lambda x, g: S.dps(prior.denoiser, x, _sigmas(), g, prob.residual_norm,
                                  zeta=0.1, checkpoint=False))
    mean_err, _ = whitened_moment_errors(out, mp, cp)
    prior_err, _ = whitened_moment_errors(
        prior.sample(N_CHAINS, torch.Generator().manual_seed(3)), mp, cp)
    assert torch.isfinite(out).all()
    assert mean_err < 0.25 * prior_err
    # Data fit of the DPS mean is far better than that of the prior mean.
    assert float((a @ out.mean(0) - y).norm()) < 0.3 * float((a @ prior.mean - y).norm())


def test_dps_checkpoint_gives_the_same_result() -> None:
    prior, a, y = _problem()
    prob = LinearProblem(MatrixOperator(a), y, noise_std=0.1)
    sig = _sigmas(10)
    one = _run(lambda x, g: S.dps(prior.denoiser, x, sig, g, prob.residual_norm, zeta=0.1,
                                  checkpoint=True), chains=8)
    two = _run(lambda x, g: S.dps(prior.denoiser, x, sig, g, prob.residual_norm, zeta=0.1,
                                  checkpoint=False), chains=8)
    torch.testing.assert_close(one, two, rtol=1e-12, atol=1e-12)


def test_anisotropic_prior_gap_of_dds_is_bounded() -> None:
    """Documented limitation: with a non-isotropic prior covariance the isotropic proximal
    weight is only an approximation of Cov[x0 | x_t], so DDS is biased. Measured at 200 steps,
    eta = 0.85: (1.23, 0.99) against 14.9 / 59 for the prior; we bound it at a fifth of the
    prior's distance so a regression to prior-like output fails."""
    prior, a, y = _problem(iso=False)
    mp, cp = gaussian_posterior(prior, a, y, 0.1)
    prob = LinearProblem(MatrixOperator(a), y, noise_std=0.1)
    d_y = ProximalDenoiser(prior.denoiser, prob, calibrated_variance(SD), cg_iters=5, tol=0.0)
    out = _run(lambda x, g: S.ddim(d_y, x, _sigmas(), g, eta=0.85))
    mean_err, cov_err = whitened_moment_errors(out, mp, cp)
    assert mean_err < 3.0
    assert cov_err < 12.0


@pytest.mark.parametrize("name", ["dds", "diffpir", "pc", "dps"])
def test_same_seed_same_result_different_seed_differs(name: str) -> None:
    prior, a, y = _problem()
    prob = LinearProblem(MatrixOperator(a), y, noise_std=0.1)
    d_y = ProximalDenoiser(prior.denoiser, prob, calibrated_variance(SD), cg_iters=5)
    sig = _sigmas(10)
    fns = {
        "dds": lambda x, g: S.ddim(d_y, x, sig, g, eta=0.85),
        "diffpir": lambda x, g: S.diffpir(d_y, x, sig, g, zeta=0.3),
        "pc": lambda x, g: S.predictor_corrector(d_y, x, sig, g),
        "dps": lambda x, g: S.dps(prior.denoiser, x, sig, g, prob.residual_norm, zeta=0.1),
    }
    one = _run(fns[name], seed=7, chains=4)
    two = _run(fns[name], seed=7, chains=4)
    three = _run(fns[name], seed=8, chains=4)
    assert torch.equal(one, two)
    assert float((one - three).abs().max()) > 1e-3


def test_gaussian_denoiser_is_the_posterior_mean() -> None:
    """Check the closed form against Bayes' rule: D(x, sigma) is the posterior mean of x0 given
    x = x0 + sigma * eps, which equals gaussian_posterior with A = I and noise sigma."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(3, 3, generator=g, dtype=torch.float64)
    prior = GaussianPrior(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64),
                          q @ q.T + 0.1 * torch.eye(3, dtype=torch.float64))
    xt = torch.randn(3, generator=g, dtype=torch.float64)
    mean, _ = gaussian_posterior(prior, torch.eye(3, dtype=torch.float64), xt, 0.7)
    torch.testing.assert_close(prior.denoiser(xt[None], 0.7)[0], mean, rtol=1e-10, atol=1e-10)


def test_proximal_denoiser_runs_fewer_cg_iterations_at_the_noisy_steps() -> None:
    calls: list[int] = []

    class Recorder:  # stands in for LinearProblem: records the iterations asked for
        def prox(self, z0: torch.Tensor, variance: torch.Tensor, phase: object, iters: int,
                 tol: float) -> torch.Tensor:
            calls.append(iters)
            return z0

    x = torch.zeros(2, 3)
    d_y = ProximalDenoiser(lambda z, s: z, Recorder(), calibrated_variance(SD),  # type: ignore[arg-type]
                           cg_iters=6, cg_iters_high=2, cg_sigma=1.0)
    for s in (5.0, 1.5, 1.0, 0.2):
        d_y(x, torch.full((2,), s))
    assert calls == [2, 2, 6, 6]
    plain = ProximalDenoiser(lambda z, s: z, Recorder(), calibrated_variance(SD),  # type: ignore[arg-type]
                             cg_iters=6)
    plain(x, torch.full((2,), 50.0))
    assert calls[-1] == 6
