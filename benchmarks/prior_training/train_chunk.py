"""One chunk of prior training on a borrowed GPU machine, with what must outlast it copied out.

The device machine runs one command for at most 10 minutes and keeps ``/tmp`` only while it
stays warm between back-to-back calls. So each call runs this script once:

* training resumes exactly from ``RUN/checkpoint`` when the run folder holds one (the previous
  chunk on the same warm machine), else starts from the config's ``init_from`` (or from
  ``--init-from``, e.g. the compact weights a lost machine's last chunk brought back: then
  only that chunk's optimiser state is lost);
* it stops by wall clock (``--minutes``), writing a checkpoint;
* it copies the compact EMA prior (bf16 safetensors in shards below 15 MB, as shipped), the
  training and validation logs, the newest preview and a timing line into ``--out``
  (``$OUT``: at most 8 files come back).

    python benchmarks/prior_training/train_chunk.py --config configs/prior/default_v2.yaml \
        --run /tmp/prior_v2 --minutes 8 --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

#: Keys export_prior writes itself (the rest of a prior's JSON is its description).
_OWN_KEYS = ("format", "version", "name", "weights", "dtype")


def export_compact(prior_json: Path, out: Path, max_shard_bytes: int = 15_000_000) -> Path:
    """Re-export a run's prior as bf16 shards below ``max_shard_bytes`` into ``out``."""
    from medrecon.priors.checkpoint import export_prior, read_prior_files

    doc, tensors = read_prior_files(prior_json)
    info = {k: v for k, v in doc.items() if k not in _OWN_KEYS}
    return export_prior(out, str(doc["name"]), tensors, info, torch.bfloat16, max_shard_bytes)


def main() -> None:
    from medrecon.priors.config import load_train_config
    from medrecon.priors.train import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--run", required=True, help="run folder on the device (e.g. /tmp/...)")
    ap.add_argument("--minutes", type=float, required=True, help="training wall-clock budget")
    ap.add_argument("--out", required=True, help="where the compact results go ($OUT)")
    ap.add_argument("--init-from", help="warm start from these weights instead of the "
                                        "config's init_from (a fresh run only)")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    run, out = Path(a.run), Path(a.out)
    resume = (run / "checkpoint" / "state.json").is_file()
    overrides = list(a.overrides)
    if a.init_from and not resume:
        overrides.append(f"init_from={a.init_from}")
    cfg = load_train_config(run / "config.yaml" if resume else a.config,
                            overrides if not resume else a.overrides)
    t0 = time.perf_counter()
    res = train(cfg, run, resume=resume, device=a.device, max_minutes=a.minutes, progress=False)
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    assert res.prior_json is not None
    export_compact(res.prior_json, out / "prior")
    for name in ("log.csv", "val.csv"):
        if (run / name).is_file():
            shutil.copy(run / name, out / name)
    previews = sorted((run / "previews").glob("*.png"))
    if previews:
        shutil.copy(previews[-1], out / previews[-1].name)
    doc = json.loads((out / "prior" / f"{cfg.name}.json").read_text())
    card = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    line = {"card": card, "resumed": resume, "step": res.step,
            "total_steps": doc["training"].get("total_steps", res.step),
            "seconds": round(seconds, 1), "samples_per_s": round(res.samples_per_s, 2),
            "val": res.val_psnr}
    with (out / "chunks.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line))


if __name__ == "__main__":
    main()
