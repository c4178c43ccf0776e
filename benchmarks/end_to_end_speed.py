"""End-to-end seconds of ``medrecon reconstruct --method diffusion``: start, load, sample, write.

Issue 14's targets are end to end. Each case writes a synthetic head (test seed) and its
simulated measurement once (``medrecon phantom`` + ``medrecon simulate``, not timed), then runs
``medrecon reconstruct`` in a fresh process per variant and records the wall time seen from
outside (Python start-up, imports, CUDA start-up, reading the file, loading the prior,
sampling, writing the NIfTI and its settings file) beside the reconstruction's own seconds
that the CLI prints (``reconstruct_seconds``: problem set-up and sampling); the difference is
start-up, loading and writing. The default path's rows add ``stage_seconds`` from the settings
file: the maps and hold-out split, the weight's runs, the guard's runs and classical methods,
and the final run. Each row also carries the output's PSNR and SSIM against the head it was
simulated from (``compare_volumes``, region ``auto``), so a faster variant shows what it costs.

Cases: ``mr128`` / ``mr256`` (8 coils, 3D Poisson R = 8, coil maps in the file) and ``ct256``
(60 parallel views, I0 = 1e5). A variant is ``NAME=ARGS``, the extra CLI arguments; the
sampling-only runs use one sample, the modality's default weight and no guard
(``--guard off --lam ...``), as ``sampling_speed.py`` does; a variant named ``defaults...``
adds only its own arguments (self-tuned weight, guard, one sample: what a user gets).

    python benchmarks/end_to_end_speed.py --out e2e.jsonl --work /tmp/e2e --cases mr128,ct256,mr256 \
        --variants "shift=;fit=--set tiling=fit" [--device cuda]

One JSON line per run, appended as soon as it finishes.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import yaml

from medrecon.reconstruct import settings_path

MEDRECON = [sys.executable, "-m", "medrecon"]  # works from a source tree on PYTHONPATH too
CASES = {
    "mr128": (128, "MR", ["--coils", "8", "--acceleration", "8", "--snr", "30"]),
    "mr256": (256, "MR", ["--coils", "8", "--acceleration", "8", "--snr", "30"]),
    "ct256": (256, "CT", ["--views", "60", "--dose", "1e5"]),
}


def _run(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def _prepare(case: str, work: Path, device: str, quick: bool) -> tuple[Path, float]:
    """The case's measurement file (written once) and the seconds simulate took."""
    from medrecon.priors.synthetic import split_seeds

    size, modality, sim = CASES[case]
    size = 32 if quick else size
    ref, meas = work / f"{case}_ref.nii.gz", work / f"{case}.h5"
    if meas.exists():
        return meas, 0.0
    seed = str(split_seeds("test")[0])
    _, p = _run([*MEDRECON, "phantom", str(ref), "--kind", "head", "--modality", modality,
                 "--size", str(size), "--spacing", "2.0", "--seed", seed])
    if p.returncode:
        raise RuntimeError(p.stderr[-800:])
    sec, p = _run([*MEDRECON, "simulate", str(ref), str(meas), "--seed", seed,
                   "--device", device, *sim])
    if p.returncode:
        raise RuntimeError(p.stderr[-800:])
    return meas, sec


def _quality(out: Path, ref: Path) -> dict[str, float]:
    """PSNR and SSIM of the output ``out`` against the reference head ``ref`` (region auto)."""
    from medrecon.evaluation import compare_volumes
    from medrecon.io import load_volume

    result, _ = compare_volumes(load_volume(out), load_volume(ref), mask="auto")
    return {"psnr": float(result.volume["psnr"]), "ssim": float(result.volume["ssim"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="folder for the files")
    ap.add_argument("--cases", default="mr128,ct256,mr256")
    ap.add_argument("--variants", default="shift=")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: 32^3 volumes")
    args = ap.parse_args(argv)

    from medrecon.sampling.api import MODALITY_DEFAULTS

    args.work.mkdir(parents=True, exist_ok=True)
    card = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
            else platform.processor())
    variants = [v.split("=", 1) for v in args.variants.split(";") if v]
    for case in args.cases.split(","):
        meas, sim_s = _prepare(case, args.work, args.device, args.quick)
        modality = CASES[case][1]
        for name, extra in variants:
            out = args.work / f"{case}_{name}.nii.gz"
            cmd = [*MEDRECON, "reconstruct", str(meas), str(out), "--method", "diffusion",
                   "--steps", str(args.steps), "--device", args.device, "--overwrite",
                   "--no-progress", *shlex.split(extra)]
            if not name.startswith("defaults"):
                lam = MODALITY_DEFAULTS[(modality, "dds")]["lam"]
                cmd += ["--guard", "off", "--lam", str(lam)]
            wall, proc = _run(cmd)
            row: dict = {"case": case, "variant": name, "args": extra, "wall_seconds": wall,
                         "simulate_seconds": sim_s or None, "returncode": proc.returncode}
            if proc.returncode:
                row["error"] = (proc.stderr or proc.stdout)[-800:]
            else:  # "Wrote ... (50 steps, lam 0.1, 7.3 s on cuda)": the reconstruction itself
                found = re.search(r"([\d.]+) s on ", proc.stdout + proc.stderr)
                row["reconstruct_seconds"] = float(found.group(1)) if found else None
                lines = (proc.stdout + proc.stderr).splitlines()
                for key, head in (("tune_line", "Self-tuned"), ("guard_line", "Guard")):
                    row[key] = next((ln for ln in lines if ln.startswith(head)), None)
                # the default path's wall seconds per stage (weight, guard, final run)
                written = yaml.safe_load(settings_path(out).read_text())
                row["stage_seconds"] = (written.get("resolved") or {}).get("stage_seconds")
                row.update(_quality(out, meas.with_name(f"{case}_ref.nii.gz")))
            given = shlex.split(extra)  # a variant's own --steps overrides --steps
            steps = (int(given[given.index("--steps") + 1]) if "--steps" in given[:-1]
                     else args.steps)
            row.update(device=card, torch=torch.__version__, steps=steps,
                       date=datetime.now(UTC).isoformat(timespec="seconds"),
                       command=" ".join(cmd))
            print(json.dumps(row), flush=True)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
