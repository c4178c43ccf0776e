"""The HDF5 measurement container: round trips and every error path (fastMRI import:
test_fastmri.py)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest

from medrecon.errors import MeasurementError
from medrecon.io.measurement import (
    FORMAT_NAME,
    Measurement,
    ReferenceGeometry,
    read_measurement,
    write_measurement,
)
from medrecon.io.operator_schema import mri_operator_description
from medrecon.io.volume import Volume

SHAPE = (6, 5, 4)
AFFINE = np.array([[-1.5, 0, 0, 20.0], [0, -1.2, 0, 30.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]])


def _header() -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.Modality = "MR"
    ds.SeriesDescription = "T1 sag"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


def _mr(rng: np.random.Generator, **changes: object) -> Measurement:
    c = 3
    data = (rng.standard_normal((c, *SHAPE)) + 1j * rng.standard_normal((c, *SHAPE)))
    mask = (rng.random((1, *SHAPE[1:])) < 0.5).astype(np.uint8)
    mask[0, 2, 2] = 1
    maps = rng.standard_normal((c, *SHAPE)) + 1j * rng.standard_normal((c, *SHAPE))
    fields: dict[str, object] = dict(
        modality="MR", data=(data * mask).astype(np.complex64), mask=mask,
        reference=ReferenceGeometry(AFFINE, SHAPE, "MR", "a.u.", "T1 sag", _header(),
                                    {"source": Path("/data/t1.nii.gz"), "uid": "1.2"}),
        coil_maps=maps.astype(np.complex64),
        noise={"model": "complex-gaussian", "sigma": 0.01, "snr": 30.0},
        noise_covariance=np.eye(c, dtype=np.complex64),
        operator=mri_operator_description(SHAPE, c, "3d"),
        acquisition={"acceleration": np.float64(2.1), "seed": 3, "mask": "poisson"},
        arrays={"extra": np.arange(5.0)},
    )
    fields.update(changes)
    return Measurement(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_everything(tmp_path: Path, rng: np.random.Generator) -> None:
    m = _mr(rng)
    path = write_measurement(m, tmp_path / "m.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]  # no temporary left behind
    r = read_measurement(path)
    assert r.modality == "MR" and r.data.dtype == np.complex64
    assert np.array_equal(r.data, m.data) and np.array_equal(r.mask, m.mask)
    assert np.array_equal(r.coil_maps, m.coil_maps)
    assert np.array_equal(r.noise_covariance, m.noise_covariance)
    assert np.array_equal(r.reference.affine, AFFINE) and r.reference.shape == SHAPE
    assert r.reference.series_description == "T1 sag" and r.reference.units == "a.u."
    assert r.reference.meta == {"source": "/data/t1.nii.gz", "uid": "1.2"}
    assert r.noise == m.noise and r.noise_std == 0.01
    assert r.operator["fft_dims"] == [0, 1, 2] and r.fft_dims == (0, 1, 2)
    assert r.operator["fft"] == "centred-orthonormal"
    assert r.acquisition == {"acceleration": 2.1, "seed": 3, "mask": "poisson"}
    assert np.array_equal(r.arrays["extra"], np.arange(5.0))
    hdr = r.reference.dicom_header
    assert hdr.PatientName == "Test^Patient" and hdr.SeriesInstanceUID == "1.2.3.4.5"
    assert hdr.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    vol = r.reference.volume(np.ones(SHAPE), series_description="recon")
    assert vol.same_geometry(r.reference.volume(np.zeros(SHAPE)))
    assert vol.modality == "MR" and vol.series_description == "recon"


def test_map_sets_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    """Coil maps with map sets (M, C, I, J, K), soft SENSE, are kept as they are."""
    m = _mr(rng)
    sets = np.stack([m.coil_maps, 0.5 * m.coil_maps])
    r = read_measurement(write_measurement(_mr(rng, coil_maps=sets), tmp_path / "s.h5"))
    assert r.coil_maps.shape == (2, 3, *SHAPE) and np.array_equal(r.coil_maps, sets)


def test_reference_geometry_has_every_volume_field_but_the_data() -> None:
    names = {f.name for f in fields(ReferenceGeometry)}
    assert names - {"shape"} == {f.name for f in fields(Volume)} - {"data"}


def test_volume_round_trips_through_its_reference_geometry() -> None:
    vol = Volume(np.arange(120.0).reshape(SHAPE), AFFINE, "MR", "a.u.", "T1 sag", _header(),
                 {"source": Path("/data/t1.nii.gz")})
    ref = ReferenceGeometry.from_volume(vol)
    assert ref.shape == SHAPE and ref.meta == {"source": "/data/t1.nii.gz"}  # JSON-able
    back = ref.volume(vol.data, run=1)
    assert np.array_equal(back.data, vol.data) and np.array_equal(back.affine, AFFINE)
    assert back.affine is not ref.affine
    for name in ("modality", "units", "series_description", "dicom_header"):
        assert getattr(back, name) == getattr(vol, name)
    assert back.meta == {"source": "/data/t1.nii.gz", "run": 1}
    assert ref.volume(vol.data, series_description="recon").series_description == "recon"
    with pytest.raises(ValueError, match="reference shape"):
        ref.volume(np.zeros((2, 2, 2)))


def test_file_layout_is_the_documented_one(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_measurement(_mr(rng), tmp_path / "m.h5")
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT_NAME and f.attrs["format_version"] == 1
        assert f.attrs["modality"] == "MR"
        assert f["data"].shape == (3, *SHAPE) and f["data"].dtype == np.complex64
        assert f["mask"].dtype == np.uint8
        assert f["reference/affine"].shape == (4, 4)
        assert tuple(f["reference"].attrs["shape"]) == SHAPE
        assert "dicom_json" in f["reference"]
        for key in ("operator", "noise", "acquisition"):
            assert isinstance(f.attrs[key], str)


def test_ct_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    ref = ReferenceGeometry(AFFINE, SHAPE, "CT", "HU")
    sino = rng.random((7, 4, 9)).astype(np.float32)
    m = Measurement("CT", sino, None, ref, noise={"model": "poisson", "i0": 1e5},
                    operator={"kind": "ct", "geometry": {"kind": "parallel"}})
    r = read_measurement(write_measurement(m, tmp_path / "ct.h5"))
    assert r.modality == "CT" and r.mask is None and r.coil_maps is None
    assert np.array_equal(r.data, sino) and r.reference.dicom_header is None
    assert r.operator["geometry"] == {"kind": "parallel"}


@pytest.mark.parametrize(("changes", "message"), [
    ({"data": np.zeros((3, 6, 5), np.complex64)}, "must have shape"),
    ({"mask": np.ones((1, 4, 4), np.uint8)}, "does not fit"),
    ({"mask": np.zeros((1, 5, 4), np.uint8)}, "selects no"),
    ({"mask": None}, "needs a sampling mask"),
    ({"coil_maps": np.ones((2, *SHAPE), np.complex64)}, "Coil maps"),
    ({"coil_maps": np.ones((2, 2, *SHAPE), np.complex64)}, "nor \\(M, 3, 6, 5, 4\\)"),
    ({"coil_maps": np.ones((1, 2, 3, *SHAPE), np.complex64)}, "Coil maps"),
    ({"noise_covariance": np.eye(2)}, "noise covariance"),
    ({"operator": {"fft_dims": [1, 2]}}, "fft_dims"),
    ({"modality": "PET"}, "modality"),
])
def test_invalid_measurements_are_refused(rng: np.random.Generator, changes: dict[str, object],
                                          message: str) -> None:
    with pytest.raises(MeasurementError, match=message):
        _mr(rng, **changes)


def test_nan_in_data_is_refused(rng: np.random.Generator) -> None:
    m = _mr(rng)
    bad = m.data.copy()
    bad[0, 1, 1, 1] = np.nan
    with pytest.raises(MeasurementError, match="NaN or infinite"):
        _mr(rng, data=bad)


def _tamper(path: Path, edit: str) -> None:
    with h5py.File(path, "r+") as f:
        if edit == "drop-data":
            del f["data"]
        elif edit == "drop-affine":
            del f["reference/affine"]
        elif edit == "drop-reference":
            del f["reference"]
        elif edit == "nan":
            d = f["data"][()]
            d[0, 0, 0, 0] = np.inf
            del f["data"]
            f["data"] = d
        elif edit == "mask":
            del f["mask"]
            f["mask"] = np.ones((1, 3, 3), np.uint8)
        elif edit == "format":
            f.attrs["format"] = "something-else"
        elif edit == "version":
            f.attrs["format_version"] = 99
        elif edit == "json":
            f.attrs["operator"] = "{not json"


@pytest.mark.parametrize(("edit", "message"), [
    ("drop-data", "no 'data' dataset"),
    ("drop-affine", "reference/affine"),
    ("drop-reference", "no 'reference' dataset"),
    ("nan", "NaN or infinite"),
    ("mask", "does not fit"),
    ("format", "not 'medrecon-measurement'"),
    ("version", "upgrade medrecon"),
    ("json", "not valid JSON"),
])
def test_read_errors(tmp_path: Path, rng: np.random.Generator, edit: str, message: str) -> None:
    path = write_measurement(_mr(rng), tmp_path / "m.h5")
    _tamper(path, edit)
    with pytest.raises(MeasurementError, match=message):
        read_measurement(path)


def test_unsupported_files(tmp_path: Path) -> None:
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(MeasurementError, match="not an HDF5"):
        read_measurement(tmp_path / "x.h5")
    with pytest.raises(MeasurementError, match="does not exist"):
        read_measurement(tmp_path / "missing.h5")
    with pytest.raises(MeasurementError, match="is a folder"):
        read_measurement(tmp_path)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["images"] = np.zeros(3)
    with pytest.raises(MeasurementError, match="neither a medrecon measurement nor a fastMRI"):
        read_measurement(tmp_path / "other.h5")


def test_write_is_atomic_on_invalid_measurement(tmp_path: Path, rng: np.random.Generator) -> None:
    m = _mr(rng)
    m.data = m.data[:, :2]  # broken after construction
    with pytest.raises(MeasurementError):
        write_measurement(m, tmp_path / "m.h5")
    assert list(tmp_path.iterdir()) == []


def test_io_imports_nothing_from_operators() -> None:
    # io is a file format with no physics: no module of medrecon.io imports medrecon.operators,
    # at the top or inside a function (import statements or import_module("...") strings).
    import ast

    import medrecon.io

    offenders = []
    for path in sorted(Path(medrecon.io.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                names += [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Call):
                names = [a.value for a in node.args
                         if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names
                          if n == "medrecon.operators" or n.startswith("medrecon.operators.")]
    assert not offenders, offenders


def test_minimal_file_written_by_another_tool(tmp_path: Path) -> None:
    # The example of docs/formats.md: only the required datasets and attributes.
    import json

    kspace = np.ones((2, 4, 5, 6), np.complex64)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.attrs.update(format="medrecon-measurement", format_version=1, modality="MR",
                       operator=json.dumps({"kind": "sense", "fft": "centred-orthonormal",
                                            "fft_dims": [0, 1, 2]}),
                       noise=json.dumps({"model": "unknown"}), acquisition=json.dumps({}))
        f["data"] = kspace
        f["mask"] = np.ones((1, 5, 6), np.uint8)
        f["reference/affine"] = np.eye(4)
        f["reference"].attrs["shape"] = kspace.shape[1:]
    m = read_measurement(tmp_path / "scan.h5")
    assert m.image_shape == (4, 5, 6) and m.fft_dims == (0, 1, 2) and m.coil_maps is None
    assert m.reference.modality == "OT" and m.noise_std is None
