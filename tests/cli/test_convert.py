"""``medrecon convert``: NIfTI <-> DICOM with exact geometry, references, and every error path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from cli_assert import assert_user_error
from dicom_factory import oblique_affine, write_series
from typer.testing import CliRunner

from medrecon.cli.main import app
from medrecon.io import Volume, load_volume, save_volume

runner = CliRunner()


@pytest.fixture
def nifti(tmp_path: Path, rng: np.random.Generator) -> Path:
    data = rng.uniform(0, 1, size=(6, 5, 4)).astype(np.float32)
    vol = Volume(data, oblique_affine(), modality="MR", series_description="in")
    return save_volume(vol, tmp_path / "in.nii.gz")


def _header(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)


def test_nifti_to_dicom_to_nifti(tmp_path: Path, nifti: Path) -> None:
    res = runner.invoke(app, ["convert", str(nifti), str(tmp_path / "dcm"),
                              "--patient-name", "Doe^Jo", "--patient-id", "P1",
                              "--series-description", "converted"])
    assert res.exit_code == 0, res.output
    assert "DICOM" in res.stdout and "6 x 5 x 4" in res.stdout
    h = _header(tmp_path / "dcm")
    assert (str(h.PatientName), h.PatientID, h.SeriesDescription) == ("Doe^Jo", "P1", "converted")
    assert h.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    res = runner.invoke(app, ["convert", str(tmp_path / "dcm"), str(tmp_path / "out.nii")])
    assert res.exit_code == 0, res.output
    src, out = load_volume(nifti), load_volume(tmp_path / "out.nii")
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-3)
    assert np.abs(out.data - src.data).max() <= float(h.RescaleSlope) / 2 * 1.001 + 1e-6
    assert out.series_description == "converted"


def test_format_option_and_reference(tmp_path: Path, nifti: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 500, size=(6, 5, 4)).astype(float)
    paths = write_series(tmp_path / "ref", data, oblique_affine(), modality="MR",
                         series_uid="1.2.5.1")
    src = pydicom.dcmread(paths[0])
    out = tmp_path / "derived.d"
    res = runner.invoke(app, ["convert", str(nifti), str(out), "--format", "dicom",
                              "--reference", str(tmp_path / "ref")])
    assert res.exit_code == 0, res.output
    h = _header(out)
    assert h.StudyInstanceUID == src.StudyInstanceUID and h.PatientID == src.PatientID
    assert h.SeriesInstanceUID != src.SeriesInstanceUID
    assert h.FrameOfReferenceUID == src.FrameOfReferenceUID  # same grid as the reference
    # a NIfTI without modality (another tool's) derived from an MR series is written, and
    # reported, as MR
    plain = save_volume(Volume(load_volume(nifti).data, oblique_affine()), tmp_path / "ot.nii")
    res = runner.invoke(app, ["convert", str(plain), str(tmp_path / "ot.d"), "--format",
                              "dicom", "--reference", str(tmp_path / "ref")])
    assert res.exit_code == 0, res.output
    assert _header(tmp_path / "ot.d").Modality == "MR" and "Wrote MR volume" in res.output
    # a folder with several series: --series picks one
    res = runner.invoke(app, ["convert", str(tmp_path), str(tmp_path / "pick.nii.gz"),
                              "--series", "1.2.5.1"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(load_volume(tmp_path / "pick.nii.gz").data, data)


def test_overwrite_rules(tmp_path: Path, nifti: Path) -> None:
    out_nii = tmp_path / "o.nii"
    assert runner.invoke(app, ["convert", str(nifti), str(out_nii)]).exit_code == 0
    assert_user_error(runner.invoke(app, ["convert", str(nifti), str(out_nii)]),
                      "already exists", "--overwrite")
    assert runner.invoke(app, ["convert", str(nifti), str(out_nii), "--overwrite"]).exit_code == 0
    out_dcm = tmp_path / "d"
    assert runner.invoke(app, ["convert", str(nifti), str(out_dcm)]).exit_code == 0
    uid = _header(out_dcm).SeriesInstanceUID
    assert_user_error(runner.invoke(app, ["convert", str(nifti), str(out_dcm)]), "--overwrite")
    assert _header(out_dcm).SeriesInstanceUID == uid
    res = runner.invoke(app, ["convert", str(nifti), str(out_dcm), "--overwrite"])
    assert res.exit_code == 0 and _header(out_dcm).SeriesInstanceUID != uid
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    assert_user_error(runner.invoke(app, ["convert", str(nifti), str(user), "--overwrite"]),
                      "not a medrecon DICOM series")
    assert (user / "notes.txt").read_text() == "keep me" and len(list(user.iterdir())) == 1


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom on the cut-short file
def test_convert_errors(tmp_path: Path, nifti: Path, rng: np.random.Generator) -> None:
    out = str(tmp_path / "x")
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        (["convert", str(tmp_path / "missing.nii"), out], ("does not exist",)),
        (["convert", str(nifti), str(tmp_path / "x.nii"), "--format", "dicom"],
         ("must be a folder",)),
        (["convert", str(nifti), out, "--format", "nifti"], (".nii.gz",)),
        (["convert", str(nifti), str(tmp_path / "y.nii"), "--reference", str(nifti)],
         ("--reference applies to DICOM",)),
        (["convert", str(nifti), str(tmp_path / "y.nii"), "--patient-name", "A"],
         ("--patient-name",)),
        (["convert", str(nifti), str(tmp_path / "y.nii"), "--patient-id", "A"],
         ("--patient-id",)),
        (["convert", str(nifti), out, "--reference", str(tmp_path / "nope")], ("Reference",)),
        (["convert", str(nifti), out, "--reference", str(nifti)], ("not NIfTI",)),
        (["convert", str(nifti), out, "--series", "1.2.3"], ("--series",)),
        (["convert", str(nifti), out, "--frame", "1"], ("--frame",)),
        (["convert", str(nifti), str(nifti)], ("also an input",)),
        (["convert", str(nifti), str(nifti), "--overwrite"], ("also an input",)),
        (["convert", str(nifti), str(tmp_path / "folder.nii")], ("is a folder",)),
        (["convert", str(nifti), str(nifti.parent / "file")], ("is a file",)),
    ]
    (tmp_path / "folder.nii").mkdir()
    (tmp_path / "file").write_text("not a folder")
    for args, fragments in cases:
        assert_user_error(runner.invoke(app, args), *fragments)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y.nii").exists()
    # several series without --series: the sentence, then the list
    data = rng.integers(0, 100, size=(4, 3, 3)).astype(float)
    write_series(tmp_path / "s" / "a", data, np.eye(4), series_uid="1.2.6.1", description="A")
    paths = write_series(tmp_path / "s" / "b", data, np.eye(4), series_uid="1.2.6.2",
                         description="B")
    msg = assert_user_error(runner.invoke(app, ["convert", str(tmp_path / "s"), out]),
                            "2 DICOM series", "1.2.6.1", "1.2.6.2")
    assert len(msg.strip().splitlines()) == 3
    assert_user_error(runner.invoke(app, ["convert", str(tmp_path / "s"), out, "--series",
                                          "7.7"]), "Series 7.7 is not in")
    paths[0].write_bytes(paths[0].read_bytes()[:500])
    assert_user_error(runner.invoke(app, ["convert", str(tmp_path / "s" / "b"), out]),
                      "truncated", paths[0].name)
    assert not (tmp_path / "x").exists()
    # an invalid choice is a usage error (exit 2), not a traceback
    res = runner.invoke(app, ["convert", str(nifti), out, "--format", "png"])
    assert res.exit_code == 2 and "Traceback" not in res.output
