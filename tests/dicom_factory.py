"""Synthetic DICOM series for tests, written with pydicom directly (independent of medrecon's
writer, so that the reader is tested against files it did not produce).

``write_series(folder, data, affine)`` writes one classic single-frame file per k slice of
``data`` (I, J, K) = (columns, rows, slices) with the RAS ``affine``; file names and
InstanceNumbers are shuffled by default so that readers cannot rely on either.
``write_enhanced(path, data, affine)`` writes one Enhanced CT/MR multi-frame file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "OT": "1.2.840.10008.5.1.4.1.1.7",
}
ENHANCED_SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2.1", "MR": "1.2.840.10008.5.1.4.1.1.4.1"}


def oblique_affine(spacing: Sequence[float] = (0.8, 0.9, 2.5),
                   angles: Sequence[float] = (0.3, -0.2, 0.5),
                   origin: Sequence[float] = (-40.0, 25.0, 12.0)) -> np.ndarray:
    """A RAS affine with rotation (Euler angles in rad about x, y, z) and anisotropic spacing."""
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def _ds(x: float) -> str:
    return pydicom.valuerep.format_number_as_ds(float(x))


def _base(modality: str, study_uid: str, series_uid: str, description: str,
          rows: int, cols: int, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "42"
    ds.AccessionNumber = "ACC42"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 3
    ds.SeriesDescription = description
    ds.FrameOfReferenceUID = generate_uid()
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def _save(ds: Dataset, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def write_series(
    folder: str | Path,
    data: np.ndarray,
    affine: np.ndarray,
    modality: str = "MR",
    shuffle: bool = True,
    slope: float = 1.0,
    intercept: float = 0.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    description: str = "synthetic",
    seed: int = 0,
    prefix: str = "",
) -> list[Path]:
    """Write ``data`` (I, J, K) with RAS ``affine`` as a classic single-frame DICOM series.

    Stored values are ``round((data - intercept) / slope)`` as int16, so integer ``data`` with
    the default rescale is exact. With ``shuffle`` the file names and InstanceNumbers are a
    random permutation of the slice order.

    Returns:
        The written paths, indexed by slice k (``paths[k]`` holds slice k).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data, dtype=np.float64)
    n_i, n_j, n_k = data.shape
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    c0, c1, c2 = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    row_cos, col_cos = c0 / np.linalg.norm(c0), c1 / np.linalg.norm(c1)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_k) if shuffle else np.arange(n_k)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    base = _base(modality, study_uid, series_uid, description, n_j, n_i,
                 SOP_CLASSES.get(modality, SOP_CLASSES["OT"]))
    paths = []
    for k in range(n_k):
        ds = Dataset()
        ds.update(base)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = int(perm[k]) + 1
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * c2]
        ds.PixelSpacing = [_ds(np.linalg.norm(c1)), _ds(np.linalg.norm(c0))]
        ds.SliceThickness = _ds(abs(c2 @ np.cross(row_cos, col_cos)))
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
        stored = np.rint((data[:, :, k] - intercept) / slope).astype("<i2")
        ds.PixelData = np.ascontiguousarray(stored.T).tobytes()
        path = folder / f"{prefix}slice_{int(perm[k]):03d}.dcm"
        _save(ds, path)
        paths.append(path)
    return paths


def write_enhanced(
    path: str | Path,
    data: np.ndarray,
    affine: np.ndarray,
    modality: str = "MR",
    slope: float = 1.0,
    intercept: float = 0.0,
    shuffle: bool = True,
    seed: int = 0,
) -> Path:
    """Write ``data`` (I, J, K) as one Enhanced CT/MR Image file, frame order shuffled.

    Orientation, pixel measures and rescale are shared functional groups; each frame carries
    its own PlanePositionSequence.
    """
    path = Path(path)
    data = np.asarray(data, dtype=np.float64)
    n_i, n_j, n_k = data.shape
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    c0, c1, c2 = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    row_cos, col_cos = c0 / np.linalg.norm(c0), c1 / np.linalg.norm(c1)
    perm = np.random.default_rng(seed).permutation(n_k) if shuffle else np.arange(n_k)
    ds = _base(modality, generate_uid(), generate_uid(), "enhanced", n_j, n_i,
               ENHANCED_SOP_CLASSES[modality])
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.NumberOfFrames = n_k
    shared = Dataset()
    ori = Dataset()
    ori.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
    pm = Dataset()
    pm.PixelSpacing = [_ds(np.linalg.norm(c1)), _ds(np.linalg.norm(c0))]
    pm.SliceThickness = _ds(abs(c2 @ np.cross(row_cos, col_cos)))
    pvt = Dataset()
    pvt.RescaleSlope = _ds(slope)
    pvt.RescaleIntercept = _ds(intercept)
    pvt.RescaleType = "HU" if modality == "CT" else "US"
    shared.PlaneOrientationSequence = DicomSequence([ori])
    shared.PixelMeasuresSequence = DicomSequence([pm])
    shared.PixelValueTransformationSequence = DicomSequence([pvt])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    pixels = np.empty((n_k, n_j, n_i), dtype="<i2")
    for f in range(n_k):
        k = int(perm[f])  # frame f holds slice k
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * c2]
        item.PlanePositionSequence = DicomSequence([pos])
        frames.append(item)
        pixels[f] = np.rint((data[:, :, k] - intercept) / slope).astype("<i2").T
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = pixels.tobytes()
    _save(ds, path)
    return path


def edit(path: str | Path, **attributes: object) -> None:
    """Rewrite ``path`` with the given attributes changed (value None deletes one)."""
    ds = pydicom.dcmread(path)
    for kw, value in attributes.items():
        if value is None:
            if kw in ds:
                delattr(ds, kw)
        else:
            setattr(ds, kw, value)
    ds.save_as(path)
