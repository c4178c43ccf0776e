"""Thin slabs and single slices (issue 15 item 8): short tiles against full-patch tiles.

Along an axis shorter than the prior's 64-voxel patch, :class:`~medrecon.sampling.tiling.
TiledDenoiser` cuts the tile to the axis length rounded up to the network's down-sampling
factor (8), but not below ``min_tile`` (default: half the patch, 32), where it used to pad to
the full patch. This script runs several shortest tiles ``min_tile`` in the same process on
the same inputs (``--shortest``; 64 = the full patch, the former padding; 8 = only what the
network needs) and writes one JSON line per case and shortest tile:

* ``--part denoiser``: one network pass over the whole volume, ``D(x + sigma n, sigma)`` in
  model space, for sigma in 0.05, 0.2, 0.5, 1 (seed 0); PSNR of the denoised volume against
  the clean one over the case's region (as :mod:`real_quality`: MR > 5 % of max, CT > -900 HU)
  with data range 1 (model space), and the PSNR of each output against the full patch's
  (``psnr_vs_full``).
* ``--part quality``: diffusion reconstruction (default prior and sampler, ``--steps``,
  ``--samples``, seed 0) of the thin real cases of :mod:`real_quality` (simulated exactly as
  there: MR R = 4, CT 60 views) with each shortest tile; PSNR / SSIM as in
  :mod:`real_quality`.
* ``--part speed``: the ``ct_slice`` and ``mr_slab`` cases of :mod:`sampling_speed` (one
  128 x 128 CT slice; a 128 x 96 x 24 MR slab), ``--steps`` steps, one warm-up run first, then
  the shortest tiles alternately (``--repeats`` times each): seconds, network seconds.

    python benchmarks/slab_tiling.py --part denoiser,quality --cases-dir out/real_cases \\
        --device cuda --out out/slab.jsonl
    nice -n 10 python benchmarks/slab_tiling.py --part speed --device cpu --steps 4 \\
        --out out/slab_cpu.jsonl
    nice -n 10 python benchmarks/slab_tiling.py --part denoiser --cases-dir out/real_cases \\
        --crop 64 --device cpu --shortest 64,32,16,8 --out out/slab_den_cpu.jsonl

Results: ``benchmarks/RESULTS_sampling.md`` (section "Thin slabs and single slices").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_quality  # noqa: E402  (a sibling benchmark: cases, masks and metrics)
import sampling_speed  # noqa: E402

THIN_CASES = ("ct_head_ect", "ct_abdomen", "ct_spine", "mr_abdomen", "mr_brain_piesno")
SIGMAS = (0.05, 0.2, 0.5, 1.0)


@contextlib.contextmanager
def tiling(shortest: int) -> Iterator[None]:
    """Every prior denoiser made inside has ``min_tile = shortest``."""
    import medrecon.sampling.api as api

    make = api.prior_denoiser

    def with_shortest(*a: Any, **k: Any) -> Any:
        den = make(*a, **k)
        den.min_tile = shortest
        return den

    api.prior_denoiser = with_shortest
    try:
        yield
    finally:
        api.prior_denoiser = make


def _region(vol: Any) -> np.ndarray:
    ref = vol.data
    return ref > 0.05 * ref.max() if vol.modality == "MR" else ref > -900.0


def part_denoiser(cases: list[tuple[str, Any, str]], prior: Any, dev: torch.device,
                  shortest: list[int], emit: Any) -> None:
    from medrecon.metrics import psnr
    from medrecon.sampling.denoiser import prior_denoiser

    for name, vol, note in cases:
        if vol is None:
            emit({"part": "denoiser", "case": name, "skipped": note})
            continue
        clean = prior.normalisation.to_model(vol.data.astype(np.float32), vol.modality)
        x0 = torch.from_numpy(np.ascontiguousarray(clean))[None].to(dev)
        region = _region(vol)
        for sigma in SIGMAS:
            g = torch.Generator(device=dev).manual_seed(0)
            noisy = x0 + sigma * torch.randn(x0.shape, generator=g, device=dev)
            outs = {}
            for mult in shortest:
                den = prior_denoiser(prior, vol.modality, seed=0, device=dev,
                                     spacing_mm=tuple(float(s) for s in vol.spacing))
                den.min_tile = mult
                with torch.no_grad():
                    t0 = time.perf_counter()
                    out = den(noisy, torch.tensor([sigma], device=dev))
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    seconds = time.perf_counter() - t0
                outs[mult] = out[0].float().cpu().numpy()
                full = outs.get(max(shortest))
                emit({"part": "denoiser", "case": name, "shape": list(vol.shape),
                      "shortest": mult, "sigma": sigma, "seconds": round(seconds, 3),
                      "patches": den.patches,
                      "psnr_noisy": psnr(noisy[0].cpu().numpy(), clean, 1.0, region),
                      "psnr": psnr(outs[mult], clean, 1.0, region),
                      "psnr_vs_full": (None if full is None or mult == max(shortest)
                                       else psnr(outs[mult], full, 1.0, region))})


def part_quality(cases: list[tuple[str, Any, str]], prior: Any, args: argparse.Namespace,
                 emit: Any) -> None:
    from medrecon.sampling import posterior_sample
    from medrecon.simulate import CTSettings, SimulationConfig, simulate

    for name, vol, note in cases:
        if vol is None:
            emit({"part": "quality", "case": name, "skipped": note})
            continue
        ref = vol.data.astype(np.float32)
        if vol.modality == "MR":
            cfg = real_quality._mri_config(vol.shape, 4.0)
            data_range = float(ref.max())
        else:
            cfg = SimulationConfig(modality="ct", seed=0, ct=CTSettings(
                geometry="parallel", views=60, dose_i0=1e5))
            data_range = float(ref.max() - ref.min())
        m = simulate(vol, cfg, device=args.device)
        for mult in args.shortest:
            with tiling(mult):
                t0 = time.perf_counter()
                res = posterior_sample(m, prior, steps=args.steps, samples=args.samples,
                                       seed=0, device=args.device)
                seconds = time.perf_counter() - t0
            emit({"part": "quality", "case": name, "shape": list(vol.shape),
                  "setting": "mr4" if vol.modality == "MR" else "ct60", "shortest": mult,
                  "steps": args.steps, "samples": args.samples, "seconds": round(seconds, 2),
                  "patches": res.info.get("patches"),
                  **real_quality._metrics(res.mean, ref, _region(vol), data_range)})


def part_speed(prior: Any, args: argparse.Namespace, emit: Any) -> None:
    from medrecon.sampling import posterior_sample

    dev = torch.device(args.device)
    for case in ("ct_slice", "mr_slab"):
        m, vol = sampling_speed._case_measurement(case, False, args.device)
        posterior_sample(m, prior, steps=2, device=dev)  # warm-up
        for _ in range(args.repeats):
            for mult in args.shortest:
                with tiling(mult):
                    res = posterior_sample(m, prior, steps=args.steps, samples=1, seed=0,
                                           device=dev)
                emit({"part": "speed", "case": case, "shape": list(vol.shape),
                      "shortest": mult, "steps": args.steps,
                      "seconds": round(res.timings["total"], 2),
                      "network_seconds": round(res.timings["network"], 2),
                      "patches": res.info.get("patches"),
                      "network_calls": res.info.get("network_calls"),
                      "residual": res.residual, "threads": torch.get_num_threads()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="denoiser,quality,speed")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cases-dir", type=Path, help="a folder of real_quality.py --export")
    ap.add_argument("--cases", default=",".join(THIN_CASES))
    ap.add_argument("--prior", default="default")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--crop", type=int, default=0,
                    help="central in-plane crop of the real cases (native voxel size; all "
                         "slices kept), e.g. 64 for a CPU run; 0: whole images")
    ap.add_argument("--shortest", default="64,32",
                    help="shortest tiles to compare (multiples of 8; 64: the full patch)")
    args = ap.parse_args(argv)
    args.shortest = sorted({int(v) for v in args.shortest.split(",")}, reverse=True)

    from medrecon.priors import load_prior

    dev = torch.device(args.device)
    prior = load_prior(args.prior, device=dev)
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    common = {"device": card or "cpu", "prior": prior.name, "torch": torch.__version__,
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}

    def emit(row: dict) -> None:
        line = json.dumps({**row, **common})
        with args.out.open("a") as f:
            f.write(line + "\n")
        print(line, flush=True)

    parts = {p.strip() for p in args.part.split(",")}
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    cases = (real_quality.load_cases(names, args.cases_dir)
             if parts & {"denoiser", "quality"} else [])
    if args.crop:
        cases = [(n, v if v is None else real_quality._crop(v, args.crop, max(v.shape)), note)
                 for n, v, note in cases]
    if "denoiser" in parts:
        part_denoiser(cases, prior, dev, args.shortest, emit)
    if "quality" in parts:
        part_quality(cases, prior, args, emit)
    if "speed" in parts:
        part_speed(prior, args, emit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
