"""Samplers against the closed-form Gaussian posterior, as a table over step counts (CPU).

The same setting as ``tests/sampling/test_gaussian_posterior.py`` (x in R^4, random 3x4 A,
sigma_y = 0.1, 4000 chains), printed as whitened (mean error, covariance error) per sampler.

    python benchmarks/sampling_gaussian.py [--prior iso|aniso] [--steps 100 200 400]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from medrecon.sampling import samplers as S
from medrecon.sampling.consistency import (
    LinearProblem,
    ProximalDenoiser,
    calibrated_variance,
    diffpir_variance,
)

# The analytic Gaussian prior is a test helper (tests/sampling/gaussian.py): import it from the
# repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.sampling.gaussian import (  # noqa: E402
    GaussianPrior,
    MatrixOperator,
    gaussian_posterior,
    whitened_moment_errors,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", choices=("iso", "aniso"), default="iso")
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 200, 400])
    ap.add_argument("--chains", type=int, default=4000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    f64 = torch.float64
    g = torch.Generator().manual_seed(0)
    n, m, sd, sy = 4, 3, 0.5, 0.1
    if args.prior == "iso":
        cov = sd**2 * torch.eye(n, dtype=f64)
    else:
        q = torch.randn(n, n, generator=g, dtype=f64)
        cov = q @ q.T / n * 0.25 + 0.02 * torch.eye(n, dtype=f64)
    prior = GaussianPrior(0.3 * torch.randn(n, generator=g, dtype=f64), cov)
    a = torch.randn(m, n, generator=g, dtype=f64) / n**0.5
    y = a @ prior.sample(1, g)[0] + sy * torch.randn(m, generator=g, dtype=f64)
    mp, cp = gaussian_posterior(prior, a, y, sy)
    print(f"prior vs posterior: {whitened_moment_errors(prior.sample(args.chains, g), mp, cp)}")
    prob = LinearProblem(MatrixOperator(a), y, sy)
    dds = ProximalDenoiser(prior.denoiser, prob, calibrated_variance(sd), cg_iters=n + 1, tol=0)
    dpir = ProximalDenoiser(prior.denoiser, prob, diffpir_variance(1.0), cg_iters=n + 1, tol=0)

    def proj(z: torch.Tensor, s: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return prob.noised_projection(z, s, gen)

    runs = {
        "dds eta=0": lambda x, s, gen: S.ddim(dds, x, s, gen, eta=0.0),
        "dds eta=0.85": lambda x, s, gen: S.ddim(dds, x, s, gen, eta=0.85),
        "pc conditional score": lambda x, s, gen: S.predictor_corrector(dds, x, s, gen),
        "pc noised projection": lambda x, s, gen: S.predictor_corrector(prior.denoiser, x, s,
                                                                        gen, dc=proj),
        "diffpir zeta=0.3": lambda x, s, gen: S.diffpir(dpir, x, s, gen, zeta=0.3),
        "diffpir zeta=1": lambda x, s, gen: S.diffpir(dpir, x, s, gen, zeta=1.0),
        "dps zeta=0.1": lambda x, s, gen: S.dps(prior.denoiser, x, s, gen, prob.residual_norm,
                                                zeta=0.1, checkpoint=False),
        "dps zeta=0.3": lambda x, s, gen: S.dps(prior.denoiser, x, s, gen, prob.residual_norm,
                                                zeta=0.3, checkpoint=False),
    }
    print("| sampler | " + " | ".join(f"{s} steps" for s in args.steps) + " |")
    print("| --- |" + " --- |" * len(args.steps))
    for name, fn in runs.items():
        cells = []
        for steps in args.steps:
            sig = S.edm_sigmas(steps, 0.002, 80.0).to(f64)
            gen = torch.Generator().manual_seed(1)
            x = S.initial_state((args.chains, n), 80.0, gen, dtype=f64)
            me, ce = whitened_moment_errors(fn(x, sig, gen), mp, cp)
            cells.append(f"{me:.3f} / {ce:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
