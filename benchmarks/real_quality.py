"""Quality on real scans that public packages ship: diffusion against oracle-tuned TV / L1-wavelet.

Validation only: these files are never trained on, and no setting is tuned on them or on any
other real file. Every case is run at its native voxel size (no resampling).

Cases (file, package, what it is, as read by :func:`medrecon.io.load_volume`):

==============  ===========================================  =============================
name            file (package)                               content
==============  ===========================================  =============================
ct_head_ect     eCT_Supplemental.dcm (pydicom-data)          head CT, enhanced multi-frame,
                                                             512x512x2, 0.39 mm, 10 mm slices
ct_abdomen      explicit_VR-UN.dcm (pydicom-data)            abdomen CT (pancreas, table),
                                                             512x512x1, 0.86 mm
ct_spine        bad_sequence.dcm (pydicom-data)              spine / neck CT, 512x512x1,
                                                             0.29 mm
mr_abdomen      MR-SIEMENS-DICOM-WithOverlays.dcm            abdomen MR, 484x484x1, 0.72 mm,
                (pydicom-data)                               4 mm slice
mr_brain_piesno test_piesno.nii.gz (dipy)                    noisy brain MR, 96x96x14, 1 mm
mr_dwi_b0       small_101D.nii.gz (dipy), frame 0 (b = 15)   diffusion b0, 6x10x10, 2.5 mm
mr_nicom_0      nibabel/nicom/tests/data/0.dcm (nibabel)     *skipped when its pixels are a
                                                             counting pattern* (they are in
                                                             nibabel 5.x: value = index mod
                                                             4096, a test fixture, not an
                                                             image); reported as skipped
==============  ===========================================  =============================

pydicom-data installs its files as the ``data_store`` package and dipy ships its two files in
``dipy/data/files``: nothing is downloaded at run time. A missing package gives a "skipped"
line.

What is measured, per case and setting (one JSON line each, also appended to ``--out``):

* **MRI**, R = 4 and 8: 8 simulated coils (birdcage), smooth synthetic phase, SNR 30, seed 0.
  Mask: single slices and slabs of fewer than 32 slices (with at least 32 phase-encode lines
  J) get 2D multi-slice random lines along J with fastMRI's calibration share,
  ``max(2, round(0.32 J / R))`` central lines (8 % of the lines at R = 4, 4 % at R = 8);
  everything else, including matrices too small for lines (mr_dwi_b0: 10 x 10), gets a 3D
  Poisson-disc mask over the phase-encode plane (J, K) with a calibration box of side
  ``min(24, max(2, min(J, K) // 4))``. The achieved acceleration is reported.
  Methods: CG-SENSE; L1-wavelet and TV with lam swept over 2^-4 .. 2^4 times the method's
  default and the best PSNR kept (oracle tuning on the reference: it favours them);
  diffusion with the default prior and sampler, 50 steps, K = 4 samples, seed 0, on the
  default path: the weight self-tuned on held-out k-space and the guard against the better
  held-out predictor of self-tuned L1-wavelet and TV (:mod:`medrecon.guard`); each row records
  the weight, the guard's branch (``diffusion``, ``blend`` or ``classical``), its weight, the
  classical method it compared with (``guard_method``) and the held-out errors (diffusion's
  and that method's in ``guard_errors``, every classical method's in
  ``guard_classical_errors``). ``--plain`` adds diffusion at the fixed modality weight
  without the guard (``diffusion.plain``), and with ``--plain-steps 10,20`` at those step
  counts too (``diffusion.plain_10``, ...).
* **CT**, 30 and 60 views: parallel beam over 180 deg, I0 = 1e5 photons per ray, seed 0.
  Methods: FBP; TV with lam swept likewise; diffusion as above (guard against self-tuned TV).
* **Metrics**: PSNR over the region, SSIM as the mean over region voxels of 2D per-slice SSIM
  maps (Gaussian window sigma 1.5 px, slices along the third array axis). Region: MR voxels
  above 5 % of the reference maximum; CT voxels above -900 HU (body and table). Data range: MR
  the reference maximum; CT the reference maximum minus minimum (HU). ``gain_db`` is the
  diffusion PSNR minus the best classical PSNR.

Commands (the GPU machine has neither dipy nor pydicom-data: export the volumes where they are
installed, then carry the folder)::

    pip install pydicom-data dipy                      # once, where the export runs
    python benchmarks/real_quality.py --export out/real_cases
    # on the GPU (run with carry=["out/real_cases"]):
    python benchmarks/real_quality.py --cases-dir out/real_cases --out out/real.jsonl \\
        --device cuda [--prior default] [--cases ct_head_ect,mr_abdomen] [--settings mr4,ct30]
    python benchmarks/real_quality.py --quick --out /tmp/real_quick.jsonl   # CPU smoke test

``--quick`` crops every volume to its central 32 x 32 x <= 4 voxels (still native voxel size),
runs 5 solver iterations, 3 lam values and 2 diffusion steps with K = 1: it checks that the
pipeline runs, its numbers mean nothing. Results go to ``benchmarks/RESULTS_real.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

LAM_FACTORS = tuple(2.0**e for e in range(-4, 5))
QUICK_LAM_FACTORS = (0.5, 1.0, 2.0)
SETTINGS = {"MR": ("mr4", "mr8"), "CT": ("ct30", "ct60")}

# name -> (package, file inside the package's data, modality, 4D frame, description)
CASES: dict[str, tuple[str, str, str, int | None, str]] = {
    "ct_head_ect": ("pydicom-data", "eCT_Supplemental.dcm", "CT", None, "head CT"),
    "ct_abdomen": ("pydicom-data", "explicit_VR-UN.dcm", "CT", None, "abdomen CT"),
    "ct_spine": ("pydicom-data", "bad_sequence.dcm", "CT", None, "spine CT"),
    "mr_abdomen": ("pydicom-data", "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR", None,
                   "abdomen MR"),
    "mr_brain_piesno": ("dipy", "test_piesno.nii.gz", "MR", None, "brain MR (noisy)"),
    "mr_dwi_b0": ("dipy", "small_101D.nii.gz", "MR", 0, "diffusion MR b0"),
    "mr_nicom_0": ("nibabel", "nicom/tests/data/0.dcm", "MR", None, "MR mosaic slice"),
}
_MODULES = {"pydicom-data": ("data_store", "data"), "dipy": ("dipy", "data/files"),
            "nibabel": ("nibabel", "")}


def _package_file(package: str, relative: str) -> Path | None:
    """Path of a data file shipped inside an installed package (None: not installed)."""
    module, folder = _MODULES[package]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / folder / relative
    return path if path.exists() else None


def _counting_pattern(data: np.ndarray) -> bool:
    """True when every slice is a linear ramp of the voxel indices (modulo 4096): the pixel
    data of a test fixture, not an image. Orientation-independent: every difference between
    neighbours along an in-plane axis is the same number (mod 4096)."""
    x = np.asarray(data, dtype=np.int64)
    if x.ndim != 3 or min(x.shape[:2]) < 4 or len(np.unique(x)) < 64:
        return False
    return all(np.unique(np.mod(np.diff(x, axis=a), 4096)).size == 1 for a in (0, 1))


def load_cases(names: list[str], cases_dir: Path | None) -> list[tuple[str, Any, str]]:
    """[(name, Volume or None, note)] for the requested cases, from the packages or a folder
    written by ``--export``."""
    from medrecon.io import load_volume

    out: list[tuple[str, Any, str]] = []
    index = {}
    if cases_dir is not None:
        index = {c["name"]: c for c in json.loads((cases_dir / "cases.json").read_text())}
    for name in names:
        package, relative, modality, frame, what = CASES[name]
        if cases_dir is not None:
            if name not in index or "file" not in index[name]:
                why = index.get(name, {}).get("skipped", f"not in {cases_dir}/cases.json")
                out.append((name, None, why))
                continue
            vol = load_volume(cases_dir / index[name]["file"])
        else:
            path = _package_file(package, relative)
            if path is None:
                out.append((name, None, f"{package} is not installed (pip install {package})"))
                continue
            vol = load_volume(path, frame=frame)
        if _counting_pattern(vol.data):
            out.append((name, None, "pixel data are a counting pattern (a test fixture), "
                                    "not an image"))
            continue
        vol = replace(vol, modality=modality, units="HU" if modality == "CT" else "a.u.",
                      meta={**vol.meta, "case": name, "what": what,
                            "source": f"{package}:{relative}"})
        out.append((name, vol, ""))
    return out


def export_cases(names: list[str], folder: Path) -> None:
    """Write the cases as NIfTI plus ``cases.json`` (name, file, modality, shape, spacing,
    source; or name and why it was skipped) into ``folder``."""
    from medrecon.io import save_volume

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, vol, note in load_cases(names, None):
        row: dict[str, Any] = {"name": name}
        if vol is None:
            row["skipped"] = note
        else:
            save_volume(vol, folder / f"{name}.nii.gz")
            row.update(file=f"{name}.nii.gz", modality=vol.modality, shape=list(vol.shape),
                       spacing_mm=[float(s) for s in vol.spacing], source=vol.meta["source"],
                       what=vol.meta["what"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    (folder / "cases.json").write_text(json.dumps(rows, indent=1))


def _crop(vol: Any, size: int = 32, depth: int = 4) -> Any:
    """Central crop (native voxel size), for --quick."""
    sl = []
    for axis, n in enumerate(vol.shape):
        keep = min(n, size if axis < 2 else depth)
        start = (n - keep) // 2
        sl.append(slice(start, start + keep))
    data = np.ascontiguousarray(vol.data[tuple(sl)])
    affine = vol.affine.copy()
    affine[:3, 3] = vol.affine[:3, :3] @ np.array([s.start for s in sl]) + vol.affine[:3, 3]
    return replace(vol, data=data, affine=affine, dicom_header=None)


def _metrics(x: np.ndarray, ref: np.ndarray, region: np.ndarray, data_range: float) -> dict:
    """PSNR over the region; SSIM: mean over region voxels of 2D per-slice SSIM maps."""
    from medrecon.metrics import psnr, ssim_map

    smap = np.stack([ssim_map(x[:, :, k], ref[:, :, k], data_range=data_range)
                     for k in range(ref.shape[2])], axis=2)  # fmt: skip
    return {"psnr": psnr(x, ref, data_range=data_range, mask=region),
            "ssim": float(smap[region].mean())}


def _mri_config(shape: tuple[int, ...], r_acc: float) -> Any:
    """8 coils, SNR 30; the mask that fits the matrix (see the module docstring)."""
    from medrecon.simulate import MRISettings, SimulationConfig

    j, k = shape[1], shape[2]
    if j >= 32 and k < 32:  # single slices and thin slabs: 2D multi-slice lines along J
        calib = int(min(j, max(2, round(0.32 * j / r_acc))))
        mask, dims = "random", "2d"
    else:  # 3D phase-encode plane (J, K), also for matrices too small for lines
        calib = min(24, max(2, min(j, k) // 4))
        mask, dims = "poisson", "3d"
    settings = MRISettings(coils=8, acceleration=r_acc, mask=mask, dims=dims,
                           calibration=calib, snr=30.0, coil_model="birdcage")
    return SimulationConfig(modality="mri", seed=0, mri=settings)


def _run_case(vol: Any, setting: str, args: argparse.Namespace) -> dict:
    from medrecon.recon.base import ReconOptions
    from medrecon.reconstruct import reconstruct
    from medrecon.simulate import CTSettings, SimulationConfig, simulate

    ref = vol.data.astype(np.float32)
    iters = 5 if args.quick else None
    factors = QUICK_LAM_FACTORS if args.quick else LAM_FACTORS
    if vol.modality == "MR":
        cfg = _mri_config(vol.shape, float(setting[2:]))
        region = ref > 0.05 * ref.max()
        data_range = float(ref.max())
        plain, swept = ("cg-sense",), ("l1-wavelet", "tv")
        region_text = "reference > 5 % of its max"
        range_text = "reference max"
    else:
        cfg = SimulationConfig(modality="ct", seed=0, ct=CTSettings(
            geometry="parallel", views=int(setting[2:]), dose_i0=1e5))
        region = ref > -900.0
        data_range = float(ref.max() - ref.min())
        plain, swept = ("fbp",), ("tv",)
        region_text = "reference > -900 HU"
        range_text = "reference max - min (HU)"
    m = simulate(vol, cfg, device=args.device)
    acq = m.acquisition
    classical: dict[str, dict] = {}
    for name in plain:
        t0 = time.perf_counter()
        r = reconstruct(m, name, ReconOptions(device=args.device,  # fbp is direct
                                              iterations=None if name == "fbp" else iters))
        classical[name] = {**_metrics(r.volume.data, ref, region, data_range),
                           "seconds": round(time.perf_counter() - t0, 2)}
    for name in swept:
        base = reconstruct(m, name, ReconOptions(device=args.device, iterations=iters))
        lam0 = float(base.output.info.get("lam", 1.0))
        best: dict | None = None
        for f in factors:
            t0 = time.perf_counter()
            r = reconstruct(m, name, ReconOptions(lam=lam0 * f, device=args.device,
                                                  iterations=iters))
            met = {**_metrics(r.volume.data, ref, region, data_range), "lam": lam0 * f,
                   "lam_factor": f, "seconds": round(time.perf_counter() - t0, 2)}
            if best is None or met["psnr"] > best["psnr"]:
                best = met
        assert best is not None
        best["edge_of_sweep"] = best["lam_factor"] in (factors[0], factors[-1])
        classical[name] = best
    steps, samples = (2, 1) if args.quick else (args.steps, args.samples)
    extra = {"prior": args.prior, "steps": steps, "samples": samples, "seed": 0,
             "tune_steps": args.tune_steps, **args.extra}
    t0 = time.perf_counter()
    r = reconstruct(m, "diffusion", ReconOptions(device=args.device, extra=extra))
    info = r.output.info
    guard = info.get("guard") or {}
    diffusion = {**_metrics(r.volume.data, ref, region, data_range),
                 "seconds": round(time.perf_counter() - t0, 2), "steps": steps,
                 "samples": samples, "nfe": info.get("nfe"), "lam": info.get("lam"),
                 "lam_grid": (info.get("autotune") or {}).get("grid"),
                 "lam_heldout_errors": (info.get("autotune") or {}).get("heldout_errors"),
                 "tune_steps": args.tune_steps, "settings": args.extra,
                 "guard": guard.get("choice"), "guard_weight": guard.get("weight"),
                 "guard_method": guard.get("method"),
                 "guard_errors": [guard.get("diffusion_error"), guard.get("classical_error")],
                 "guard_classical_errors": guard.get("classical_errors"),
                 "guard_line": info.get("guard_line")}
    if args.plain:  # the former default: the modality's fixed weight, no guard
        from medrecon.sampling.config import DiffusionConfig

        lam = DiffusionConfig().sampler_options(vol.modality).lam
        plain_steps = ([steps] if args.quick or not args.plain_steps
                       else [int(n) for n in args.plain_steps.split(",")])
        for n in plain_steps:
            t0 = time.perf_counter()
            p = reconstruct(m, "diffusion", ReconOptions(device=args.device, extra={
                **extra, "steps": n, "lam": lam, "guard": False}))
            key = "plain" if n == steps else f"plain_{n}"
            diffusion[key] = {**_metrics(p.volume.data, ref, region, data_range), "lam": lam,
                              "steps": n, "seconds": round(time.perf_counter() - t0, 2)}
    best_name = max(classical, key=lambda k: classical[k]["psnr"])
    if vol.modality == "MR":
        acquisition = {k: acq.get(k) for k in ("acceleration", "mask", "calibration", "dims",
                                               "coils", "snr")}
    else:
        acquisition = {k: acq.get(k) for k in ("geometry", "views", "dose_i0")}
    return {
        "setting": setting, "acquisition": acquisition,
        "region": region_text, "region_voxels": int(region.sum()),
        "data_range": data_range, "data_range_source": range_text,
        "classical": classical, "diffusion": diffusion, "best_classical": best_name,
        "gain_db": diffusion["psnr"] - classical[best_name]["psnr"],
    }


def _write(path: Path | None, row: dict) -> None:
    line = json.dumps(row)
    if path is not None:
        with path.open("a") as f:
            f.write(line + "\n")
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="append the JSON lines to this file")
    ap.add_argument("--export", type=Path, metavar="DIR",
                    help="write the cases as NIfTI + cases.json into DIR and stop")
    ap.add_argument("--cases-dir", type=Path, metavar="DIR",
                    help="read the cases from a folder written by --export")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--settings", default="mr4,mr8,ct30,ct60")
    ap.add_argument("--prior", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--tune-steps", type=int, default=None,
                    help="steps of the weight tuning's runs (default: --steps)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny crops, few steps")
    ap.add_argument("--plain-steps", default="",
                    help="with --plain: these step counts (e.g. 10,20,50; default --steps)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a diffusion setting (medrecon.sampling.config), e.g. cg_iters=30")
    ap.add_argument("--plain", action="store_true",
                    help="also diffusion at the fixed modality weight without the guard")
    args = ap.parse_args(argv)
    from medrecon.cli.reconstruct import _parse_settings  # the CLI's --set: YAML scalars

    args.extra = _parse_settings(args.set)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        ap.error(f"unknown case {unknown[0]!r}; the cases are {', '.join(CASES)}")
    if args.export is not None:
        export_cases(names, args.export)
        return 0

    import torch

    from medrecon.device import resolve_device

    dev = resolve_device(args.device)
    args.device = str(dev)
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    wanted = {s.strip() for s in args.settings.split(",")}
    common = {"prior": args.prior, "device": card, "quick": args.quick,
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
    for name, vol, note in load_cases(names, args.cases_dir):
        if vol is None:
            _write(args.out, {"case": name, "skipped": note, **common})
            continue
        if args.quick:
            vol = _crop(vol)
        info = {"case": name, "what": vol.meta["what"], "source": vol.meta["source"],
                "modality": vol.modality, "shape": list(vol.shape),
                "spacing_mm": [round(float(s), 4) for s in vol.spacing]}
        for setting in SETTINGS[vol.modality]:
            if setting not in wanted:
                continue
            try:
                row = _run_case(vol, setting, args)
            except Exception as exc:  # record the failure, go on with the other cases
                row = {"setting": setting, "error": f"{type(exc).__name__}: {exc}"}
            _write(args.out, {**info, **row, **common})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
