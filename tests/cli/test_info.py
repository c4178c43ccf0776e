"""``medrecon info``: text and JSON output, series listing, and every user-error path."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_assert import assert_user_error as _assert_user_error
from dicom_factory import write_series
from pydicom.data import get_testdata_file
from typer.testing import CliRunner, Result

from medrecon.cli.main import app
from medrecon.io import Volume, save_volume

runner = CliRunner()


def assert_user_error(result: Result, *fragments: str) -> str:
    return _assert_user_error(result, *fragments, quiet_stdout=True)


@pytest.fixture
def nifti(tmp_path: Path) -> Path:
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) - 10
    vol = Volume(data, np.diag([-0.5, -0.6, 2.0, 1.0]), modality="CT", units="HU")
    return save_volume(vol, tmp_path / "ct.nii.gz")


def test_info_nifti_text_and_json(nifti: Path) -> None:
    res = runner.invoke(app, ["info", str(nifti)])
    assert res.exit_code == 0, res.output
    for text in ("NIFTI", "CT", "4 x 5 x 6", "0.5 x 0.6 x 2 mm", "LPS", "-10 .. 109 HU"):
        assert text in res.stdout, (text, res.stdout)
    res = runner.invoke(app, ["info", str(nifti), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    vol = info["volume"]
    assert info["format"] == "nifti" and info["series"] == []
    assert vol["shape"] == [4, 5, 6] and vol["spacing_mm"] == pytest.approx([0.5, 0.6, 2.0])
    assert vol["orientation"] == "LPS" and vol["modality"] == "CT"
    assert vol["intensity"] == {"min": -10.0, "max": 109.0, "mean": pytest.approx(49.5),
                                "units": "HU"}


def test_info_dicom_file() -> None:
    res = runner.invoke(app, ["info", get_testdata_file("CT_small.dcm"), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["format"] == "dicom" and len(info["series"]) == 1
    assert info["volume"]["shape"] == [128, 128, 1]
    assert info["volume"]["intensity"]["units"] == "HU"
    assert info["volume"]["series_uid"] == info["series"][0]["uid"]


def test_info_folder_lists_all_series(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 100, size=(5, 4, 3)).astype(float)
    write_series(tmp_path / "a", data, np.eye(4), series_uid="1.2.3.1", description="T1")
    write_series(tmp_path / "b", data[:, :, :2], np.eye(4), series_uid="1.2.3.2",
                 description="T2")
    res = runner.invoke(app, ["info", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for text in ("2 series found", "1.2.3.1", "1.2.3.2", "'T1'", "'T2'", "3 slices",
                 "2 slices", "--series"):
        assert text in res.stdout, (text, res.stdout)
    info = json.loads(runner.invoke(app, ["info", str(tmp_path), "--json"]).stdout)
    assert [s["n_slices"] for s in info["series"]] == [3, 2] and info["volume"] is None
    res = runner.invoke(app, ["info", str(tmp_path), "--series", "1.2.3.2", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["volume"]["shape"] == [5, 4, 2] and len(info["series"]) == 2


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom on the cut-short file
def test_info_errors(tmp_path: Path, nifti: Path, rng: np.random.Generator) -> None:
    assert_user_error(runner.invoke(app, ["info", str(tmp_path / "missing")]), "does not exist")
    data = rng.integers(0, 100, size=(5, 4, 4)).astype(float)
    paths = write_series(tmp_path / "s", data, np.eye(4), series_uid="1.2.3.7")
    assert_user_error(runner.invoke(app, ["info", str(tmp_path / "s"), "--series", "9.9"]),
                      "Series 9.9 is not in", "1.2.3.7")
    assert_user_error(runner.invoke(app, ["info", str(tmp_path / "s"), "--frame", "0"]),
                      "--frame")
    assert_user_error(runner.invoke(app, ["info", str(nifti), "--series", "1.2"]), "--series")
    paths[1].unlink()
    assert_user_error(runner.invoke(app, ["info", str(tmp_path / "s")]), "Missing slice")
    raw = paths[2].read_bytes()
    paths[2].write_bytes(raw[:400])
    assert_user_error(runner.invoke(app, ["info", str(tmp_path / "s")]), "truncated",
                      paths[2].name)
    dyn = tmp_path / "dyn.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), dtype=np.float32), np.eye(4)), str(dyn))
    assert_user_error(runner.invoke(app, ["info", str(dyn)]), "--frame")
    res = runner.invoke(app, ["info", str(dyn), "--frame", "1", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["volume"]["shape"] == [2, 2, 2]
    assert_user_error(runner.invoke(app, ["info", str(dyn), "--frame", "5"]), "out of range")
    (tmp_path / "empty").mkdir()
    assert_user_error(runner.invoke(app, ["info", str(tmp_path / "empty")]), "No DICOM images")
