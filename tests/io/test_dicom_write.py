"""Writing DICOM series: geometry round trips, quantisation, derivation, dciodvfy, safety."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import edit, oblique_affine, write_enhanced, write_series

from medrecon.errors import GeometryError, InputError
from medrecon.io import Volume, load_volume, save_volume
from medrecon.io.dicom_read import read_dicom
from medrecon.io.dicom_write import write_dicom_series

DCIODVFY = shutil.which("dciodvfy")


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in _files(folder)]


def _quantum(folder: Path) -> float:
    return float(pydicom.dcmread(_files(folder)[0], stop_before_pixels=True).RescaleSlope)


@pytest.mark.parametrize("affine", [
    oblique_affine(),
    oblique_affine(spacing=(1.2, 0.6, 3.0), angles=(2.0, 0.4, -1.1), origin=(10, -300, 55)),
    np.diag([2.0, 3.0, 4.0, 1.0]),                      # RAS storage order
    np.array([[0, 0, -1.5, 5], [1.1, 0, 0, -7], [0, -0.9, 0, 3], [0, 0, 0, 1.0]]),  # permuted
], ids=["oblique", "oblique2", "ras", "permuted"])
def test_float_round_trip_affine_and_quantisation(tmp_path: Path, rng: np.random.Generator,
                                                  affine: np.ndarray) -> None:
    data = rng.normal(100.0, 30.0, size=(7, 5, 6)).astype(np.float32)
    vol = Volume(data, affine, modality="MR", series_description="float")
    out = write_dicom_series(vol, tmp_path / "out")
    back = read_dicom(out)
    np.testing.assert_allclose(back.affine, affine, atol=1e-3)
    step = _quantum(out)
    assert step == pytest.approx((data.max() - data.min()) / 65535, rel=1e-6)
    assert np.abs(back.data - data).max() <= step / 2 * 1.001 + 1e-4
    assert back.modality == "MR" and back.series_description == "float"


def test_left_handed_affine_keeps_voxel_positions(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 500, size=(6, 5, 4)).astype(np.float32)
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])  # LAS-like: det < 0
    affine[:3, 3] = [3.0, -4.0, 5.0]
    back = read_dicom(write_dicom_series(Volume(data, affine), tmp_path / "out"))
    # k comes back reversed, every voxel at the same place with the same value
    np.testing.assert_array_equal(back.data, data[:, :, ::-1])
    idx = np.array([[0, 0, 0, 1], [5, 4, 3, 1], [2, 1, 3, 1]], dtype=float).T
    flipped = idx.copy()
    flipped[2] = data.shape[2] - 1 - idx[2]
    np.testing.assert_allclose(back.affine @ flipped, affine @ idx, atol=1e-3)


def test_integer_ct_exact_and_ct_storage(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(-1024, 3000, size=(5, 4, 3)).astype(np.float32)
    vol = Volume(data, np.diag([-0.5, -0.5, 1.0, 1.0]), modality="CT", units="HU")
    out = write_dicom_series(vol, tmp_path / "ct")
    back = read_dicom(out)
    np.testing.assert_array_equal(back.data, data)
    assert back.modality == "CT" and back.units == "HU"
    h = _headers(out)
    assert all(x.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" for x in h)
    assert h[0].RescaleType == "HU" and h[0].PixelRepresentation == 1
    assert list(h[0].ImageType)[:2] == ["DERIVED", "SECONDARY"]


def test_fresh_series_without_reference(tmp_path: Path) -> None:
    vol = Volume(np.ones((4, 4, 3)), np.eye(4), modality="MR")
    a = write_dicom_series(vol, tmp_path / "a")
    b = write_dicom_series(vol, tmp_path / "b", patient_name="Doe^Jane", patient_id="P7",
                           series_description="mine")
    ha, hb = _headers(a), _headers(b)
    assert str(ha[0].PatientName) == "Anonymous" and ha[0].PatientID == "MEDRECON"
    assert str(hb[0].PatientName) == "Doe^Jane" and hb[0].PatientID == "P7"
    assert hb[0].SeriesDescription == "mine"
    assert ha[0].StudyInstanceUID != hb[0].StudyInstanceUID
    assert ha[0].SeriesInstanceUID != hb[0].SeriesInstanceUID
    assert len({x.SOPInstanceUID for x in ha + hb}) == 6
    assert len({x.SeriesInstanceUID for x in ha}) == 1 and len({x.StudyInstanceUID for x in ha}) == 1
    assert sorted(int(x.InstanceNumber) for x in ha) == [1, 2, 3]


def test_derived_from_reference_keeps_patient_study_and_frame(tmp_path: Path,
                                                              rng: np.random.Generator) -> None:
    data = rng.integers(0, 1000, size=(6, 5, 4)).astype(np.float64)
    affine = oblique_affine()
    paths = write_series(tmp_path / "ref", data, affine, modality="MR")
    src = pydicom.dcmread(paths[0])
    ref = read_dicom(tmp_path / "ref")
    recon = Volume(data * 0.5 + 0.25, affine, modality="MR")  # e.g. a reconstruction
    out = write_dicom_series(recon, tmp_path / "out", reference=ref)
    h = _headers(out)[0]
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate",
               "AccessionNumber", "StudyID"):
        assert h[kw].value == src[kw].value, kw
    assert h.SeriesInstanceUID != src.SeriesInstanceUID
    assert h.FrameOfReferenceUID == src.FrameOfReferenceUID  # same geometry, same frame
    assert int(h.SeriesNumber) == int(src.SeriesNumber) + 1000
    assert "DERIVED" in list(h.ImageType)
    # A volume read from the reference series keeps its own header's study by default.
    again = write_dicom_series(ref, tmp_path / "again")
    assert _headers(again)[0].StudyInstanceUID == src.StudyInstanceUID
    # Another geometry is not in the reference's frame of reference.
    other = Volume(data, np.diag([3.0, 3.0, 3.0, 1.0]), modality="MR")
    h2 = _headers(write_dicom_series(other, tmp_path / "other", reference=ref))[0]
    assert h2.StudyInstanceUID == src.StudyInstanceUID
    assert h2.FrameOfReferenceUID != src.FrameOfReferenceUID
    # A different patient cannot join the reference study.
    h3 = _headers(write_dicom_series(recon, tmp_path / "anon", reference=ref,
                                     patient_name="Anon", patient_id="X"))[0]
    assert h3.StudyInstanceUID != src.StudyInstanceUID and h3.PatientID == "X"


def test_unlabelled_volume_derived_from_an_mr_series_is_mr(tmp_path: Path,
                                                           rng: np.random.Generator) -> None:
    """A NIfTI from another tool carries no modality ("OT"); written against an MR reference it
    is an MR series (issue 15), not Secondary Capture. Against a CT reference it stays
    Secondary Capture: CT Image Storage would declare HU, which nothing established."""
    data = rng.integers(0, 1000, size=(6, 5, 3)).astype(np.float64)
    affine = oblique_affine()
    for modality in ("MR", "CT"):
        write_series(tmp_path / f"ref_{modality}", data, affine, modality=modality)
    unlabelled = Volume(data * 0.5, affine)  # modality "OT"
    out = write_dicom_series(unlabelled, tmp_path / "mr", reference=read_dicom(tmp_path / "ref_MR"))
    h = _headers(out)[0]
    assert h.Modality == "MR" and h.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert read_dicom(out).modality == "MR"
    ct_ref = read_dicom(tmp_path / "ref_CT")
    h_ct = _headers(write_dicom_series(unlabelled, tmp_path / "sc", reference=ct_ref))[0]
    assert h_ct.Modality == "OT" and h_ct.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    # A labelled volume keeps its own modality whatever the reference.
    h_mr = _headers(write_dicom_series(Volume(data, affine, modality="MR"), tmp_path / "own",
                                       reference=ct_ref))[0]
    assert h_mr.Modality == "MR"


@pytest.mark.parametrize("n_k", [3, 1])
def test_derived_ct_keeps_reference_window_and_slice_thickness(tmp_path: Path,
                                                              rng: np.random.Generator,
                                                              n_k: int) -> None:
    """5 mm CT slices 3 mm apart (a single slice: SpacingBetweenSlices 3) with a brain and a
    bone window: the reconstruction keeps both windows and the 5 mm thickness, and still reads
    back on the reference's grid."""
    data = np.rint(rng.uniform(-1000, 1500, size=(6, 5, n_k)))
    affine = oblique_affine(spacing=(0.8, 0.9, 3.0))
    paths = write_series(tmp_path / "ref", data, affine, modality="CT")
    for path in paths:
        edit(path, SliceThickness="5", WindowCenter=["40", "400"], WindowWidth=["80", "1500"],
             WindowCenterWidthExplanation=["BRAIN", "BONE"],
             SpacingBetweenSlices="3" if n_k == 1 else None)
    ref = read_dicom(tmp_path / "ref")
    np.testing.assert_allclose(np.linalg.norm(ref.affine[:3, 2]), 3.0, atol=1e-6)
    recon = ref.with_data(ref.data * 0.5 + 0.25)  # a reconstruction in the reference geometry
    for name, kwargs in (("derived", {"reference": ref}), ("own", {})):
        out = write_dicom_series(recon, tmp_path / name, **kwargs)
        h = _headers(out)[0]
        assert [float(v) for v in h.WindowCenter] == [40.0, 400.0]
        assert [float(v) for v in h.WindowWidth] == [80.0, 1500.0]
        assert list(h.WindowCenterWidthExplanation) == ["BRAIN", "BONE"]
        assert float(h.SliceThickness) == 5.0
        back = read_dicom(out)
        np.testing.assert_allclose(back.affine, ref.affine, atol=1e-3)
        if DCIODVFY is not None:
            res = subprocess.run([DCIODVFY, str(_files(out)[0])], capture_output=True,
                                 text=True, timeout=60)
            report = res.stdout + res.stderr
            assert not [ln for ln in report.splitlines() if ln.startswith("Error")], report
    # Off the reference's slices (another grid) the thickness is the slice spacing; the window
    # (HU on both sides) still applies.
    other = Volume(recon.data, np.diag([0.8, 0.9, 2.0, 1.0]), modality="CT", units="HU")
    h2 = _headers(write_dicom_series(other, tmp_path / "other", reference=ref))[0]
    assert float(h2.SliceThickness) == 2.0 and float(h2.WindowCenter[0]) == 40.0
    # An MR reference's window (other units) is not a CT's.
    write_series(tmp_path / "mr", data - data.min(), affine, modality="MR")
    for path in (tmp_path / "mr").iterdir():
        edit(path, WindowCenter="40", WindowWidth="80")
    h3 = _headers(write_dicom_series(recon, tmp_path / "from_mr",
                                     reference=read_dicom(tmp_path / "mr")))[0]
    assert float(h3.WindowWidth) > 1000  # the data's own window


def test_window_and_thickness_from_an_enhanced_ct_reference(tmp_path: Path,
                                                            rng: np.random.Generator) -> None:
    """Enhanced multi-frame files keep thickness and window in functional groups."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    data = np.rint(rng.uniform(-1000, 1500, size=(6, 5, 3)))
    path = write_enhanced(tmp_path / "ref.dcm", data, oblique_affine(), modality="CT")
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    shared.PixelMeasuresSequence[0].SliceThickness = "7"
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = "35", "90"
    shared.FrameVOILUTSequence = Sequence([voi])
    ds.save_as(path)
    ref = read_dicom(path)
    h = _headers(write_dicom_series(ref.with_data(ref.data + 0.5), tmp_path / "out"))[0]
    assert float(h.SliceThickness) == 7.0
    assert float(h.WindowCenter) == 35.0 and float(h.WindowWidth) == 90.0


def test_reference_without_header_is_refused(tmp_path: Path) -> None:
    vol = Volume(np.ones((3, 3, 3)), np.eye(4))
    with pytest.raises(InputError, match="not read from DICOM"):
        write_dicom_series(vol, tmp_path / "x", reference=vol)


def test_nifti_dicom_nifti_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.uniform(-50, 200, size=(9, 7, 5)).astype(np.float32)
    affine = oblique_affine(spacing=(0.9, 1.1, 2.2))
    save_volume(Volume(data, affine, modality="CT", units="HU"), tmp_path / "in.nii.gz")
    vol = load_volume(tmp_path / "in.nii.gz")
    save_volume(vol, tmp_path / "dicom")
    save_volume(load_volume(tmp_path / "dicom"), tmp_path / "out.nii")
    out = load_volume(tmp_path / "out.nii")
    np.testing.assert_allclose(out.affine, affine, atol=1e-3)
    assert np.abs(out.data - data).max() <= _quantum(tmp_path / "dicom") / 2 * 1.001 + 1e-4
    assert out.modality == "CT" and out.units == "HU"


def test_geometry_dicom_cannot_hold(tmp_path: Path) -> None:
    shear = np.eye(4)
    shear[0, 1] = 0.5  # i and j not perpendicular
    with pytest.raises(GeometryError, match="shears"):
        write_dicom_series(Volume(np.ones((3, 3, 3)), shear), tmp_path / "a")
    with pytest.raises(GeometryError, match="singular"):
        write_dicom_series(Volume(np.ones((3, 3, 3)), np.diag([1, 1, 0, 1.0])), tmp_path / "b")
    data = np.ones((3, 3, 3))
    data[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_dicom_series(Volume(data, np.eye(4)), tmp_path / "c")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_existing_folders_are_protected(tmp_path: Path) -> None:
    vol = Volume(np.ones((3, 3, 2)), np.eye(4))
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="not a medrecon DICOM series"):
        write_dicom_series(vol, user)
    with pytest.raises(InputError, match="not a medrecon DICOM series"):
        write_dicom_series(vol, user, overwrite=True)
    assert (user / "thesis.tex").read_text() == "precious"
    out = write_dicom_series(vol, tmp_path / "out")
    uid = _headers(out)[0].SeriesInstanceUID
    with pytest.raises(InputError, match="--overwrite"):
        write_dicom_series(vol, out, overwrite=False)
    write_dicom_series(vol.with_data(np.zeros((3, 3, 2))), out, overwrite=True)
    assert _headers(out)[0].SeriesInstanceUID != uid and len(_files(out)) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    write_dicom_series(vol, empty)
    assert len(_files(empty)) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("modality", ["CT", "MR", "OT"])
@pytest.mark.parametrize("with_reference", [False, True])
def test_written_series_pass_dciodvfy(tmp_path: Path, rng: np.random.Generator, modality: str,
                                      with_reference: bool) -> None:
    data = rng.uniform(0, 800, size=(6, 5, 3)).astype(np.float32)
    affine = oblique_affine()
    reference = None
    if with_reference:
        write_series(tmp_path / "ref", np.rint(data), affine,
                     modality=modality if modality != "OT" else "MR")
        reference = read_dicom(tmp_path / "ref")
    vol = Volume(data, affine, modality=modality, units="HU" if modality == "CT" else "a.u.")
    out = write_dicom_series(vol, tmp_path / "out", reference=reference,
                             patient_name="Test^Patient", patient_id="T1")
    for f in _files(out):
        res = subprocess.run([DCIODVFY, str(f)], capture_output=True, text=True, timeout=60)
        report = res.stdout + res.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, report
        assert "Image" in report  # it recognised the IOD


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_series_derived_from_bundled_files_pass_dciodvfy(tmp_path: Path, name: str) -> None:
    from pydicom.data import get_testdata_file

    ref = read_dicom(get_testdata_file(name))
    recon = ref.with_data(ref.data * 0.5 + 0.25)  # a non-integer "reconstruction"
    out = write_dicom_series(recon, tmp_path / "out", reference=ref)
    res = subprocess.run([DCIODVFY, str(_files(out)[0])], capture_output=True, text=True,
                         timeout=60)
    report = res.stdout + res.stderr
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    h = _headers(out)[0]
    src = ref.dicom_header
    assert h.StudyInstanceUID == src.StudyInstanceUID and h.PatientID == src.PatientID
    assert h.FrameOfReferenceUID == src.FrameOfReferenceUID
    back = read_dicom(out)
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-3)
    assert np.abs(back.data - recon.data).max() <= float(h.RescaleSlope) / 2 * 1.001 + 1e-6


def test_long_text_options_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="64 characters"):
        write_dicom_series(Volume(np.ones((2, 2, 2)), np.eye(4)), tmp_path / "o",
                           patient_id="x" * 65)
