"""Reading DICOM: sorting, geometry, rescale, multi-frame, compressed files and every error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import edit, oblique_affine, write_enhanced, write_series
from pydicom.data import get_testdata_file

from medrecon.errors import DicomError, InputError
from medrecon.io import load_volume
from medrecon.io.dicom_read import read_dicom
from medrecon.io.dicom_scan import list_series

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture
def data(rng: np.random.Generator) -> np.ndarray:
    # Odd, non-square shape (columns, rows, slices) exposes transposes.
    return rng.integers(-1000, 2000, size=(7, 5, 6)).astype(np.float64)


def _one_sentence(msg: str) -> str:
    first = msg.splitlines()[0]
    assert first.endswith((".", ":")), msg
    return first


def test_shuffled_series_sorted_by_position_not_names_or_numbers(tmp_path: Path,
                                                                  data: np.ndarray) -> None:
    affine = np.array([[-0.7, 0, 0, 30.0], [0, -0.8, 0, 20.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])
    paths = write_series(tmp_path, data, affine, modality="CT", slope=1.0, intercept=-1024.0,
                         description="shuffled")
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in paths]
    assert numbers != sorted(numbers)  # name and number order really differ from k order
    assert sorted(p.name for p in paths) != [p.name for p in paths]
    vol = read_dicom(tmp_path)
    np.testing.assert_array_equal(vol.data, data.astype(np.float32))
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    assert vol.modality == "CT" and vol.units == "HU"
    assert vol.series_description == "shuffled"
    assert vol.spacing == pytest.approx((0.7, 0.8, 2.5))
    assert vol.orientation == "LPS"
    assert vol.meta["series_uid"] == pydicom.dcmread(paths[0]).SeriesInstanceUID
    assert vol.meta["study_uid"] and vol.meta["source"] == str(tmp_path)
    assert "PixelData" not in vol.dicom_header
    # the kept header is the first slice's (k = 0), not the first file's
    assert [float(v) for v in vol.dicom_header.ImagePositionPatient] == pytest.approx(
        [-30.0, -20.0, -10.0])


@pytest.mark.parametrize("angles", [(0.3, -0.2, 0.5), (np.pi / 2, 0.0, 0.0), (0.0, np.pi, 0.1)])
def test_oblique_and_flipped_orientations(tmp_path: Path, data: np.ndarray,
                                          angles: tuple[float, float, float]) -> None:
    affine = oblique_affine(angles=angles)
    write_series(tmp_path, data, affine)
    vol = read_dicom(tmp_path)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(vol.data, data.astype(np.float32))


def test_series_written_against_the_normal_is_reversed(tmp_path: Path, data: np.ndarray) -> None:
    # k running against r x c (a left-handed affine): the reader orders slices along the normal,
    # which gives the same voxels at the same places with k reversed.
    affine = np.diag([-1.0, -1.0, -3.0, 1.0])
    write_series(tmp_path, data, affine)
    vol = read_dicom(tmp_path)
    np.testing.assert_array_equal(vol.data, data[:, :, ::-1].astype(np.float32))
    expected = affine.copy()
    expected[:3, 2] *= -1
    expected[:3, 3] = affine[:3, :3] @ [0, 0, data.shape[2] - 1]
    np.testing.assert_allclose(vol.affine, expected, atol=1e-6)


def test_rescale_slope_and_intercept_applied(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(0, 1000, size=(4, 3, 3))
    values = stored * 0.25 + 12.5
    write_series(tmp_path, values, np.eye(4), slope=0.25, intercept=12.5)
    vol = read_dicom(tmp_path)
    np.testing.assert_allclose(vol.data, values, atol=1e-5)
    assert vol.units == "a.u."


def test_gantry_tilt_shear_kept_in_affine(tmp_path: Path, data: np.ndarray) -> None:
    affine = np.diag([-0.5, -0.5, 2.0, 1.0])
    affine[1, 2] = 0.7  # each slice shifted 0.7 mm along y: a tilted gantry
    write_series(tmp_path, data, affine)
    vol = read_dicom(tmp_path)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)


def test_ct_small_single_file() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = load_volume(path)
    assert vol.shape == (128, 128, 1) and vol.modality == "CT" and vol.units == "HU"
    expected = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.data[:, :, 0], expected)
    lps = np.diag([0.661468, 0.661468, 5.0, 1.0])
    lps[:3, 3] = [-158.135803, -179.035797, -75.699997]
    np.testing.assert_allclose(vol.affine, LPS_TO_RAS @ lps, atol=1e-6)
    assert vol.meta["series_uid"] == ds.SeriesInstanceUID


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm"])
def test_compressed_and_other_encodings_equal_uncompressed(name: str) -> None:
    plain = read_dicom(get_testdata_file("MR_small.dcm"))
    other = read_dicom(get_testdata_file(name))
    assert other.shape == plain.shape == (64, 64, 1)
    assert plain.modality == "MR" and plain.data.max() > plain.data.min()
    np.testing.assert_array_equal(other.data, plain.data)
    np.testing.assert_allclose(other.affine, plain.affine, atol=1e-9)


def test_truncated_pixel_data_names_the_file() -> None:
    path = get_testdata_file("MR_truncated.dcm")
    with pytest.raises(DicomError, match="MR_truncated.dcm") as err:
        read_dicom(path)
    assert "truncated" in _one_sentence(str(err.value))


def test_enhanced_multiframe(tmp_path: Path, data: np.ndarray) -> None:
    affine = oblique_affine()
    path = write_enhanced(tmp_path / "enhanced.dcm", data, affine, modality="CT", slope=2.0,
                          intercept=-1000.0)
    values = np.rint((data + 1000.0) / 2.0) * 2.0 - 1000.0
    vol = read_dicom(path)
    np.testing.assert_array_equal(vol.data, values.astype(np.float32))
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    assert vol.modality == "CT" and vol.units == "HU"
    # the folder form reads the same file
    assert read_dicom(tmp_path).same_geometry(vol)


def test_enhanced_with_duplicated_frames_is_refused(tmp_path: Path, data: np.ndarray) -> None:
    path = write_enhanced(tmp_path / "e.dcm", data, np.eye(4), shuffle=False)
    ds = pydicom.dcmread(path)
    pos = ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0]
    pos.ImagePositionPatient = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0] \
        .ImagePositionPatient
    ds.save_as(path)
    with pytest.raises(DicomError, match=r"Duplicated.*frame"):
        read_dicom(path)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the bundled file's own UID
def test_rtdose_multiframe_with_grid_offsets() -> None:
    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    vol = read_dicom(path)
    assert vol.shape == (10, 10, 15) and vol.modality == "RTDOSE"
    assert vol.spacing == pytest.approx((10.0, 10.0, 5.0))
    expected = np.transpose(ds.pixel_array, (2, 1, 0)) * float(ds.DoseGridScaling)
    np.testing.assert_allclose(vol.data, expected, rtol=1e-6)
    np.testing.assert_allclose(vol.affine[:3, 3], [-189.43125, -199.43125, -761.87], atol=1e-4)


def test_colour_image_refused() -> None:
    with pytest.raises(DicomError, match="colour"):
        read_dicom(get_testdata_file("SC_rgb_small_odd.dcm"))


def test_two_series_listed_and_selectable(tmp_path: Path, data: np.ndarray) -> None:
    write_series(tmp_path / "a", data, np.eye(4), series_uid="1.2.3.1", description="first")
    write_series(tmp_path / "b", data[:, :, :4] + 1, np.eye(4), series_uid="1.2.3.2",
                 description="second")
    infos = list_series(tmp_path)
    assert [(s.uid, s.description, s.n_slices) for s in infos] == [
        ("1.2.3.1", "first", 6), ("1.2.3.2", "second", 4)]
    with pytest.raises(DicomError) as err:
        read_dicom(tmp_path)
    msg = str(err.value)
    _one_sentence(msg)
    assert "2 DICOM series" in msg and "--series" in msg
    for text in ("1.2.3.1", "1.2.3.2", "first", "second", "6 slices", "4 slices"):
        assert text in msg
    vol = read_dicom(tmp_path, series="1.2.3.2")
    np.testing.assert_array_equal(vol.data, data[:, :, :4] + 1)
    with pytest.raises(DicomError, match=r"Series 9\.9 is not in") as err:
        read_dicom(tmp_path, series="9.9")
    assert "1.2.3.1" in str(err.value) and "1.2.3.2" in str(err.value)


def test_non_dicom_files_are_ignored(tmp_path: Path, data: np.ndarray) -> None:
    write_series(tmp_path / "series", data, np.eye(4))
    (tmp_path / "README").write_text("scanned on a Tuesday\n")
    (tmp_path / "notes.txt").write_text("nothing\n")
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 3)
    (tmp_path / ".DS_Store").write_bytes(b"\0" * 300)
    # A DICOMDIR-like index: valid DICOM, but no image.
    dicomdir = pydicom.Dataset()
    dicomdir.FileSetID = "TEST"
    dicomdir.file_meta = pydicom.dataset.FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    dicomdir.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    pydicom.dcmwrite(tmp_path / "DICOMDIR", dicomdir, enforce_file_format=True)
    vol = read_dicom(tmp_path)
    np.testing.assert_array_equal(vol.data, data.astype(np.float32))
    with pytest.raises(DicomError, match="DICOMDIR"):
        read_dicom(tmp_path / "DICOMDIR")
    with pytest.raises(DicomError, match="neither DICOM nor NIfTI"):
        read_dicom(tmp_path / "README")


def test_no_dicom_in_folder(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DicomError, match="No DICOM images"):
        read_dicom(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        read_dicom(tmp_path / "missing")


# ---- broken series: each names the problem and a file --------------------------------------


def test_missing_slice(tmp_path: Path, data: np.ndarray) -> None:
    paths = write_series(tmp_path, data, np.diag([1.0, 1.0, 2.0, 1.0]))
    paths[3].unlink()
    with pytest.raises(DicomError, match="Missing slice") as err:
        read_dicom(tmp_path)
    msg = _one_sentence(str(err.value))
    assert paths[2].name in msg and paths[4].name in msg
    assert "4.000 mm" in msg and "2.000 mm" in msg


def test_non_uniform_spacing(tmp_path: Path, data: np.ndarray) -> None:
    paths = write_series(tmp_path, data, np.diag([1.0, 1.0, 2.0, 1.0]))
    # move the last slice 0.6 mm further: gap 2.6 mm (< 1.5 x 2 mm, so not a missing slice)
    ipp = [float(v) for v in pydicom.dcmread(paths[-1]).ImagePositionPatient]
    edit(paths[-1], ImagePositionPatient=[ipp[0], ipp[1], ipp[2] + 0.6])
    with pytest.raises(DicomError, match="Non-uniform slice spacing") as err:
        read_dicom(tmp_path)
    assert paths[-1].name in _one_sentence(str(err.value))


def test_small_position_rounding_is_tolerated(tmp_path: Path, data: np.ndarray) -> None:
    paths = write_series(tmp_path, data, np.diag([1.0, 1.0, 2.0, 1.0]))
    ipp = [float(v) for v in pydicom.dcmread(paths[2]).ImagePositionPatient]
    edit(paths[2], ImagePositionPatient=[ipp[0], ipp[1], ipp[2] + 0.004])
    vol = read_dicom(tmp_path)
    assert vol.spacing[2] == pytest.approx(2.0)


def test_positions_off_a_line(tmp_path: Path, data: np.ndarray) -> None:
    paths = write_series(tmp_path, data, np.diag([1.0, 1.0, 2.0, 1.0]))
    ipp = [float(v) for v in pydicom.dcmread(paths[2]).ImagePositionPatient]
    edit(paths[2], ImagePositionPatient=[ipp[0] + 3.0, ipp[1], ipp[2]])
    with pytest.raises(DicomError, match="straight line") as err:
        read_dicom(tmp_path)
    assert paths[2].name in str(err.value)


def test_mixed_orientations(tmp_path: Path, data: np.ndarray) -> None:
    paths = write_series(tmp_path, data, np.eye(4))
    edit(paths[3], ImageOrientationPatient=[1, 0, 0, 0, 0.8, 0.6])
    with pytest.raises(DicomError, match="Mixed slice orientations") as err:
        read_dicom(tmp_path)
    assert paths[3].name in str(err.value)


def test_mixed_sizes(tmp_path: Path, data: np.ndarray) -> None:
    paths = write_series(tmp_path, data, np.eye(4), series_uid="1.2.9")
    affine = np.eye(4)
    affine[2, 3] = data.shape[2]  # the next slice position, but 6 x 5 pixels instead of 7 x 5
    extra = write_series(tmp_path, data[:6, :, :1], affine, series_uid="1.2.9", prefix="x")
    with pytest.raises(DicomError, match="Mixed image sizes") as err:
        read_dicom(tmp_path)
    msg = str(err.value)
    assert extra[0].name in msg or paths[0].name in msg


def test_mixed_pixel_spacing(tmp_path: Path, data: np.ndarray) -> None:
    paths = write_series(tmp_path, data, np.eye(4))
    edit(paths[1], PixelSpacing=[1.0, 1.5])
    with pytest.raises(DicomError, match="Mixed pixel spacings"):
        read_dicom(tmp_path)


def test_duplicated_positions(tmp_path: Path, data: np.ndarray) -> None:
    write_series(tmp_path, data, np.eye(4), series_uid="1.2.8", prefix="echo1_")
    write_series(tmp_path, data, np.eye(4), series_uid="1.2.8", prefix="echo2_")
    with pytest.raises(DicomError, match="Duplicated slice position") as err:
        read_dicom(tmp_path)
    assert "echo1_" in str(err.value) and "echo2_" in str(err.value)


def test_truncated_file_in_folder(tmp_path: Path, data: np.ndarray) -> None:
    paths = write_series(tmp_path, data, np.eye(4))
    raw = paths[2].read_bytes()
    paths[2].write_bytes(raw[: len(raw) - 20])  # pixel data cut short
    with pytest.raises(DicomError, match="truncated") as err:
        read_dicom(tmp_path)
    assert paths[2].name in _one_sentence(str(err.value))
    for cut in (140, 300, 900):  # header cut short at several places
        paths[2].write_bytes(raw[:cut])
        with pytest.raises(DicomError, match="truncated or corrupt") as err:
            read_dicom(tmp_path)
        assert paths[2].name in str(err.value)


def test_slices_without_position_cannot_be_stacked(tmp_path: Path, data: np.ndarray) -> None:
    paths = write_series(tmp_path, data, np.eye(4))
    edit(paths[0], ImagePositionPatient=None)
    with pytest.raises(DicomError, match="ImagePositionPatient") as err:
        read_dicom(tmp_path)
    assert paths[0].name in str(err.value)
