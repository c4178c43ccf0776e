"""Throughput of ``medrecon reconstruct-many`` on 1, 2 and 4 GPUs (studies per second).

Issue 16 asks for at least 0.9x linear scaling per GPU added. The script simulates a set of
measurements once, then runs the real command under ``torchrun --standalone --nproc_per_node N``
for every N, and reports for each N:

- ``wall_s`` / ``studies_per_s``: the whole job as a user sees it (start, imports, prior load,
  every study, summary);
- ``busy_studies_per_s``: studies / the busiest rank's summed method seconds (the steady rate,
  without start-up);
- ``speedup`` and ``efficiency`` (speedup / N) of both against N = 1.

Usage (on a machine with 4 GPUs; record card, date and command with the numbers):
    python benchmarks/reconstruct_many_throughput.py --procs 1 2 4 --studies 32 \
        --method diffusion --steps 25 --size 96 --out benchmarks/reconstruct_many_throughput.json
A check of the machinery on CPU (gloo; the numbers mean nothing for GPUs):
    python benchmarks/reconstruct_many_throughput.py --quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_studies(folder: Path, n: int, size: int, modality: str, seed: int = 0) -> None:
    """``n`` simulated measurements ``s000.h5``... of the Shepp-Logan phantom (size^3, 2 mm;
    each its own mask / noise seed: the work per study, not the image, is what is timed)."""
    import dataclasses

    from medrecon.io.measurement import write_measurement
    from medrecon.phantoms import shepp_logan_volume
    from medrecon.simulate import CTSettings, MRISettings, SimulationConfig, simulate

    folder.mkdir(parents=True, exist_ok=True)
    cfg = (SimulationConfig(mri=MRISettings(coils=8, acceleration=4.0)) if modality == "MR"
           else SimulationConfig(modality="ct", ct=CTSettings(views=60)))
    vol = shepp_logan_volume(size, modality=modality)
    for i in range(n):
        write_measurement(simulate(vol, dataclasses.replace(cfg, seed=seed + i)),
                          folder / f"s{i:03d}.h5")


def run_job(procs: int, data: Path, out: Path, recon_args: list[str]) -> dict[str, float]:
    """One ``reconstruct-many`` run on ``procs`` ranks; wall time and the busiest rank's time."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={procs}", "-m", "medrecon.cli.main", "reconstruct-many",
           str(data), "--out-dir", str(out), *recon_args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"reconstruct-many on {procs} ranks failed ({done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    rows = json.loads((out / "summary.json").read_text())
    if any(r["status"] != "ok" for r in rows):
        raise SystemExit(f"not every study was reconstructed on {procs} ranks: {rows}")
    busy: dict[int, float] = {}
    for r in rows:
        busy[r["rank"]] = busy.get(r["rank"], 0.0) + float(r["seconds"])
    return {"wall_s": wall, "busiest_rank_s": max(busy.values()), "studies": len(rows)}


def card() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--studies", type=int, default=32)
    ap.add_argument("--size", type=int, default=96, help="head phantom size (voxels a side)")
    ap.add_argument("--modality", choices=["MR", "CT"], default="MR")
    ap.add_argument("--method", default="diffusion")
    ap.add_argument("--steps", type=int, default=None, help="diffusion steps")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true",
                    help="CPU check: 4 studies of 24^3, cg-sense, 1 and 2 gloo ranks")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    a = ap.parse_args()
    if a.quick:
        a.procs, a.studies, a.size, a.method, a.device = [1, 2], 4, 24, "cg-sense", "cpu"
        a.steps = None
    recon_args = ["--method", a.method, "--device", a.device]
    if a.steps is not None:
        recon_args += ["--steps", str(a.steps)]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_studies(data, a.studies, a.size, a.modality)
        runs = {n: run_job(n, data, Path(tmp) / f"out{n}", recon_args) for n in a.procs}
    base = runs[min(runs)]
    base_n = min(runs)
    results = []
    for n, r in sorted(runs.items()):
        speed = base["wall_s"] / r["wall_s"] * base_n
        busy_speed = base["busiest_rank_s"] / r["busiest_rank_s"] * base_n
        results.append({
            "procs": n, "wall_s": round(r["wall_s"], 2),
            "studies_per_s": round(r["studies"] / r["wall_s"], 4),
            "busy_studies_per_s": round(r["studies"] / r["busiest_rank_s"], 4),
            "speedup": round(speed, 3), "efficiency": round(speed / n, 3),
            "busy_speedup": round(busy_speed, 3), "busy_efficiency": round(busy_speed / n, 3)})
    report = {
        "benchmark": "reconstruct-many throughput",
        "card": card(), "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", *sys.argv]),
        "studies": a.studies, "size": a.size, "modality": a.modality, "method": a.method,
        "steps": a.steps, "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if a.out is not None:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
