"""Finding DICOM images under a path and grouping them into series (no pixel data is read).

:func:`list_series` and :func:`scan_series` walk a file, folder or folder tree (hidden files
skipped), read every candidate file's header (pixel data deferred), skip what is not a DICOM
image (README files, DICOMDIR indexes, non-image objects; a file the user named explicitly is an
error instead) and group the images by SeriesInstanceUID in path order. A file that looks like
DICOM but cannot be parsed, or is cut short, is an error naming it. Reading a series into a
volume is :mod:`medrecon.io.dicom_read`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrecon.errors import DicomError, InputError

__all__ = [
    "PIXEL_KEYWORDS",
    "DicomFile",
    "SeriesInfo",
    "first_line",
    "list_series",
    "scan_series",
    "series_info",
]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# Files with these suffixes are never DICOM; skipping them avoids parsing large foreign files.
_NOT_DICOM_SUFFIXES = {
    ".txt", ".md", ".json", ".xml", ".csv", ".html", ".pdf", ".nii", ".gz", ".zip", ".png",
    ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".h5", ".hdf5", ".npy", ".npz", ".py", ".yaml",
    ".yml", ".ini", ".log", ".bat", ".sh", ".exe",
}

#: The elements that hold pixel data (removed from the headers kept in memory).
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class SeriesInfo:
    """One series found under a path.

    Attributes:
        uid: SeriesInstanceUID.
        description: SeriesDescription ("" when absent).
        modality: Modality code ("OT" when absent).
        n_slices: number of 2D images: files of a classic series, frames of a multi-frame one.
        n_files: number of files holding the series.
        first_file: the first file (in path order) of the series.
        series_number: SeriesNumber, or None.
        study_uid: StudyInstanceUID ("" when absent).
    """

    uid: str
    description: str
    modality: str
    n_slices: int
    n_files: int
    first_file: Path
    series_number: int | None = None
    study_uid: str = ""


@dataclass
class DicomFile:
    """A DICOM image file found during the scan, with its header (no pixel data)."""

    path: Path
    header: Any  # pydicom Dataset without PixelData

    @property
    def n_frames(self) -> int:
        try:
            return max(1, int(self.header.get("NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            return 1

    @property
    def multiframe(self) -> bool:
        return self.n_frames > 1 or "PerFrameFunctionalGroupsSequence" in self.header



def _looks_like_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_header(path: Path, explicit: bool) -> Any | None:
    """The header of ``path`` without pixel data, or None when it is not a DICOM image.

    ``explicit`` means the user named this file: then a non-image is an error, not skipped.
    A file with the DICM marker that cannot be parsed is always an error.
    """
    import pydicom

    try:
        magic = _looks_like_dicom(path)
    except OSError as exc:
        raise DicomError(f"Cannot open {path}: {exc.strerror or exc}.") from None
    if not magic:
        if path.suffix.lower() in _NOT_DICOM_SUFFIXES and not explicit:
            return None
        # DICOM files without the Part 10 preamble exist (old scanners); accept one only
        # when it parses and carries the attributes of an image.
        try:
            ds = pydicom.dcmread(path, force=True, defer_size=1024)
            ok = "SOPClassUID" in ds and "Rows" in ds and "Columns" in ds
        except Exception:
            ok = False
        if not ok:
            if explicit:
                raise DicomError(f"{path} is neither DICOM nor NIfTI (.nii, .nii.gz).")
            return None
        for kw in PIXEL_KEYWORDS:
            if kw in ds:
                delattr(ds, kw)
        return ds
    try:
        # Large values (the pixel data) are deferred: their tag and length are read, their
        # bytes are not, so the scan stays cheap while a missing pixel element is visible.
        ds = pydicom.dcmread(path, defer_size=1024)
        for _ in ds.iterall():  # parse every element so that a corrupt header fails here
            pass
    except Exception as exc:
        raise DicomError(f"{path} is truncated or corrupt ({first_line(exc)}).") from None
    meta_sop = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "") or "")
    sop = str(ds.get("SOPClassUID", "") or meta_sop)
    has_pixels = any(kw in ds for kw in PIXEL_KEYWORDS)
    is_image = "Rows" in ds and "Columns" in ds
    # pydicom stops quietly at the end of a cut-short file: an image class, or image attributes,
    # without pixel data (or a dataset without its SOP class) means the file is truncated.
    image_class = "Image Storage" in pydicom.uid.UID(meta_sop or sop).name
    if len(ds) == 0 or (sop != DICOMDIR_SOP_CLASS and not has_pixels
                        and (is_image or image_class)) or (
            meta_sop and "SOPClassUID" not in ds and meta_sop != DICOMDIR_SOP_CLASS):
        raise DicomError(f"{path} is truncated or corrupt (no complete image data).")
    for kw in PIXEL_KEYWORDS:
        if kw in ds:
            delattr(ds, kw)
    if sop == DICOMDIR_SOP_CLASS or not is_image:
        if explicit:
            kind = "a DICOMDIR index" if sop == DICOMDIR_SOP_CLASS else "a DICOM object without an image"
            raise DicomError(f"{path} is {kind}; give the image files or their folder.")
        return None
    return ds


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).rstrip(".")


def _candidate_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).parts
        # Hidden files and folders (.DS_Store, half-written .tmp outputs) are never inputs.
        if any(part.startswith(".") for part in rel):
            continue
        if p.is_file():
            files.append(p)
    return files


def scan_series(path: Path) -> dict[str, list[DicomFile]]:
    """Group the DICOM image files under ``path`` by SeriesInstanceUID (path order kept)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist.")
    explicit = path.is_file()
    groups: dict[str, list[DicomFile]] = {}
    for f in _candidate_files(path):
        ds = _read_header(f, explicit)
        if ds is None:
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        groups.setdefault(uid, []).append(DicomFile(f, ds))
    if not groups:
        raise DicomError(f"No DICOM images were found in {path}.")
    return groups


def series_info(uid: str, entries: list[DicomFile]) -> SeriesInfo:
    h = entries[0].header
    try:
        number = int(h.get("SeriesNumber")) if h.get("SeriesNumber") not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    return SeriesInfo(
        uid=uid,
        description=str(h.get("SeriesDescription", "") or ""),
        modality=str(h.get("Modality", "") or "OT"),
        n_slices=sum(e.n_frames for e in entries),
        n_files=len(entries),
        first_file=entries[0].path,
        series_number=number,
        study_uid=str(h.get("StudyInstanceUID", "") or ""),
    )


def list_series(path: str | Path) -> list[SeriesInfo]:
    """All DICOM image series under ``path`` (a file, folder or folder tree), in path order.

    Non-DICOM files (README, DICOMDIR, ...) are skipped; a corrupt DICOM file is an error.
    """
    groups = scan_series(Path(path))
    return [series_info(uid, entries) for uid, entries in groups.items()]
