"""Hallucination check: are small lesions kept, and is structure invented around them?

Spherical lesions (radius 2-6 mm, bright and dark, contrast 10-50 % of the surrounding tissue)
are inserted into a volume; the same acquisition (same mask, coil maps, noise draw) is simulated
from the volume with and without them, and each method reconstructs both with the same settings
(the classical weight chosen by ``lam auto`` on the lesion-free data, the diffusion seed fixed).
The difference of the two reconstructions is what the method did with the lesions:

* ``kept``: the matched-filter share of the true lesion signal in that difference,
  ``<d, t> / <t, t>`` over the lesion (``t``: true change, ``d``: reconstructed change); 1 is
  perfect, 0 lost, > 1 exaggerated;
* ``core``: the mean change inside the lesion's core (partial-volume fraction 1) over the true
  contrast there;
* ``false_rms`` / ``false_max``: the change more than 2 voxels outside every lesion, RMS and
  maximum, over the lesion amplitude (structure the lesions made appear elsewhere);
* ``std_rise`` (diffusion, K >= 2): mean std in the lesion core with the lesion over without it.

With ``--measured-share`` each row also gives, per lesion, the share the noiseless data hold:
``||P t||^2 / ||t||^2``, ``P`` the projection onto the range of ``A^H`` (conjugate gradients
on ``A^H A x = A^H A t`` from 0), what a method that invents nothing could keep at best.

Contrast is relative to the tissue around the lesion (mean over a 2-voxel shell): MR intensity;
CT attenuation (HU + 1000), so 20 % in CT is about 200 HU, far above clinical low-contrast
lesions (10-50 HU; use ``--contrasts 0.02,0.05``).

Volumes: held-out synthetic heads (test seeds) and the real validation files of
``real_quality.py`` (``--cases``; MR ones at R = 8 and 12, CT ones at 30 views). On a volume
too thin for a sphere (the real CT files: one slice, or two 10 mm apart) a lesion is the
sphere's disc through its centre, in one slice (``shape`` in each lesion's record).

    python benchmarks/lesion.py --out lesion.jsonl [--cases synth_mr,synth_ct,mr_brain_piesno]
        [--settings mr8,mr12,ct30] [--radii 2,3,4,6] [--contrasts 0.1,0.2,0.5]
        [--shape 64 64 64] [--steps 50] [--samples 4] [--device cuda] [--quick]
        [--placements 8] [--heads 3]

One placement scores one lesion per radius, whose kept share varies from site to site by
about +-0.1 at 2-3 mm: ``--placements N`` draws N sets of sites (odd ones swap bright and
dark) and ``--heads N`` uses N synthetic test heads; the script then prints each radius's mean
and standard deviation over all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SYNTH = ("synth_mr", "synth_ct")


def thin_axes(shape: tuple[int, ...], spacing: np.ndarray, radius_mm: float) -> tuple[int, ...]:
    """Axes too short to hold a sphere of ``radius_mm`` with 2 voxels to spare on each side
    (single slices, a few thick slices): along them a lesion is a disc in one slice, the
    sphere's cross-section through its centre, as a thin slice through it shows it."""
    return tuple(a for a, (n, h) in enumerate(zip(shape, spacing, strict=True))
                 if n < 2 * (radius_mm / h + 2) + 1)


def lesion_sites(tissue: np.ndarray, radii_vox: list[np.ndarray],
                 rng: np.random.Generator, thin: tuple[int, ...] = ()) -> list[np.ndarray]:
    """Centres (voxel index, float) inside ``tissue``, each at least its radius + 2 voxels
    from the tissue's edge and the grid's and two diameters from the other lesions, measured
    in the axes that are not ``thin`` (there a lesion stays in one slice)."""
    from scipy.ndimage import distance_transform_edt

    wide = [a for a in range(tissue.ndim) if a not in thin]
    pad = [(0, 0) if a in thin else (1, 1) for a in range(tissue.ndim)]
    # along a thin axis the distance is never the nearest: the depth is each slice's own
    sampling = [1e6 if a in thin else 1.0 for a in range(tissue.ndim)]
    depth = distance_transform_edt(np.pad(tissue, pad), sampling=sampling)
    depth = depth[tuple(slice(None) if a in thin else slice(1, -1) for a in range(tissue.ndim))]
    centres: list[np.ndarray] = []
    for r in radii_vox:
        need = float(r[wide].max()) + 2.0
        cand = np.argwhere(depth >= need)
        if cand.size == 0:
            raise ValueError(f"no room for a lesion of radius {r[wide].max():.1f} voxels")
        for c in rng.permutation(cand)[:2000]:
            if all(np.linalg.norm(((c - o) / np.maximum(r, 1e-3))[wide]) > 4.5
                   for o in centres):
                centres.append(c.astype(float))
                break
        else:
            raise ValueError("lesions do not fit apart from each other in this volume")
    return centres


def sphere_fraction(shape: tuple[int, ...], centre: np.ndarray, radius_mm: float,
                    spacing: np.ndarray, thin: tuple[int, ...] = ()) -> np.ndarray:
    """Partial-volume fraction of a sphere on the grid: 1 inside, 0 outside, a linear ramp
    one voxel wide (the smallest voxel size) across the surface; along ``thin`` axes the
    disc through the centre, in the centre's slice only."""
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing,
                                                                    strict=True)],
                        indexing="ij")
    dist = np.sqrt(sum(g**2 for a, g in enumerate(grids) if a not in thin))
    h = float(np.delete(spacing, thin).min())
    f = np.clip((radius_mm - dist) / h + 0.5, 0.0, 1.0)
    for a in thin:
        f = f * (np.abs(grids[a]) < 0.5 * spacing[a])
    return f.astype(np.float32)


def in_plane(thin: tuple[int, ...] | list[int], ndim: int = 3) -> np.ndarray:
    """The 6-neighbour structure of a dilation, less its neighbours along ``thin`` axes (a
    disc's surroundings lie in its own slice)."""
    from scipy.ndimage import generate_binary_structure

    st = generate_binary_structure(ndim, 1)
    for a in thin:
        keep = np.zeros_like(st)
        idx = [slice(None)] * ndim
        idx[a] = 1
        keep[tuple(idx)] = st[tuple(idx)]
        st = keep
    return st


def insert_lesions(ref: np.ndarray, modality: str, spacing: np.ndarray, radii_mm: list[float],
                   contrast: float, seed: int, flip: bool = False
                   ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(volume with lesions, one record per lesion: centre, radius, sign, amplitude, mask).

    Lesion k is bright for even k and dark for odd k (``flip``: the other way round); its
    amplitude is ``contrast`` times the mean tissue value (MR intensity, CT HU + 1000) in a
    2-voxel shell around it."""
    from scipy.ndimage import binary_closing, binary_dilation, binary_fill_holes

    offset = 1000.0 if modality == "CT" else 0.0
    level = ref + offset
    thin = thin_axes(ref.shape, spacing, max(radii_mm))
    if modality == "CT":  # soft tissue and brain, not air, fat or bone
        tissue = (ref > -100.0) & (ref < 150.0)
    else:  # the body's interior, holes (ventricles, sulci) included; per slice on thin axes
        st = in_plane(thin)
        tissue = binary_fill_holes(binary_closing(ref > 0.1 * float(np.percentile(ref, 99.5)),
                                                  st, iterations=2), st)
    rng = np.random.default_rng(seed)
    radii_vox = [r / spacing for r in radii_mm]
    centres = lesion_sites(tissue, radii_vox, rng, thin)
    out = ref.copy()
    records = []
    for k, (c, r) in enumerate(zip(centres, radii_mm, strict=True)):
        f = sphere_fraction(ref.shape, c, r, spacing, thin)
        inside = f > 0
        shell = binary_dilation(inside, in_plane(thin), iterations=2) & ~inside
        base = float(level[shell].mean())
        sign = 1.0 if (k + flip) % 2 == 0 else -1.0
        amp = sign * contrast * base
        out += amp * f
        records.append({"centre_vox": [round(float(v), 1) for v in c], "radius_mm": r,
                        "polarity": "bright" if sign > 0 else "dark", "amplitude": amp,
                        "shape": "disc" if thin else "sphere", "thin_axes": list(thin),
                        "fraction": f})
    return out.astype(np.float32), records


def lesion_scores(d: np.ndarray, records: list[dict[str, Any]],
                  std_with: np.ndarray | None, std_without: np.ndarray | None
                  ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-lesion scores of the reconstructed change ``d`` and the false structure outside."""
    from scipy.ndimage import binary_dilation

    near = np.zeros(d.shape, dtype=bool)
    rows = []
    for rec in records:
        f, amp = rec["fraction"], rec["amplitude"]
        t = amp * f
        core = f >= 0.999
        if not core.any():
            core = f >= f.max() - 1e-6
        row = {k: v for k, v in rec.items() if k != "fraction"}
        row["kept"] = float((d * t).sum() / (t * t).sum())
        row["core"] = float(d[core].mean() / amp)
        if std_with is not None and std_without is not None:
            row["std_rise"] = float(std_with[core].mean() / max(std_without[core].mean(), 1e-12))
        rows.append(row)
        near |= binary_dilation(f > 0, in_plane(rec.get("thin_axes", [])), iterations=2)
    ref_amp = float(np.mean([abs(r["amplitude"]) for r in records]))
    outside = d[~near]
    return rows, {"false_rms": float(np.sqrt(np.mean(outside**2)) / ref_amp),
                  "false_max": float(np.abs(outside).max() / ref_amp)}


def measured_share(measurement: Any, records: list[dict[str, Any]], device: str,
                   iterations: int = 300) -> list[float]:
    """Per lesion, the share of its signal in the range of ``A^H`` (module docstring)."""
    import torch

    from medrecon.problem import measurement_problem
    from medrecon.solvers import conjugate_gradient

    op = measurement_problem(measurement, torch.device(device)).op
    shares = []
    for rec in records:
        t = torch.as_tensor(rec["amplitude"] * rec["fraction"], device=device)
        if measurement.modality == "MR":
            t = t.to(torch.complex64)
        res = conjugate_gradient(lambda v: op.adjoint(op(v)), op.adjoint(op(t)),
                                 max_iter=iterations, tol=1e-7)
        shares.append(float((res.x.real * t.real).sum() / (t.real * t.real).sum()))
    return shares


def load_volume(case: str, shape: tuple[int, int, int], cases_dir: Path | None = None,
                head: int = 0) -> Any:
    """A lesion-free volume: a held-out synthetic head (test seed 2,000,001 + ``head``, its own
    lesions off) or a real file."""
    if case in SYNTH:
        from medrecon.priors.synthetic import generate_head, split_seeds

        modality = "MR" if case == "synth_mr" else "CT"
        return generate_head(shape, 2.0, modality, contrast="T1" if modality == "MR" else "CT",
                             seed=split_seeds("test")[1 + head], lesions=False, noise=False)
    from real_quality import load_cases

    found = load_cases([case], cases_dir)
    if not found:
        raise SystemExit(f"real case {case} is not available on this machine")
    return found[0][1]


def acquisition(vol: Any, setting: str) -> Any:
    """The simulation settings of ``setting`` (mr8, mr12: real_quality's MR acquisition at R;
    ct30: parallel beam, I0 = 1e5), seed 0: every lesioned copy gets the same mask, coil maps
    and noise draw as the lesion-free volume."""
    from real_quality import _mri_config

    from medrecon.simulate import CTSettings, SimulationConfig

    if setting.startswith("mr"):
        return _mri_config(vol.shape, float(setting[2:]))
    return SimulationConfig(modality="ct", seed=0, ct=CTSettings(
        geometry="parallel", views=int(setting[2:]), dose_i0=1e5))


def diffusion_size(args: argparse.Namespace) -> tuple[int, int]:
    """Diffusion's (steps, samples K): the command's, or (2, 2) for ``--quick``."""
    return (2, 2) if args.quick else (args.steps, args.samples)


def run_method(m: Any, method: str, args: argparse.Namespace, lam: float | None = None) -> Any:
    """``method``'s reconstruction of ``m``: its weight self-tuned (``lam auto``) where ``lam``
    is None (the lesion-free data), else at ``lam`` (the lesioned data, the lesion-free
    data's weight). Diffusion runs the sampler itself (guard off: it could hand back the
    classical result)."""
    from medrecon.recon.base import ReconOptions
    from medrecon.reconstruct import reconstruct

    if method == "diffusion":
        steps, samples = diffusion_size(args)
        extra = {"prior": args.prior, "steps": steps, "samples": samples, "seed": 0,
                 "guard": False, **args.extra, **({} if lam is None else {"lam": lam})}
        return reconstruct(m, method, ReconOptions(device=args.device, extra=extra))
    return reconstruct(m, method, ReconOptions(device=args.device, lam=lam,
                                               iterations=5 if args.quick else None))


def run_volume(case: str, head: int, radii: list[float], contrasts: list[float],
               args: argparse.Namespace, kept_by: dict[tuple[Any, ...], list[float]]) -> None:
    """Every setting, method, contrast and placement of one volume: one JSON row each; the
    kept shares also into ``kept_by`` (case, setting, method, contrast, radius)."""
    from medrecon.metrics import psnr
    from medrecon.simulate import simulate

    vol = load_volume(case, tuple(args.shape), args.cases_dir, head)
    modality = vol.modality
    spacing = np.sqrt((np.asarray(vol.affine)[:3, :3] ** 2).sum(axis=0))
    ref = vol.data.astype(np.float32)
    region = ref > (0.05 * ref.max() if modality == "MR" else -900.0)
    for setting in [s for s in args.settings.split(",") if s[:2] == modality[:2].lower()]:
        cfg = acquisition(vol, setting)
        m0 = simulate(vol, cfg, device=args.device)
        for method in args.methods.split(","):
            name = method if method == "diffusion" else (
                "l1-wavelet" if modality == "MR" else "tv")
            r0 = run_method(m0, name, args)
            info: dict[str, Any] = {"method": name, "lam": r0.output.info.get("lam")}
            if name == "diffusion":
                info.update(zip(("steps", "samples"), diffusion_size(args), strict=True))
            x0, s0 = r0.volume.data, r0.output.info.get("std_image")
            quality = psnr(x0, ref, data_range=float(ref.max() - ref.min()), mask=region)
            for contrast in contrasts:
                for p in range(args.placements):
                    # placement p: its own sites; odd placements swap bright and dark
                    try:
                        lesioned, records = insert_lesions(ref, modality, spacing, radii,
                                                           contrast, seed=7 + p, flip=p % 2 == 1)
                    except ValueError as exc:  # a small volume: these sites do not fit
                        print(f"{case} head {head} {setting} {name} placement {p}: {exc}; "
                              f"skipped", flush=True)
                        continue
                    t0 = time.perf_counter()
                    m1 = simulate(replace(vol, data=lesioned), cfg, device=args.device)
                    r1 = run_method(m1, name, args, lam=info["lam"])
                    extra = ({"measured_share": measured_share(m1, records, args.device)}
                             if args.measured_share else {})
                    rows, false = lesion_scores(r1.volume.data - x0, records,
                                                r1.output.info.get("std_image"), s0)
                    for r in rows:
                        kept_by.setdefault((case, setting, name, contrast, r["radius_mm"]),
                                           []).append(r["kept"])
                    row = {"case": case, "modality": modality, "setting": setting,
                           "contrast": contrast, **info, **extra, "psnr": quality,
                           **({"set": args.extra} if args.extra and name == "diffusion"
                              else {}), **false, "lesions": rows, "head": head,
                           "placement": p, "seconds": round(time.perf_counter() - t0, 1),
                           "shape": list(ref.shape),
                           "spacing_mm": [round(float(v), 3) for v in spacing],
                           "device": args.device, "quick": args.quick,
                           "date": datetime.now(UTC).isoformat(timespec="seconds"),
                           "command": "benchmarks/lesion.py " + " ".join(sys.argv[1:])}
                    line = json.dumps(row)
                    if args.out is not None:
                        with args.out.open("a") as f:
                            f.write(line + "\n")
                    kept = ", ".join(f"{r['radius_mm']:g} mm {r['polarity']} {r['kept']:.2f}"
                                     for r in rows)
                    print(f"{case} head {head} {setting} {name} contrast {contrast:g} placement "
                          f"{p}: kept {kept}; false rms {false['false_rms']:.3f} max "
                          f"{false['false_max']:.2f}; PSNR without lesions {quality:.2f} dB"
                          + (" ; in the data " + ", ".join(
                              f"{v:.2f}" for v in extra["measured_share"])
                             if extra else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="append the JSON lines to this file")
    ap.add_argument("--cases", default="synth_mr,synth_ct,mr_brain_piesno")
    ap.add_argument("--cases-dir", type=Path, metavar="DIR",
                    help="real cases exported by real_quality.py --export (GPU machine)")
    ap.add_argument("--settings", default="mr8,mr12,ct30")
    ap.add_argument("--radii", default="2,3,4,6", help="lesion radii (mm), one lesion each")
    ap.add_argument("--contrasts", default="0.1,0.2,0.5")
    ap.add_argument("--methods", default="classical,diffusion")
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64),
                    help="grid of the synthetic heads (2 mm voxels)")
    ap.add_argument("--prior", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a diffusion setting (medrecon.sampling.config), e.g. cg_iters=30; "
                         "lam=VALUE fixes the weight instead of self-tuning it")
    ap.add_argument("--measured-share", action="store_true",
                    help="also the share of each lesion that the noiseless data hold")
    ap.add_argument("--quick", action="store_true", help="smoke test: few steps/iterations")
    ap.add_argument("--placements", type=int, default=1,
                    help="lesion placements per volume (sites drawn with seeds 7, 8, ...; "
                         "odd placements swap bright and dark): a kept share per radius is "
                         "then a mean over sites and polarities, not one lesion's")
    ap.add_argument("--heads", type=int, default=1,
                    help="synthetic test heads (seeds 2,000,001, 2,000,002, ...)")
    args = ap.parse_args(argv)
    from medrecon.cli.reconstruct import _parse_settings  # the CLI's --set: YAML scalars
    from medrecon.device import resolve_device

    args.extra = _parse_settings(args.set)
    args.device = str(resolve_device(args.device))
    radii = [float(v) for v in args.radii.split(",")]
    contrasts = [float(v) for v in args.contrasts.split(",")]
    kept_by: dict[tuple[Any, ...], list[float]] = {}
    for case in args.cases.split(","):
        for head in range(args.heads if case in SYNTH else 1):
            run_volume(case, head, radii, contrasts, args, kept_by)
    if args.placements > 1 or args.heads > 1:
        print("kept, mean +- sd over placements and heads (n):")
        for (case, setting, name, contrast, radius), vals in sorted(kept_by.items()):
            v = np.asarray(vals)
            print(f"  {case} {setting} {name} contrast {contrast:g} {radius:g} mm: "
                  f"{v.mean():.3f} +- {v.std(ddof=1) if v.size > 1 else 0.0:.3f} ({v.size})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
