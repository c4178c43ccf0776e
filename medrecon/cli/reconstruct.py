"""``medrecon reconstruct``: a measurement file -> a reconstructed volume (NIfTI or DICOM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medrecon.cli.common import user_errors


def register(app: typer.Typer) -> None:
    app.command("reconstruct")(reconstruct)


def _parse_settings(settings: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> dict, values parsed as YAML scalars / lists (``3``, ``db4``)."""
    import yaml

    from medrecon.errors import InputError

    out: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects KEY=VALUE, got {item!r}.")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError(f"--set {key.strip()}: cannot parse the value {value!r}.") from None
    return out


def _std_path(out: Path) -> Path:
    """``recon.nii.gz`` -> ``recon_std.nii.gz``; a DICOM folder ``recon`` -> ``recon_std``."""
    name = out.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return out.with_name(name[: -len(suffix)] + "_std" + suffix)
    return out.with_name(name + "_std")


@user_errors
def reconstruct(
    measurement: Path = typer.Argument(..., help="Measurement file (.h5, medrecon or fastMRI)."),
    out: Path = typer.Argument(..., help="Output: .nii/.nii.gz file or a DICOM folder."),
    method: str = typer.Option(
        ..., help="MR: zero-filled, cg-sense, l1-wavelet, tv; CT: fbp, fdk, sirt, cgls, tv; "
                  "both: diffusion (learned prior + posterior sampling)."),
    lam: float | None = typer.Option(
        None, help="Regularisation weight (default: the method's rule, scaled to the data)."),
    iterations: int | None = typer.Option(None, min=1, help="Maximum solver iterations."),
    tol: float = typer.Option(1e-4, min=0.0, help="Stopping tolerance (relative change)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    format: str = typer.Option(
        "auto", "--format", help="auto (NIfTI for .nii/.nii.gz, else DICOM), nifti or dicom."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    settings: list[str] = typer.Option(
        [], "--set", help="Method option KEY=VALUE, repeatable (e.g. wavelet=db2, tv_axes=[0,1], "
                          "sampler=dps for --method diffusion)."),
    prior: str | None = typer.Option(
        None, help="diffusion: prior name (see `medrecon priors`) or path; default: default."),
    sampler: str | None = typer.Option(None, help="diffusion: dds (default), dps, pc or diffpir."),
    steps: int | None = typer.Option(None, min=1, help="diffusion: sampling steps (default 50)."),
    samples: int | None = typer.Option(
        None, min=1, help="diffusion: posterior samples; 2 or more also write a std volume."),
    seed: int | None = typer.Option(None, min=0, help="diffusion: random seed (default 0)."),
    std_out: Path | None = typer.Option(
        None, "--std-out", help="diffusion: where to write the std volume (default: OUT_std)."),
) -> None:
    """Reconstruct MEASUREMENT with a classical method or diffusion posterior sampling, and write
    it in the reference geometry (NIfTI, or a DICOM series derived from the reference).

    Prints the data-consistency residual ||M(Ax) - y|| / ||y||. With --method diffusion and
    --samples K >= 2 the mean is the reconstruction and the per-voxel std is written beside it.
    """
    from medrecon.errors import InputError
    from medrecon.io import save_volume
    from medrecon.io.measurement import read_measurement
    from medrecon.recon.classical import ReconOptions
    from medrecon.reconstruct import reconstruct as run_reconstruction

    fmt = format.lower()
    if fmt not in ("auto", "nifti", "dicom"):
        raise InputError(f"Unknown output format {format!r}; use auto, nifti or dicom.")
    extra = _parse_settings(settings)
    flags = {"prior": prior, "sampler": sampler, "steps": steps, "samples": samples,
             "seed": seed}
    given = [k for k, v in flags.items() if v is not None] + (["std-out"] if std_out else [])
    if given and method.strip().lower() != "diffusion":
        raise InputError(f"--{given[0]} applies to --method diffusion only.")
    extra.update({k: v for k, v in flags.items() if v is not None})
    if std_out is not None and int(extra.get("samples", 1)) < 2:
        raise InputError("--std-out needs --samples 2 or more (one sample has no spread).")
    m = read_measurement(measurement)
    options = ReconOptions(lam=lam, iterations=iterations, tol=tol, device=device,
                           progress=progress, extra=extra)
    result = run_reconstruction(m, method, options)
    path = save_volume(result.volume, out, format=fmt)
    if result.std_volume is not None:
        std_path = save_volume(result.std_volume, std_out or _std_path(out), format=fmt)
        typer.echo(f"Wrote the per-voxel standard deviation to {std_path}")
    info = result.output.info
    details = [f"{result.output.iterations} iterations"] if result.output.iterations else []
    if "lam" in info:
        details.append(f"lam {info['lam']:.3g}")
    details.append(f"{result.seconds:.1f} s on {result.meta.get('device', options.device)}")
    typer.echo(f"Wrote {result.modality} {result.method} reconstruction {result.volume.shape} "
               f"({result.volume.units}) to {path} ({', '.join(details)})")
    typer.echo(f"Data-consistency residual ||M(Ax) - y|| / ||y|| = {result.residual:.4g}")
