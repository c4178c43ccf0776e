"""``medrecon phantom``: write a test volume (Shepp-Logan or a synthetic head), for trying the
tools without data of your own."""

from __future__ import annotations

from pathlib import Path

import typer

from medrecon.cli.common import check_volume_output, user_errors

_DEFAULT_CONTRAST = "T1"
_DEFAULT_SEED = 2_000_000  # the first held-out test seed of the synthetic heads


def register(app: typer.Typer) -> None:
    app.command("phantom", short_help="Write a test volume: Shepp-Logan or a synthetic head.")(phantom)


@user_errors
def phantom(
    out: Path = typer.Argument(..., metavar="OUT",
                               help="Output: .nii/.nii.gz file or a DICOM folder."),
    kind: str = typer.Option("shepp-logan", help="shepp-logan (analytic ellipsoids) or head "
                             "(synthetic head from the MNI ICBM152 atlas)."),
    size: int = typer.Option(64, min=8, max=512, help="Voxels along each axis."),
    spacing: float = typer.Option(2.0, min=0.01, help="Voxel size in mm."),
    modality: str = typer.Option("MR", help="MR (values in [0, 1], a.u.) or CT (values in HU); "
                                 "MRI is accepted for MR."),
    contrast: str | None = typer.Option(
        None, show_default=False, help=f"head with MR only: T1, T2 or PD "
                                       f"[default: {_DEFAULT_CONTRAST}]."),
    seed: int | None = typer.Option(
        None, min=0, show_default=False,
        help=f"head only: anatomy and noise seed [default: {_DEFAULT_SEED}, the first "
             f"held-out test seed]."),
) -> None:
    """Write a test volume: the 3D Shepp-Logan phantom or a synthetic head, as NIfTI or DICOM."""
    from medrecon.errors import InputError
    from medrecon.io import save_volume

    mod = {"MR": "MR", "MRI": "MR", "CT": "CT"}.get(modality.strip().upper())
    if mod is None:
        raise InputError(f"--modality must be MR or CT, got {modality!r}.")
    kind = kind.strip().lower()
    if kind not in ("shepp-logan", "head"):
        raise InputError(f"--kind must be shepp-logan or head, got {kind!r}.")
    if contrast is not None and (kind != "head" or mod != "MR"):
        raise InputError("--contrast applies to --kind head with --modality MR only.")
    if seed is not None and kind != "head":
        raise InputError("--seed applies to --kind head only (the Shepp-Logan phantom is fixed).")
    fmt = check_volume_output(out)
    if kind == "head":
        from medrecon.priors.synthetic import generate_head

        weighting = (contrast or _DEFAULT_CONTRAST).upper()
        if weighting not in ("T1", "T2", "PD"):
            raise InputError(f"--contrast must be T1, T2 or PD, got {contrast!r}.")
        vol = generate_head((size, size, size), spacing_mm=spacing, modality=mod,
                            contrast=weighting, seed=_DEFAULT_SEED if seed is None else seed)
    else:
        from medrecon.phantoms import shepp_logan_volume

        vol = shepp_logan_volume(size, spacing, mod)
    path = save_volume(vol, out, format=fmt)
    typer.echo(f"Wrote {mod} {kind} {vol.shape} at {spacing} mm to {path}")
