"""Ordinary files written by other tools (issue 15): NIfTI without a modality, FSL descriptions,
real-looking T1 and CT value ranges, through the README's quick start."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_assert import assert_user_error
from typer.testing import CliRunner

from medrecon.cli.main import app
from medrecon.io import load_volume
from medrecon.io.measurement import read_measurement
from medrecon.phantoms import shepp_logan_3d

runner = CliRunner()
AFFINE = np.array([[-1.5, 0, 0, 30.0], [0, 1.5, 0, -30.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]])


def head_ct(shape: tuple[int, int, int] = (32, 32, 4)) -> np.ndarray:
    """int16 HU of a water disc with a bone rim in air: what dcm2niix writes for a CT head."""
    x, y = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[:2]], indexing="ij")
    r = np.sqrt(x**2 + y**2)[..., None] * np.ones(shape)
    hu = np.full(shape, -1024.0)
    hu[r < 0.8] = 40.0
    hu[(r < 0.8) & (r > 0.68)] = 1500.0
    return hu.astype(np.int16)


def t1_with_ringing(shape: tuple[int, int, int] = (20, 18, 12)) -> np.ndarray:
    """A T1-like magnitude image in scanner units with a few slightly negative voxels (the
    ringing of sinc resampling), as FSL and SPM outputs have."""
    t1 = 3000.0 * shepp_logan_3d(shape)
    t1[::7, ::5, ::3] -= 600.0
    return t1.astype(np.float32)


def save_foreign(data: np.ndarray, path: Path, descrip: bytes = b"") -> Path:
    img = nib.Nifti1Image(data, AFFINE)
    img.header["descrip"] = descrip
    nib.save(img, str(path))
    return path


def test_unlabelled_ct_nifti_runs_the_quick_start(tmp_path: Path) -> None:
    ct = save_foreign(head_ct(), tmp_path / "ct.nii.gz")
    r = runner.invoke(app, ["info", str(ct)])
    assert r.exit_code == 0, r.output
    assert "modality:     CT" in r.stdout and "HU" in r.stdout
    assert "values span air to bone (-1024 to 1500), so it is read as CT in HU" in r.stdout
    meas = tmp_path / "ct.h5"
    r = runner.invoke(app, ["simulate", str(ct), str(meas), "--modality", "ct", "--views", "40"])
    assert r.exit_code == 0, r.output
    notes = [ln for ln in r.stderr.splitlines() if ln]
    assert len(notes) == 1 and notes[0].startswith("Note: ct.nii.gz does not say its modality")
    assert read_measurement(meas).modality == "CT"
    rec = tmp_path / "fbp.nii.gz"
    r = runner.invoke(app, ["reconstruct", str(meas), str(rec), "--method", "fbp",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert load_volume(rec).units == "HU"
    r = runner.invoke(app, ["evaluate", str(rec), str(ct), "--figure", str(tmp_path / "e.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "e.png").stat().st_size > 0


def test_modality_ct_declares_hu_for_a_reference_without_one(tmp_path: Path) -> None:
    # Soft tissue only (no air or bone band): not recognised, so --modality ct must declare it.
    hu = np.full((24, 24, 4), 40.0, np.float32)
    hu[6:18, 6:18] = 60.0
    ref = save_foreign(hu, tmp_path / "crop.nii.gz")
    assert load_volume(ref).modality == "OT"
    r = runner.invoke(app, ["simulate", str(ref), str(tmp_path / "c.h5"), "--modality", "ct",
                            "--views", "20"])
    assert r.exit_code == 0, r.output
    assert "Note: --modality ct reads the values of crop.nii.gz (40 to 60) as HU" in r.stderr
    m = read_measurement(tmp_path / "c.h5")
    assert (m.modality, m.reference.units) == ("CT", "HU")
    r = runner.invoke(app, ["reconstruct", str(tmp_path / "c.h5"), str(tmp_path / "r.nii.gz"),
                            "--method", "fbp", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "r.nii.gz"), str(ref), "--figure",
                            str(tmp_path / "e.png")])
    assert r.exit_code == 0, r.output
    assert "crop.nii.gz does not say its modality; it is evaluated as CT (HU)" in r.stderr
    # An MR volume is not silently turned into HU.
    r = runner.invoke(app, ["convert", str(ref), str(tmp_path / "mr.nii.gz"), "--modality", "mr"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["simulate", str(tmp_path / "mr.nii.gz"), str(tmp_path / "x.h5"),
                            "--modality", "ct"])
    assert_user_error(r, "is an MR volume", "--modality mri")
    assert not (tmp_path / "x.h5").exists()


def test_convert_sets_the_modality(tmp_path: Path) -> None:
    src = save_foreign(t1_with_ringing(), tmp_path / "t1.nii.gz")
    assert load_volume(src).modality == "OT"
    r = runner.invoke(app, ["convert", str(src), str(tmp_path / "ct.nii.gz"), "--modality", "CT"])
    assert r.exit_code == 0, r.output
    back = load_volume(tmp_path / "ct.nii.gz")
    assert (back.modality, back.units) == ("CT", "HU")
    r = runner.invoke(app, ["convert", str(tmp_path / "ct.nii.gz"), str(tmp_path / "mr"),
                            "--modality", "mr"])
    assert r.exit_code == 0, r.output
    back = load_volume(tmp_path / "mr")  # a DICOM series
    assert (back.modality, back.units) == ("MR", "a.u.")
    r = runner.invoke(app, ["convert", str(src), str(tmp_path / "y.nii.gz"), "--modality", "pet"])
    assert_user_error(r, "--modality must be ct or mr")


def test_fsl_description_with_nul_bytes_simulates(tmp_path: Path) -> None:
    src = save_foreign(t1_with_ringing(), tmp_path / "t1.nii.gz",
                       descrip=b"FSL5.0\x00\x00\x01junk")
    assert load_volume(src).series_description == "FSL5.0"
    r = runner.invoke(app, ["simulate", str(src), str(tmp_path / "t1.h5"), "--coils", "2",
                            "--acceleration", "2"])
    assert r.exit_code == 0, r.output
    assert read_measurement(tmp_path / "t1.h5").reference.series_description == "FSL5.0"


def test_t1_with_slightly_negative_values_is_not_called_ct(tmp_path: Path) -> None:
    src = save_foreign(t1_with_ringing(), tmp_path / "t1.nii.gz")
    assert float(load_volume(src).data.min()) < -500  # negative enough for the old rule
    r = runner.invoke(app, ["info", str(src)])
    assert r.exit_code == 0 and "modality:     OT" in r.stdout, r.output
    r = runner.invoke(app, ["simulate", str(src), str(tmp_path / "t1.h5"), "--coils", "2",
                            "--acceleration", "2"])
    assert r.exit_code == 0, r.output
    assert "CT" not in r.stderr and "Warning" not in r.stderr, r.stderr


@pytest.mark.parametrize("padding", [-1024, -3024])
def test_ct_recognised_with_and_without_padding(tmp_path: Path, padding: int) -> None:
    hu = head_ct()
    x, y = np.meshgrid(*[np.linspace(-1, 1, n) for n in hu.shape[:2]], indexing="ij")
    hu[np.sqrt(x**2 + y**2) > 0.95] = padding
    vol = load_volume(save_foreign(hu, tmp_path / "ct.nii"))
    assert (vol.modality, vol.units) == ("CT", "HU")


def test_default_calibration_fits_a_small_phase_encode_plane(tmp_path: Path) -> None:
    # A 64 x 41 x 25 T1 whose 41 x 25 phase-encode plane the fixed 24 did not fit at R = 8.
    src = save_foreign(t1_with_ringing((32, 41, 25)), tmp_path / "t1.nii.gz")
    out = tmp_path / "t1.h5"
    r = runner.invoke(app, ["simulate", str(src), str(out), "--coils", "2"])
    assert r.exit_code == 0, r.output
    m = read_measurement(out)
    assert m.acquisition["calibration"] == 8
    assert m.acquisition["acceleration"] == pytest.approx(8.0, rel=0.05)
    # The settings file records the size chosen, so that it reproduces the run.
    assert "calibration: 8" in (tmp_path / "t1.simulate.yaml").read_text()


def test_single_slice_and_thin_slab_get_dims_2d_advice(tmp_path: Path) -> None:
    t1 = t1_with_ringing((20, 24, 12))
    one = save_foreign(t1[:, :, 6:7], tmp_path / "slice.nii.gz")
    r = runner.invoke(app, ["simulate", str(one), str(tmp_path / "s.h5")])
    msg = assert_user_error(r, "single slice (20 x 24 x 1)", "use --dims 2d")
    assert "--calibration" not in msg
    r = runner.invoke(app, ["simulate", str(one), str(tmp_path / "s.h5"), "--dims", "2d",
                            "--coils", "2", "--acceleration", "2"])
    assert r.exit_code == 0, r.output
    slab = save_foreign(t1[:, :, 4:8], tmp_path / "slab.nii.gz")
    r = runner.invoke(app, ["simulate", str(slab), str(tmp_path / "t.h5"), "--coils", "2",
                            "--acceleration", "2"])
    assert r.exit_code == 0, r.output
    assert "Note: slab.nii.gz is a thin slab of 4 slices" in r.stderr and "--dims 2d" in r.stderr
    r = runner.invoke(app, ["simulate", str(slab), str(tmp_path / "u.h5"), "--calibration", "6"])
    assert_user_error(r, "use --calibration 4 or less, or --dims 2d for this thin slab")


def test_frame_option_and_one_frame_4d_files(tmp_path: Path) -> None:
    t1 = t1_with_ringing()
    one = save_foreign(t1[..., None], tmp_path / "one.nii.gz")  # 4D, one frame: read as 3D
    assert load_volume(one).shape == t1.shape
    two = save_foreign(np.stack([t1, 2 * t1], axis=-1), tmp_path / "two.nii.gz")
    r = runner.invoke(app, ["simulate", str(two), str(tmp_path / "m.h5")])
    assert_user_error(r, "4D with 2 frames", "--frame N")
    r = runner.invoke(app, ["simulate", str(two), str(tmp_path / "m.h5"), "--frame", "1",
                            "--coils", "2", "--acceleration", "2"])
    assert r.exit_code == 0, r.output
    assert read_measurement(tmp_path / "m.h5").noise["sigma"] > 0
    # evaluate: --frame picks the frame of the 4D input; the 3D input is read as it is.
    r = runner.invoke(app, ["evaluate", str(one), str(two), "--frame", "0", "--json",
                            str(tmp_path / "e0.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e0.json").read_text())["volume"]["nmse"] == 0.0
    r = runner.invoke(app, ["evaluate", str(one), str(two), "--frame", "1", "--json",
                            str(tmp_path / "e1.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e1.json").read_text())["volume"]["nmse"] > 0.1
    r = runner.invoke(app, ["evaluate", str(one), str(one), "--frame", "1"])
    assert_user_error(r, "no input has several frames")


def padded_ct_slice(tmp_path: Path) -> Path:
    """One axial CT slice with -3024 HU padding outside the scan circle (a real head slice)."""
    hu = head_ct((48, 48, 1))
    x, y = np.meshgrid(*[np.linspace(-1, 1, 48)] * 2, indexing="ij")
    hu[np.sqrt(x**2 + y**2) > 0.95] = -3024
    return save_foreign(hu, tmp_path / "slice.nii.gz")


def test_fbp_of_a_padded_ct_slice_evaluates_without_the_padding(tmp_path: Path) -> None:
    ref = padded_ct_slice(tmp_path)
    r = runner.invoke(app, ["simulate", str(ref), str(tmp_path / "s.h5"), "--views", "90"])
    assert r.exit_code == 0, r.output
    rec = tmp_path / "fbp.nii.gz"
    r = runner.invoke(app, ["reconstruct", str(tmp_path / "s.h5"), str(rec), "--method", "fbp",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    fig = tmp_path / "eval.png"
    r = runner.invoke(app, ["evaluate", str(rec), str(ref), "--mask", "auto", "--figure",
                            str(fig), "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output  # the single slice's figure used to crash
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["data_range_source"] == "reference max - min outside padding"
    assert doc["data_range"] == pytest.approx(1500 + 1024)
    assert "outside CT padding" in doc["region"]
    r = runner.invoke(app, ["evaluate", str(rec), str(ref), "--include-padding", "--json",
                            str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    kept = json.loads((tmp_path / "p.json").read_text())
    assert kept["data_range"] == pytest.approx(1500 + 3024)
    assert doc["volume"]["psnr"] > kept["volume"]["psnr"] + 5.0
    from matplotlib.image import imread

    img = imread(str(fig))
    assert img.shape[0] > 1.5 * img.shape[1]  # one column of panels, not three


def test_nifti_dicom_nifti_round_trip_evaluates(tmp_path: Path) -> None:
    src = save_foreign(t1_with_ringing(), tmp_path / "t1.nii.gz")  # LAS
    assert runner.invoke(app, ["convert", str(src), str(tmp_path / "dcm")]).exit_code == 0
    back = tmp_path / "back.nii.gz"
    assert runner.invoke(app, ["convert", str(tmp_path / "dcm"), str(back)]).exit_code == 0
    assert (load_volume(src).orientation, load_volume(back).orientation) == ("LAS", "LAI")
    for rec, ref in ((back, src), (src, tmp_path / "dcm")):
        r = runner.invoke(app, ["evaluate", str(rec), str(ref), "--json",
                                str(tmp_path / "m.json"), "--figure", str(tmp_path / "f.png"),
                                "--overwrite"])
        assert r.exit_code == 0, r.output
        assert "reordered onto the reference's grid" in r.stderr
        doc = json.loads((tmp_path / "m.json").read_text())
        assert doc["inputs"]["reoriented"] in ("LAI -> LAS", "LAS -> LAI")
        assert doc["volume"]["nmse"] < 1e-6  # the same voxels, up to DICOM quantisation
