"""DICOM input and output: series discovery, geometry, enhanced multi-frame, derived series.

Reading
-------
:func:`read_dicom` accepts a single file, a folder or a folder tree. Files are grouped by
SeriesInstanceUID. Within a classic (one image per file) series the slices are sorted by their
position along the slice normal ``n = r x c`` (``r``, ``c`` the row and column direction cosines of
ImageOrientationPatient), ``d = n . ImagePositionPatient``; InstanceNumber and file names are never
used. Enhanced multi-frame CT/MR files (per-frame and shared functional groups) and other
multi-frame images (e.g. RT Dose with GridFrameOffsetVector) go through the same geometry checks
frame by frame.

Geometry rules (checked before any pixel is decoded, each failure is a :class:`DicomError`
naming the problem and the file):

* all slices share Rows/Columns, PixelSpacing and ImageOrientationPatient (cosines within 1e-3);
* two slices closer than ``max(1e-4 mm, 5 % of the typical gap)`` along ``n`` are duplicates
  (e.g. several echoes or time points in one series);
* with ``m`` the smallest gap and ``t = 0.01 mm + 1 % of m``, a gap within ``n t`` of a whole
  multiple ``n m`` (``n >= 2``) means ``n - 1`` missing slices, and any other gap differing from
  ``m`` by more than ``t`` means non-uniform spacing;
* the slice positions must lie on a straight line within the same tolerance (a constant
  in-plane shift per slice, e.g. CT gantry tilt, is kept exactly as a sheared affine).

Voxel axes are (column, row, slice): ``i`` runs along a row, ``j`` down a column, ``k`` along
``n``. With ``P_0`` the position of the first slice, ``s`` the step between consecutive slice
positions and ``(dr, dc)`` = PixelSpacing (row spacing, column spacing)::

    affine_LPS = [[r * dc, c * dr, s, P_0], [0, 0, 0, 1]]     (columns)
    affine_RAS = diag(-1, -1, 1, 1) @ affine_LPS

Stored values ``v`` become ``RescaleSlope * v + RescaleIntercept`` per slice or frame (HU for CT).

Writing
-------
:func:`write_dicom_series` writes one classic single-frame file per ``k`` slice (CT Image, MR
Image or Secondary Capture storage), derived from a reference header when there is one: new
Series and SOP Instance UIDs, ImageType ``DERIVED\\SECONDARY``, patient and study kept, geometry
tags computed from the affine so that reading the series back gives the same affine.
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import DicomError, GeometryError, InputError
from medrecon.io.atomic import atomic_dir
from medrecon.io.series import select_series
from medrecon.io.volume import Volume

__all__ = ["SeriesInfo", "list_series", "read_dicom", "write_dicom_series"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

ORIENTATION_TOL = 1e-3  # max |difference| between direction cosines of slices of one series
DUPLICATE_ABS_MM = 1e-4
DUPLICATE_REL = 0.05
SPACING_ABS_MM = 0.01
SPACING_REL = 0.01

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

# Files with these suffixes are never DICOM; skipping them avoids parsing large foreign files.
_NOT_DICOM_SUFFIXES = {
    ".txt", ".md", ".json", ".xml", ".csv", ".html", ".pdf", ".nii", ".gz", ".zip", ".png",
    ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".h5", ".hdf5", ".npy", ".npz", ".py", ".yaml",
    ".yml", ".ini", ".log", ".bat", ".sh", ".exe",
}

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
OUTPUT_NAME = re.compile(r"^IM\d{5,}\.dcm$")
IMPLEMENTATION_VERSION = "MEDRECON_"


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
class _Entry:
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


@dataclass
class _Slice:
    """Geometry and rescale of one 2D image (a file or one frame of a multi-frame file)."""

    label: str
    ipp: np.ndarray | None  # (3,) LPS mm
    iop: np.ndarray | None  # (6,) row cosines then column cosines
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) mm
    rows: int
    cols: int
    slope: float = 1.0
    intercept: float = 0.0
    thickness: float | None = None
    spacing_between: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Scanning


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
        for kw in _PIXEL_KEYWORDS:
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
        raise DicomError(f"{path} is truncated or corrupt ({_first_line(exc)}).") from None
    meta_sop = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "") or "")
    sop = str(ds.get("SOPClassUID", "") or meta_sop)
    has_pixels = any(kw in ds for kw in _PIXEL_KEYWORDS)
    is_image = "Rows" in ds and "Columns" in ds
    # pydicom stops quietly at the end of a cut-short file: an image class, or image attributes,
    # without pixel data (or a dataset without its SOP class) means the file is truncated.
    image_class = "Image Storage" in pydicom.uid.UID(meta_sop or sop).name
    if len(ds) == 0 or (sop != DICOMDIR_SOP_CLASS and not has_pixels
                        and (is_image or image_class)) or (
            meta_sop and "SOPClassUID" not in ds and meta_sop != DICOMDIR_SOP_CLASS):
        raise DicomError(f"{path} is truncated or corrupt (no complete image data).")
    for kw in _PIXEL_KEYWORDS:
        if kw in ds:
            delattr(ds, kw)
    if sop == DICOMDIR_SOP_CLASS or not is_image:
        if explicit:
            kind = "a DICOMDIR index" if sop == DICOMDIR_SOP_CLASS else "a DICOM object without an image"
            raise DicomError(f"{path} is {kind}; give the image files or their folder.")
        return None
    return ds


def _first_line(exc: BaseException) -> str:
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


def _scan(path: Path) -> dict[str, list[_Entry]]:
    """Group the DICOM image files under ``path`` by SeriesInstanceUID (path order kept)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist.")
    explicit = path.is_file()
    groups: dict[str, list[_Entry]] = {}
    for f in _candidate_files(path):
        ds = _read_header(f, explicit)
        if ds is None:
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        groups.setdefault(uid, []).append(_Entry(f, ds))
    if not groups:
        raise DicomError(f"No DICOM images were found in {path}.")
    return groups


def _series_info(uid: str, entries: list[_Entry]) -> SeriesInfo:
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
    groups = _scan(Path(path))
    return [_series_info(uid, entries) for uid, entries in groups.items()]


# --------------------------------------------------------------------------------------------
# Reading


def read_dicom(path: str | Path, series: str | None = None) -> Volume:
    """Read one DICOM series from a file, a folder or a folder tree as a :class:`Volume`.

    Args:
        path: a DICOM file (single- or multi-frame) or a folder searched recursively.
        series: the series to read when the folder holds several: SeriesInstanceUID, series
            number or unique UID prefix (:func:`medrecon.io.series.select_series`).

    Returns:
        A Volume with float32 data (I, J, K) = (columns, rows, slices) after rescale, the RAS
        affine (see the module docstring), modality, units ("HU" for CT), the first slice's
        header without pixel data in ``dicom_header``, and ``meta`` with ``series_uid``,
        ``study_uid``, ``source``, ``n_files``.

    Raises:
        DicomError: several series and no ``series``, an unknown ``series``, or an inconsistent
            or unreadable series (the message names the problem and the file).
    """
    path = Path(path)
    groups = _scan(path)
    infos = [_series_info(uid, e) for uid, e in groups.items()]
    uid = select_series(path, infos, series)
    entries = groups[uid]
    multi = [e for e in entries if e.multiframe]
    if multi:
        if len(entries) > 1:
            raise DicomError(
                f"Series {uid} holds {len(entries)} files including multi-frame images; "
                f"give one multi-frame file, e.g. {multi[0].path}."
            )
        vol = _read_multiframe(entries[0])
    else:
        vol = _read_classic(entries)
    vol.meta.update({
        "source": str(path),
        "format": "dicom",
        "series_uid": uid,
        "study_uid": str(entries[0].header.get("StudyInstanceUID", "") or ""),
        "frame_of_reference_uid": str(entries[0].header.get("FrameOfReferenceUID", "") or ""),
        "n_files": len(entries),
    })
    return vol


def _floats(value: Any, n: int, what: str, label: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise DicomError(f"{label} has an unreadable {what}.") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise DicomError(f"{label} has an invalid {what} (expected {n} numbers).")
    return arr


def _opt_float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _slice_from_dataset(ds: Any, label: str) -> _Slice:
    ipp = ds.get("ImagePositionPatient")
    iop = ds.get("ImageOrientationPatient")
    ps = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    slope = _opt_float(ds.get("RescaleSlope"))
    intercept = _opt_float(ds.get("RescaleIntercept"))
    return _Slice(
        label=label,
        ipp=_floats(ipp, 3, "ImagePositionPatient", label) if ipp else None,
        iop=_floats(iop, 6, "ImageOrientationPatient", label) if iop else None,
        pixel_spacing=tuple(_floats(ps, 2, "PixelSpacing", label)) if ps else None,  # type: ignore[arg-type]
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        slope=1.0 if slope is None else slope,
        intercept=0.0 if intercept is None else intercept,
        thickness=_opt_float(ds.get("SliceThickness")),
        spacing_between=_opt_float(ds.get("SpacingBetweenSlices")),
    )


def _check_consistent(slices: list[_Slice]) -> None:
    """Same size, pixel spacing and orientation for all slices (first one is the reference)."""
    s0 = slices[0]
    for s in slices[1:]:
        if (s.rows, s.cols) != (s0.rows, s0.cols):
            raise DicomError(
                f"Mixed image sizes in one series: {s.label} is {s.rows}x{s.cols} but "
                f"{s0.label} is {s0.rows}x{s0.cols}."
            )
    if len(slices) == 1:
        return
    for s in slices:
        if s.ipp is None or s.iop is None:
            raise DicomError(
                f"{s.label} has no ImagePositionPatient/ImageOrientationPatient, so the slices "
                f"of its series cannot be placed in space."
            )
    for s in slices[1:]:
        if np.max(np.abs(s.iop - s0.iop)) > ORIENTATION_TOL:  # type: ignore[operator]
            raise DicomError(
                f"Mixed slice orientations in one series: {s.label} differs from {s0.label}."
            )
        if (s.pixel_spacing is None) != (s0.pixel_spacing is None) or (
            s.pixel_spacing is not None
            and not np.allclose(s.pixel_spacing, s0.pixel_spacing, rtol=1e-4, atol=1e-4)  # type: ignore[arg-type]
        ):
            raise DicomError(
                f"Mixed pixel spacings in one series: {s.label} has {s.pixel_spacing} but "
                f"{s0.label} has {s0.pixel_spacing}."
            )


def _cosines(iop: np.ndarray, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, c = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr < 1e-6 or nc < 1e-6 or abs(float(r @ c)) / (nr * nc) > 1e-2:
        raise DicomError(f"{label} has an invalid ImageOrientationPatient {list(iop)}.")
    r, c = r / nr, c / nc
    return r, c, np.cross(r, c)


def _stack_geometry(slices: list[_Slice], note: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sort ``slices`` along the normal and return (order, LPS affine); checks spacing.

    ``note`` collects warnings about assumed geometry (stored in ``Volume.meta``).
    """
    _check_consistent(slices)
    s0 = slices[0]
    if s0.pixel_spacing is None:
        note.append("no PixelSpacing: 1 mm assumed")
        dr, dc = 1.0, 1.0
    else:
        dr, dc = s0.pixel_spacing
        if dr <= 0 or dc <= 0:
            raise DicomError(f"{s0.label} has a non-positive PixelSpacing {s0.pixel_spacing}.")
    if s0.iop is None:
        note.append("no ImageOrientationPatient: axial orientation assumed")
        r, c, n = np.eye(3)
    else:
        r, c, n = _cosines(s0.iop, s0.label)
    if s0.ipp is None:
        note.append("no ImagePositionPatient: origin assumed at 0")
    n_slices = len(slices)
    if n_slices == 1:
        order = np.zeros(1, dtype=int)
        dz = s0.spacing_between or s0.thickness
        if dz is None or dz <= 0:
            dz = 1.0
            note.append("single slice without thickness: 1 mm assumed")
        step = n * dz
        origin = s0.ipp if s0.ipp is not None else np.zeros(3)
    else:
        pos = np.array([s.ipp for s in slices])  # (N, 3)
        d = pos @ n
        order = np.argsort(d, kind="stable")
        ds = d[order]
        gaps = np.diff(ds)
        big = gaps[gaps > DUPLICATE_ABS_MM]
        typical = float(np.median(big)) if big.size else 0.0
        dup_tol = max(DUPLICATE_ABS_MM, DUPLICATE_REL * typical)
        for g_idx, g in enumerate(gaps):
            if g <= dup_tol:
                a, b = slices[order[g_idx]], slices[order[g_idx + 1]]
                raise DicomError(
                    f"Duplicated slice position {ds[g_idx]:.3f} mm along the normal: {b.label} "
                    f"and {a.label} (several echoes, phases or time points in one series?)."
                )
        # Reference spacing: the smallest gap. Missing slices leave gaps that are whole
        # multiples of it, which the median would not see in short series.
        m = float(gaps.min())
        tol = SPACING_ABS_MM + SPACING_REL * m
        for g_idx, g in enumerate(gaps):
            a, b = slices[order[g_idx]], slices[order[g_idx + 1]]
            mult = int(round(g / m))
            if mult >= 2 and abs(g - mult * m) <= mult * tol:
                raise DicomError(
                    f"Missing slice{'s' if mult > 2 else ''}: the gap between {a.label} and "
                    f"{b.label} is {g:.3f} mm but the slice spacing is {m:.3f} mm."
                )
            if abs(g - m) > tol:
                raise DicomError(
                    f"Non-uniform slice spacing: {g:.3f} mm between {a.label} and {b.label} "
                    f"but {m:.3f} mm elsewhere."
                )
        p = pos[order]
        step = (p[-1] - p[0]) / (n_slices - 1)
        fit = p[0] + np.arange(n_slices)[:, None] * step
        dev = np.linalg.norm(p - fit, axis=1)
        worst = int(np.argmax(dev))
        if dev[worst] > tol:
            raise DicomError(
                f"Slice positions do not lie on a straight line: {slices[order[worst]].label} is "
                f"{dev[worst]:.3f} mm off."
            )
        origin = p[0]
    affine = np.eye(4)
    affine[:3, 0] = r * dc
    affine[:3, 1] = c * dr
    affine[:3, 2] = step
    affine[:3, 3] = origin
    return order, affine


def _decode(ds: Any, label: str) -> np.ndarray:
    """``ds.pixel_array`` with errors turned into a DicomError naming ``label``."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(
            f"{label} is a colour image ({ds.get('PhotometricInterpretation', '?')}); "
            f"medrecon reads greyscale images."
        )
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise DicomError(
            f"Cannot decode the pixel data of {label}: truncated, corrupt or unsupported "
            f"({_first_line(exc)})."
        ) from None
    return np.asarray(arr)


def _header_copy(ds: Any) -> Any:
    """A deep copy of ``ds`` without its pixel data (never copying the pixel bytes)."""
    from pydicom.dataset import Dataset

    hdr = Dataset()
    for elem in ds:
        if elem.keyword not in _PIXEL_KEYWORDS:
            hdr.add(copy.deepcopy(elem))
    if getattr(ds, "file_meta", None) is not None:
        hdr.file_meta = copy.deepcopy(ds.file_meta)
    return hdr


def _units(ds: Any, modality: str) -> str:
    if modality == "CT":
        rtype = str(ds.get("RescaleType", "") or "").strip().upper()
        return "HU" if rtype in ("", "HU") else rtype
    if modality == "RTDOSE":
        u = str(ds.get("DoseUnits", "") or "").strip().upper()
        return {"GY": "Gy", "RELATIVE": "relative"}.get(u, u or "a.u.")
    if modality == "PT":
        u = str(ds.get("Units", "") or "").strip().upper()
        return {"BQML": "Bq/ml", "CNTS": "counts"}.get(u, u or "a.u.")
    return "a.u."


def _make_volume(data: np.ndarray, affine_lps: np.ndarray, ds: Any, note: list[str]) -> Volume:
    modality = str(ds.get("Modality", "") or "OT").upper()
    meta: dict[str, Any] = {}
    if note:
        meta["geometry_note"] = "; ".join(note)
    return Volume(
        data=data,
        affine=LPS_TO_RAS @ affine_lps,
        modality=modality,
        units=_units(ds, modality),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        dicom_header=_header_copy(ds),
        meta=meta,
    )


def _read_classic(entries: list[_Entry]) -> Volume:
    import pydicom

    slices = [_slice_from_dataset(e.header, str(e.path)) for e in entries]
    note: list[str] = []
    order, affine = _stack_geometry(slices, note)
    s0 = slices[0]
    data = np.empty((s0.cols, s0.rows, len(slices)), dtype=np.float32)
    first_ds = None
    for k, idx in enumerate(order):
        e = entries[idx]
        try:
            ds = pydicom.dcmread(e.path)
        except Exception as exc:
            raise DicomError(f"{e.path} is truncated or corrupt ({_first_line(exc)}).") from None
        arr = _decode(ds, str(e.path))
        if arr.shape != (s0.rows, s0.cols):
            raise DicomError(f"{e.path} holds pixel data of shape {arr.shape}, not "
                             f"{s0.rows}x{s0.cols} as its header says.")
        s = slices[idx]
        data[:, :, k] = (arr.astype(np.float64) * s.slope + s.intercept).T
        if k == 0:
            first_ds = ds
    return _make_volume(data, affine, first_ds, note)


def _fg_item(frame_item: Any, shared: Any, name: str) -> Any:
    """First item of functional group ``name`` from the per-frame item, else the shared one."""
    for src in (frame_item, shared):
        if src is not None and name in src and len(src[name].value) > 0:
            return src[name].value[0]
    return None


def _read_multiframe(entry: _Entry) -> Volume:
    import pydicom

    label = str(entry.path)
    try:
        ds = pydicom.dcmread(entry.path)
    except Exception as exc:
        raise DicomError(f"{label} is truncated or corrupt ({_first_line(exc)}).") from None
    n_frames = entry.n_frames
    rows, cols = int(ds.Rows), int(ds.Columns)
    slices: list[_Slice] = []
    if "PerFrameFunctionalGroupsSequence" in ds:
        per_frame = ds.PerFrameFunctionalGroupsSequence
        shared = ds.SharedFunctionalGroupsSequence[0] if ds.get(
            "SharedFunctionalGroupsSequence") else None
        if len(per_frame) != n_frames:
            raise DicomError(f"{label} has {len(per_frame)} per-frame functional groups for "
                             f"{n_frames} frames.")
        for f_idx, item in enumerate(per_frame):
            flabel = f"{label} (frame {f_idx + 1})"
            pos = _fg_item(item, shared, "PlanePositionSequence")
            ori = _fg_item(item, shared, "PlaneOrientationSequence")
            pm = _fg_item(item, shared, "PixelMeasuresSequence")
            pvt = _fg_item(item, shared, "PixelValueTransformationSequence")
            ipp = pos.get("ImagePositionPatient") if pos is not None else None
            iop = ori.get("ImageOrientationPatient") if ori is not None else None
            ps = pm.get("PixelSpacing") if pm is not None else None
            slope = _opt_float(pvt.get("RescaleSlope")) if pvt is not None else None
            intercept = _opt_float(pvt.get("RescaleIntercept")) if pvt is not None else None
            if slope is None:  # some writers keep the rescale at the top level
                slope = _opt_float(ds.get("RescaleSlope"))
                intercept = _opt_float(ds.get("RescaleIntercept"))
            slices.append(_Slice(
                label=flabel,
                ipp=_floats(ipp, 3, "ImagePositionPatient", flabel) if ipp else None,
                iop=_floats(iop, 6, "ImageOrientationPatient", flabel) if iop else None,
                pixel_spacing=tuple(_floats(ps, 2, "PixelSpacing", flabel)) if ps else None,  # type: ignore[arg-type]
                rows=rows, cols=cols,
                slope=1.0 if slope is None else slope,
                intercept=0.0 if intercept is None else intercept,
                thickness=_opt_float(pm.get("SliceThickness")) if pm is not None else None,
                spacing_between=_opt_float(pm.get("SpacingBetweenSlices")) if pm is not None else None,
            ))
        if n_frames > 1 and any(s.ipp is None for s in slices):
            raise DicomError(f"{label} has frames without a PlanePositionSequence, so they "
                             f"cannot be placed in space.")
    else:
        base = _slice_from_dataset(ds, label)
        if ds.get("Modality") == "RTDOSE" and ds.get("DoseGridScaling") is not None:
            base.slope = float(ds.DoseGridScaling)
            base.intercept = 0.0
        if base.ipp is None or base.iop is None or n_frames == 1:
            # No geometry per frame: frames are equally spaced along the normal (assumed
            # axial when there is no orientation), as for cine or stacked secondary captures.
            r, c, n = (np.eye(3) if base.iop is None else _cosines(base.iop, label))
            offsets = np.arange(n_frames) * (base.spacing_between or base.thickness or 1.0)
        else:
            r, c, n = _cosines(base.iop, label)
            gfov = ds.get("GridFrameOffsetVector")
            if gfov is not None:
                offsets = _floats(gfov, n_frames, "GridFrameOffsetVector", label)
                offsets = offsets - offsets[0]  # relative or absolute: frame 0 is at IPP
            else:
                dz = base.spacing_between or base.thickness
                if dz is None or dz <= 0:
                    raise DicomError(f"{label} has {n_frames} frames but neither "
                                     f"GridFrameOffsetVector nor a slice spacing.")
                offsets = np.arange(n_frames) * dz
        origin = base.ipp if base.ipp is not None else np.zeros(3)
        iop = np.concatenate([r, c])
        for f_idx in range(n_frames):
            slices.append(_Slice(
                label=f"{label} (frame {f_idx + 1})", ipp=origin + offsets[f_idx] * n, iop=iop,
                pixel_spacing=base.pixel_spacing, rows=rows, cols=cols, slope=base.slope,
                intercept=base.intercept, thickness=base.thickness,
                spacing_between=base.spacing_between,
            ))
    note: list[str] = []
    order, affine = _stack_geometry(slices, note)
    arr = _decode(ds, label)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != (n_frames, rows, cols):
        raise DicomError(f"{label} holds pixel data of shape {arr.shape}, not "
                         f"{n_frames}x{rows}x{cols} as its header says.")
    data = np.empty((cols, rows, n_frames), dtype=np.float32)
    for k, idx in enumerate(order):
        s = slices[idx]
        data[:, :, k] = (arr[idx].astype(np.float64) * s.slope + s.intercept).T
    return _make_volume(data, affine, ds, note)


# --------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class _PlaneGeometry:
    """DICOM plane geometry of a volume: the affine in DICOM's terms (LPS mm)."""

    row_cos: np.ndarray  # (3,) direction of increasing column index (i)
    col_cos: np.ndarray  # (3,) direction of increasing row index (j)
    row_spacing: float  # mm between rows (along j)
    col_spacing: float  # mm between columns (along i)
    origin: np.ndarray  # (3,) centre of voxel (0, 0, 0)
    step: np.ndarray  # (3,) displacement from slice k to k + 1
    flip_k: bool  # True when the k axis was reversed to point along the normal


def _plane_geometry(affine_ras: np.ndarray, n_k: int) -> _PlaneGeometry:
    """DICOM geometry of a RAS affine; k is reversed when it points against ``r x c``.

    DICOM readers sort slices along ``n = r x c``, so a left-handed affine (det < 0) is written
    with its k axis reversed: same voxels in the same places, k running along ``n``.
    """
    lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
    c0, c1, c2, origin = lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3].copy()
    n0, n1, n2 = (float(np.linalg.norm(v)) for v in (c0, c1, c2))
    if min(n0, n1, n2) < 1e-9 or not np.all(np.isfinite(lps)):
        raise GeometryError("The volume's affine is singular or not finite, so it cannot be "
                            "written as DICOM.")
    r, c = c0 / n0, c1 / n1
    if abs(float(r @ c)) > 1e-4:
        raise GeometryError("The volume's affine shears the i and j axes, which DICOM's "
                            "ImageOrientationPatient cannot represent; resample it first.")
    n = np.cross(r, c)
    along = float(c2 @ n)
    if abs(along) < 1e-6 * n2:
        raise GeometryError("The volume's third axis lies in the slice plane, so it cannot be "
                            "written as DICOM slices.")
    flip = along < 0
    step = c2.copy()
    if flip:
        origin = origin + (n_k - 1) * c2
        step = -c2
    return _PlaneGeometry(r, c, n1, n0, origin, step, flip)


def _ds_str(x: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    s = format_number_as_ds(float(x))
    return "0" if s in ("-0", "-0.0") else s


def _rescale(data: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """Choose 16-bit storage: (stored (I,J,K), slope, intercept, PixelRepresentation).

    Integer-valued data that fit in 16 bits are stored exactly (slope 1, intercept 0).
    Otherwise the range [lo, hi] is spread over all 65536 unsigned levels,
    ``v = round((x - b) / m)`` with ``b = lo``, ``m = (hi - lo) / 65535``; the error is at most
    ``m / 2``. Slope and intercept are rounded to their 16-character DICOM strings first so
    that readers get exactly the values used here.
    """
    x = data.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise InputError("The volume holds NaN or infinite values, which DICOM cannot store.")
    lo, hi = float(x.min()), float(x.max())
    if np.array_equal(x, np.round(x)):
        if lo >= 0 and hi <= 65535:
            return x.astype(np.uint16), 1.0, 0.0, 0
        if lo >= -32768 and hi <= 32767:
            return x.astype(np.int16), 1.0, 0.0, 1
    intercept = float(_ds_str(lo))
    slope = float(_ds_str((hi - lo) / 65535.0)) if hi > lo else 1.0
    if slope <= 0:  # range below DS resolution: any positive slope keeps it exact enough
        slope = 1.0
    stored = np.clip(np.rint((x - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, intercept, 0


_PATIENT = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
            "PatientAge", "PatientSize", "PatientWeight", "PatientIdentityRemoved",
            "DeidentificationMethod")
_STUDY = ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
          "AccessionNumber", "StudyDescription")
_SERIES_KEPT = ("BodyPartExamined", "PatientPosition", "Laterality")
_CT_ACQ = ("KVP", "XRayTubeCurrent", "ExposureTime", "ConvolutionKernel", "FilterType")
_MR_ACQ = ("ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType",
           "RepetitionTime", "EchoTime", "InversionTime", "EchoTrainLength", "FlipAngle",
           "ImagingFrequency", "ImagedNucleus", "MagneticFieldStrength", "SequenceName")
_TYPE2_DEFAULTS = {
    "PatientBirthDate": "", "PatientSex": "", "StudyDate": "", "StudyTime": "",
    "ReferringPhysicianName": "", "StudyID": "", "AccessionNumber": "",
}


def _is_previous_output(folder: Path) -> bool:
    """True when ``folder`` holds only files named and stamped as a medrecon DICOM series."""
    import pydicom

    files = list(folder.iterdir())
    if not all(f.is_file() and OUTPUT_NAME.match(f.name) for f in files):
        return False
    try:
        ds = pydicom.dcmread(sorted(files)[0], stop_before_pixels=True)
        return str(ds.file_meta.get("ImplementationVersionName", "")).startswith(
            IMPLEMENTATION_VERSION)
    except Exception:
        return False


def _window(data: np.ndarray) -> tuple[float, float]:
    lo, hi = (float(v) for v in np.percentile(data, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    # The standard requires WindowWidth >= 1 (in rescaled units).
    return (lo + hi) / 2.0, max(hi - lo, 1.0)


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    reference: Volume | None = None,
    patient_name: str | None = None,
    patient_id: str | None = None,
    series_description: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``volume`` atomically as a classic DICOM series, one file per k slice.

    The SOP class follows ``volume.modality``: CT Image Storage (values in HU), MR Image
    Storage, else Secondary Capture Image Storage. Voxel values are stored as 16-bit integers
    with RescaleSlope/RescaleIntercept from :func:`_rescale` (error at most half a level).

    Derivation: the reference header is ``reference.dicom_header``, else
    ``volume.dicom_header``. Patient and study attributes (StudyInstanceUID, dates, accession
    number, ...) are copied from it, with new Series and SOP Instance UIDs and ImageType
    ``DERIVED\\SECONDARY``. FrameOfReferenceUID is kept when the volume lives in the
    reference's patient frame: it was read from the same frame of reference, or its geometry
    matches the reference volume's. ``patient_name``/``patient_id`` that differ from the
    reference's make a new patient, so then a fresh study is created. Without any reference the
    study, series and frame of reference are new, and the patient is ``patient_name`` /
    ``patient_id`` (default "Anonymous" / "MEDRECON").

    Geometry: ImageOrientationPatient, ImagePositionPatient, PixelSpacing, SliceThickness and
    SpacingBetweenSlices come from the affine (see :func:`_plane_geometry`), so
    :func:`read_dicom` gives back the same affine (a left-handed affine comes back with k
    reversed and the same voxel positions).

    Args:
        volume: the image to write, data (I, J, K) = (columns, rows, slices).
        folder: output folder; created, or replaced when it is empty or holds a previous medrecon
            series (only if ``overwrite``). A folder with other files is never replaced.
        reference: a Volume read from DICOM whose patient and study the series joins.
        patient_name, patient_id, series_description: optional overrides.
        overwrite: allow replacing a previous medrecon series in ``folder``.

    Returns:
        ``folder`` as a Path.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from medrecon import __version__

    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise InputError(f"{folder} is a file; DICOM output must be a folder.")
        if any(folder.iterdir()):
            if not _is_previous_output(folder):
                raise InputError(f"{folder} already holds files that are not a medrecon DICOM "
                                 f"series; write to a new or empty folder.")
            if not overwrite:
                raise InputError(f"{folder} already holds a DICOM series; use --overwrite to "
                                 f"replace it.")
    for flag, value in (("--patient-name", patient_name), ("--patient-id", patient_id),
                        ("--series-description", series_description)):
        if value is not None and len(str(value)) > 64:
            raise InputError(f"{flag} is longer than the 64 characters DICOM allows.")
    if reference is not None and reference.dicom_header is None:
        raise InputError("The reference volume was not read from DICOM, so it has no patient "
                         "or study to derive from; give a DICOM file or folder.")
    ref = reference.dicom_header if reference is not None else volume.dicom_header

    geo = _plane_geometry(volume.affine, volume.shape[2])
    data = volume.data[:, :, ::-1] if geo.flip_k else volume.data
    stored, slope, intercept, pixel_rep = _rescale(data)
    center, width = _window(data)

    modality = (volume.modality or "OT").upper()
    sop_class = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}.get(modality, SC_IMAGE_STORAGE)

    def ref_get(kw: str) -> Any:
        return ref.get(kw) if ref is not None and kw in ref else None

    # A different patient cannot join the reference's study.
    new_patient = ref is None or (
        (patient_name is not None and str(patient_name) != str(ref_get("PatientName") or ""))
        or (patient_id is not None and str(patient_id) != str(ref_get("PatientID") or ""))
    )
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    common: dict[str, Any] = {}
    if not new_patient:
        for kw in _PATIENT + _STUDY:
            if ref_get(kw) is not None:
                common[kw] = ref_get(kw)
        if ref_get("SpecificCharacterSet") is not None:
            common["SpecificCharacterSet"] = ref_get("SpecificCharacterSet")
    else:
        common["PatientName"] = patient_name if patient_name is not None else "Anonymous"
        common["PatientID"] = patient_id if patient_id is not None else "MEDRECON"
        common["StudyInstanceUID"] = generate_uid()
        common["StudyDate"], common["StudyTime"] = date, time
        common["StudyID"] = "1"
        common["StudyDescription"] = "medrecon"
    for kw, default in _TYPE2_DEFAULTS.items():
        common.setdefault(kw, default)
    texts = [str(common["PatientName"]), str(common["PatientID"]), series_description or ""]
    if any(not t.isascii() for t in texts):
        common["SpecificCharacterSet"] = "ISO_IR 192"  # UTF-8

    if ref is not None and not new_patient:
        for kw in _SERIES_KEPT:
            if ref_get(kw) is not None:
                common[kw] = ref_get(kw)
    common.setdefault("PatientPosition", "")
    common.setdefault("Laterality", "")  # type 2C; empty is valid for unpaired structures

    # Frame of reference: kept only when the volume's coordinates are the reference's.
    ref_for = str(ref_get("FrameOfReferenceUID") or "")
    keep_for = False
    if ref_for and not new_patient:
        own = volume.dicom_header
        if own is not None and str(own.get("FrameOfReferenceUID", "")) == ref_for:
            keep_for = True
        elif reference is not None and reference is not volume and volume.same_geometry(reference):
            keep_for = True
    common["FrameOfReferenceUID"] = ref_for if keep_for else generate_uid()
    common["PositionReferenceIndicator"] = (ref_get("PositionReferenceIndicator") or ""
                                            if keep_for else "")

    ref_series = ref_get("SeriesNumber")
    try:
        series_number = int(ref_series) + 1000 if ref_series not in (None, "") else 1
    except (TypeError, ValueError):
        series_number = 1
    description = (series_description if series_description is not None
                   else volume.series_description or "medrecon")
    common.update({
        "SOPClassUID": sop_class,
        "Modality": modality,
        "SeriesInstanceUID": generate_uid(),
        "SeriesNumber": series_number,
        "SeriesDescription": description[:64],  # LO holds at most 64 characters
        "SeriesDate": date, "SeriesTime": time,
        "ContentDate": date, "ContentTime": time,
        "InstanceCreationDate": date, "InstanceCreationTime": time,
        "Manufacturer": "medrecon",
        "ManufacturerModelName": "medrecon",
        "SoftwareVersions": __version__,
        "ImageType": ["DERIVED", "SECONDARY"] + {"CT": ["AXIAL"], "MR": ["OTHER"]}.get(modality, []),
        "DerivationDescription": "medrecon " + ("reconstruction derived from reference series"
                                                if ref is not None else "output"),
        "AcquisitionNumber": 1,
        "ImageOrientationPatient": [_ds_str(v) for v in (*geo.row_cos, *geo.col_cos)],
        "PixelSpacing": [_ds_str(geo.row_spacing), _ds_str(geo.col_spacing)],
        "SliceThickness": _ds_str(abs(float(geo.step @ np.cross(geo.row_cos, geo.col_cos)))),
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": volume.shape[1],
        "Columns": volume.shape[0],
        "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15,
        "PixelRepresentation": pixel_rep,
        "RescaleIntercept": _ds_str(intercept),
        "RescaleSlope": _ds_str(slope),
        "WindowCenter": _ds_str(center),
        "WindowWidth": _ds_str(width),
    })
    if modality == "CT":
        common["RescaleType"] = "HU"
        common["KVP"] = ""
        if ref is not None and str(ref_get("Modality") or "") == "CT":
            for kw in _CT_ACQ:
                if ref_get(kw) is not None:
                    common[kw] = ref_get(kw)
    elif modality == "MR":
        common.update({"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": "",
                       "MRAcquisitionType": "3D", "RepetitionTime": "", "EchoTime": "",
                       "EchoTrainLength": ""})
        if ref is not None and str(ref_get("Modality") or "") == "MR":
            for kw in _MR_ACQ:
                if ref_get(kw) is not None:
                    common[kw] = ref_get(kw)
        common["SpacingBetweenSlices"] = common["SliceThickness"]
    else:
        common["ConversionType"] = "WSD"  # workstation: derived from other images
        common["RescaleType"] = "US"  # unspecified units, required with a rescale in SC
        common["PatientOrientation"] = ""
    n = np.cross(geo.row_cos, geo.col_cos)

    with atomic_dir(folder, overwrite=True) as tmp:
        for k in range(volume.shape[2]):
            ds = Dataset()
            for kw, value in common.items():
                setattr(ds, kw, copy.deepcopy(value))
            pos = geo.origin + k * geo.step
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [_ds_str(v) for v in pos]
            ds.SliceLocation = _ds_str(float(pos @ n))
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype(
                "<i2" if pixel_rep else "<u2").tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationVersionName = f"{IMPLEMENTATION_VERSION}{__version__}"[:16]
            ds.file_meta = meta
            pydicom.dcmwrite(tmp / f"IM{k + 1:05d}.dcm", ds, enforce_file_format=True)
    return folder
