"""Does the guard's held-out choice between self-tuned L1-wavelet and TV pick the better PSNR?

The diffusion guard (:mod:`medrecon.guard`) compares diffusion with the MR classical method
(self-tuned l1-wavelet or TV) that predicts the guard's held-out k-space samples better
(:func:`medrecon.guard.classical_runs`). This script runs exactly that classical step (no
diffusion, CPU is enough) and scores both self-tuned results against the reference, so one can
see whether the method with the smaller held-out error is the one with the higher PSNR:
``picked`` on the split's error (the guard's rule), ``picked_on_folds`` on :func:`pooled_error`
(the self-tuning's error at its weight, pooled over its folds where it has several: a
candidate rule, not adopted; benchmarks/RESULTS_autotune.md).

Cases: the real MR validation files of ``benchmarks/real_quality.py`` (read from a folder its
``--export`` wrote; never tuned on), simulated and scored as there (8 coils, SNR 30, seed 0,
its mask rule; PSNR over voxels above 5 % of the reference maximum, data range the maximum),
and synthetic T1 heads of the generator (test seeds 900000 + i, a 32 x 32 x 16 slab at 6 mm,
as in ``benchmarks/autotune_quality.py``), with the same acquisition and score. One JSON line
per case and acceleration::

    nice -n 10 python benchmarks/guard_classical_choice.py --cases-dir .devrun/real_cases \\
        --out choice.jsonl   # [--cases mr_dwi_b0] [--heads 2] [--settings mr4,mr8]

``seconds`` (per method: its self-tuning on all data plus the training-part run) are wall
times of this process; on a shared CPU they are inflated by the load. For comparison only
(the guard does not do it), ``blend_psnr`` scores ``w l1 + (1 - w) tv`` with the ``w`` in
[0, 1] that predicts the held-out data best (:func:`medrecon.holdout.blend_weight`).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_quality import _metrics, _mri_config, load_cases  # noqa: E402

from medrecon.guard import (  # noqa: E402
    ClassicalRun,
    blend_weight,
    classical_runs,
    holdout_split,
)
from medrecon.io import Volume  # noqa: E402
from medrecon.simulate import simulate  # noqa: E402

REAL_MR = ("mr_dwi_b0", "mr_brain_piesno", "mr_abdomen")


def synthetic_head(i: int, size: int = 32) -> Volume:
    """Test head ``900000 + i`` (T1, lesions, no noise), the central half slab along axis 2."""
    from medrecon.priors.synthetic import generate_head

    vol = generate_head((size, size, size), spacing_mm=192.0 / size, modality="MR",
                        contrast="T1", seed=900000 + i, lesions=True, noise=False)
    half = slice(size // 4, size // 4 + size // 2)
    return Volume(np.ascontiguousarray(vol.data[:, :, half]), vol.affine, modality="MR")


def pooled_error(run: ClassicalRun) -> float:
    """The held-out error the method's self-tuning reported at its chosen weight (pooled over
    its folds, :func:`medrecon.recon.autotune.mr_holdout_folds`); the split's with one fold."""
    tuned = run.output.info.get("autotune") or {}
    if int(tuned.get("folds", 1)) <= 1:
        return run.error
    lam = run.lam / float(tuned["scale"])
    grid = tuned["grid"]
    i = min(range(len(grid)), key=lambda j: abs(np.log(grid[j] / lam)))
    return float(tuned["heldout_errors"][i])


def run_case(name: str, vol: Volume, setting: str, device: torch.device) -> dict[str, Any]:
    ref = vol.data.astype(np.float32)
    region = ref > 0.05 * ref.max()
    data_range = float(ref.max())
    m = simulate(vol, _mri_config(vol.shape, float(setting[2:])), device=device)
    split = holdout_split(m, device)
    runs = classical_runs(m, split, device)
    picked = min(runs, key=lambda r: r.error)
    pooled = min(runs, key=pooled_error)
    rows = {r.method: {"psnr": _metrics(r.output.image, ref, region, data_range)["psnr"],
                       "heldout_error": r.error, "pooled_error": pooled_error(r),
                       "folds": (r.output.info.get("autotune") or {}).get("folds", 1),
                       "lam": r.lam, "seconds": round(r.seconds, 2)} for r in runs}
    better = max(rows, key=lambda k: rows[k]["psnr"])
    # Not what the guard does, for comparison: the blend of the two classical results with
    # the weight that predicts the held-out data best (as the guard blends with diffusion).
    l1, tv = runs
    w = blend_weight(l1.prediction, tv.prediction, split.held.y)
    blend = _metrics(w * l1.output.image + (1 - w) * tv.output.image, ref, region,
                     data_range)["psnr"]
    return {"case": name, "shape": list(vol.shape), "setting": setting,
            "acceleration": m.acquisition.get("acceleration"), "methods": rows,
            "picked": picked.method, "better_psnr": better,
            "right": picked.method == better,
            "cost_db": rows[better]["psnr"] - rows[picked.method]["psnr"],
            "picked_on_folds": pooled.method, "right_on_folds": pooled.method == better,
            "cost_db_on_folds": rows[better]["psnr"] - rows[pooled.method]["psnr"],
            "holdout": split.text, "blend_l1_weight": w, "blend_psnr": blend}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases-dir", type=Path, required=True,
                    help="folder written by real_quality.py --export")
    ap.add_argument("--cases", default=",".join(REAL_MR))
    ap.add_argument("--heads", type=int, default=2, help="synthetic heads (0: none)")
    ap.add_argument("--settings", default="mr4,mr8")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    device = torch.device("cpu")
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    cases: list[tuple[str, Any]] = [(n, v) for n, v, _ in load_cases(names, args.cases_dir)]
    cases += [(f"synthetic_head_{i}", synthetic_head(i)) for i in range(args.heads)]
    common = {"device": "cpu", "threads": torch.get_num_threads(),
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
    for name, vol in cases:
        for setting in (s.strip() for s in args.settings.split(",")):
            row = ({"case": name, "skipped": "not in the cases folder"} if vol is None
                   else run_case(name, vol, setting, device))
            line = json.dumps({**row, **common})
            print(line, flush=True)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
