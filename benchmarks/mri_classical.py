"""Classical MRI reconstructions on simulated 3D multi-coil acquisitions, with BART as a peer.

For each phantom and acceleration: simulate (``medrecon.simulate``, 8 coils, Poisson-disc mask
with a fully sampled calibration box of side max(8, size // 6), SNR 30, smooth synthetic phase), reconstruct with zero-filled, CG-SENSE, L1-wavelet and TV at
their default weights and at the best weight of a small grid (oracle tuning, as papers report),
run BART ``pics -l2`` / ``-l1`` on the same k-space and coil maps over the same grid, and report
PSNR / SSIM of the magnitude against the reference (data range = reference max - min, whole
volume; :mod:`medrecon.metrics`) and wall time.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/mri_classical.py --size 64 --accelerations 4 8 12 \
        --json benchmarks/mri_classical.json

Phantoms: ``head`` (the synthetic T1 head of :mod:`medrecon.priors.synthetic`, noise-free
reference, 3 mm voxels) and ``shepp-logan`` (3D modified Shepp-Logan).

BART conventions (see tests/recon/test_bart_peer.py): arrays are passed as (x, y, z, coil) =
our (I, J, K, C); ``-w 1`` disables BART's intensity scaling so its objective and weights match
ours; ``-n`` disables random wavelet shifts; even grid sizes keep the FFT centring identical.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from medrecon.io import Volume
from medrecon.io.cfl import read_cfl, write_cfl
from medrecon.methods import get_method
from medrecon.metrics import psnr, ssim
from medrecon.phantoms import shepp_logan_3d
from medrecon.problem import measurement_problem
from medrecon.recon.base import ReconOptions
from medrecon.recon.mri import DEFAULT_ALPHA, default_lam
from medrecon.simulate import MRISettings, SimulationConfig, simulate

# Relative weights (lam = alpha * robust max |A^H y|) tried for the oracle-tuned rows; CG-SENSE
# weights are absolute (A^H A is scale-free).
GRID = {
    "cg-sense": (1e-4, 1e-3, 1e-2),
    "l1-wavelet": (3e-4, 1e-3, 3e-3),
    "tv": (2e-4, 5e-4, 1e-3),
}


def phantom(name: str, size: int) -> Volume:
    if name == "shepp-logan":
        return Volume(shepp_logan_3d((size, size, size)), np.eye(4), modality="MR")
    from medrecon.priors.synthetic import generate_head

    # 192 mm field of view whatever the grid; seed 900000 is outside the training split.
    return generate_head((size, size, size), spacing_mm=192.0 / size, modality="MR",
                         contrast="T1", seed=900000, lesions=True, noise=False)


def score(img: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    return psnr(img, ref), ssim(img, ref)


def bart_pics(tmp: Path, flag: str, lam: float, iterations: int, shape: tuple[int, ...]
              ) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    subprocess.run(["bart", "pics", flag, "-r", str(lam), "-i", str(iterations), "-w", "1",
                    "-n", "-d", "0", str(tmp / "ksp"), str(tmp / "maps"), str(tmp / "out")],
                   check=True, capture_output=True)
    return np.abs(read_cfl(tmp / "out")).reshape(shape), time.perf_counter() - t0


def run_case(name: str, size: int, acceleration: float, use_bart: bool,
             iterations: dict[str, int | None]) -> list[dict]:
    ref_vol = phantom(name, size)
    ref = ref_vol.data
    cfg = SimulationConfig(mri=MRISettings(coils=8, acceleration=acceleration, mask="poisson",
                                           calibration=max(8, size // 6), snr=30.0))
    m = simulate(ref_vol, cfg)
    cpu = torch.device("cpu")
    scale = default_lam("tv", measurement_problem(m, cpu).op.adjoint(
        torch.from_numpy(m.data))) / DEFAULT_ALPHA["tv"]
    rows: list[dict] = []
    base = {"phantom": name, "size": size, "acceleration": round(m.acquisition["acceleration"], 2)}

    def add(tool: str, method: str, lam: float | None, tuned: bool, img: np.ndarray,
            seconds: float, its: int) -> None:
        p, s = score(img, ref)
        rows.append({**base, "tool": tool, "method": method, "lam": lam, "tuned": tuned,
                     "psnr": round(p, 2), "ssim": round(s, 4), "seconds": round(seconds, 1),
                     "iterations": its})
        print(f"  {tool:8s} {method:11s} lam={lam!s:10.10s} tuned={tuned!s:5s} "
              f"PSNR {p:6.2f} SSIM {s:.4f} {seconds:6.1f}s", flush=True)

    t0 = time.perf_counter()
    zf = get_method("MR", "zero-filled")(m, ReconOptions(), cpu)
    add("medrecon", "zero-filled", None, False, zf.image, time.perf_counter() - t0, 0)
    for method in ("cg-sense", "l1-wavelet", "tv"):
        fn = get_method("MR", method)
        opts = {"iterations": iterations.get(method)}
        t0 = time.perf_counter()
        out = fn(m, ReconOptions(**opts), cpu)
        add("medrecon", method, out.info["lam"], False, out.image, time.perf_counter() - t0,
            out.iterations)
        best = None
        for a in GRID[method]:
            lam = a if method == "cg-sense" else a * scale
            t0 = time.perf_counter()
            o = fn(m, ReconOptions(lam=lam, **opts), cpu)
            cand = (score(o.image, ref)[0], lam, o, time.perf_counter() - t0)
            if best is None or cand[0] > best[0]:
                best = cand
        assert best is not None
        add("medrecon", method, best[1], True, best[2].image, best[3], best[2].iterations)
    if use_bart:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            write_cfl(tmp / "ksp", np.moveaxis(m.data, 0, -1))
            write_cfl(tmp / "maps", np.moveaxis(m.coil_maps, 0, -1))
            for method, flag in (("cg-sense", "-l2"), ("l1-wavelet", "-l1")):
                its = iterations.get(method) or (30 if method == "cg-sense" else 100)
                best = None
                for a in GRID[method]:
                    lam = a if method == "cg-sense" else a * scale
                    img, sec = bart_pics(tmp, flag, lam, its, ref.shape)
                    cand = (score(img, ref)[0], lam, img, sec)
                    if best is None or cand[0] > best[0]:
                        best = cand
                assert best is not None
                add("bart", f"pics {flag}", best[1], True, best[2], best[3], its)
    return rows


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--phantoms", nargs="+", default=["head", "shepp-logan"])
    ap.add_argument("--accelerations", type=float, nargs="+", default=[4.0, 8.0, 12.0])
    ap.add_argument("--no-bart", action="store_true")
    ap.add_argument("--iterations", type=int, default=None,
                    help="override every method's iteration count")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    use_bart = not args.no_bart and shutil.which("bart") is not None
    its = {k: args.iterations for k in ("cg-sense", "l1-wavelet", "tv")}
    rows = []
    for name in args.phantoms:
        for r in args.accelerations:
            print(f"{name} {args.size}^3, R={r}", flush=True)
            rows += run_case(name, args.size, r, use_bart, its)
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu_model(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "command": " ".join([Path(sys.executable).name, *sys.argv])}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
