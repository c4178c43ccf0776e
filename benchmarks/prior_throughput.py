"""Training throughput of a prior config (samples/s), on one device or under torchrun (DDP),
and the denoiser's inference throughput (network evaluations/s on 64^3 patches).

Usage (the numbers in RESULTS_prior.md were made so):
    python benchmarks/prior_throughput.py --config configs/prior/default.yaml --steps 300
    torchrun --nproc-per-node 2 benchmarks/prior_throughput.py --config configs/prior/default.yaml --steps 300

The synthetic pool is kept small (data.train_volumes=4) so the measurement is about the
training step; samples/s is measured over the last ``log_every`` steps (warm-up excluded) and
counts the global batch (batch_size x world size).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from medrecon.priors.config import load_train_config
from medrecon.priors.train import make_denoiser, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/prior/default.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--inference", action="store_true", help="also time inference (rank 0)")
    a = ap.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    window = max(a.steps // 3, 1)
    ov = [f"optim.steps={a.steps}", f"log.log_every={window}", "log.val_every=1000000",
          "log.preview_every=1000000", "log.ckpt_every=1000000", "data.train_volumes=4",
          "data.val_volumes=1"]
    if a.batch_size:
        ov.append(f"optim.batch_size={a.batch_size}")
    cfg = load_train_config(a.config, ov)
    with tempfile.TemporaryDirectory() as d:
        res = train(cfg, d, device="auto", progress=False)
    out = {"world_size": world, "batch_per_gpu": cfg.optim.batch_size,
           "patch": list(cfg.data.patch_size), "samples_per_s": round(res.samples_per_s, 2),
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    if rank == 0 and a.inference and torch.cuda.is_available():
        den = make_denoiser(cfg, "cuda").eval()
        for b in (1, 4, 8):
            x = torch.randn(b, 1, *cfg.data.patch_size, device="cuda")
            m = torch.zeros(b, dtype=torch.long, device="cuda")
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                for _ in range(3):
                    den(x, 1.0, modality=m)
                torch.cuda.synchronize()
                t = time.perf_counter()
                n = 20
                for _ in range(n):
                    den(x, 1.0, modality=m)
                torch.cuda.synchronize()
            out[f"inference_bf16_b{b}_patches_per_s"] = round(n * b / (time.perf_counter() - t), 1)
    if rank == 0:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
