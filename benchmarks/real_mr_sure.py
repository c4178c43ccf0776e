"""MR self-tuned weights on the real validation volumes: held-out samples alone against
held-out + SURE, each against the oracle sweep of benchmarks/real_quality.py (classical only).

Validation only: nothing is tuned on these files. Per case and setting (mr4, mr8: the
simulation of :func:`real_quality._mri_config`, 8 coils, SNR 30, seed 0) and method
(l1-wavelet, tv): the self-tuned run with ``sure=false`` (the former rule) and with the default
(held-out + SURE), scored by :func:`real_quality._metrics` (PSNR over voxels above 5 % of the
reference maximum, data range the reference maximum); the oracle is real_quality's sweep,
``LAM_FACTORS`` (2^-4 .. 2^4) times the former rule's pick, plus the new pick
(``--default-only``: the default run alone, no sweep). One JSON line per case, setting and
method.

Usage (the cases exported by ``real_quality.py --export``)::

    OMP_NUM_THREADS=2 python benchmarks/real_mr_sure.py --cases-dir .devrun/real_cases \\
        --out real_mr_sure.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_quality import LAM_FACTORS, _metrics, _mri_config, load_cases  # noqa: E402


def run(vol: Any, setting: str, method: str, default_only: bool = False) -> dict[str, Any]:
    from medrecon.recon.base import ReconOptions
    from medrecon.reconstruct import reconstruct
    from medrecon.simulate import simulate

    ref = vol.data.astype(np.float32)
    region, data_range = ref > 0.05 * ref.max(), float(ref.max())
    m = simulate(vol, _mri_config(vol.shape, float(setting[2:])), device="cpu")
    row: dict[str, Any] = {"acquisition": {k: m.acquisition.get(k) for k in (
        "acceleration", "mask", "calibration", "dims")}}
    rules = (("sure", {}),) if default_only else (("heldout", {"sure": False}), ("sure", {}))
    for key, extra in rules:
        t0 = time.perf_counter()
        r = reconstruct(m, method, ReconOptions(device="cpu", extra=extra))
        row[key] = {**_metrics(r.volume.data, ref, region, data_range),
                    "lam": float(r.output.info["lam"]),
                    "seconds": round(time.perf_counter() - t0, 1),
                    "line": r.output.info.get("autotune_line"),
                    "autotune": r.output.info.get("autotune")}
    if default_only:
        return row
    lam0 = row["heldout"]["lam"]
    sweep = {}
    for f in LAM_FACTORS:
        r = reconstruct(m, method, ReconOptions(lam=lam0 * f, device="cpu"))
        sweep[f] = _metrics(r.volume.data, ref, region, data_range)["psnr"]
    best = max(sweep, key=sweep.__getitem__)
    row["oracle"] = {"lam": lam0 * best, "psnr": sweep[best], "lam_factor": best,
                     "edge_of_sweep": best in (LAM_FACTORS[0], LAM_FACTORS[-1]),
                     "sweep": {f"{f:g}": round(v, 3) for f, v in sweep.items()}}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases-dir", type=Path, required=True)
    ap.add_argument("--cases", default="mr_brain_piesno,mr_dwi_b0,mr_abdomen")
    ap.add_argument("--settings", default="mr4,mr8")
    ap.add_argument("--methods", default="l1-wavelet,tv")
    ap.add_argument("--default-only", action="store_true",
                    help="the default rule's run alone (no sure=false run, no sweep: compare "
                         "with the sweep recorded in benchmarks/RESULTS_autotune.md)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    common = {"device": "cpu", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
    for name, vol, note in load_cases(args.cases.split(","), args.cases_dir):
        if vol is None:
            print(json.dumps({"case": name, "skipped": note}), flush=True)
            continue
        for setting in args.settings.split(","):
            for method in args.methods.split(","):
                row = {"case": name, "shape": list(vol.shape), "setting": setting,
                       "method": method, **run(vol, setting, method, args.default_only),
                       **common}
                line = json.dumps(row)
                print(line, flush=True)
                if args.out is not None:
                    with args.out.open("a") as fh:
                        fh.write(line + "\n")


if __name__ == "__main__":
    main()
