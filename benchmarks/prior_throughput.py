"""Training throughput of a prior config (samples/s), on one device or under torchrun (DDP),
and the denoiser's inference throughput (network evaluations/s on 64^3 patches).

Usage (the numbers in RESULTS_prior.md were made so):
    python benchmarks/prior_throughput.py --config configs/prior/default.yaml --steps 300
    torchrun --nproc-per-node 2 benchmarks/prior_throughput.py --config configs/prior/default.yaml --steps 300
    python benchmarks/prior_throughput.py --config configs/prior/default_v2.yaml --steps 300

The synthetic pool is kept small (data.train_volumes=4) so the measurement is about the
training step; samples/s is measured over the last ``log_every`` steps (warm-up excluded) and
counts the global batch (batch_size x world size).

For ``data.source: rendered`` (one process) it also separates the two costs of a step:
``render_only_samples_per_s`` (RenderedPatchSource.batch alone, synchronised) and
``step_only_samples_per_s`` (forward, backward and AdamW on one fixed batch, no rendering);
training is generator-bound when the first is not well above the full-loop samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable

import torch

from medrecon.priors.config import TrainConfig, load_train_config
from medrecon.priors.train import make_denoiser, train


def split_rendered(cfg: TrainConfig, n: int, device: str = "cuda") -> dict[str, float]:
    """Samples/s of rendering alone and of the training step alone (one process)."""
    from medrecon.priors.data import RenderedPatchSource

    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    src = RenderedPatchSource(cfg.data, cfg.normalisation, cfg.seed)
    b = cfg.optim.batch_size

    def timed(fn: Callable[[int], object]) -> float:
        for i in range(3):
            fn(i)
        sync()
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        sync()
        return n * b / (time.perf_counter() - t)

    render = timed(lambda i: src.batch(i, b, dev))
    batch = src.batch(0, b, dev)
    den = make_denoiser(cfg, dev).train()
    opt = torch.optim.AdamW(den.parameters(), lr=1e-5)
    sigma = torch.full((b,), 0.5, device=dev)

    def step(i: int) -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss, _, _ = den.training_loss(batch.x, modality=batch.modality,
                                           position=batch.position, spacing=batch.spacing,
                                           sigma=sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"render_only_samples_per_s": round(render, 2),
            "step_only_samples_per_s": round(timed(step), 2)}


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
    if world == 1 and cfg.data.source == "rendered" and torch.cuda.is_available():
        out.update(split_rendered(cfg, n=max(a.steps // 3, 5)))
    if rank == 0 and a.inference and torch.cuda.is_available():
        den = make_denoiser(cfg, "cuda").eval()
        for b in (1, 4, 8):
            x = torch.randn(b, 1, *cfg.data.patch_size, device="cuda")
            m = torch.zeros(b, dtype=torch.long, device="cuda")
            sp = torch.full((b, 3), 2.0, device="cuda")
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                for _ in range(3):
                    den(x, 1.0, modality=m, spacing=sp)
                torch.cuda.synchronize()
                t = time.perf_counter()
                n = 20
                for _ in range(n):
                    den(x, 1.0, modality=m, spacing=sp)
                torch.cuda.synchronize()
            out[f"inference_bf16_b{b}_patches_per_s"] = round(n * b / (time.perf_counter() - t), 1)
    if rank == 0:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
