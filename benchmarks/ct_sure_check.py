"""Is CT TV's SURE an unbiased estimate of its in-sample risk? (issue 13, item 1)

For one case (a synthetic head slab or, with ``--volume``, the central slice of a CT NIfTI in
HU; parallel beam, ``--views`` views, I0 = 1e5, the library's hold-out split and probe) and
each weight of ``--lams``, TV from the training views, and per estimate the value against
the truth, in units of ``sigma^2 n`` (``sigma`` the ray-averaged noise std, ``n`` the
training rays):

* ``true_plain``: ``||A (x - x_true)||^2`` on the training views (x_true the reference in
  mu, clipped at 0 as the simulator clips it); ``sure_plain``: the library's SURE (probe
  with the ray-averaged variance); ``sure_plain_ray``: the probe with each ray's own variance
  (``benchmarks/autotune_ct_curve.py``'s ``_ray_probe``);
* the same three in the ramp-weighted energy (``SpectralEnergy``): ``*_ramp``.

    python benchmarks/ct_sure_check.py --volume .devrun/real_cases/ct_abdomen.nii.gz \\
        --lams 2.1e-4,5.9e-4,2e-3
    python benchmarks/ct_sure_check.py --lams 1.25e-4,3.5e-4,1e-3,2.8e-3   # synthetic head
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from autotune_ct_curve import _ray_probe
from autotune_ct_holdout import _case

from medrecon.recon import ct
from medrecon.recon.ct_tune import holdout_problems
from medrecon.recon.sure import SpectralEnergy, noise_count, sure, sure_probe
from medrecon.simulate import CTSettings, SimulationConfig, simulate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", type=Path, default=None, help="a CT NIfTI in HU")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--spacing", type=float, default=1.0)
    ap.add_argument("--slices", type=int, default=None, help="default 1 (volume), 2 (head)")
    ap.add_argument("--head", type=int, default=0, help="index into the test seeds")
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--lams", required=True, help="comma-separated TV weights")
    args = ap.parse_args(argv)
    args.texture = False
    args.slices = args.slices or (1 if args.volume else 2)
    cpu = torch.device("cpu")
    vol, seed = _case(args)
    m = simulate(vol, SimulationConfig(modality="ct", seed=seed,  # type: ignore[arg-type]
                                       ct=CTSettings(geometry="parallel", views=args.views,
                                                     dose_i0=1e5)))
    full = ct._problem(m, cpu)
    mw = full.units.mu_water
    assert mw is not None
    sub, _, _ = holdout_problems(m, cpu)
    settings = ct.method_settings(ct.TVSettings, {}, "tv")

    def solve(p: ct.Problem, lam: float) -> torch.Tensor:
        return ct._tv_solve(p, lam, args.iterations, 1e-4, settings)[0].x * mw

    ref = vol.data  # type: ignore[attr-defined]
    x_true = torch.as_tensor(mw * np.clip(1.0 + ref / 1000.0, 0.0, None), dtype=sub.y.dtype)
    clean = sub.op(x_true)
    probe = sure_probe(sub, seed)
    assert probe is not None
    ray = _ray_probe(m, sub, probe)
    ramp = SpectralEnergy(int(sub.y.shape[-1]))
    unit = sub.noise_std ** 2 * noise_count(sub)
    for lam in (float(v) for v in args.lams.split(",")):
        x = solve(sub, lam)
        x_probe, x_ray = solve(probe.nudged, lam), solve(ray.nudged, lam)
        e = sub.op(x) - clean
        row = {"case": str(args.volume or f"synthetic head {seed}"), "views": args.views,
               "lam": lam,
               "true_plain": float((e.double() ** 2).sum()) / unit,
               "sure_plain": sure(sub, x, x_probe, probe),
               "sure_plain_ray": sure(sub, x, x_ray, ray),
               "true_ramp": ramp(e) / unit,
               "sure_ramp": sure(sub, x, x_probe, probe, ramp),
               "sure_ramp_ray": sure(sub, x, x_ray, ray, ramp)}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                          for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
