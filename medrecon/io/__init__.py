"""Reading and writing studies: NIfTI files, DICOM series, measurement files.

``load_volume`` and ``save_volume`` pick the format from the path; everything user-facing goes
through them so that the CLI and the Python API read and write identically. Modules:
:mod:`~medrecon.io.volume` (the Volume), :mod:`~medrecon.io.nifti`,
:mod:`~medrecon.io.dicom_scan` (finding series), :mod:`~medrecon.io.dicom_read`,
:mod:`~medrecon.io.dicom_write` (derived series), :mod:`~medrecon.io.measurement` (the HDF5
measurement container) with :mod:`~medrecon.io.operator_schema`, :mod:`~medrecon.io.fastmri`
(fastMRI import) and :mod:`~medrecon.io.hdf5_read` (checked reading of either). ``io`` is
file formats only: it imports nothing from :mod:`medrecon.operators`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medrecon.errors import InputError
from medrecon.io.nifti import is_nifti_path, read_nifti, write_nifti
from medrecon.io.volume import Volume

__all__ = ["Volume", "load_volume", "save_volume", "is_nifti_path"]


def load_volume(path: str | Path, series: str | None = None, frame: int | None = None) -> Volume:
    """Read a volume from a NIfTI file, a DICOM file, or a folder (tree) of DICOM files.

    Args:
        path: .nii / .nii.gz file, a DICOM file, or a folder searched recursively for DICOM.
        series: SeriesInstanceUID to pick when a folder holds several series.
        frame: frame index of a 4D NIfTI file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist.")
    if is_nifti_path(path):
        if series is not None:
            raise InputError("--series applies to DICOM input, not to NIfTI files.")
        return read_nifti(path, frame=frame)
    refuse_misnamed_file(path)
    if frame is not None:
        raise InputError("--frame applies to 4D NIfTI files, not to DICOM input.")
    from medrecon.io.dicom_read import read_dicom

    return read_dicom(path, series=series)


def refuse_misnamed_file(path: Path) -> None:
    """Raise a clear :class:`InputError` for a file that is HDF5, or NIfTI without a NIfTI
    name, before it is mistaken for a DICOM file."""
    if not path.is_file() or is_nifti_path(path):
        return
    kind = _sniff(path)
    if kind == "hdf5":
        raise InputError(f"{path} is an HDF5 file (a measurement?), not a volume; give a "
                         f"NIfTI file or DICOM series, or reconstruct it first.")
    if kind == "nifti":
        raise InputError(f"{path} holds NIfTI data but its name does not end in .nii or "
                         f".nii.gz; rename it.")


def _sniff(path: Path) -> str:
    """"hdf5", "nifti" or "" from a file's first bytes (for messages about misnamed inputs)."""
    import gzip

    try:
        with path.open("rb") as fh:
            head = fh.read(352)
        if head.startswith(b"\x1f\x8b"):
            with gzip.open(path, "rb") as fh:
                head = fh.read(352)
    except (OSError, EOFError):
        return ""
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head[344:348] in (b"n+1\0", b"ni1\0") or head[4:8] in (b"n+2\0", b"ni2\0"):
        return "nifti"
    return ""


def save_volume(
    volume: Volume,
    path: str | Path,
    format: str = "auto",
    reference: Volume | None = None,
    **dicom_options: Any,
) -> Path:
    """Write ``volume`` atomically as NIfTI or as a DICOM series folder.

    Args:
        format: "nifti", "dicom" or "auto" (NIfTI when the path ends in .nii/.nii.gz, else a
            DICOM folder).
        reference: a volume read from DICOM whose patient/study the new series joins; defaults
            to ``volume`` itself when it carries a DICOM header.
        dicom_options: passed to :func:`medrecon.io.dicom_write.write_dicom_series`
            (patient_name, patient_id, series_description).
    """
    path = Path(path)
    fmt = format.lower()
    if fmt == "auto":
        fmt = "nifti" if is_nifti_path(path) else "dicom"
    if fmt == "nifti":
        return write_nifti(volume, path)
    if fmt == "dicom":
        if is_nifti_path(path):
            raise InputError(f"DICOM output must be a folder, not {path.name}.")
        from medrecon.io.dicom_write import write_dicom_series

        return write_dicom_series(volume, path, reference=reference, **dicom_options)
    raise InputError(f"Unknown output format {format!r}; use nifti, dicom or auto.")
