"""Quality of diffusion reconstruction against the best tuned classical method.

Held-out synthetic heads (``medrecon.priors.synthetic``, seeds from the *test* range, never
seen in training), 2 mm voxels:

* MRI: 8 coils, 3D Poisson-disc masks at R = 4, 8, 12 (24^2 calibration), SNR 30, smooth phase;
  classical: CG-SENSE, L1-wavelet and TV, the latter two with lam swept over
  {0.25, 0.5, 1, 2, 4} x the default rule and the best PSNR kept (oracle tuning: it favours the
  classical methods).
* CT: parallel beam, 30 and 60 views over 180 deg, I0 = 1e5 photons; classical: FBP, SIRT,
  CGLS and TV (lam swept likewise).

Diffusion: ``posterior_sample`` (default sampler DDS, 50 steps, K samples): PSNR/SSIM of the
posterior mean, and calibration (fraction of in-head voxels with |error| <= 2 std).

PSNR/SSIM inside the head (MR: reference > 5 % of its max; CT: > -900 HU) with data range
the reference's max (MR) or max - min (CT HU).

    python benchmarks/sampling_quality.py --out results_quality.jsonl [--prior default]
        [--heads 1] [--head-offset 0] [--shape 96 112 112] [--steps 50] [--samples 4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

LAM_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _metrics(x: np.ndarray, ref: np.ndarray, mask: np.ndarray, data_range: float) -> dict:
    from medrecon.metrics import psnr, ssim

    return {"psnr": psnr(x, ref, data_range=data_range, mask=mask),
            "ssim": ssim(x, ref, data_range=data_range, mask=mask)}


def _classical(m, methods_swept: tuple[str, ...], methods_plain: tuple[str, ...], ref, mask,
               data_range: float, device: str, quick: bool) -> dict:
    from medrecon.methods import get_method
    from medrecon.reconstruct import ReconOptions, reconstruct

    def iterations(name: str) -> int | None:  # --quick shortens iterative methods only
        return 5 if quick and get_method(m.modality, name).iterative else None

    out: dict[str, dict] = {}
    for name in methods_plain:
        t0 = time.perf_counter()
        r = reconstruct(m, name, ReconOptions(device=device, iterations=iterations(name)))
        out[name] = {**_metrics(r.volume.data, ref, mask, data_range),
                     "seconds": time.perf_counter() - t0}
    for name in methods_swept:
        base = reconstruct(m, name, ReconOptions(device=device, iterations=iterations(name)))
        lam0 = float(base.output.info.get("lam", 0.0))
        best = None
        for f in (LAM_FACTORS[1:4] if quick else LAM_FACTORS):
            t0 = time.perf_counter()
            r = reconstruct(m, name, ReconOptions(lam=lam0 * f, device=device,
                                                  iterations=iterations(name)))
            met = {**_metrics(r.volume.data, ref, mask, data_range), "lam": lam0 * f,
                   "lam_factor": f, "seconds": time.perf_counter() - t0}
            if best is None or met["psnr"] > best["psnr"]:
                best = met
        out[name] = best  # type: ignore[assignment]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prior", default="default")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--head-offset", type=int, default=0,
                    help="first test head (0: seed 2000000, the head the defaults were tuned on)")
    ap.add_argument("--shape", type=int, nargs=3, default=(96, 112, 112))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--sampler", default="dds")
    ap.add_argument("--cases", default="mr4,mr8,mr12,ct30,ct60")
    ap.add_argument("--tiling", default="shift")
    ap.add_argument("--precision", default="auto", help="auto, bf16, bf16-full or fp32")
    ap.add_argument("--configs", default="",
                    help="';'-separated sampler settings to compare, each 'key=value,...' of "
                         "SamplerOptions plus sampler=..., e.g. 'lam=1;lam=4,cg_iters=20'")
    ap.add_argument("--skip-classical", action="store_true")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    from medrecon.priors import load_prior
    from medrecon.priors.synthetic import generate_head, split_seeds
    from medrecon.sampling import SamplerOptions, posterior_sample
    from medrecon.simulate import CTSettings, MRISettings, SimulationConfig, simulate

    dev = torch.device(args.device)
    prior = load_prior(args.prior, device=dev)
    shape = (24, 24, 24) if args.quick else tuple(args.shape)
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    for h in range(args.heads):
        seed = split_seeds("test")[args.head_offset + h]
        heads = {}
        for case in args.cases.split(","):
            mod = "MR" if case.startswith("mr") else "CT"
            if mod not in heads:
                heads[mod] = generate_head(shape, 2.0, mod, seed=seed, noise=False,
                                           device=args.device)
            vol = heads[mod]
            ref = vol.data
            if mod == "MR":
                r_acc = float(case[2:])
                cfg = SimulationConfig(modality="mri", seed=seed, mri=MRISettings(
                    coils=8, acceleration=r_acc, calibration=6 if args.quick else 24,
                    snr=30.0, coil_model="birdcage"))
                mask = ref > 0.05 * ref.max()
                data_range = float(ref.max())
                swept, plain = ("l1-wavelet", "tv"), ("cg-sense",)
            else:
                cfg = SimulationConfig(modality="ct", seed=seed,
                                       ct=CTSettings(views=int(case[2:]), dose_i0=1e5))
                mask = ref > -900.0
                data_range = float(ref.max() - ref.min())
                swept, plain = ("tv",), ("fbp", "sirt", "cgls")
            try:
                m = simulate(vol, cfg, device=args.device)
                classical = {} if args.skip_classical else _classical(
                    m, swept, plain, ref, mask, data_range, args.device, args.quick)
            except Exception as exc:  # record the failure, go on with the other cases
                _write(args.out, {"case": case, "error": f"{type(exc).__name__}: {exc}"})
                continue
            for conf in (args.configs.split(";") if args.configs else [""]):
                settings = _parse(conf)
                sampler = str(settings.pop("sampler", args.sampler))
                steps = int(settings.pop("steps", args.steps))
                try:
                    t0 = time.perf_counter()
                    res = posterior_sample(m, prior, sampler=sampler, steps=steps,
                                           samples=args.samples, seed=0, device=dev,
                                           options=SamplerOptions.defaults(mod, sampler, **settings),
                                           tiling=args.tiling, precision=args.precision)
                    t_diff = time.perf_counter() - t0
                except Exception as exc:
                    _write(args.out, {"case": case, "config": conf,
                                      "error": f"{type(exc).__name__}: {exc}"})
                    continue
                _report(args, case, seed, shape, mod, res, t_diff, ref, mask, data_range,
                        classical, conf, sampler, steps, prior.name, card)
    return 0


def _parse(conf: str) -> dict:
    out: dict = {}
    for item in filter(None, (c.strip() for c in conf.split(","))):
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _write(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def _report(args, case, seed, shape, mod, res, t_diff, ref, mask, data_range, classical,
            conf, sampler, steps, prior_name, card) -> None:
    """One JSON row: diffusion metrics against the classical ones of the same case."""
    from medrecon.sampling import calibration

    diff = {**_metrics(res.mean, ref, mask, data_range),
            "seconds": t_diff, "nfe": res.nfe,
            "residual": res.residual}
    if res.std is not None:
        diff["calibration_2std"] = calibration(res.mean, res.std, ref, 2.0, mask)
        diff["mean_std_in_head"] = float(res.std[mask].mean())
    best_name = max(classical, key=lambda k: classical[k]["psnr"]) if classical else None
    row = {"case": case, "head_seed": seed, "shape": list(shape), "modality": mod,
           "config": conf, "diffusion": diff, "classical": classical,
           "best_classical": best_name,
           "gain_db": (diff["psnr"] - classical[best_name]["psnr"]) if best_name
           else None,
           "sampler": sampler, "steps": steps, "samples": args.samples,
           "tiling": args.tiling, "precision": args.precision, "prior": prior_name, "device": card,
           "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "command": " ".join(sys.argv)}
    _write(args.out, row)


if __name__ == "__main__":
    raise SystemExit(main())
