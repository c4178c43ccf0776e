"""``medrecon simulate`` -> ``medrecon reconstruct`` -> ``medrecon evaluate`` from the CLI, and
every user-error path of the two commands (one sentence, exit code 2, nothing left behind)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from medrecon.cli.main import app
from medrecon.io import Volume, load_volume, save_volume
from medrecon.io.measurement import read_measurement
from medrecon.phantoms import shepp_logan_3d

runner = CliRunner()
SHAPE = (20, 18, 16)
AFFINE = np.array([[-1.5, 0, 0, 20.0], [0, -1.2, 0, 30.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])
SIM = ["--coils", "4", "--acceleration", "3", "--calibration", "6"]


def assert_user_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith("Error: ") and first.endswith((".", "?")), result.stderr
    for text in fragments:
        assert text in result.stderr, (text, result.stderr)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("study")
    vol = Volume(100 * shepp_logan_3d(SHAPE), AFFINE, modality="MR", series_description="T1")
    save_volume(vol, d / "ref.nii.gz")
    return d


@pytest.fixture(scope="module")
def meas(study: Path) -> Path:
    r = runner.invoke(app, ["simulate", str(study / "ref.nii.gz"), str(study / "m.h5"), *SIM])
    assert r.exit_code == 0, r.output
    return study / "m.h5"


def test_simulate_writes_measurement_and_resolved_config(meas: Path, study: Path) -> None:
    m = read_measurement(meas)
    assert m.data.shape == (4, *SHAPE) and m.acquisition["acceleration"] == pytest.approx(3, 0.05)
    assert np.allclose(m.reference.affine, AFFINE, atol=1e-6)  # NIfTI stores float32
    cfg = (study / "m.simulate.yaml").read_text()
    assert "coils: 4" in cfg and "modality: mri" in cfg
    assert m.acquisition["config"]["mri"]["calibration"] == 6


@pytest.mark.parametrize("method", ["zero-filled", "cg-sense", "l1-wavelet", "tv"])
def test_reconstruct_then_evaluate(meas: Path, study: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / f"{method}.nii.gz"
    tuned = method in ("l1-wavelet", "tv")  # self-tuned by default: fewer iterations here
    r = runner.invoke(app, ["reconstruct", str(meas), str(out), "--method", method,
                            "--no-progress", "--device", "cpu",
                            *(["--iterations", "20"] if tuned else [])])
    assert r.exit_code == 0, r.output
    assert ("Self-tuned: lam auto = " in r.stdout) == tuned, r.stdout
    assert "Data-consistency residual ||M(Ax) - y|| / ||y|| = " in r.stdout
    residual = float(r.stdout.rsplit("= ", 1)[1])
    assert 0 < residual < 1
    vol = load_volume(out)
    assert vol.same_geometry(load_volume(study / "ref.nii.gz"))
    report = tmp_path / "metrics.json"
    r = runner.invoke(app, ["evaluate", str(out), str(study / "ref.nii.gz"), "--json",
                            str(report)])
    assert r.exit_code == 0, r.output
    psnr = json.loads(report.read_text())
    assert "psnr" in json.dumps(psnr).lower()


def test_classical_beats_zero_filled_via_cli(meas: Path, study: Path, tmp_path: Path) -> None:
    ref = load_volume(study / "ref.nii.gz").data
    errs = {}
    for method in ("zero-filled", "l1-wavelet"):
        out = tmp_path / f"{method}.nii.gz"
        extra = ["--iterations", "40"] if method == "l1-wavelet" else []
        r = runner.invoke(app, ["reconstruct", str(meas), str(out), "--method", method,
                                "--no-progress", *extra])
        assert r.exit_code == 0, r.output
        errs[method] = float(np.mean((load_volume(out).data - ref) ** 2))
    assert errs["l1-wavelet"] < 0.5 * errs["zero-filled"]


def test_method_options_via_set(meas: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["reconstruct", str(meas), str(tmp_path / "w.nii.gz"), "--method",
                            "l1-wavelet", "--set", "wavelet=haar", "--set", "levels=1",
                            "--iterations", "3", "--lam", "0.01", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "3 iterations, lam 0.01" in r.stdout
    r = runner.invoke(app, ["reconstruct", str(meas), str(tmp_path / "w.nii.gz"), "--method",
                            "tv", "--set", "oops", "--overwrite"])
    assert_user_error(r, "KEY=VALUE")


def test_reconstruct_writes_its_resolved_settings(meas: Path, tmp_path: Path) -> None:
    from medrecon.config import load_config
    from medrecon.reconstruct import ReconstructionSettings, reconstruct

    out = tmp_path / "tv.nii.gz"
    r = runner.invoke(app, ["reconstruct", str(meas), str(out), "--method", "tv",
                            "--iterations", "4", "--set", "tv_axes=[0,1]", "--no-progress",
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    path = tmp_path / "tv.reconstruct.yaml"
    assert f"settings in {path}" in r.stdout
    settings = load_config(path, ReconstructionSettings)
    assert (settings.method, settings.modality, settings.device) == ("tv", "MR", "cpu")
    assert settings.iterations == 4 and settings.lam is None
    assert settings.options == {"maps_method": "espirit", "map_sets": 2, "coil_batch": None,
                                "tv_axes": [0, 1], "tau": None, "sigma": None, "sure": True,
                                "tune_slab": 64}
    assert settings.resolved["iterations"] == 4 and settings.resolved["lam"] > 0
    # The file repeats the run exactly.
    again = reconstruct(read_measurement(meas), settings.method, settings.recon_options())
    assert np.array_equal(again.volume.data, load_volume(out).data)
    # A DICOM folder gets its settings beside it; no temporary files are left.
    folder = tmp_path / "series"
    r = runner.invoke(app, ["reconstruct", str(meas), str(folder), "--method", "zero-filled",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "series.reconstruct.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "series", "series.reconstruct.yaml", "tv.nii.gz", "tv.reconstruct.yaml"]


def test_config_file_and_flag_precedence(study: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("seed: 3\nmri:\n  coils: 2\n  dims: 2d\n  mask: equispaced\n"
                   "  acceleration: 2\n  calibration: 4\n")
    out = tmp_path / "m2.h5"
    r = runner.invoke(app, ["simulate", str(study / "ref.nii.gz"), str(out), "--config",
                            str(cfg), "--coils", "3", "--noise-sigma", "0.5"])
    assert r.exit_code == 0, r.output
    m = read_measurement(out)
    assert m.n_coils == 3 and m.acquisition["seed"] == 3  # flag beats file; file beats default
    assert m.acquisition["mask"] == "equispaced" and m.mask.shape == (1, SHAPE[1], 1)
    assert m.noise["sigma"] == 0.5 and m.acquisition["snr"] is None
    assert "dims: 2d" in (tmp_path / "m2.simulate.yaml").read_text()


def test_shipped_example_configs_load(study: Path, tmp_path: Path) -> None:
    from medrecon.config import load_config
    from medrecon.simulate import SimulationConfig

    configs = sorted(Path(__file__).resolve().parents[2].glob("configs/simulate/*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        load_config(path, SimulationConfig)


def test_dicom_series_round_trip(study: Path, tmp_path: Path) -> None:
    from dicom_factory import write_series

    folder = tmp_path / "dicom_in"
    data = (1000 * shepp_logan_3d(SHAPE)).astype(np.float32)
    write_series(folder, data, AFFINE, modality="MR")
    ref = load_volume(folder)
    r = runner.invoke(app, ["simulate", str(folder), str(tmp_path / "d.h5"), *SIM])
    assert r.exit_code == 0, r.output
    out = tmp_path / "dicom_out"
    r = runner.invoke(app, ["reconstruct", str(tmp_path / "d.h5"), str(out), "--method",
                            "cg-sense", "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = load_volume(out)
    assert rec.same_geometry(ref, atol_mm=1e-3)
    assert rec.dicom_header.StudyInstanceUID == ref.dicom_header.StudyInstanceUID
    assert rec.dicom_header.SeriesInstanceUID != ref.dicom_header.SeriesInstanceUID
    assert float(np.corrcoef(rec.data.ravel(), ref.data.ravel())[0, 1]) > 0.9
    nii = tmp_path / "from_dicom.nii.gz"
    r = runner.invoke(app, ["reconstruct", str(tmp_path / "d.h5"), str(nii), "--method",
                            "zero-filled", "--format", "nifti"])
    assert r.exit_code == 0, r.output
    assert load_volume(nii).same_geometry(ref)


# -- error paths -------------------------------------------------------------------------------
def _copy_with(src: Path, dst: Path, edit: str) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        if edit == "nan":
            d = f["data"][()]
            d[0, 3, 3, 3] = np.nan
            del f["data"]
            f["data"] = d
        elif edit == "mask":
            del f["mask"]
            f["mask"] = np.ones((1, 5, 5), np.uint8)
        elif edit == "missing":
            del f["reference"]
    return dst


@pytest.mark.parametrize(("edit", "fragment"), [
    ("nan", "NaN or infinite"),
    ("mask", "does not fit"),
    ("missing", "no 'reference' dataset"),
])
def test_reconstruct_refuses_broken_files(meas: Path, tmp_path: Path, edit: str,
                                          fragment: str) -> None:
    bad = _copy_with(meas, tmp_path / "bad.h5", edit)
    out = tmp_path / "out.nii.gz"
    r = runner.invoke(app, ["reconstruct", str(bad), str(out), "--method", "cg-sense"])
    assert_user_error(r, fragment)
    assert not out.exists()


def test_reconstruct_other_user_errors(meas: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.nii.gz"
    r = runner.invoke(app, ["reconstruct", str(meas), str(out), "--method", "fbp"])
    assert_user_error(r, "Unknown reconstruction method 'fbp' for MR")
    (tmp_path / "text.h5").write_text("hello")
    r = runner.invoke(app, ["reconstruct", str(tmp_path / "text.h5"), str(out), "--method", "tv"])
    assert_user_error(r, "not an HDF5")
    r = runner.invoke(app, ["reconstruct", str(tmp_path / "none.h5"), str(out), "--method", "tv"])
    assert_user_error(r, "does not exist")
    r = runner.invoke(app, ["reconstruct", str(meas), str(out), "--method", "tv", "--format",
                            "png"])
    assert_user_error(r, "Unknown output format")
    r = runner.invoke(app, ["reconstruct", str(meas), str(out), "--method", "tv", "--device",
                            "quantum"])
    assert_user_error(r, "Unknown device")
    assert not out.exists()


def test_simulate_user_errors(study: Path, tmp_path: Path) -> None:
    ref = str(study / "ref.nii.gz")
    out = tmp_path / "s.h5"
    r = runner.invoke(app, ["simulate", ref, str(out), "--snr", "10", "--noise-sigma", "1"])
    assert_user_error(r, "either --snr or --noise-sigma")
    r = runner.invoke(app, ["simulate", ref, str(tmp_path / "s.nii"), *SIM])
    assert_user_error(r, "must be an HDF5 file")
    r = runner.invoke(app, ["simulate", ref, str(out), "--mask", "random"])
    assert_user_error(r, "use --dims 2d")
    r = runner.invoke(app, ["simulate", ref, str(out), "--mask", "spiral"])
    assert_user_error(r, "spiral")
    r = runner.invoke(app, ["simulate", str(tmp_path / "missing.nii.gz"), str(out)])
    assert_user_error(r, "does not exist")
    r = runner.invoke(app, ["simulate", ref, str(out), "--acceleration", "500"])
    assert_user_error(r)
    bad = tmp_path / "bad.yaml"
    bad.write_text("mri:\n  colis: 4\n")
    r = runner.invoke(app, ["simulate", ref, str(out), "--config", str(bad)])
    assert_user_error(r, "colis")
    assert not out.exists()


def test_ct_pipeline_modality_from_reference(tmp_path: Path) -> None:
    hu = np.full((24, 24, 4), -1000.0, np.float32)
    hu[6:18, 6:18] = 0.0  # a water block in air
    save_volume(Volume(hu, np.diag([1.0, 1.0, 2.0, 1.0]), modality="CT", units="HU"),
                tmp_path / "ct.nii.gz")
    r = runner.invoke(app, ["simulate", str(tmp_path / "ct.nii.gz"), str(tmp_path / "ct.h5"),
                            "--views", "90", "--geometry", "parallel"])
    assert r.exit_code == 0, r.output
    m = read_measurement(tmp_path / "ct.h5")
    assert m.modality == "CT" and m.data.shape[0] == 90
    r = runner.invoke(app, ["reconstruct", str(tmp_path / "ct.h5"), str(tmp_path / "fbp.nii.gz"),
                            "--method", "fbp", "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = load_volume(tmp_path / "fbp.nii.gz")
    assert rec.units == "HU" and rec.shape == hu.shape
    assert abs(float(np.median(rec.data[9:15, 9:15]))) < 60  # water ~ 0 HU
    r = runner.invoke(app, ["reconstruct", str(tmp_path / "ct.h5"), str(tmp_path / "x.nii.gz"),
                            "--method", "cg-sense"])
    assert_user_error(r, "for CT measurements")


def test_ct_simulation_is_noisy_unless_dose_0(tmp_path: Path) -> None:
    """A simulated CT scan carries Poisson noise at I0 = 1e5 photons per ray, as an MR one
    carries noise at SNR 30; ``--dose 0`` asks for noise-free line integrals."""
    hu = np.full((16, 16, 2), -1000.0, np.float32)
    hu[4:12, 4:12] = 0.0
    ref = tmp_path / "ct.nii.gz"
    save_volume(Volume(hu, np.diag([1.0, 1.0, 2.0, 1.0]), modality="CT", units="HU"), ref)
    sino = {}
    for label, flags in (("default", []), ("free", ["--dose", "0"])):
        out = tmp_path / f"{label}.h5"
        r = runner.invoke(app, ["simulate", str(ref), str(out), "--views", "12", *flags])
        assert r.exit_code == 0, r.output
        assert ("I0 1e+05 photons per ray" if label == "default" else "noise-free") in r.output
        m = read_measurement(out)
        assert m.acquisition["dose_i0"] == (1e5 if label == "default" else None)
        sino[label] = m.data
    # noise-free: rays through air only are exactly 0; with photon noise they scatter
    assert float(np.abs(sino["free"][:, :, :2]).max()) < 1e-6
    assert float(np.abs(sino["default"][:, :, :2]).max()) > 1e-4
    r = runner.invoke(app, ["simulate", str(ref), str(tmp_path / "x.h5"), "--dose", "-1"])
    assert_user_error(r, "--dose")
