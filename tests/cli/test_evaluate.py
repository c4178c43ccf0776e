"""``medrecon evaluate``: table, JSON, CSV and figure outputs, DICOM input, and every error path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from cli_assert import assert_user_error as _assert_user_error
from dicom_factory import write_series
from typer.testing import CliRunner, Result

from medrecon.cli.main import app
from medrecon.evaluation import foreground_mask
from medrecon.io import Volume, save_volume
from medrecon.metrics import evaluate_volumes
from medrecon.phantoms import shepp_logan_3d

runner = CliRunner()
SHAPE = (32, 28, 12)
AFFINE = np.array([[-1.5, 0, 0, 20.0], [0, -1.5, 0, 30.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]])


def assert_user_error(result: Result, *fragments: str) -> str:
    return _assert_user_error(result, *fragments, endings=(".",))


@pytest.fixture
def volumes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ref = shepp_logan_3d(SHAPE)
    rec = (ref + 0.02 * rng.standard_normal(SHAPE)).astype(np.float32)
    return rec, ref


@pytest.fixture
def files(tmp_path: Path, volumes: tuple[np.ndarray, np.ndarray]) -> tuple[Path, Path]:
    rec, ref = volumes
    r = save_volume(Volume(rec, AFFINE, modality="MR"), tmp_path / "rec.nii.gz")
    f = save_volume(Volume(ref, AFFINE, modality="MR"), tmp_path / "ref.nii")
    return r, f


def test_table_json_csv_figure(tmp_path: Path, files: tuple[Path, Path],
                               volumes: tuple[np.ndarray, np.ndarray]) -> None:
    rec_p, ref_p = files
    out = tmp_path / "out"
    res = runner.invoke(app, ["evaluate", str(rec_p), str(ref_p), "--json", str(out / "m.json"),
                              "--csv", str(out / "m.csv"), "--figure", str(out / "f.png")])
    assert res.exit_code == 0, res.output
    expected = evaluate_volumes(*volumes)
    # The table states the data range and the region and shows the volume values.
    assert f"Data range: {expected.data_range:.6g} (reference max - min)" in res.stdout
    assert f"whole volume ({np.prod(SHAPE)} voxels)" in res.stdout
    assert f"{expected.volume['psnr']:.2f}" in res.stdout
    assert f"{expected.volume['ssim']:.4f}" in res.stdout
    assert "per slice along k (12 slices)" in res.stdout

    doc = json.loads((out / "m.json").read_text())
    assert doc["inputs"] == {"recon": str(rec_p), "reference": str(ref_p)}
    assert doc["data_range"] == pytest.approx(expected.data_range)
    assert doc["region"].startswith("whole volume")
    for name in ("psnr", "ssim", "nmse", "hfen"):
        assert doc["volume"][name] == pytest.approx(expected.volume[name], rel=1e-9)
    assert len(doc["slices"]) == SHAPE[2]
    assert doc["slices"][5]["psnr"] == pytest.approx(expected.slices[5]["psnr"], rel=1e-9)

    with (out / "m.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slice"] for r in rows] == [str(k) for k in range(SHAPE[2])] + ["volume"]
    assert float(rows[-1]["nmse"]) == pytest.approx(expected.volume["nmse"], rel=1e-8)
    assert float(rows[3]["hfen"]) == pytest.approx(expected.slices[3]["hfen"], rel=1e-8)

    from matplotlib.image import imread

    img = imread(str(out / "f.png"))
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
    assert sorted(p.name for p in out.iterdir()) == ["f.png", "m.csv", "m.json"]  # no temps


def test_mask_auto_file_and_data_range(tmp_path: Path, files: tuple[Path, Path],
                                       volumes: tuple[np.ndarray, np.ndarray]) -> None:
    rec_p, ref_p = files
    rec, ref = volumes
    res = runner.invoke(app, ["evaluate", str(rec_p), str(ref_p), "--mask", "auto",
                              "--data-range", "2", "--json", str(tmp_path / "a.json")])
    assert res.exit_code == 0, res.output
    auto = foreground_mask(ref)
    expected = evaluate_volumes(rec, ref, mask=auto, data_range=2.0)
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["region_voxels"] == int(auto.sum()) < np.prod(SHAPE)
    assert doc["data_range"] == 2.0 and doc["data_range_source"] == "user"
    assert doc["volume"]["psnr"] == pytest.approx(expected.volume["psnr"], rel=1e-9)
    assert "auto foreground mask" in res.stdout and "Data range: 2 (user)" in res.stdout

    box = np.zeros(SHAPE, dtype=np.float32)
    box[8:24, 6:20, 2:10] = 1
    mask_p = save_volume(Volume(box, AFFINE), tmp_path / "mask.nii.gz")
    res = runner.invoke(app, ["evaluate", str(rec_p), str(ref_p), "--mask", str(mask_p),
                              "--csv", str(tmp_path / "b.csv"), "--slice-axis", "0"])
    assert res.exit_code == 0, res.output
    expected = evaluate_volumes(rec, ref, mask=box > 0, slice_axis=0)
    with (tmp_path / "b.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == SHAPE[0] + 1 and rows[0]["voxels"] == "0" and rows[0]["psnr"] == "nan"
    assert float(rows[-1]["ssim"]) == pytest.approx(expected.volume["ssim"], rel=1e-8)
    assert "mask (1792 of" in res.stdout and "per slice along i (16 of 32 slices" in res.stdout


def test_identical_volumes_give_infinite_psnr(tmp_path: Path, files: tuple[Path, Path]) -> None:
    _, ref_p = files
    res = runner.invoke(app, ["evaluate", str(ref_p), str(ref_p), "--json",
                              str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert " inf " in res.stdout
    doc = json.loads((tmp_path / "s.json").read_text())  # strict JSON: inf written as null
    assert doc["volume"]["psnr"] is None and doc["volume"]["ssim"] == pytest.approx(1.0)


def test_dicom_inputs_with_series_selection(tmp_path: Path,
                                            volumes: tuple[np.ndarray, np.ndarray]) -> None:
    rec, ref = volumes
    study = tmp_path / "study"
    # Both series in one folder: --series picks the reference, --recon-series the recon.
    write_series(study, ref, AFFINE, series_uid="1.2.3.1", description="ref", prefix="a",
                 slope=1 / 4096)
    write_series(study, rec, AFFINE, series_uid="1.2.3.2", description="rec", prefix="b",
                 slope=1 / 4096, intercept=-0.1)
    res = runner.invoke(app, ["evaluate", str(study), str(study), "--series", "1.2.3.1",
                              "--recon-series", "1.2.3.2", "--json", str(tmp_path / "d.json")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "d.json").read_text())
    expected = evaluate_volumes(rec, ref)
    # Values quantised by the rescale slope: PSNR within a few hundredths of a dB.
    assert doc["volume"]["psnr"] == pytest.approx(expected.volume["psnr"], abs=0.05)
    # Without a series choice the folder is ambiguous: the reader's error is passed on.
    res = runner.invoke(app, ["evaluate", str(study), str(study)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    # NIfTI reference next to a DICOM recon: --series applies to the DICOM input only.
    ref_p = save_volume(Volume(ref, AFFINE), tmp_path / "ref.nii.gz")
    res = runner.invoke(app, ["evaluate", str(study), str(ref_p), "--series", "1.2.3.2"])
    assert res.exit_code == 0, res.output


def test_error_paths(tmp_path: Path, files: tuple[Path, Path],
                     volumes: tuple[np.ndarray, np.ndarray]) -> None:
    rec_p, ref_p = files
    rec, ref = volumes
    outs = ["--json", str(tmp_path / "e.json"), "--csv", str(tmp_path / "e.csv"),
            "--figure", str(tmp_path / "e.png")]

    def run(*args: str) -> Result:
        return runner.invoke(app, ["evaluate", *args, *outs])

    small = save_volume(Volume(rec[:, :, :-1], AFFINE), tmp_path / "small.nii.gz")
    assert_user_error(run(str(small), str(ref_p)), "shape (32, 28, 11)", "(32, 28, 12)")

    moved = AFFINE.copy()
    moved[0, 3] += 0.5
    shifted = save_volume(Volume(rec, moved), tmp_path / "shifted.nii.gz")
    assert_user_error(run(str(shifted), str(ref_p)), "different grids", "0.5 mm")

    wrong = save_volume(Volume(np.ones((4, 4, 4)), np.eye(4)), tmp_path / "m4.nii.gz")
    assert_user_error(run(str(rec_p), str(ref_p), "--mask", str(wrong)), "mask has shape")

    empty = save_volume(Volume(np.zeros(SHAPE), AFFINE), tmp_path / "empty.nii.gz")
    assert_user_error(run(str(rec_p), str(ref_p), "--mask", str(empty)), "mask is empty")

    assert_user_error(run(str(rec_p), str(ref_p), "--mask", str(tmp_path / "nope.nii")),
                      "does not exist")

    const = save_volume(Volume(np.full(SHAPE, 3.0), AFFINE), tmp_path / "const.nii.gz")
    assert_user_error(run(str(rec_p), str(const)), "constant", "data range")
    assert_user_error(run(str(rec_p), str(const), "--mask", "auto"), "constant")
    # ... while an explicit data range makes a constant reference usable.
    ok = runner.invoke(app, ["evaluate", str(rec_p), str(const), "--data-range", "1"])
    assert ok.exit_code == 0, ok.output

    assert_user_error(run(str(rec_p), str(ref_p), "--data-range", "0"), "positive")
    assert_user_error(run(str(tmp_path / "missing.nii"), str(ref_p)), "does not exist")
    assert_user_error(runner.invoke(app, ["evaluate", str(rec_p), str(ref_p),
                                          "--figure", str(tmp_path / "f.jpg")]), ".png")
    nan = rec.copy()
    nan[0, 0, 0] = np.nan
    nan_p = save_volume(Volume(nan, AFFINE), tmp_path / "nan.nii.gz")
    assert_user_error(run(str(nan_p), str(ref_p)), "NaN")
    # Nothing was written by any failing run.
    assert not any((tmp_path / n).exists() for n in ("e.json", "e.csv", "e.png"))
    assert not list(tmp_path.glob(".*tmp*"))


def test_several_reconstructions_and_a_std_map_in_one_figure(
        tmp_path: Path, files: tuple[Path, Path], volumes: tuple[np.ndarray, np.ndarray],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import medrecon.report

    rec_p, ref_p = files
    rec, ref = volumes
    worse = save_volume(Volume(ref + 0.1, AFFINE, modality="MR"), tmp_path / "worse.nii.gz")
    std = save_volume(Volume(np.full(SHAPE, 0.02), AFFINE), tmp_path / "std.nii.gz")
    seen: dict[str, object] = {}
    real = medrecon.report.orthogonal_slices_figure

    def spy(volumes: dict[str, np.ndarray], path: Path, **kwargs: object) -> Path:
        seen.update(kwargs, volumes=volumes)
        return real(volumes, path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(medrecon.report, "orthogonal_slices_figure", spy)
    res = runner.invoke(app, ["evaluate", str(rec_p), str(worse), str(ref_p), "--std", str(std),
                              "--figure", str(tmp_path / "f.png"), "--json",
                              str(tmp_path / "m.json"), "--csv", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("Reconstruction: ") == 2 and res.stdout.count("PSNR [dB]") == 2
    assert list(seen["volumes"]) == ["Reference", "rec.nii.gz", "worse.nii.gz"]  # type: ignore[arg-type]
    assert list(seen["std"]) == ["Std"]  # type: ignore[arg-type]
    assert (tmp_path / "f.png").stat().st_size > 0
    doc = json.loads((tmp_path / "m.json").read_text())
    assert [d["inputs"]["recon"] for d in doc["results"]] == [str(rec_p), str(worse)]
    expected = [evaluate_volumes(rec, ref), evaluate_volumes(ref + 0.1, ref)]
    for d, e in zip(doc["results"], expected, strict=True):
        assert d["volume"]["psnr"] == pytest.approx(e.volume["psnr"], rel=1e-6)
    with (tmp_path / "m.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * (SHAPE[2] + 1) and rows[-1]["recon"] == str(worse)
    # two reconstructions, one std map: whose it is is unknown, so only the figure shows it
    assert "shown in the figure only" in res.stderr and "Std map:" not in res.stdout
    assert "std_map" not in doc["results"][0]
    res = runner.invoke(app, ["evaluate", str(rec_p), str(worse), str(ref_p), "--std", str(std)])
    assert_user_error(res, "Give one --std per reconstruction", "or add --figure")
    res = runner.invoke(app, ["evaluate", str(ref_p)])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_std_map_coverage_in_table_json_and_csv(
        tmp_path: Path, files: tuple[Path, Path], volumes: tuple[np.ndarray, np.ndarray]) -> None:
    """A std map per reconstruction: the share of voxels whose error lies within 1 and 2 std
    (against a calibrated map's 68.3 / 95.4 %) and the map's rms over the error's, in the
    table, the JSON and the CSV (per slice); each map scores its own reconstruction."""
    from medrecon.metrics import std_map_check

    rec_p, ref_p = files
    rec, ref = volumes
    worse = save_volume(Volume(ref + 0.1, AFFINE, modality="MR"), tmp_path / "worse.nii.gz")
    std = np.full(SHAPE, 0.02, np.float32)  # the noise level of ``rec``: calibrated for it
    sp = save_volume(Volume(std, AFFINE), tmp_path / "std.nii.gz")
    res = runner.invoke(app, ["evaluate", str(rec_p), str(worse), str(ref_p), "--std", str(sp),
                              "--std", str(sp), "--json", str(tmp_path / "m.json"),
                              "--csv", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    mine = std_map_check(rec, std, ref)["volume"]
    assert mine["coverage_2std"] == pytest.approx(0.954, abs=0.01)
    assert f"<= 2 std {100 * mine['coverage_2std']:.1f} %" in res.stdout
    assert "<= 2 std 0.0 %" in res.stdout  # worse is 0.1 off everywhere: 5 std
    assert "(a calibrated Gaussian map: 68.3 / 95.4 %)" in res.stdout
    doc = json.loads((tmp_path / "m.json").read_text())
    first, second = doc["results"]
    assert first["inputs"]["std"] == str(sp)
    assert first["std_map"]["volume"]["coverage_2std"] == pytest.approx(mine["coverage_2std"])
    assert second["std_map"]["volume"]["coverage_2std"] == 0.0
    assert "coverage_<k>std" in doc["metric_definitions"]
    with (tmp_path / "m.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[SHAPE[2]]["coverage_2std"]) == pytest.approx(mine["coverage_2std"])
    assert rows[SHAPE[2]]["slice"] == "volume" and float(rows[0]["coverage_1std"]) > 0.5
