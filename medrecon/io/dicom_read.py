"""Reading one DICOM series into a :class:`~medrecon.io.volume.Volume`: geometry and pixels.

:func:`read_dicom` accepts a single file, a folder or a folder tree. Files are grouped by
SeriesInstanceUID (:mod:`medrecon.io.dicom_scan`). Within a classic (one image per file) series the slices are sorted by their
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
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import DicomError
from medrecon.io.dicom_scan import (
    PIXEL_KEYWORDS,
    DicomFile,
    first_line,
    scan_series,
    series_info,
)
from medrecon.io.series import select_series
from medrecon.io.volume import LPS_TO_RAS, Volume

__all__ = ["read_dicom"]

ORIENTATION_TOL = 1e-3  # max |difference| between direction cosines of slices of one series
DUPLICATE_ABS_MM = 1e-4
DUPLICATE_REL = 0.05
SPACING_ABS_MM = 0.01
SPACING_REL = 0.01


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
    groups = scan_series(path)
    infos = [series_info(uid, e) for uid, e in groups.items()]
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


def _check_pixel_size(ds: Any, label: str, frames: int = 1) -> None:
    """Refuse a header whose Rows x Columns (x frames) cannot match its pixel data, before
    anything of that size is allocated.

    Uncompressed pixel data hold exactly Rows x Columns x frames x BitsAllocated / 8 bytes;
    compressed data are checked after decoding (their length says nothing about the image).
    """
    from medrecon.device import host_memory_bytes

    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise DicomError(f"{label} declares an empty image ({rows}x{cols}).")
    if rows * cols * frames * 4 > host_memory_bytes() // 2:
        raise DicomError(f"{label} declares {frames} image(s) of {rows}x{cols}, more than half "
                         f"of this machine's memory as float32.")
    pixels = ds.get("PixelData") if "PixelData" in ds else None
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if pixels is None or syntax is None or getattr(syntax, "is_compressed", True):
        return
    bits = int(ds.get("BitsAllocated", 16) or 16)
    expected = (rows * cols * frames * bits + 7) // 8
    if len(pixels) < expected:
        raise DicomError(f"{label} declares {frames} image(s) of {rows}x{cols} at {bits} bits "
                         f"({expected} bytes) but holds {len(pixels)} bytes of pixel data.")


def _decode(ds: Any, label: str, frames: int = 1) -> np.ndarray:
    """``ds.pixel_array`` with errors turned into a DicomError naming ``label``."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(
            f"{label} is a colour image ({ds.get('PhotometricInterpretation', '?')}); "
            f"medrecon reads greyscale images."
        )
    _check_pixel_size(ds, label, frames)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise DicomError(
            f"Cannot decode the pixel data of {label}: truncated, corrupt or unsupported "
            f"({first_line(exc)})."
        ) from None
    return np.asarray(arr)


def _header_copy(ds: Any) -> Any:
    """A deep copy of ``ds`` without its pixel data (never copying the pixel bytes)."""
    from pydicom.dataset import Dataset

    hdr = Dataset()
    for elem in ds:
        if elem.keyword not in PIXEL_KEYWORDS:
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


def _read_classic(entries: list[DicomFile]) -> Volume:
    import pydicom

    slices = [_slice_from_dataset(e.header, str(e.path)) for e in entries]
    note: list[str] = []
    order, affine = _stack_geometry(slices, note)
    s0 = slices[0]
    _check_pixel_size(entries[0].header, str(entries[0].path), len(slices))  # before np.empty
    data = np.empty((s0.cols, s0.rows, len(slices)), dtype=np.float32)
    first_ds = None
    for k, idx in enumerate(order):
        e = entries[idx]
        try:
            ds = pydicom.dcmread(e.path)
        except Exception as exc:
            raise DicomError(f"{e.path} is truncated or corrupt ({first_line(exc)}).") from None
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


def _read_multiframe(entry: DicomFile) -> Volume:
    import pydicom

    label = str(entry.path)
    try:
        ds = pydicom.dcmread(entry.path)
    except Exception as exc:
        raise DicomError(f"{label} is truncated or corrupt ({first_line(exc)}).") from None
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
    arr = _decode(ds, label, n_frames)
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
