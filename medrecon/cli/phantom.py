"""``medrecon phantom``: write a test volume (Shepp-Logan or a synthetic head), for trying the
tools without data of your own."""

from __future__ import annotations

from pathlib import Path

import typer

from medrecon.cli.common import user_errors


def register(app: typer.Typer) -> None:
    app.command("phantom")(phantom)


@user_errors
def phantom(
    out: Path = typer.Argument(..., help="Output: .nii/.nii.gz file or a DICOM folder."),
    kind: str = typer.Option("shepp-logan", help="shepp-logan (analytic ellipsoids) or head "
                             "(synthetic head from the MNI ICBM152 atlas)."),
    size: int = typer.Option(64, min=8, max=512, help="Voxels along each axis."),
    spacing: float = typer.Option(2.0, min=0.01, help="Voxel size in mm."),
    modality: str = typer.Option("MR", help="MR (values ~[0, 1]) or CT (values in HU)."),
    contrast: str = typer.Option("T1", help="head, MR only: T1, T2 or PD."),
    seed: int = typer.Option(2_000_000, min=0, help="head only: anatomy and noise seed "
                             "(the default is the first held-out test seed)."),
) -> None:
    """Write a test volume: the 3D Shepp-Logan phantom or a synthetic head, as NIfTI or DICOM."""
    from medrecon.errors import InputError
    from medrecon.io import save_volume

    mod = modality.upper()
    if mod not in ("MR", "CT"):
        raise InputError(f"--modality must be MR or CT, got {modality!r}.")
    if kind == "head":
        from medrecon.priors.synthetic import generate_head

        if contrast.upper() not in ("T1", "T2", "PD"):
            raise InputError(f"--contrast must be T1, T2 or PD, got {contrast!r}.")
        vol = generate_head((size, size, size), spacing_mm=spacing, modality=mod,
                            contrast=contrast.upper(), seed=seed)
    elif kind == "shepp-logan":
        from medrecon.phantoms import shepp_logan_volume

        vol = shepp_logan_volume(size, spacing, mod)
    else:
        raise InputError(f"--kind must be shepp-logan or head, got {kind!r}.")
    path = save_volume(vol, out)
    typer.echo(f"Wrote {mod} {kind} {vol.shape} at {spacing} mm to {path}")
