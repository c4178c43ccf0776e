"""Peer check: deepinv's DiffPIR and DPS against medrecon's samplers on the same operator and data.

deepinv (https://github.com/deepinv/deepinv) is never a dependency of medrecon; this script runs
from a separate virtual environment that has deepinv *and* medrecon's dependencies, with the
medrecon source on the path::

    python3 -m venv /tmp/deepinv-venv
    /tmp/deepinv-venv/bin/pip install torch==2.14.1 torchvision==0.29.1   # see RESULTS_peers.md
    /tmp/deepinv-venv/bin/pip install deepinv scipy monai nibabel safetensors pyyaml typer \
        scikit-image pydicom h5py einops tqdm matplotlib
    PYTHONPATH=/work/main /tmp/deepinv-venv/bin/python benchmarks/peer_deepinv.py --part all

deepinv's pretrained denoisers download weights from model hubs, which this project does not
do. The comparison therefore gives both libraries the *same* denoiser and the *same* forward
operator, so that only the sampler implementations differ:

* ``--part gaussian``: an exact analytic check. A Gaussian prior N(mu, Sigma) on a small CT
  volume (10 x 10 x 2 voxels, smooth covariance), its exact MMSE denoiser
  (:class:`tests.sampling.gaussian.GaussianPrior`), medrecon's parallel-beam CT projector
  (12 views over 180 deg) wrapped as a deepinv ``LinearPhysics`` with deepinv's own
  ``L2`` data fidelity and ``GaussianNoise`` model, and noisy data. The posterior is Gaussian
  with a closed form, so each sampler's empirical posterior mean and marginal std over many
  chains can be compared with the truth: deepinv ``DiffPIR`` (its defaults lambda = 7,
  zeta = 0.1, and medrecon's lambda = 1, zeta = 0.3), deepinv ``DPS``, and medrecon's
  ``diffpir``, ``dds`` and ``dps``.
* ``--part prior``: the learned prior on the demo's CT case (a held-out 64^3 synthetic head at
  2 mm, 30 parallel-beam views, Poisson noise I0 = 1e5). The prior's denoiser (with patch
  tiling, modality and position conditioning, exactly as medrecon uses it) is wrapped as a
  deepinv denoiser in the [0, 1] image range deepinv's DiffPIR expects (CT model space is
  already HU mapped linearly onto [0, 1]); the affine map from model space to attenuation is
  folded into the operator, ``A'(z) = A(scale z)`` and ``y' = y - A(offset)``, which keeps
  the physics linear. Reported: PSNR/SSIM in HU against the reference for deepinv DiffPIR,
  medrecon DiffPIR and medrecon DDS at the same number of steps, and their timings.

Both parts divide A and y by ||A|| (a power iteration), as medrecon's samplers do internally,
so that step sizes and deepinv's A^T y initialisation see a unit-norm operator.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mri_classical import cpu_model  # benchmarks/ is on sys.path when run as a script

# The analytic Gaussian prior is a test helper (tests/sampling/gaussian.py): import it from the
# repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _physics(forward: Any, adjoint: Any, sigma: float) -> Any:
    """medrecon's operator as a deepinv LinearPhysics with deepinv's Gaussian noise model."""
    import deepinv as dinv

    return dinv.physics.LinearPhysics(A=forward, A_adjoint=adjoint,
                                      noise_model=dinv.physics.GaussianNoise(sigma=sigma),
                                      max_iter=50, tol=1e-8)


class _Wrapped(torch.nn.Module):
    """A plain callable ``D(x, sigma)`` as a deepinv denoiser module (same call signature)."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn
        self.calls = 0

    def forward(self, x: torch.Tensor, sigma: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        return self.fn(x, s)


# ---------------------------------------------------------------------------------------------
# Part 1: Gaussian prior, closed-form posterior
# ---------------------------------------------------------------------------------------------
def gaussian_part(chains: int, steps: int, dps_steps: int, seed: int) -> dict[str, Any]:
    import deepinv as dinv

    from medrecon.operators.ct_geometry import default_geometry
    from medrecon.operators.ct_projector import make_projector
    from medrecon.sampling import LinearProblem, sample_problem
    from tests.sampling.gaussian import GaussianPrior, gaussian_posterior

    torch.manual_seed(seed)
    dt = torch.float64
    shape = (10, 10, 2)
    spacing = (2.0, 2.0, 2.0)
    geom = default_geometry(shape, spacing, "parallel", 12, 180.0)
    proj = make_projector(geom, shape, spacing, device="cpu", dtype=dt)
    n = math.prod(shape)

    # Dense matrix of the projector (for the closed form) and its norm.
    eye = torch.eye(n, dtype=dt).reshape(n, *shape)
    cols = torch.stack([proj.forward(e) for e in eye])  # (n, *oshape)
    matrix = cols.reshape(n, -1).T.contiguous()  # (m, n)
    a_norm = float(torch.linalg.matrix_norm(matrix, ord=2))
    matrix = matrix / a_norm
    oshape = tuple(proj.oshape)

    def fwd(x: torch.Tensor) -> torch.Tensor:  # (B, *shape) -> (B, *oshape)
        return proj.forward(x) / a_norm

    def adj(y: torch.Tensor) -> torch.Tensor:
        return proj.adjoint(y) / a_norm

    # Smooth Gaussian prior on model-space images in [0, 1].
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=dt) for s in shape],
                                      indexing="ij"), -1).reshape(n, 3)
    d2 = ((grid[:, None, :] - grid[None, :, :]) ** 2).sum(-1)
    cov = 0.01 * torch.exp(-d2 / (2 * 1.5**2)) + 1e-4 * torch.eye(n, dtype=dt)
    prior = GaussianPrior(mean=torch.full((n,), 0.4, dtype=dt), cov=cov)
    gen = torch.Generator().manual_seed(seed)
    x_true = prior.sample(1, gen)[0]
    y_clean = matrix @ x_true
    sigma_y = 0.02 * float(y_clean.pow(2).mean().sqrt())
    y = y_clean + sigma_y * torch.randn(y_clean.shape, generator=gen, dtype=dt)
    mu_post, cov_post = gaussian_posterior(prior, matrix, y, sigma_y)
    std_post = cov_post.diagonal().sqrt()
    shift = float(torch.linalg.vector_norm(mu_post - prior.mean))

    def den_flat(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return prior.denoiser(x.reshape(b, n).to(dt), sigma.to(dt)).reshape(x.shape).to(x.dtype)

    y_img = y.reshape(oshape)
    results: dict[str, Any] = {}

    def record(name: str, samples: torch.Tensor, seconds: float, nfe: int) -> None:
        s = samples.reshape(samples.shape[0], n).to(dt)
        m = s.mean(0)
        sd = s.std(0)
        results[name] = {
            "mean_error": float(torch.linalg.vector_norm(m - mu_post)) / shift,
            "std_ratio": float(sd.mean() / std_post.mean()),
            "seconds": seconds, "nfe_per_chain": nfe,
        }
        print(f"  {name:<34} mean err {results[name]['mean_error']:.3f}   std ratio "
              f"{results[name]['std_ratio']:.3f}   {seconds:6.1f} s", flush=True)

    # --- deepinv DiffPIR (its defaults, and medrecon's lambda/zeta) ---------------------------
    physics = _physics(lambda x: fwd(x[:, 0]).unsqueeze(1), lambda r: adj(r[:, 0]).unsqueeze(1),
                       sigma_y)
    y_batch = y_img.expand(chains, *oshape).unsqueeze(1).clone()
    for label, lam, zeta in (("deepinv DiffPIR (lambda 7, zeta 0.1)", 7.0, 0.1),
                             ("deepinv DiffPIR (lambda 1, zeta 0.3)", 1.0, 0.3)):
        model = _Wrapped(lambda x, s: den_flat(x[:, 0], s).unsqueeze(1))
        sampler = dinv.sampling.DiffPIR(model, dinv.optim.data_fidelity.L2(), sigma=sigma_y,
                                        max_iter=steps, zeta=zeta, lambda_=lam, device="cpu")
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        out = sampler(y_batch, physics)
        record(label, out[:, 0], time.perf_counter() - t0, model.calls)

    # --- deepinv DPS: VP schedule, DDPM solver ---------------------------------------------
    # deepinv carries the DPS state in [-1, 1] and hands its denoiser, the data fidelity and the
    # physics [0, 1] images (minus_one_one=True, its default), which is our model space.
    try:
        model = _Wrapped(lambda x, s: den_flat(x[:, 0], s).unsqueeze(1))
        dps = dinv.sampling.DPS(model, num_steps=dps_steps, device="cpu", dtype=dt,
                                rng=torch.Generator().manual_seed(seed))
        t0 = time.perf_counter()
        out = dps(y_batch, physics, seed=seed)
        record(f"deepinv DPS ({dps_steps} steps)", out[:, 0], time.perf_counter() - t0,
               model.calls)
    except Exception as exc:  # record the reason instead of hiding it
        results["deepinv DPS"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  deepinv DPS failed: {type(exc).__name__}: {exc}", flush=True)

    # --- medrecon samplers ---------------------------------------------------------------
    from medrecon.operators.base import LinearOperator

    class Scaled(LinearOperator):
        def __init__(self) -> None:
            super().__init__(shape, oshape)

        def _forward(self, x: torch.Tensor) -> torch.Tensor:
            return fwd(x)

        def _adjoint(self, r: torch.Tensor) -> torch.Tensor:
            return adj(r)

    for name, st in (("diffpir", steps), ("dds", steps), ("dps", dps_steps)):
        problem = LinearProblem(Scaled(), y_img.clone(), noise_std=sigma_y)
        t0 = time.perf_counter()
        res = sample_problem(den_flat, problem, shape, sampler=name, steps=st, samples=chains,
                             seed=seed, sigma_data=0.1, sigma_min=0.002, sigma_max=80.0,
                             dtype=dt, keep_samples=True)
        record(f"medrecon {name} ({st} steps)", res.samples, time.perf_counter() - t0, res.nfe)
    return {
        "problem": {"shape": list(shape), "views": 12, "geometry": "parallel, 180 deg",
                    "prior": "N(0.4, 0.01 exp(-d^2 / (2 * 1.5^2)) + 1e-4 I)",
                    "noise_std": sigma_y, "chains": chains, "steps": steps,
                    "dps_steps": dps_steps,
                    "mean_error_definition": "|mean_hat - mu_post| / |mu_post - mu_prior|",
                    "std_ratio_definition": "mean marginal std_hat / mean true marginal std",
                    "monte_carlo_floor": math.sqrt(float(cov_post.trace()) / chains) / shift},
        "results": results,
    }


# ---------------------------------------------------------------------------------------------
# Part 2: the learned prior on the demo's CT case
# ---------------------------------------------------------------------------------------------
def prior_part(steps: int, size: int, seed: int, prior_name: str) -> dict[str, Any]:
    import deepinv as dinv

    from medrecon.demo import plan_demo
    from medrecon.evaluation import compare_volumes
    from medrecon.priors import load_prior
    from medrecon.priors.synthetic import generate_head
    from medrecon.problem import measurement_problem
    from medrecon.sampling import (
        LinearProblem,
        PosteriorResult,
        prior_denoiser,
        sample_problem,
    )
    from medrecon.simulate import simulate
    from medrecon.solvers import power_iteration

    dev = torch.device("cpu")
    prior = load_prior(prior_name, device=dev)
    plan = plan_demo("ct", device="cpu", size=size, seed=seed,
                     spacing_mm=float(prior.spacing_mm[0]))[0]
    ref = generate_head(plan.shape, plan.spacing_mm, modality="CT", seed=plan.head_seed,
                        noise=False)
    meas = simulate(ref, plan.simulation_config())
    results: dict[str, Any] = {}

    def evaluate(name: str, z: torch.Tensor, seconds: float, nfe: int) -> None:
        hu = prior.normalisation.from_model(z.detach().double(), "CT").float().numpy()
        res, _ = compare_volumes(ref.with_data(hu), ref, mask="auto")
        results[name] = {"psnr": res.volume["psnr"], "ssim": res.volume["ssim"],
                         "seconds": seconds, "nfe": nfe}
        print(f"  {name:<30} PSNR {res.volume['psnr']:.2f} dB  SSIM {res.volume['ssim']:.4f}"
              f"  {seconds:6.1f} s", flush=True)

    # medrecon DDS and DiffPIR (single chain each).
    for name in ("dds", "diffpir"):
        problem = LinearProblem.from_problem(
            measurement_problem(meas, dev, model=prior.normalisation))
        den = prior_denoiser(prior, "CT", seed=seed, device=dev)
        t0 = time.perf_counter()
        res: PosteriorResult = sample_problem(
            den, problem, tuple(problem.op.ishape), sampler=name, steps=steps, samples=1,
            seed=seed, sigma_data=prior.sigma_data, sigma_min=prior.sigma_min,
            sigma_max=prior.sigma_max, keep_samples=True)
        evaluate(f"medrecon {name}", res.samples[0], time.perf_counter() - t0, res.nfe)

    # deepinv DiffPIR with the same tiled denoiser and the same (affine-folded) operator.
    problem = LinearProblem.from_problem(measurement_problem(meas, dev, model=prior.normalisation))
    shape = tuple(problem.op.ishape)
    ones = torch.ones(shape)
    y0 = problem.y - problem.op.forward(problem.offset * ones)
    start = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    norm = math.sqrt(power_iteration(problem.op.normal, start, iters=15).gain) * problem.scale
    y = (y0 / norm).unsqueeze(0).unsqueeze(0)
    physics = _physics(lambda x: (problem.op.forward(problem.scale * x[:, 0]) / norm).unsqueeze(1),
                       lambda r: (problem.scale * problem.op.adjoint(r[:, 0]) / norm).unsqueeze(1),
                       problem.noise_std / norm)
    den = prior_denoiser(prior, "CT", seed=seed, device=dev)
    model = _Wrapped(lambda x, s: den(x[:, 0], s).unsqueeze(1))
    sampler = dinv.sampling.DiffPIR(model, dinv.optim.data_fidelity.L2(),
                                    sigma=problem.noise_std / norm, max_iter=steps, zeta=0.3,
                                    lambda_=1.0, device="cpu")
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = sampler(y, physics)
    evaluate("deepinv DiffPIR (lambda 1, zeta 0.3)", out[0, 0], time.perf_counter() - t0,
             model.calls)
    return {"problem": {**plan.to_dict(), "prior": prior.name, "steps": steps},
            "results": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("gaussian", "prior", "all"), default="all")
    ap.add_argument("--chains", type=int, default=256, help="Gaussian part: chains (samples).")
    ap.add_argument("--steps", type=int, default=50, help="DiffPIR/DDS steps.")
    ap.add_argument("--dps-steps", type=int, default=200, help="Gaussian part: DPS steps.")
    ap.add_argument("--prior-steps", type=int, default=10, help="Prior part: steps.")
    ap.add_argument("--size", type=int, default=64, help="Prior part: volume side (voxels).")
    ap.add_argument("--prior", default="default", help="Prior part: prior name or path.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="Write the results to this JSON file.")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    import deepinv

    doc: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "cpu": cpu_model(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "deepinv": deepinv.__version__,
        "python": platform.python_version(),
    }
    print(f"deepinv {deepinv.__version__}, torch {torch.__version__}, {doc['cpu']}", flush=True)
    if args.part in ("gaussian", "all"):
        print("Gaussian prior, closed-form posterior:", flush=True)
        doc["gaussian"] = gaussian_part(args.chains, args.steps, args.dps_steps, args.seed)
    if args.part in ("prior", "all"):
        print(f"Learned prior {args.prior!r}, demo CT case:", flush=True)
        doc["prior"] = prior_part(args.prior_steps, args.size, args.seed, args.prior)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    raise SystemExit(main())
