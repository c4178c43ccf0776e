"""Speed of one whole-volume denoiser pass: precision, memory layout, torch.compile, batch.

Issue 14 item 2. Each variant denoises a 256^3 (``--size``) model-space volume at sigma 1 with
the prior's tiled denoiser, as the sampler calls it, and reports the median milliseconds of
``--repeat`` passes after ``--warmup`` passes (the first pass also times compilation), the
patch network's share, patches per second, and the largest deviation from the baseline
variant's output on the same input and the same tile grid (tiling ``roll`` here, so the
grid does not depend on the variant; ``shift`` is timed separately for its extra tiles).

    python benchmarks/network_speed.py --out network_speed.jsonl [--size 256] \
        [--variants eager_bf16,bf16_full,eager_bf16+bench,compile] [--batches 8,16,32]

Variants (all on the prior's own network, copied per variant):

* ``eager_fp32``: no autocast;
* ``eager_bf16``: bf16 autocast, float32 weights (the sampler's default on CUDA);
* ``channels_last``: eager_bf16 with weights and inputs in ``channels_last_3d``;
* ``compile``: ``torch.compile`` of eager_bf16 (default mode, static shapes);
* ``compile_cl``: ``torch.compile`` of channels_last;
* ``bf16_full``: a bf16 copy of the network, no autocast (GroupNorm, SiLU and the residual
  adds in bf16 as well; the sampler's ``precision="bf16-full"``);
* any variant with ``+bench``: the same with ``torch.backends.cudnn.benchmark`` on (cuDNN
  times its algorithms once per input shape and keeps the fastest).

``eager_bf16`` and ``bf16_full`` (with or without ``+bench``) are also timed with ``shift``
tiling (the same grid every pass, as ``roll``) and ``fit`` tiling (a new grid every pass, as
in sampling: on the coarse offset grid its tiles come in a few shapes, and the first pass of
each shape pays cuDNN's plan search).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _make_patch_fn(net: torch.nn.Module, variant: str, mod: int, spacing: torch.Tensor):
    variant = variant.removesuffix("+bench")
    cl = variant in ("channels_last", "compile_cl")
    autocast = variant not in ("eager_fp32", "bf16_full")
    if variant == "bf16_full":
        net.network.to(torch.bfloat16)
    if cl:
        net = net.to(memory_format=torch.channels_last_3d)
    call = net
    if variant.startswith("compile"):
        call = torch.compile(net, dynamic=False)

    def patch_fn(xp: torch.Tensor, sig: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        x = xp.float()
        if cl:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        labels = torch.full((x.shape[0],), mod, dtype=torch.long, device=x.device)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = call(x, sig, modality=labels, position=pos,
                       spacing=spacing.expand(x.shape[0], 3))
        return out.float()

    return patch_fn


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prior", default="default")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--variants",
                    default="eager_fp32,eager_bf16,channels_last,compile,compile_cl")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="8,16,32", help="full patches per network call")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    from medrecon.priors import load_prior, modality_id
    from medrecon.sampling.denoiser import prior_denoiser

    dev = torch.device(args.device)
    prior = load_prior(args.prior, device=dev)
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    n = args.size
    gen = torch.Generator(dev).manual_seed(0)
    x = torch.randn((1, n, n, n), generator=gen, device=dev)
    sigma = torch.ones(1, device=dev)
    mod = modality_id("MR")
    spacing = torch.tensor(prior.spacing_mm, dtype=torch.float32, device=dev)
    ref = None
    for batch in [int(b) for b in args.batches.split(",")]:
        for variant in args.variants.split(","):
            torch.backends.cudnn.benchmark = variant.endswith("+bench")
            for tiling in ("roll", "shift", "fit"):
                if tiling != "roll" and variant.removesuffix("+bench") not in (
                        "eager_bf16", "bf16_full"):
                    continue
                net = copy.deepcopy(prior.denoiser).eval()
                den = prior_denoiser(prior, "MR", tiling=tiling, max_batch=batch, device=dev)
                den.patch_denoiser = _make_patch_fn(net, variant, mod, spacing)
                times = []
                try:
                    with torch.no_grad():
                        for _ in range(args.warmup + args.repeat):
                            if tiling != "fit":
                                den.generator.manual_seed(1)  # the same tile grid every pass
                            _sync(dev)
                            t0 = time.perf_counter()
                            out = den(x, sigma)
                            _sync(dev)
                            times.append(time.perf_counter() - t0)
                except Exception as exc:  # a variant this torch cannot run: say so, go on
                    row = {"variant": variant, "batch": batch, "tiling": tiling,
                           "error": f"{type(exc).__name__}: {exc}"[:400]}
                    print(json.dumps(row), flush=True)
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    continue
                if ref is None and tiling == "roll":
                    ref = out.clone()
                steady = times[args.warmup:]
                ms = 1000 * statistics.median(steady)
                row = {
                    "variant": variant, "batch": batch, "tiling": tiling, "size": n,
                    "ms_per_pass": round(ms, 1), "first_pass_s": round(times[0], 2),
                    "patches_per_pass": den.patches // len(times),
                    "patches_per_s": round(den.patches / len(times) / (ms / 1000), 1),
                    "network_share": round(den.network_seconds / sum(times), 3),
                    "max_dev_from_first": (None if tiling != "roll"
                                           else float((out - ref).abs().max())),
                    "peak_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                 if dev.type == "cuda" else None),
                    "device": card, "torch": torch.__version__,
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "host": platform.node(), "command": " ".join(sys.argv),
                }
                print(json.dumps(row), flush=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                del den, net
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
