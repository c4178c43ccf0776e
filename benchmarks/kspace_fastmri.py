"""The real k-space path: fastMRI-format multi-coil k-space of a real brain, medrecon against BART.

The case (issues 13 and 15): a real skull-stripped brain, 8 coils, an equispaced 1D mask with a
fastMRI-style fully sampled centre, coil maps estimated from the data (no maps in the file).

Data (built here, reproducibly, nothing downloaded)
    The volume is frame 0 of ``nibabel/tests/data/example4d.nii.gz``, which nibabel ships: a
    real 2D multi-slice EPI brain scan, 128 x 96 x 24 voxels of 2 x 2 x 2.2 mm, brain-extracted
    by FSL (61 % of its voxels are exactly 0 outside the brain, so no further skull stripping is
    needed). It is scaled to a maximum of 1 and simulated with :func:`medrecon.simulate.simulate`
    as 2D multi-slice data (slice axis K, phase encode J = 96 lines): 8 Biot-Savart coils, the
    smooth synthetic phase (pi peak to peak), an equispaced line mask (fastMRI's random offset)
    whose fully sampled centre is fastMRI's centre fraction of J (0.08 at R <= 4: 8 lines,
    0.04 at R = 8: 4 lines), SNR 30, seed 0. The k-space is then written in the raw fastMRI
    layout -- ``kspace`` [slices, coils, kx, ky] (zeros off the mask), ``mask`` [ky], an ISMRMRD
    header with the encoded field of view -- *without coil maps or noise level*, so every
    reader estimates both, as on a real fastMRI file. ``medrecon reconstruct`` reads it with
    :func:`medrecon.io.fastmri.read_fastmri`.

Methods
    medrecon CG-SENSE (its defaults), L1-wavelet (``--lam auto`` and a grid of weights), both
    through the CLI; BART v0.8 per slice: ``ecalib`` (its defaults: 2 map sets, threshold 0.001,
    crop 0.8, kernel 6, calibration from the data) and ``pics -l1 -S`` over a grid of
    ``-r`` (BART's own data scaling, so ``-r`` is relative to the data), ``-i 100``; and the
    swaps that isolate where the dB go (``--swaps``): our solver with BART's maps, BART's solver
    with our maps, one ESPIRiT parameter at a time. Diffusion (``--diffusion``): the default
    prior and DDS sampler, 50 steps, 4 samples (``--steps``, ``--samples``), through the CLI.

Metrics
    PSNR of the magnitude over the whole volume with fastMRI's data range (reference maximum),
    and over the brain (reference > 0); each image is compared as it comes out (no rescaling).
    ``background_max``: the largest magnitude outside the brain, where the reference is 0.

Commands::

    python benchmarks/kspace_fastmri.py --out /tmp/ks --accelerations 3.3 --swaps
    python benchmarks/kspace_fastmri.py --out /tmp/ks --accelerations 4 8 --diffusion \
        --device cuda
    # a diffusion setting through the CLI's --set (repeatable), e.g. the 30-iteration MR step
    python benchmarks/kspace_fastmri.py --out /tmp/ks --accelerations 4 8 --diffusion \
        --device cuda --no-bart --no-grid --set cg_iters=30
    # CPU at reduced size: the central slices only (--slices N), fewer steps
    python benchmarks/kspace_fastmri.py --out /tmp/ks --accelerations 4 --diffusion \
        --slices 8 --steps 20 --samples 2

Results go to benchmarks/RESULTS_mri.md (section "fastMRI-format real brain").
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

N_COILS = 8


CASES = ("epi", "t1")


def brain_volume(case: str = "epi",
                 slices: int | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The real brain (I, J, K) scaled to max 1, and its voxel size in mm (see the docstring)."""
    if case == "t1":
        import dipy

        path = Path(dipy.__file__).parent / "data" / "files" / "t1_coronal_slice.npy"
        vol = np.load(path).astype(np.float64)[:, :, None]
        spacing = (1.0, 1.0, 1.0)  # the file carries none; 1 mm in-plane is what it looks like
    else:
        import nibabel as nib

        path = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
        img = nib.load(path)
        vol = np.asarray(img.dataobj)[..., 0].astype(np.float64)
        spacing = tuple(float(s) for s in img.header.get_zooms()[:3])  # type: ignore[assignment]
    if slices is not None and slices < vol.shape[2]:
        k0 = (vol.shape[2] - slices) // 2
        vol = vol[:, :, k0:k0 + slices]
    return vol / vol.max(), spacing


def centre_lines(n_lines: int, acceleration: float) -> int:
    """fastMRI's fully sampled centre: 8 % of the lines up to R = 4, 4 % above."""
    return max(2, round((0.08 if acceleration <= 4 else 0.04) * n_lines))


def write_fastmri(path: Path, kspace: np.ndarray, mask: np.ndarray,
                  spacing: tuple[float, float, float], acceleration: float) -> None:
    """Raw fastMRI layout from our (C, I, J, K) k-space and (J,) line mask."""
    import h5py

    c, i, j, k = kspace.shape
    fov = [i * spacing[0], j * spacing[1], k * spacing[2]]
    header = (
        '<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
        '<encodedSpace><matrixSize>'
        f'<x>{i}</x><y>{j}</y><z>{k}</z></matrixSize><fieldOfView_mm>'
        f'<x>{fov[0]}</x><y>{fov[1]}</y><z>{fov[2]}</z></fieldOfView_mm></encodedSpace>'
        '</encoding></ismrmrdHeader>')
    tmp = path.with_suffix(".tmp.h5")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("kspace", data=np.ascontiguousarray(
            np.transpose(kspace, (3, 0, 1, 2))).astype(np.complex64))
        f.create_dataset("mask", data=mask.astype(np.float32))
        f.create_dataset("ismrmrd_header", data=header)
        f.attrs["acceleration"] = float(acceleration)
        f.attrs["acquisition"] = "simulated from nibabel example4d.nii.gz (see kspace_fastmri.py)"
    tmp.replace(path)


def build_case(out: Path, acceleration: float, slices: int | None = None, seed: int = 0,
               case: str = "epi") -> tuple[Path, np.ndarray, dict[str, Any]]:
    """Write the fastMRI file of one acceleration; returns (path, reference, true maps etc.)."""
    from medrecon.io import Volume
    from medrecon.simulate import MRISettings, SimulationConfig, simulate

    ref, spacing = brain_volume(case, slices)
    cal = centre_lines(ref.shape[1], acceleration)
    cfg = SimulationConfig(seed=seed, mri=MRISettings(
        coils=N_COILS, acceleration=acceleration, mask="equispaced", calibration=cal,
        dims="2d", snr=30.0))
    m = simulate(Volume(ref.astype(np.float32), np.diag([*spacing, 1.0]), modality="MR"), cfg)
    mask = np.asarray(m.mask).reshape(-1)
    path = out / f"{case}_R{acceleration:g}.h5"
    write_fastmri(path, np.asarray(m.data), mask, spacing, acceleration)
    meta = {"acceleration": float(m.acquisition["acceleration"]), "calibration": cal,
            "noise_sigma": float(m.noise["sigma"]), "shape": list(ref.shape),
            "true_maps": np.asarray(m.coil_maps)}
    return path, ref, meta


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
def scores(img: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """PSNR (fastMRI data range = ref max) over the volume and over the brain; the largest
    magnitude outside the brain (the reference is 0 there: structure no method should draw)."""
    from medrecon.metrics import psnr

    img = np.abs(img).astype(np.float64)
    return {"psnr": round(psnr(img, ref, data_range=float(ref.max())), 2),
            "psnr_brain": round(psnr(img, ref, data_range=float(ref.max()), mask=ref > 0), 2),
            "background_max": round(float(img[ref == 0].max()), 4)}


# ----------------------------------------------------------------------------------------------
# medrecon
# ----------------------------------------------------------------------------------------------
def medrecon_cli(h5: Path, out: Path, method: str, *args: str) -> tuple[np.ndarray, float]:
    """``medrecon reconstruct`` on the file; (magnitude (I, J, K), seconds)."""
    import nibabel as nib

    target = out / f"{h5.stem}_{method}_{abs(hash(args)) % 10**8}.nii.gz"
    cmd = [sys.executable, "-m", "medrecon.cli.main", "reconstruct", str(h5), str(target),
           "--method", method, "--no-progress", "--overwrite", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    print("   ", proc.stdout.strip().replace("\n", " | ")[:300], flush=True)
    return np.asarray(nib.load(target).dataobj, dtype=np.float64), secs


def medrecon_api(h5: Path, method: str, lam: float | None, maps: np.ndarray | None = None,
                 extra: dict[str, Any] | None = None, device: str = "cpu",
                 iterations: int | None = None, tol: float = 1e-4) -> np.ndarray:
    """One classical method through the Python API, optionally with given coil maps
    ``(C, I, J, K)`` (the swaps)."""
    import dataclasses

    import torch

    from medrecon.io.measurement import read_measurement
    from medrecon.methods import get_method
    from medrecon.recon.base import ReconOptions

    m = read_measurement(h5)
    if maps is not None:
        m = dataclasses.replace(m, coil_maps=maps.astype(np.complex64))
    opts = ReconOptions(lam=lam, iterations=iterations, tol=tol, extra=extra or {},
                        progress=False)
    return np.asarray(get_method("MR", method)(m, opts, torch.device(device)).image)


# ----------------------------------------------------------------------------------------------
# BART (per slice: its FFT would otherwise run along the slice axis too)
# ----------------------------------------------------------------------------------------------
def _fastmri_kspace(h5: Path) -> np.ndarray:
    import h5py

    with h5py.File(h5, "r") as f:
        return np.asarray(f["kspace"])  # (K, C, I, J)


def bart_maps(h5: Path, tmp: Path, *flags: str) -> np.ndarray:
    """``bart ecalib FLAGS`` per slice; maps (M, C, I, J, K) with M map sets."""
    from medrecon.io.cfl import read_cfl, write_cfl

    ks = _fastmri_kspace(h5)
    out = []
    for k in range(ks.shape[0]):
        write_cfl(tmp / "ks", np.transpose(ks[k], (1, 2, 0))[:, :, None, :])  # (I, J, 1, C)
        subprocess.run(["bart", "ecalib", *flags, str(tmp / "ks"), str(tmp / "maps")],
                       check=True, capture_output=True)
        mp = read_cfl(tmp / "maps")
        mp = mp.reshape(*mp.shape[:4], -1)  # (I, J, 1, C, M)
        out.append(np.transpose(mp[:, :, 0], (3, 2, 0, 1)))  # (M, C, I, J)
    return np.stack(out, axis=-1)


def bart_pics(h5: Path, tmp: Path, maps: np.ndarray, *flags: str) -> np.ndarray:
    """``bart pics FLAGS`` per slice with ``maps`` (M, C, I, J, K); RSS over map sets."""
    from medrecon.io.cfl import read_cfl, write_cfl

    ks = _fastmri_kspace(h5)
    out = []
    for k in range(ks.shape[0]):
        write_cfl(tmp / "ks", np.transpose(ks[k], (1, 2, 0))[:, :, None, :])
        mp = np.transpose(maps[..., k], (2, 3, 1, 0))[:, :, None]  # (I, J, 1, C, M)
        write_cfl(tmp / "mp", mp)
        subprocess.run(["bart", "pics", *flags, str(tmp / "ks"), str(tmp / "mp"),
                        str(tmp / "img")], check=True, capture_output=True)
        img = read_cfl(tmp / "img")
        img = img.reshape(ks.shape[2], ks.shape[3], -1)
        out.append(np.sqrt(np.sum(np.abs(img) ** 2, axis=-1)))
    return np.stack(out, axis=-1)


def _scale(h5: Path) -> float:
    """99th percentile of |A^H y| with our ESPIRiT maps: the unit of our weights."""
    from medrecon.io.measurement import read_measurement
    from medrecon.problem import measurement_problem

    p = measurement_problem(read_measurement(h5), "cpu")
    mag = p.op.adjoint(p.y).abs().flatten()
    return float(mag.kthvalue(max(1, int(0.99 * mag.numel()))).values)


def swaps(h5: Path, ref: np.ndarray, tmp: Path, true_maps: np.ndarray, calibration: int,
          device: str, record: Any) -> None:
    """One piece at a time. Maps, probed by CG-SENSE (lam 1e-3): the true ones, the low-resolution
    estimate (what the previous ESPIRiT fell back to), ESPIRiT with kernel 6, ours, BART's
    (one set). Solvers, all with our maps at one weight: our L1-wavelet as it was (3D wavelet,
    fixed grid), in-plane, in-plane with cycle spinning (the new default); BART with ``-n``
    and without."""
    from medrecon.io.measurement import read_measurement
    from medrecon.operators.coils import espirit, lowres_maps
    from medrecon.problem import kspace_tensor, measurement_problem

    m = read_measurement(h5)
    ks = kspace_tensor(m)
    ours = measurement_problem(m, "cpu").op.maps.numpy()
    readout = min(ks.shape[1], max(calibration, 24))
    maps = {
        "true": true_maps,
        "low-resolution (the old fallback)": lowres_maps(ks, calibration, m.fft_dims).numpy(),
        "ESPIRiT kernel 6": espirit(ks, (readout, calibration), kernel=6,
                                    fft_dims=m.fft_dims).maps.numpy(),
        "ours (ESPIRiT, default kernel)": ours,
        "bart ecalib -m 1": bart_maps(h5, tmp, "-m", "1")[0],
        "bart ecalib -m 1 -k 3": bart_maps(h5, tmp, "-m", "1", "-k", "3")[0],
    }
    for name, mp in maps.items():
        img = medrecon_api(h5, "cg-sense", 1e-3, maps=mp, device=device)
        record("swap maps", f"medrecon cg-sense | maps {name}", img, ref,
               brain_covered=round(float(((np.abs(mp) ** 2).sum(0) > 1e-6)[ref > 0].mean()), 3))
    lam = 1e-3 * _scale(h5)
    for name, extra in (("3D wavelet, fixed grid (old default)",
                         {"wavelet_axes": [0, 1, 2], "cycle_spin": False}),
                        ("in-plane, fixed grid", {"cycle_spin": False}),
                        ("in-plane, cycle spinning (default)", {})):
        img = medrecon_api(h5, "l1-wavelet", lam, maps=ours, extra=extra, device=device)
        record("swap solver", f"medrecon l1-wavelet {name} | our maps", img, ref, lam=lam)
    for flags in (("-n",), ()):
        img = bart_pics(h5, tmp, ours[None], "-l1", "-r", "0.003", "-i", "100", "-S", *flags)
        record("swap solver", f"bart pics -l1 -r 0.003 {' '.join(flags)} | our maps", img, ref)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--accelerations", type=float, nargs="+", default=[3.3])
    p.add_argument("--slices", type=int, default=None, help="central slices only (CPU runs)")
    p.add_argument("--swaps", action="store_true", help="the swap experiments (CPU, slow-ish)")
    p.add_argument("--diffusion", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --diffusion: the CLI's --set, e.g. cg_iters=30")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-bart", action="store_true")
    p.add_argument("--no-grid", action="store_true", help="defaults only (no weight grids)")
    p.add_argument("--case", choices=CASES, default="epi")
    p.add_argument("--methods", nargs="*", default=["zero-filled", "cg-sense", "l1-wavelet"],
                   help="classical methods run through the CLI")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    have_bart = shutil.which("bart") is not None and not a.no_bart
    rows: list[dict[str, Any]] = []

    def record(case: str, name: str, img: np.ndarray, ref: np.ndarray, **kw: Any) -> None:
        row = {"case": case, "method": name, **scores(img, ref), **kw}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.json:  # line by line: a long run that is stopped keeps what it measured
            with a.json.open("a") as f:
                f.write(json.dumps(row) + "\n")

    for acc in a.accelerations:
        h5, ref, meta = build_case(a.out, acc, a.slices, case=a.case)
        case = f"{a.case} R{meta['acceleration']:.2f}"
        print(f"# {h5.name}: shape {meta['shape']}, achieved R {meta['acceleration']:.2f}, "
              f"centre {meta['calibration']} lines, noise sigma {meta['noise_sigma']:.2e}",
              flush=True)
        for method in a.methods:
            img, secs = medrecon_cli(h5, a.out, method, "--device", a.device)
            record(case, f"medrecon {method} (default)", img, ref, seconds=round(secs, 1))
        if a.diffusion:
            args = ["--device", a.device, "--steps", str(a.steps), "--samples", str(a.samples)]
            args += [v for kv in a.set for v in ("--set", kv)]
            img, secs = medrecon_cli(h5, a.out, "diffusion", *args)
            label = "default" if not a.set else ", ".join(a.set)
            record(case, f"medrecon diffusion ({label})", img, ref, seconds=round(secs, 1),
                   steps=a.steps, samples=a.samples, settings=a.set)
        if a.no_grid:
            continue
        s = _scale(h5)
        for f in (3e-4, 5e-4, 1e-3, 3e-3):
            img = medrecon_api(h5, "l1-wavelet", f * s, device=a.device)
            record(case, "medrecon l1-wavelet (grid)", img, ref, lam_over_s=f)
        if not have_bart:
            continue
        tmp = a.out / "bart"
        tmp.mkdir(exist_ok=True)
        from medrecon.io.measurement import read_measurement
        from medrecon.problem import measurement_problem

        ours = measurement_problem(read_measurement(h5), "cpu").op.maps.numpy()[None]
        ours2 = measurement_problem(read_measurement(h5), "cpu", map_sets=2).op.maps.numpy()
        ours2 = ours2 if ours2.ndim == 5 else ours2[None]
        # maps: BART ecalib flags (a tuple) or our own maps (an array)
        for label, source, grid in (
                ("bart ecalib (defaults) + pics -l1", (), (0.001, 0.003, 0.01)),
                ("bart ecalib -k 3 + pics -l1", ("-k", "3"), (0.0003, 0.001, 0.003)),
                ("bart pics -l1 with our maps (first set)", ours, (0.001, 0.003, 0.01)),
                (f"bart pics -l1 with our maps ({ours2.shape[0]} sets, the default)", ours2,
                 (0.0003, 0.001, 0.003))):
            try:
                maps = bart_maps(h5, tmp, *source) if isinstance(source, tuple) else source
            except subprocess.CalledProcessError as err:  # e.g. ecalib on a tiny centre
                print(json.dumps({"case": case, "method": label, "failed": str(err)}),
                      flush=True)
                continue
            for r in grid:
                img = bart_pics(h5, tmp, maps, "-l1", "-r", str(r), "-i", "100", "-S")
                record(case, label, img, ref, r=r)
        if a.swaps:
            swaps(h5, ref, tmp, meta["true_maps"], meta["calibration"], a.device, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
