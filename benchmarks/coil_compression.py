"""Cheaper MR data consistency: coil compression and CG schedules (issue 14 item 3).

One held-out synthetic head (test seed range, 2 mm) of ``--size``^3, 8 simulated birdcage coils,
a 3D Poisson-disc mask at each ``--accel`` (the default calibration for the matrix), SNR 30,
smooth phase. For every variant the same DDS run (the MR default weight, lam 0.1, eta 0.85;
seed 0, ``--samples`` chains) is repeated with only the data consistency changed, and the row
records:

* PSNR / SSIM of the posterior mean inside the head (reference > 5 % of its max, data range the
  reference max), and the PSNR change against the first variant of the list (``d_psnr``);
* ``seconds``, ``network_seconds``, ``other_seconds`` (data consistency and bookkeeping) of the
  sampling run (on CUDA after a 2-step warm-up), and ``dc_ms``: the fastest of 5 proximal steps
  of ``cg`` iterations (all chains) timed alone after the run;
* the number of virtual coils and the signal energy they keep.

Variants (``--variants``, ';'-separated, each 'key=value,...'; the first is the reference):

* ``coils=all`` (default), ``coils=V`` (exactly V virtual coils) or ``energy=F`` (the fewest
  virtual coils keeping F of the signal energy: :func:`medrecon.problem.measurement_problem`'s
  ``coil_energy``, what ``--set coil_energy=F`` does);
* ``cg=N``: CG iterations per step (default 10); ``cg_high=N`` (``cg_sigma=S``, default 5):
  N iterations at the steps followed by a noise level above S (``SamplerOptions``
  ``cg_iters_high`` / ``cg_sigma``; the MR default is ``cg_high=2``); without ``cg_high``
  every step runs ``cg`` iterations.

``--dc-only`` skips sampling and times one proximal step (one chain) per virtual-coil count
(8 down to 4) at 10 and 2 iterations.

CPU (small, to compare quality; 2 threads on a shared 2-core machine)::

    nice -n 10 python benchmarks/coil_compression.py --out cc.jsonl --device cpu --size 64 \
        --steps 10 --accel 8,4 --threads 2 --variants "cg=10;cg_high=2;coils=7;energy=0.99"

GPU (speed and quality at 128^3 and 256^3, 50 steps)::

    python benchmarks/coil_compression.py --out cc_gpu.jsonl --device cuda --size 128,256 \
        --steps 50 --accel 8 --variants "cg=10;cg_high=2;coils=7;energy=0.99"
    python benchmarks/coil_compression.py --out cc_gpu.jsonl --device cuda --size 128,256 \
        --accel 8 --dc-only

Results: benchmarks/RESULTS_coil_compression.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _parse(spec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (c.strip() for c in spec.split(","))):
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def _physics(m: Any, prior: Any, dev: torch.device, var: dict[str, Any]) -> Any:
    """The MR problem of ``m`` with the variant's coils (all, V, or an energy fraction)."""
    import dataclasses

    from medrecon.operators.coil_compression import compress_coils
    from medrecon.operators.mri import SenseOperator
    from medrecon.problem import measurement_problem

    if "energy" in var:
        return measurement_problem(m, dev, model=prior.normalisation,
                                   coil_energy=float(var["energy"]))
    physics = measurement_problem(m, dev, model=prior.normalisation)
    coils = var.get("coils", "all")
    if coils == "all":
        return physics
    op = physics.op
    cc = compress_coils(physics.y, op.maps, op.mask, noise_std=physics.noise_std,
                        n_virtual=int(coils))
    info = {**physics.info, "virtual_coils": cc.n_virtual, "coil_energy_kept": cc.kept}
    return dataclasses.replace(physics, op=SenseOperator(cc.maps, op.mask, op.fft_dims),
                               y=cc.kspace, info=info)


def _run(m: Any, ref: np.ndarray, prior: Any, dev: torch.device, args: argparse.Namespace,
         spec: str, spacing: tuple[float, float, float]) -> dict[str, Any]:
    from medrecon.metrics import psnr, ssim
    from medrecon.sampling import SamplerOptions
    from medrecon.sampling.api import sample_problem
    from medrecon.sampling.consistency import LinearProblem
    from medrecon.sampling.denoiser import prior_denoiser

    var = _parse(spec)
    physics = _physics(m, prior, dev, var)
    problem = LinearProblem.from_problem(physics)
    cg = int(var.get("cg", 10))
    opt = SamplerOptions.defaults(
        "MR", "dds", cg_iters=cg,
        cg_iters_high=int(var["cg_high"]) if "cg_high" in var else None,
        cg_sigma=float(var.get("cg_sigma", 5.0)))
    den = prior_denoiser(prior, "MR", tiling=args.tiling, seed=0, device=dev,
                         spacing_mm=spacing)
    common = {"options": opt, "device": dev, "sigma_data": prior.sigma_data,
              "sigma_min": prior.sigma_min, "sigma_max": prior.sigma_max}
    if dev.type == "cuda":  # warm-up: kernels, cuFFT plans, allocator
        sample_problem(den, problem, problem.ishape, steps=2, samples=args.samples, **common)
        torch.cuda.synchronize(dev)
    res = sample_problem(den, problem, problem.ishape, steps=args.steps, samples=args.samples,
                         seed=0, keep_samples=True, **common)
    with torch.no_grad():
        mag = physics.units.model_to_reference(res.samples, res.phase).float()
        mean = mag.mean(0).cpu().numpy()
        # One proximal step of ``cg`` iterations alone (all chains), the fastest of 5: the
        # data-consistency cost per step, free of the load other processes put on a CPU.
        z = res.samples.to(dev)
        phase = problem.init_phase(z.shape[0])
        var_z = torch.full((z.shape[0],), 0.25, device=dev)
        times = []
        for _ in range(5):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            problem.prox(z, var_z, phase, cg)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
    region = ref > 0.05 * ref.max()
    dr = float(ref.max())
    return {"variant": spec, "psnr": psnr(mean, ref, data_range=dr, mask=region),
            "ssim": ssim(mean, ref, data_range=dr, mask=region),
            "virtual_coils": physics.info.get("virtual_coils", physics.op.oshape[0]),
            "coil_energy_kept": physics.info.get("coil_energy_kept", 1.0),
            "seconds": res.timings["total"], "network_seconds": res.timings["network"],
            "other_seconds": res.timings["other"], "dc_ms": 1e3 * min(times),
            "residual": res.residual}


def _dc_only(m: Any, dev: torch.device) -> list[dict[str, Any]]:
    """Wall time of one proximal step (one chain) per virtual-coil count and CG iterations,
    fastest of 7: the data-consistency cost alone, without sampling."""
    from medrecon.operators.coil_compression import compress_coils
    from medrecon.operators.mri import SenseOperator
    from medrecon.problem import measurement_problem
    from medrecon.sampling.consistency import LinearProblem

    physics = measurement_problem(m, dev)
    op = physics.op
    z = torch.rand((1, *op.ishape), generator=torch.Generator().manual_seed(0)).to(dev)
    rows = []
    for v in range(op.oshape[0], 3, -1):
        cc = compress_coils(physics.y, op.maps, op.mask, n_virtual=v)
        problem = LinearProblem(SenseOperator(cc.maps, op.mask, op.fft_dims), cc.kspace,
                                noise_std=physics.noise_std, complex_image=True)
        phase = problem.init_phase(1)
        for iters in (10, 2):
            times = []
            for _ in range(7):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                problem.prox(z, torch.tensor([0.25], device=dev), phase, iters, 0.0)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                times.append(time.perf_counter() - t0)
            rows.append({"virtual_coils": v, "cg_iters": iters, "dc_ms": 1e3 * min(times),
                         "dc_ms_median": 1e3 * sorted(times)[3]})
    return rows


def _emit(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line (a run cut short keeps what it measured) and print its summary."""
    row["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    keep = ("size", "acceleration", "variant", "virtual_coils", "cg_iters", "psnr", "d_psnr",
            "ssim", "seconds", "other_seconds", "dc_ms", "error")
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if k in keep},
          flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prior", default="default")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="64", help="comma-separated cube sides, e.g. 128,256")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--accel", default="8", help="comma-separated accelerations")
    ap.add_argument("--head", type=int, default=0, help="index into the test seeds")
    ap.add_argument("--real", default="",
                    help="a real MR case of benchmarks/real_quality.py (e.g. mr_brain_piesno) "
                         "instead of the synthetic head, simulated as there")
    ap.add_argument("--tiling", default="shift")
    ap.add_argument("--variants", default="coils=all;energy=0.99")
    ap.add_argument("--dc-only", action="store_true",
                    help="time one proximal step per virtual-coil count (no sampling)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads for torch (0: its default); 1 on a shared machine")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from medrecon.priors import load_prior
    from medrecon.priors.synthetic import generate_head, split_seeds
    from medrecon.simulate import MRISettings, SimulationConfig, simulate

    dev = torch.device(args.device)
    prior = load_prior(args.prior, device=dev)
    card = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else platform.processor() or platform.machine())
    seed = split_seeds("test")[args.head]
    if args.real:
        # A real MR volume of benchmarks/real_quality.py, simulated as that benchmark does.
        sys.path.insert(0, str(Path(__file__).parent))
        from real_quality import _mri_config, load_cases

        _, real, note = load_cases([args.real], None)[0]
        if real is None:
            raise SystemExit(f"{args.real}: {note}")
        cases = [(args.real, real)]
    else:
        cases = [(n, generate_head((n, n, n), 2.0, "MR", seed=seed, noise=False,
                                   device=args.device))
                 for n in (int(s) for s in args.size.split(","))]
    for n, vol in cases:
        spacing = tuple(float(s) for s in vol.spacing)
        for accel in (float(a) for a in args.accel.split(",")):
            cfg = (_mri_config(vol.shape, accel) if args.real else SimulationConfig(
                modality="mri", seed=seed, mri=MRISettings(
                    coils=8, acceleration=accel, snr=30.0, coil_model="birdcage")))
            m = simulate(vol, cfg, device=args.device)
            stamp = {"size": n, "acceleration": accel, "head_seed": seed, "steps": args.steps,
                     "samples": args.samples, "tiling": args.tiling, "device": card,
                     "torch": torch.__version__, "prior": prior.name,
                     "command": " ".join(sys.argv)}
            if args.dc_only:
                for row in _dc_only(m, dev):
                    _emit(args.out, {**row, **stamp})
                continue
            base: float | None = None
            for spec in args.variants.split(";"):
                try:
                    row = _run(m, np.asarray(vol.data, np.float32), prior, dev, args, spec,
                               spacing)  # type: ignore[arg-type]
                except Exception as exc:  # record the failure, go on with the others
                    row = {"variant": spec, "error": f"{type(exc).__name__}: {exc}"}
                if "psnr" in row:
                    base = row["psnr"] if base is None else base
                    row["d_psnr"] = row["psnr"] - base
                _emit(args.out, {**row, **stamp})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
