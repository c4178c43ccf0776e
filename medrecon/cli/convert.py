"""``medrecon convert``: NIfTI <-> DICOM (and DICOM -> derived DICOM) with exact geometry.

The output format follows OUT (``.nii``/``.nii.gz`` is NIfTI, anything else a DICOM folder)
unless ``--format`` says otherwise. Existing outputs are only replaced with ``--overwrite``,
and a folder holding anything but a previous medrecon DICOM series is never replaced.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from medrecon.cli.common import check_output, note_modality, user_errors


class OutputFormat(StrEnum):
    auto = "auto"
    nifti = "nifti"
    dicom = "dicom"


#: --modality values -> (DICOM modality code, units).
_MODALITIES: dict[str, tuple[str, str]] = {"ct": ("CT", "HU"), "mr": ("MR", "a.u."),
                                            "mri": ("MR", "a.u.")}


def _with_modality(volume: Any, modality: str) -> Any:
    """``volume`` declared as CT (values in HU) or MR (magnitude, arbitrary units)."""
    import dataclasses

    code, units = _MODALITIES[modality.strip().lower()]
    if code == "MR" and volume.units.upper() != "HU":
        units = volume.units  # keep MR units such as "ms" of a T1 map
    meta = {k: v for k, v in volume.meta.items() if k != "modality_note"}
    return dataclasses.replace(volume, modality=code, units=units, meta=meta)


def register(app: typer.Typer) -> None:
    app.command("convert", short_help="Convert between NIfTI and DICOM with exact geometry.")(convert)


@user_errors
def convert(
    inp: Path = typer.Argument(..., metavar="IN",
                               help="NIfTI file, DICOM file, or folder (tree) of DICOM."),
    out: Path = typer.Argument(..., metavar="OUT",
                               help="Output .nii/.nii.gz file, or a folder for a DICOM series."),
    reference: Path | None = typer.Option(
        None, "--reference",
        help="DICOM file or folder whose patient and study the written DICOM series joins."),
    series: str | None = typer.Option(
        None, "--series", help="Series to read when IN holds several: its SeriesInstanceUID, a "
                               "unique prefix of it, or its series number."),
    frame: int | None = typer.Option(None, "--frame", min=0,
                                     help="Frame of a 4D NIfTI input (0-based)."),
    fmt: OutputFormat = typer.Option(OutputFormat.auto, "--format",
                                     help="Output format; auto picks from OUT's name."),
    patient_name: str | None = typer.Option(None, "--patient-name",
                                            help="PatientName of a DICOM output."),
    patient_id: str | None = typer.Option(None, "--patient-id",
                                          help="PatientID of a DICOM output."),
    series_description: str | None = typer.Option(None, "--series-description",
                                                  help="Description of the written series."),
    modality: str | None = typer.Option(
        None, "--modality", help="Set the modality of the output: ct (values in HU) or mr "
                                 "(NIfTI from other tools carries none)."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an existing output file or medrecon series."),
) -> None:
    """Convert a volume between NIfTI and DICOM, keeping its geometry exactly."""
    from medrecon.errors import InputError
    from medrecon.io import is_nifti_path, load_volume, save_volume

    if modality is not None and modality.strip().lower() not in _MODALITIES:
        raise InputError(f"--modality must be ct or mr, got {modality!r}.")
    target = fmt.value
    if target == "auto":
        target = "nifti" if is_nifti_path(out) else "dicom"
    if target == "nifti":
        for flag, value in (("--reference", reference), ("--patient-name", patient_name),
                            ("--patient-id", patient_id)):
            if value is not None:
                raise InputError(f"{flag} applies to DICOM output, not to NIfTI.")
        if not is_nifti_path(out):
            raise InputError(f"NIfTI output must end in .nii or .nii.gz, got {out.name}.")
        if out.is_dir():
            raise InputError(f"{out} is a folder; give a .nii or .nii.gz file name.")
    else:
        if is_nifti_path(out):
            raise InputError(f"DICOM output must be a folder, not {out.name}.")
        if out.exists() and not out.is_dir():
            raise InputError(f"{out} is a file; DICOM output must be a folder.")
    check_output(out, target, inputs=[inp, reference], overwrite=overwrite)

    ref_volume = None
    if reference is not None:
        if not reference.exists():
            raise InputError(f"Reference {reference} does not exist.")
        if is_nifti_path(reference):
            raise InputError("--reference must be a DICOM file or folder, not NIfTI.")
        ref_volume = load_volume(reference)

    volume = load_volume(inp, series=series, frame=frame)
    if modality is not None:
        volume = _with_modality(volume, modality)
    else:
        note_modality(volume)
    if series_description is not None:
        volume.series_description = series_description

    if target == "nifti":
        path = save_volume(volume, out, format="nifti")
    else:
        path = save_volume(volume, out, format="dicom", reference=ref_volume,
                           patient_name=patient_name, patient_id=patient_id,
                           series_description=series_description, overwrite=overwrite)
    spacing = " x ".join(f"{s:.4g}" for s in volume.spacing)
    written = volume.modality
    if target == "dicom":
        from medrecon.io.dicom_write import written_modality

        written = written_modality(volume, ref_volume)
    typer.echo(f"Wrote {written} volume {' x '.join(map(str, volume.shape))} "
               f"({spacing} mm, {volume.orientation}) to {path} as {target.upper()}.")
