"""``medrecon reconstruct``: a measurement file -> a reconstructed volume (NIfTI or DICOM)."""

from __future__ import annotations

from pathlib import Path

import typer

from medrecon.cli.common import user_errors


def register(app: typer.Typer) -> None:
    app.command("reconstruct")(reconstruct)


@user_errors
def reconstruct(
    measurement: Path = typer.Argument(..., help="Measurement file (.h5, medrecon or fastMRI)."),
    out: Path = typer.Argument(..., help="Output: .nii/.nii.gz file or a DICOM folder."),
    method: str = typer.Option(
        ..., help="MR: zero-filled, cg-sense, l1-wavelet, tv; CT: fbp, fdk, sirt, cgls, tv."),
    lam: float | None = typer.Option(
        None, help="Regularisation weight (default: the method's rule, scaled to the data)."),
    iterations: int | None = typer.Option(None, min=1, help="Maximum solver iterations."),
    tol: float = typer.Option(1e-4, min=0.0, help="Stopping tolerance (relative change)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    format: str = typer.Option(
        "auto", "--format", help="auto (NIfTI for .nii/.nii.gz, else DICOM), nifti or dicom."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Reconstruct MEASUREMENT with a classical METHOD and write it in the reference geometry."""
    from medrecon.errors import InputError
    from medrecon.io import save_volume
    from medrecon.io.measurement import read_measurement
    from medrecon.recon.classical import ReconOptions
    from medrecon.reconstruct import reconstruct as run_reconstruction

    fmt = format.lower()
    if fmt not in ("auto", "nifti", "dicom"):
        raise InputError(f"Unknown output format {format!r}; use auto, nifti or dicom.")
    m = read_measurement(measurement)
    options = ReconOptions(lam=lam, iterations=iterations, tol=tol, device=device,
                           progress=progress)
    result = run_reconstruction(m, method, options)
    path = save_volume(result.volume, out, format=fmt)
    info = result.output.info
    details = [f"{result.output.iterations} iterations"] if result.output.iterations else []
    if "lam" in info:
        details.append(f"lam {info['lam']:.3g}")
    details.append(f"{result.seconds:.1f} s on {info.get('device', options.device)}")
    typer.echo(f"Wrote {result.modality} {result.method} reconstruction {result.volume.shape} "
               f"({result.volume.units}) to {path} ({', '.join(details)})")
    typer.echo(f"Data-consistency residual ||M(Ax) - y|| / ||y|| = {result.residual:.4g}")
