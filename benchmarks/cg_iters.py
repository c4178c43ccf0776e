"""MR data-consistency CG count: 10 against 30 iterations per DDS step, on synthetic heads.

30 CG iterations per step gain 0.65 / 1.28 dB on the real brain at R = 4 / 8 with the weight
self-tuned (benchmarks/RESULTS_autotune.md) but trust the data more at a given weight, so the
modality's fixed weight (``SamplerOptions`` defaults: the demo's weight, the centre of
``--lam auto``'s grid, a Python caller's default) must be chosen again with them. Two actions:

``sweep``: diffusion at fixed weights, guard off (the sampler itself), on *validation* heads
(seeds 1,000,100 + i, never trained on): one row per head, acceleration, CG count and weight.
This is where a fixed weight may be chosen.

``default``: the default path (``--lam auto``, guard on) with either count on *test* heads
(2,000,000 + i, the demo's and ``std_calibration.py check``'s), one row per head, acceleration
and count: PSNR, the chosen weight, the guard's line, seconds. Nothing is chosen here.

Acquisition as ``std_calibration.py``: 8 coils, 3D Poisson-disc R, calibration box 3/16 of
the phase matrix, SNR 30. PSNR of the magnitude over the reference's foreground mask
(:func:`medrecon.evaluation.foreground_mask`), data range the reference's max - min.

Commands (results: benchmarks/RESULTS_autotune.md, "30 CG iterations: the fixed weight")::

    python benchmarks/cg_iters.py sweep --shape 96,112,112 --heads 2 --settings mr4,mr8,mr12 \\
        --cg 10,30 --lams 0.1,0.2,0.4,0.8,1.6 --steps 50 --samples 2 --device cuda --out s.jsonl
    python benchmarks/cg_iters.py default --shape 96,112,112 --heads 1 --settings mr4,mr8,mr12 \\
        --cg 10,30 --steps 50 --samples 4 --device cuda --out d.jsonl
    # CPU smoke test
    python benchmarks/cg_iters.py sweep --shape 32,32,32 --heads 1 --settings mr8 --cg 10,30 \\
        --lams 0.1 --steps 2 --samples 2 --device cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from std_calibration import FIT_SEEDS_START, _config, _head

TEST_SEEDS_START = 2_000_000  # the test split (medrecon.priors.synthetic.split_seeds)


def _row(args: argparse.Namespace, out: Any, ref: Any, mask: Any, seconds: float,
         **keys: Any) -> dict[str, Any]:
    from medrecon.metrics import psnr

    rng = float(ref.max() - ref.min())
    info = out.output.info
    return {**keys, "psnr": psnr(out.volume.data, ref, data_range=rng, mask=mask),
            "lam": info.get("lam"), "guard_line": info.get("guard_line"),
            "seconds": round(seconds, 1), "steps": args.steps, "samples": args.samples,
            "shape": list(ref.shape), "date": datetime.now(UTC).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("sweep", "default"))
    ap.add_argument("--prior", default="default")
    ap.add_argument("--shape", default="96,112,112")
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--settings", default="mr4,mr8,mr12")
    ap.add_argument("--cg", default="10,30", help="CG iteration counts")
    ap.add_argument("--lams", default="0.1", help="sweep: fixed weights")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from medrecon.evaluation import foreground_mask
    from medrecon.priors import load_prior
    from medrecon.recon.base import ReconOptions
    from medrecon.reconstruct import reconstruct
    from medrecon.simulate import simulate

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = tuple(int(v) for v in args.shape.split(","))
    prior = load_prior(args.prior, device=args.device)
    spacing = float(prior.spacing_mm[0])
    start = FIT_SEEDS_START if args.action == "sweep" else TEST_SEEDS_START
    counts = [int(c) for c in args.cg.split(",")]
    lams = [float(v) for v in args.lams.split(",")] if args.action == "sweep" else [None]
    for i in range(args.heads):
        seed = start + i
        head = _head("MR", shape, spacing, seed, args.device)
        ref = np.abs(np.asarray(head.data))
        mask = foreground_mask(ref)
        for setting in args.settings.split(","):
            meas = simulate(head, _config("MR", setting, shape, i), device=args.device)
            for cg in counts:
                for lam in lams:
                    extra: dict[str, Any] = {"steps": args.steps,
                                             "samples": args.samples, "seed": 0, "cg_iters": cg}
                    if lam is not None:
                        extra.update(lam=lam, guard=False)
                    t0 = time.perf_counter()
                    out = reconstruct(meas, "diffusion",
                                      ReconOptions(device=args.device, extra=extra),
                                      prior=prior)
                    row = _row(args, out, ref, mask, time.perf_counter() - t0,
                               action=args.action, seed=seed, setting=setting, cg_iters=cg,
                               fixed_lam=lam)
                    line = json.dumps(row)
                    if args.out is not None:
                        with args.out.open("a") as f:
                            f.write(line + "\n")
                    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
