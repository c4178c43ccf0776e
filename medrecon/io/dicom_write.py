"""Writing a volume as a derived DICOM series.

:func:`write_dicom_series` writes one classic single-frame file per ``k`` slice (CT Image, MR
Image or Secondary Capture storage), derived from a reference header when there is one: new
Series and SOP Instance UIDs, ImageType ``DERIVED\\SECONDARY``, patient and study kept, geometry
tags computed from the affine so that reading the series back gives the same affine. What the
reference says about its slices and display carries over: a volume of unknown modality derived
from an MR series is MR, a CT derived from a CT series keeps its window, and a volume on the
reference's slices keeps their thickness.
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import GeometryError, InputError
from medrecon.io.atomic import atomic_dir
from medrecon.io.volume import LPS_TO_RAS, Volume

__all__ = ["write_dicom_series", "written_modality"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
OUTPUT_NAME = re.compile(r"^IM\d{5,}\.dcm$")
IMPLEMENTATION_VERSION = "MEDRECON_"


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


def _tuning_text(volume: Volume) -> str:
    """"; <how a self-tuned weight was chosen>" when the reconstruction recorded one."""
    line = (volume.meta.get("reconstruction") or {}).get("autotune_line")
    return f"; {line}" if isinstance(line, str) and line else ""


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


def _header_value(ref: Any, keyword: str, group: str) -> Any:
    """``keyword`` of a reference header: at its top level (classic files), else in functional
    group ``group`` (e.g. "PixelMeasuresSequence") of an enhanced multi-frame file, shared or,
    failing that, of its first frame. None when absent or empty."""
    if ref is None:
        return None
    value = ref.get(keyword)
    if value is not None and str(value) != "":
        return value
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ref.get(seq)
        if not groups or group not in groups[0] or not groups[0].get(group):
            continue
        value = groups[0].get(group)[0].get(keyword)
        if value is not None and str(value) != "":
            return value
    return None


def _on_reference_slices(volume: Volume, reference: Volume | None, ref: Any,
                         geo: _PlaneGeometry) -> bool:
    """True when the volume's slices are the reference series' own: a separate ``reference``
    with the same grid, or (the volume's own header) the same matrix, pixel spacing and
    orientation as the header describes."""
    if reference is not None and reference is not volume:
        return volume.same_geometry(reference)
    try:
        rows, cols = int(ref.get("Rows")), int(ref.get("Columns"))
        spacing = [float(v) for v in _header_value(ref, "PixelSpacing", "PixelMeasuresSequence")]
        iop = [float(v) for v in _header_value(ref, "ImageOrientationPatient",
                                               "PlaneOrientationSequence")]
    except (TypeError, ValueError):
        return False
    return ((rows, cols) == (volume.shape[1], volume.shape[0])
            and np.allclose(spacing, [geo.row_spacing, geo.col_spacing], atol=1e-3)
            and np.allclose(iop, [*geo.row_cos, *geo.col_cos], atol=1e-4))


def _window(data: np.ndarray) -> tuple[float, float]:
    lo, hi = (float(v) for v in np.percentile(data, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    # The standard requires WindowWidth >= 1 (in rescaled units).
    return (lo + hi) / 2.0, max(hi - lo, 1.0)


def written_modality(volume: Volume, reference: Volume | None = None) -> str:
    """The modality :func:`write_dicom_series` writes: the volume's own (CT, MR), else MR for
    the derivative of an MR series (MR Image Storage claims no units), else "OT"."""
    modality = (volume.modality or "OT").upper()
    ref = reference.dicom_header if reference is not None else volume.dicom_header
    ref_modality = str(ref.get("Modality", "") if ref is not None else "").strip().upper()
    if modality not in ("CT", "MR") and ref_modality == "MR":
        return "MR"
    return modality


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
    Storage, else Secondary Capture Image Storage; a volume of unknown modality ("OT", e.g. a
    NIfTI from another tool) derived from an MR header is written as MR. (Not so from a CT
    header: CT Image Storage declares HU, which an unlabelled volume need not hold; ``convert
    --modality ct`` declares it.) Voxel values are stored as 16-bit integers with
    RescaleSlope/RescaleIntercept from :func:`_rescale` (error at most half a level).

    Derivation: the reference header is ``reference.dicom_header``, else
    ``volume.dicom_header``. Patient and study attributes (StudyInstanceUID, dates, accession
    number, ...) are copied from it, with new Series and SOP Instance UIDs and ImageType
    ``DERIVED\\SECONDARY``. FrameOfReferenceUID is kept when the volume lives in the
    reference's patient frame: it was read from the same frame of reference, or its geometry
    matches the reference volume's. ``patient_name``/``patient_id`` that differ from the
    reference's make a new patient, so then a fresh study is created. Without any reference the
    study, series and frame of reference are new, and the patient is ``patient_name`` /
    ``patient_id`` (default "Anonymous" / "MEDRECON").

    Geometry: ImageOrientationPatient, ImagePositionPatient, PixelSpacing and
    SpacingBetweenSlices come from the affine (see :func:`_plane_geometry`), so
    :func:`~medrecon.io.dicom_read.read_dicom` gives back the same affine (a left-handed affine
    comes back with k reversed and the same voxel positions). SliceThickness is the reference
    header's when the volume lies on the reference's slices (a reconstruction in the reference
    geometry; 5 mm slices 2.5 mm apart stay 5 mm thick), else the slice spacing.

    Display: a CT derived from a CT header keeps its WindowCenter/WindowWidth (all of them, with
    their explanation and VOI LUT function): values are HU on both sides. Otherwise the window
    spans the 0.5-99.5th percentiles of the data.

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

    modality = written_modality(volume, reference)
    ref_modality = str(ref.get("Modality", "") if ref is not None else "").strip().upper()
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
    spacing_k = abs(float(geo.step @ np.cross(geo.row_cos, geo.col_cos)))
    thickness = _ds_str(spacing_k)
    if ref is not None and _on_reference_slices(volume, reference, ref, geo):
        ref_thickness = _header_value(ref, "SliceThickness", "PixelMeasuresSequence")
        try:
            if ref_thickness is not None and float(ref_thickness) > 0:
                thickness = _ds_str(float(ref_thickness))
        except (TypeError, ValueError):
            pass  # an unreadable thickness: the spacing stands in for it
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
        "DerivationDescription": ("medrecon " + ("reconstruction derived from reference series"
                                                 if ref is not None else "output")
                                  + _tuning_text(volume))[:1024],  # ST: 1024 characters
        "AcquisitionNumber": 1,
        "ImageOrientationPatient": [_ds_str(v) for v in (*geo.row_cos, *geo.col_cos)],
        "PixelSpacing": [_ds_str(geo.row_spacing), _ds_str(geo.col_spacing)],
        "SliceThickness": thickness,
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
        if thickness != _ds_str(spacing_k):  # readers take a single slice's step from these
            common["SpacingBetweenSlices"] = _ds_str(spacing_k)
        if ref is not None and ref_modality == "CT":
            for kw in _CT_ACQ:
                if ref_get(kw) is not None:
                    common[kw] = ref_get(kw)
            ref_center = _header_value(ref, "WindowCenter", "FrameVOILUTSequence")
            ref_width = _header_value(ref, "WindowWidth", "FrameVOILUTSequence")
            if ref_center is not None and ref_width is not None:
                common["WindowCenter"], common["WindowWidth"] = ref_center, ref_width
                for kw in ("WindowCenterWidthExplanation", "VOILUTFunction"):
                    value = _header_value(ref, kw, "FrameVOILUTSequence")
                    if value is not None:
                        common[kw] = value
    elif modality == "MR":
        common.update({"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": "",
                       "MRAcquisitionType": "3D", "RepetitionTime": "", "EchoTime": "",
                       "EchoTrainLength": ""})
        if ref is not None and ref_modality == "MR":
            for kw in _MR_ACQ:
                if ref_get(kw) is not None:
                    common[kw] = ref_get(kw)
        common["SpacingBetweenSlices"] = _ds_str(spacing_k)
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
