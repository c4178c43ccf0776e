"""``medrecon phantom``: write a 3D Shepp-Logan phantom, for trying the tools without data."""

from __future__ import annotations

from pathlib import Path

import typer

from medrecon.cli.common import user_errors


def register(app: typer.Typer) -> None:
    app.command("phantom")(phantom)


@user_errors
def phantom(
    out: Path = typer.Argument(..., help="Output: .nii/.nii.gz file or a DICOM folder."),
    size: int = typer.Option(64, min=8, max=512, help="Voxels along each axis."),
    spacing: float = typer.Option(2.0, min=0.01, help="Voxel size in mm."),
    modality: str = typer.Option("MR", help="MR (values in [0, 1]) or CT (values in HU)."),
) -> None:
    """Write the modified 3D Shepp-Logan phantom as NIfTI or as a DICOM series."""
    import numpy as np

    from medrecon.errors import InputError
    from medrecon.io import Volume, save_volume
    from medrecon.phantoms import shepp_logan_3d

    mod = modality.upper()
    if mod not in ("MR", "CT"):
        raise InputError(f"--modality must be MR or CT, got {modality!r}.")
    data = shepp_logan_3d((size, size, size))
    units = "a.u."
    if mod == "CT":
        # Map phantom values 0 (air) .. 1 (skull) onto -1000 HU .. +1000 HU; soft tissue ~ 0 HU.
        data = np.clip(data * 2000.0 - 1000.0, -1000.0, 3000.0)
        units = "HU"
    affine = np.diag([-spacing, -spacing, spacing, 1.0])  # LPS-like voxel order, as DICOM reads
    affine[:3, 3] = -affine[:3, :3] @ np.full(3, (size - 1) / 2.0)  # centred at the origin
    vol = Volume(data, affine, modality=mod, units=units,
                 series_description="Shepp-Logan phantom")
    path = save_volume(vol, out)
    typer.echo(f"Wrote {mod} phantom {vol.shape} at {spacing} mm to {path}")
