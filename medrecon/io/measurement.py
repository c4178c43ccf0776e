"""Measurement files: one HDF5 container for MRI k-space and CT sinograms.

A :class:`Measurement` holds what a reconstruction needs and nothing it has to guess: the data,
the sampling mask, optional coil maps, the noise level, a description of the forward operator
(axes, shapes, FFT convention or CT geometry) and the reference geometry (affine, shape,
modality, units, the reference DICOM header) so that reconstructions land where the reference
study was. The on-disk layout is specified in ``docs/formats.md`` so other tools can write it.

:func:`read_measurement` also reads raw fastMRI HDF5 files: it hands them to
:func:`medrecon.io.fastmri.read_fastmri`. What a file declares is checked before it is trusted
(:mod:`medrecon.io.hdf5_read`).

This module is a file format, no physics: it reads and writes what a file holds (coil maps
only when the file has them) and imports nothing from :mod:`medrecon.operators`. The
``operator`` descriptions it stores are written by :mod:`medrecon.io.operator_schema`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medrecon import __version__
from medrecon.errors import MeasurementError
from medrecon.io.atomic import atomic_file
from medrecon.io.hdf5_read import as_str, int_attr, json_attr, read_numeric
from medrecon.io.parallel_zlib import write_dataset
from medrecon.io.volume import Volume, check_affine
from medrecon.jsonutil import jsonable as _jsonable

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "RMS_COMPLEX_SIGMA",
    "Measurement",
    "ReferenceGeometry",
    "write_measurement",
    "read_measurement",
]

FORMAT_NAME = "medrecon-measurement"
FORMAT_VERSION = 1
#: The MR ``noise["sigma_definition"]`` of ``medrecon simulate``: ``sigma`` is the RMS complex
#: std, each real part has ``sigma / sqrt(2)`` (:attr:`Measurement.noise_std`).
RMS_COMPLEX_SIGMA = "RMS complex std per k-space sample (E|n|^2 = sigma^2)"


# -------------------------------------------------------------------------------------------
# Data classes
# -------------------------------------------------------------------------------------------
#: The Volume fields a ReferenceGeometry holds as they are (all but the data and the affine).
_SHARED_FIELDS = tuple(f.name for f in fields(Volume) if f.name not in ("data", "affine"))


def _shared(source: Volume | ReferenceGeometry, **changes: Any) -> dict[str, Any]:
    """``source``'s :data:`_SHARED_FIELDS` as keyword arguments, updated with ``changes``."""
    return {**{name: getattr(source, name) for name in _SHARED_FIELDS}, **changes}


@dataclass
class ReferenceGeometry:
    """Where and how the reconstruction is written: the reference study's grid and metadata.

    A :class:`Volume`'s fields with ``shape`` in place of ``data`` (a test checks), copied
    to and from a Volume by :meth:`from_volume` and :meth:`volume`.

    Attributes:
        affine: 4x4 float64, voxel index (i, j, k) -> RAS+ mm (as :class:`Volume`).
        shape: (I, J, K) of the reconstructed image.
        modality: "MR", "CT" or "OT".
        units: intensity units of the reference (MR "a.u.", CT "HU").
        series_description: the reference series' description.
        dicom_header: pydicom Dataset of the reference series (pixel data removed) or None;
            stored as DICOM JSON so reconstructions can be written as a derived DICOM series.
        meta: JSON-serialisable metadata of the reference (source path, series UID, ...).
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    modality: str = "OT"
    units: str = "a.u."
    series_description: str = ""
    dicom_header: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"reference affine must be 4x4, got {self.affine.shape}")
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        if len(self.shape) != 3:
            raise ValueError(f"reference shape must be 3D, got {self.shape}")

    @classmethod
    def from_volume(cls, volume: Volume) -> ReferenceGeometry:
        """The geometry and metadata of ``volume`` (its voxel values are not kept)."""
        return cls(volume.affine.copy(), volume.shape,
                   **_shared(volume, meta=_jsonable(volume.meta)))

    def volume(self, data: np.ndarray, series_description: str | None = None,
               **meta: Any) -> Volume:
        """A :class:`Volume` holding ``data`` (shape ``self.shape``) in this geometry."""
        data = np.asarray(data, dtype=np.float32)
        if data.shape != self.shape:
            raise ValueError(f"image shape {data.shape} != reference shape {self.shape}")
        shared = _shared(self, meta={**self.meta, **meta})
        if series_description is not None:
            shared["series_description"] = series_description
        return Volume(data, self.affine.copy(), **shared)


@dataclass
class Measurement:
    """An undersampled MRI or CT acquisition with everything needed to reconstruct it.

    Attributes:
        modality: "MR" or "CT".
        data: MR: complex64 k-space (C, I, J, K), zeros where not sampled; CT: float32 sinogram
            (views, detector rows, detector columns) of line integrals.
        mask: MR: sampling mask (uint8/bool or float weights) broadcastable to (I, J, K), e.g.
            (1, J, K) for 3D and (1, J, 1) for 2D multi-slice; CT: optional per-view weights
            (views,) or None.
        reference: the geometry the reconstruction is written in.
        coil_maps: MR only: complex64 (C, I, J, K) sensitivities with sum_c |S_c|^2 = 1 inside
            the object, or (M, C, I, J, K) for M map sets (soft SENSE, e.g. ESPIRiT's; each
            method uses up to its ``map_sets`` of them), or None (estimated from the
            calibration region when needed).
        noise: noise model. MR: ``{"model": "complex-gaussian", "sigma": 0.01,
            "sigma_definition": RMS_COMPLEX_SIGMA, "snr": 30.0}`` as ``medrecon simulate``
            writes it (sigma: the RMS complex std per k-space sample, ``E|n|^2 = sigma^2``);
            without that definition ``sigma`` is the std of the real and of the imaginary
            part. :attr:`noise_std` reads either as the std per real part. CT: e.g.
            ``{"model": "poisson", "i0": 1e5, "electronic_sigma": 0.0}``.
        noise_covariance: optional (C, C) complex coil noise covariance.
        operator: forward-operator description. MR: ``{"kind": "sense", "fft": "centred-orthonormal",
            "fft_dims": [0, 1, 2], "dims": "3d", "image_shape": [I, J, K],
            "kspace_shape": [C, I, J, K], "axes": [...]}``; CT: ``{"kind": "ct", ...}`` with the
            geometry keys (both written by :mod:`medrecon.io.operator_schema`).
        acquisition: how it was made: acceleration (achieved), mask kind, calibration, seed, snr,
            phase model, medrecon version, source ("simulated" / "fastmri" / ...).
        arrays: further named arrays (e.g. CT per-view source positions), stored under ``aux/``.
    """

    modality: str
    data: np.ndarray
    mask: np.ndarray | None
    reference: ReferenceGeometry
    coil_maps: np.ndarray | None = None
    noise: dict[str, Any] = field(default_factory=dict)
    noise_covariance: np.ndarray | None = None
    operator: dict[str, Any] = field(default_factory=dict)
    acquisition: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.modality = str(self.modality).upper()
        if self.modality == "MRI":
            self.modality = "MR"
        self.validate()

    # -- convenience ----------------------------------------------------------------------
    @property
    def n_coils(self) -> int:
        """Number of receive coils (MR)."""
        return int(self.data.shape[0]) if self.modality == "MR" else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.reference.shape

    @property
    def fft_dims(self) -> tuple[int, ...]:
        """Fourier-encoded image axes of an MR measurement ((0, 1, 2) or (0, 1))."""
        return tuple(int(d) for d in self.operator.get("fft_dims", (0, 1, 2)))

    @property
    def noise_std(self) -> float | None:
        """MR: the noise std of each real component (real and imaginary part) of a k-space
        sample, in the units of the data, from ``noise["sigma"]``: ``sigma / sqrt(2)`` where
        ``noise["sigma_definition"]`` declares it the RMS complex std (:data:`RMS_COMPLEX_SIGMA`,
        what ``medrecon simulate`` writes), else ``sigma`` as it is; None without a sigma
        (fastMRI files). The one place that reads the file's convention."""
        s = self.noise.get("sigma")
        if s is None:
            return None
        if "RMS complex" in str(self.noise.get("sigma_definition", "")):
            return float(s) / math.sqrt(2.0)
        return float(s)

    def validate(self) -> None:
        """Check shapes, dtypes and values; raise :class:`MeasurementError` with one sentence."""
        if self.modality not in ("MR", "CT"):
            raise MeasurementError(f"Measurement modality must be MR or CT, got {self.modality!r}.")
        data = np.asarray(self.data)
        if self.modality == "MR":
            if data.ndim != 4:
                raise MeasurementError(
                    f"MR k-space must have shape (coils, I, J, K), got {data.shape}.")
            data = data.astype(np.complex64, copy=False)
            if tuple(data.shape[1:]) != self.reference.shape:
                raise MeasurementError(
                    f"k-space image axes {tuple(data.shape[1:])} do not match the reference "
                    f"shape {self.reference.shape}.")
            if self.mask is None:
                raise MeasurementError("An MR measurement needs a sampling mask.")
            mask = np.asarray(self.mask)
            if mask.ndim != 3 or any(m not in (1, s) for m, s in zip(mask.shape, data.shape[1:],
                                                                      strict=True)):
                raise MeasurementError(
                    f"The sampling mask of shape {mask.shape} does not fit the k-space of shape "
                    f"{data.shape}: every axis must be 1 or equal to (I, J, K) = "
                    f"{tuple(data.shape[1:])}.")
            if not np.all(np.isfinite(mask.astype(np.float64))) or np.any(mask < 0):
                raise MeasurementError("The sampling mask holds negative, NaN or infinite values.")
            if not np.any(mask):
                raise MeasurementError("The sampling mask selects no k-space samples.")
            if self.coil_maps is not None:
                maps = np.asarray(self.coil_maps)
                if maps.shape[-4:] != data.shape or maps.ndim not in (4, 5) or not maps.size:
                    raise MeasurementError(
                        f"Coil maps of shape {maps.shape} match neither the k-space shape "
                        f"{data.shape} nor (M, {', '.join(map(str, data.shape))}) for M map "
                        f"sets.")
                if not np.all(np.isfinite(maps)):
                    raise MeasurementError("The coil maps hold NaN or infinite values.")
                self.coil_maps = maps.astype(np.complex64, copy=False)
            dims = self.operator.get("fft_dims")
            if dims is not None and (not isinstance(dims, list | tuple)
                                     or tuple(dims) not in ((0, 1, 2), (0, 1))):
                raise MeasurementError(
                    f"MR operator fft_dims must be [0, 1, 2] (3D) or [0, 1] (2D multi-slice), "
                    f"got {dims!r}.")
        else:
            if data.ndim != 3:
                raise MeasurementError(
                    f"A CT sinogram must have shape (views, detector rows, detector columns), "
                    f"got {data.shape}.")
            if np.iscomplexobj(data):
                raise MeasurementError("A CT sinogram must be real-valued.")
            data = data.astype(np.float32, copy=False)
            if self.mask is not None and np.asarray(self.mask).shape not in (
                    (data.shape[0],), data.shape):
                raise MeasurementError(
                    f"The CT view mask of shape {np.asarray(self.mask).shape} does not match "
                    f"the sinogram of shape {data.shape}.")
        if not np.all(np.isfinite(data)):
            raise MeasurementError("The measured data hold NaN or infinite values.")
        self.data = data
        if self.noise_covariance is not None:
            cov = np.asarray(self.noise_covariance)
            if self.modality != "MR" or cov.shape != (self.n_coils, self.n_coils):
                raise MeasurementError(
                    f"The noise covariance must be (coils, coils) = ({self.n_coils}, "
                    f"{self.n_coils}) for MR data, got {cov.shape}.")


# -------------------------------------------------------------------------------------------
# Writing
# -------------------------------------------------------------------------------------------
def _dicom_to_json(ds: Any) -> tuple[str | None, str | None]:
    """(dataset JSON, file-meta JSON) in the DICOM JSON model (PS3.18 F), or (None, None)."""
    if ds is None:
        return None, None
    ds = ds.copy() if hasattr(ds, "copy") else ds
    if "PixelData" in ds:
        del ds.PixelData
    body = ds.to_json()
    meta = getattr(ds, "file_meta", None)
    meta_json = meta.to_json() if meta is not None and len(meta) else None
    return body, meta_json


def _dicom_from_json(body: str | None, meta: str | None) -> Any:
    if not body:
        return None
    import pydicom
    from pydicom.dataset import FileMetaDataset

    try:
        ds = pydicom.Dataset.from_json(body)
        if meta:
            ds.file_meta = FileMetaDataset(pydicom.Dataset.from_json(meta))
    except Exception as exc:  # pydicom raises several types for malformed JSON
        raise MeasurementError(f"The stored reference DICOM header is unreadable: {exc}") from None
    return ds


def write_measurement(m: Measurement, path: str | Path) -> Path:
    """Write ``m`` to ``path`` (HDF5, layout in docs/formats.md) atomically; returns the path."""
    import h5py

    m.validate()
    path = Path(path)
    dicom_json, meta_json = _dicom_to_json(m.reference.dicom_header)
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["modality"] = m.modality
        f.attrs["medrecon_version"] = __version__
        f.attrs["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        f.attrs["operator"] = json.dumps(_jsonable(m.operator))
        f.attrs["noise"] = json.dumps(_jsonable(m.noise))
        f.attrs["acquisition"] = json.dumps(_jsonable(m.acquisition))
        write_dataset(f, "data", np.asarray(m.data))  # gzip 4 + shuffle, on all cores
        if m.mask is not None:
            mask = np.asarray(m.mask)
            if mask.dtype == bool:
                mask = mask.astype(np.uint8)
            f.create_dataset("mask", data=mask)
        if m.coil_maps is not None:
            write_dataset(f, "coil_maps", np.asarray(m.coil_maps, np.complex64))
        if m.noise_covariance is not None:
            f.create_dataset("noise_covariance",
                             data=np.asarray(m.noise_covariance, np.complex64))
        ref = f.create_group("reference")
        ref.create_dataset("affine", data=m.reference.affine)
        ref.attrs["shape"] = np.asarray(m.reference.shape, dtype=np.int64)
        ref.attrs["modality"] = m.reference.modality
        ref.attrs["units"] = m.reference.units
        ref.attrs["series_description"] = m.reference.series_description
        ref.attrs["meta"] = json.dumps(_jsonable(m.reference.meta))
        str_dt = h5py.string_dtype("utf-8")
        if dicom_json is not None:
            ref.create_dataset("dicom_json", data=dicom_json, dtype=str_dt)
        if meta_json is not None:
            ref.create_dataset("dicom_file_meta_json", data=meta_json, dtype=str_dt)
        if m.arrays:
            aux = f.create_group("aux")
            for name, arr in m.arrays.items():
                aux.create_dataset(name, data=np.asarray(arr))
    return path


# -------------------------------------------------------------------------------------------
# Reading
# -------------------------------------------------------------------------------------------
def _require(f: Any, name: str, path: Path) -> Any:
    if name not in f:
        raise MeasurementError(f"{path} has no {name!r} dataset; it is not a complete "
                               f"medrecon measurement file.")
    return f[name]


def read_measurement(path: str | Path) -> Measurement:
    """Read a measurement file written by :func:`write_measurement`, or a raw fastMRI file.

    Raises :class:`MeasurementError` (one sentence) for files that are not HDF5, lack a dataset,
    hold NaN/Inf or whose mask does not fit the data.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise MeasurementError(f"{path} does not exist.")
    if path.is_dir():
        raise MeasurementError(f"{path} is a folder, not a measurement file (.h5).")
    if not h5py.is_hdf5(path):
        raise MeasurementError(f"{path} is not an HDF5 measurement file.")
    try:
        return _read_hdf5_measurement(path)
    except OSError as exc:
        if exc.errno is not None:
            raise  # permission and the like: the CLI words these itself
        # h5py reports a cut-short or damaged file as an OSError without errno.
        reason = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else "unreadable"
        raise MeasurementError(f"{path} is truncated or corrupt ({reason}); copy or export "
                               f"it again.") from None


def _read_hdf5_measurement(path: Path) -> Measurement:
    """The body of :func:`read_measurement` for a file that is HDF5."""
    import h5py

    with h5py.File(path, "r") as f:
        fmt = f.attrs.get("format")
        if fmt is None:
            if "kspace" in f:
                # imported here: medrecon.io.fastmri builds on this module's Measurement
                from medrecon.io.fastmri import read_fastmri

                return read_fastmri(path)
            raise MeasurementError(
                f"{path} is an HDF5 file but neither a medrecon measurement nor a fastMRI file.")
        if as_str(fmt) != FORMAT_NAME:
            raise MeasurementError(f"{path} has format {as_str(fmt)!r}, not {FORMAT_NAME!r}.")
        version = int_attr(f.attrs, "format_version", 0, path)
        if version > FORMAT_VERSION:
            raise MeasurementError(
                f"{path} uses measurement format version {version}; this medrecon reads up to "
                f"version {FORMAT_VERSION}, so upgrade medrecon.")
        modality = as_str(f.attrs.get("modality", ""))
        data = read_numeric(_require(f, "data", path), "data", path)
        mask = read_numeric(f["mask"], "mask", path) if "mask" in f else None
        maps = read_numeric(f["coil_maps"], "coil_maps", path) if "coil_maps" in f else None
        cov = (read_numeric(f["noise_covariance"], "noise_covariance", path)
               if "noise_covariance" in f else None)
        ref = _require(f, "reference", path)
        if "affine" not in ref:
            raise MeasurementError(f"{path} has no 'reference/affine' dataset.")
        if "shape" not in ref.attrs:
            raise MeasurementError(f"{path} has no 'shape' attribute in 'reference'.")
        dicom = _dicom_from_json(
            as_str(ref["dicom_json"][()]) if "dicom_json" in ref else None,
            as_str(ref["dicom_file_meta_json"][()]) if "dicom_file_meta_json" in ref else None)
        affine = read_numeric(ref["affine"], "reference/affine", path)
        check_affine(affine, f"{path} (reference/affine)")
        try:
            reference = ReferenceGeometry(
                affine=affine, shape=tuple(int(s) for s in ref.attrs["shape"]),
                modality=as_str(ref.attrs.get("modality", "OT")),
                units=as_str(ref.attrs.get("units", "a.u.")),
                series_description=as_str(ref.attrs.get("series_description", "")),
                dicom_header=dicom, meta=json_attr(ref.attrs, "meta", path))
        except ValueError as exc:
            raise MeasurementError(f"{path}: invalid reference geometry ({exc}).") from None
        arrays = ({name: read_numeric(f["aux"][name], f"aux/{name}", path) for name in f["aux"]}
                  if "aux" in f else {})
        operator = json_attr(f.attrs, "operator", path)
        noise = json_attr(f.attrs, "noise", path)
        acquisition = json_attr(f.attrs, "acquisition", path)
    return Measurement(modality=modality, data=data, mask=mask, reference=reference,
                       coil_maps=maps, noise=noise, noise_covariance=cov, operator=operator,
                       acquisition=acquisition, arrays=arrays)
