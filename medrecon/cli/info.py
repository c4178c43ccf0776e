"""``medrecon info``: what a NIfTI file or DICOM file/folder holds, as text or JSON.

For a folder every DICOM series found is listed; the volume details (modality, shape, voxel
spacing, orientation code, intensity range and units) are given for the one series there is,
or for the series chosen with ``--series``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from medrecon.cli.common import user_errors


def register(app: typer.Typer) -> None:
    app.command("info", short_help="Show the series, shape, spacing and orientation of a study.")(info)


def volume_summary(volume: Any) -> dict[str, Any]:
    """JSON-ready description of a :class:`~medrecon.io.volume.Volume`."""
    import numpy as np

    data = volume.data
    finite = data[np.isfinite(data)]
    return {
        "modality": volume.modality,
        "units": volume.units,
        "series_description": volume.series_description,
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "orientation": volume.orientation,
        "origin_mm": [round(float(v), 6) for v in volume.affine[:3, 3]],
        "affine": [[round(float(v), 6) for v in row] for row in volume.affine],
        "intensity": {
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "mean": float(finite.mean()) if finite.size else None,
            "units": volume.units,
        },
        "series_uid": volume.meta.get("series_uid"),
        "study_uid": volume.meta.get("study_uid"),
        "geometry_note": volume.meta.get("geometry_note"),
        "modality_note": volume.meta.get("modality_note"),
    }


def collect_info(path: Path, series: str | None = None, frame: int | None = None) -> dict[str, Any]:
    """The facts ``medrecon info`` prints, as a dictionary (also the ``--json`` output)."""
    from medrecon.errors import InputError
    from medrecon.io import is_nifti_path, load_volume

    if not path.exists():
        raise InputError(f"{path} does not exist.")
    result: dict[str, Any] = {"path": str(path)}
    if is_nifti_path(path):
        result["format"] = "nifti"
        result["series"] = []
        result["volume"] = volume_summary(load_volume(path, series=series, frame=frame))
        return result
    from medrecon.io import refuse_misnamed_file

    refuse_misnamed_file(path)
    if frame is not None:
        raise InputError("--frame applies to 4D NIfTI files, not to DICOM input.")
    from medrecon.io.dicom_read import read_dicom
    from medrecon.io.dicom_scan import list_series

    infos = list_series(path)
    result["format"] = "dicom"
    result["series"] = [
        {"uid": s.uid, "description": s.description, "modality": s.modality,
         "series_number": s.series_number, "n_slices": s.n_slices, "n_files": s.n_files,
         "first_file": str(s.first_file)}
        for s in infos
    ]
    if series is None and len(infos) > 1:
        result["volume"] = None  # ambiguous: the user picks one with --series
    else:
        result["volume"] = volume_summary(read_dicom(path, series=series))
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


def format_info(info: dict[str, Any]) -> str:
    """Human-readable text of :func:`collect_info`'s result."""
    lines = [f"{info['path']} ({info['format'].upper()})"]
    if info["format"] == "dicom":
        n = len(info["series"])
        lines.append(f"{n} series found:")
        for s in info["series"]:
            desc = s["description"] or "no description"
            number = f"#{s['series_number']}  " if s["series_number"] is not None else ""
            lines.append(f"  {number}{s['uid']}  {s['modality']}  {desc!r}  "
                         f"{s['n_slices']} slice{'s' if s['n_slices'] != 1 else ''}")
    vol = info["volume"]
    if vol is None:
        lines.append("Several series: choose one with --series (UID, start of the UID or series "
                     "number) to see its volume.")
        return "\n".join(lines)
    sp = " x ".join(f"{s:.4g}" for s in vol["spacing_mm"])
    inten = vol["intensity"]
    lines += [
        f"modality:     {vol['modality']}",
        f"shape:        {' x '.join(str(s) for s in vol['shape'])}",
        f"spacing:      {sp} mm",
        f"orientation:  {vol['orientation']}",
        f"origin:       ({', '.join(f'{v:.4g}' for v in vol['origin_mm'])}) mm",
        f"intensity:    {_fmt(inten['min'])} .. {_fmt(inten['max'])} {inten['units']} "
        f"(mean {_fmt(inten['mean'])})",
    ]
    if vol["series_description"]:
        lines.append(f"description:  {vol['series_description']}")
    for key in ("modality_note", "geometry_note"):
        if vol.get(key):
            lines.append(f"note:         {vol[key]}")
    return "\n".join(lines)


@user_errors
def info(
    path: Path = typer.Argument(..., metavar="PATH", help="NIfTI file, DICOM file, or folder (tree) of DICOM."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    series: str | None = typer.Option(
        None, "--series", help="Series to describe when a folder holds several: its "
                               "SeriesInstanceUID, a unique prefix of it, or its series number."),
    frame: int | None = typer.Option(None, "--frame", min=0,
                                     help="Frame of a 4D NIfTI file (0-based)."),
) -> None:
    """Show modality, shape, voxel spacing, orientation, intensity range and the series found."""
    result = collect_info(path, series=series, frame=frame)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(format_info(result))
