"""CT diffusion at a wide field of view: the prior on pure air, and held-out error against TV.

Issue 13: at 256^3 (a 512 mm cube of air around the test head) the guard fell back to TV. Two
measurements, both on the CPU:

* ``--probe``: the default prior's estimate of a patch of pure air (model value 0) plus noise
  of level sigma, by patch shape and position: mean and RMS of the output (0 is right).
* the cases: the test head (``generate_head``, test seed, 2 mm) on ``--shapes`` grids (a tight
  one the head fills and wider ones), 60 parallel views at I0 = 1e5, the hold-out split of the
  guard (every 7th view); one DDS run (lam 1, ``--steps``, K = 1, no guard) on the training
  views scored on the held-out views, PSNR against the head, mean |error| in the air and in
  the head; ``--tv`` adds the guard's self-tuned TV scored the same way.

    python benchmarks/ct_wide_fov.py --probe
    python benchmarks/ct_wide_fov.py --shapes 96,112,32 160,160,32 --steps 8 --tv

One JSON line per case on stdout.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def probe() -> None:
    from medrecon.priors import load_prior
    from medrecon.sampling.denoiser import prior_denoiser

    prior = load_prior("default", device="cpu")
    g = torch.Generator().manual_seed(0)
    for shape in [(64, 64, 64), (32, 64, 64), (32, 32, 32)]:
        den = prior_denoiser(prior, "CT", device="cpu")
        for pos in [(0.0, 0.0, 0.0), (0.9, 0.9, 0.0)]:
            row: dict[str, object] = {"patch": shape, "position": pos}
            for s in [5.0, 2.0, 0.5, 0.1, 0.02]:
                x = s * torch.randn((2, 1, *shape), generator=g)
                with torch.no_grad():
                    d = den.patch_denoiser(x, torch.full((2,), s),
                                           torch.tensor([pos, pos], dtype=torch.float32))
                row[f"sigma {s}"] = {"mean": round(float(d.mean()), 4),
                                     "rms": round(float(d.pow(2).mean().sqrt()), 4)}
            print(json.dumps(row), flush=True)


def case(shape: tuple[int, int, int], steps: int, tv: bool, noise: bool) -> dict[str, object]:
    from medrecon.guard import classical_runs
    from medrecon.holdout import holdout_split
    from medrecon.priors import load_prior
    from medrecon.priors.synthetic import generate_head, split_seeds
    from medrecon.sampling import SamplerOptions, posterior_sample
    from medrecon.simulate import CTSettings, SimulationConfig, simulate

    seed = int(split_seeds("test")[0])
    vol = generate_head(shape, 2.0, "CT", seed=seed, noise=noise)
    m = simulate(vol, SimulationConfig(modality="ct", seed=seed,
                                       ct=CTSettings(views=60, dose_i0=1e5)))
    dev = torch.device("cpu")
    split = holdout_split(m, dev)
    ref = np.asarray(vol.data)
    head = ref > -900.0
    span = float(ref.max() - ref.min())

    def scores(img: np.ndarray) -> dict[str, float]:
        mse = float(np.mean((img - ref) ** 2))
        return {"psnr": round(10 * np.log10(span**2 / mse), 2),
                "mae_air_hu": round(float(np.abs(img - ref)[~head].mean()), 1),
                "mae_head_hu": round(float(np.abs(img - ref)[head].mean()), 1)}

    t0 = time.perf_counter()
    res = posterior_sample(split.train, load_prior("default", device="cpu"), steps=steps,
                           samples=1, seed=0, device=dev,
                           options=SamplerOptions.defaults("CT", "dds", lam=1.0))
    out: dict[str, object] = {
        "shape": shape, "phantom_noise": noise, "steps": steps,
        "diffusion_heldout": round(split.held.error(res.image), 5), **{
            f"diffusion_{k}": v for k, v in scores(res.mean).items()},
        "diffusion_seconds": round(time.perf_counter() - t0, 1),
        "empty_fraction": res.info.get("empty_fraction"), "patches": res.info.get("patches")}
    if tv:
        t0 = time.perf_counter()
        run = classical_runs(m, split, dev)[0]
        out.update(tv_heldout=round(run.error, 5), tv_lam=run.lam,
                   **{f"tv_{k}": v for k, v in scores(run.output.image).items()},
                   tv_seconds=round(time.perf_counter() - t0, 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probe", action="store_true", help="the prior on pure air only")
    ap.add_argument("--shapes", nargs="*", default=["96,112,32", "160,160,32"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--tv", action="store_true")
    ap.add_argument("--clean-phantom", action="store_true",
                    help="no HU noise in the phantom (the CLI's phantom has it)")
    a = ap.parse_args()
    if a.probe:
        probe()
        return
    for s in a.shapes:
        shape = tuple(int(v) for v in s.split(","))
        print(json.dumps(case(shape, a.steps, a.tv, not a.clean_phantom)), flush=True)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
