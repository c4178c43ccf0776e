"""``medrecon reconstruct-many`` from the CLI: folders and manifests in, one output per input
as ``reconstruct`` writes it, failures reported one line each with exit code 2, reruns skip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medrecon.cli.main import app
from medrecon.io import Volume, load_volume, save_volume
from medrecon.io.measurement import write_measurement
from medrecon.phantoms import shepp_logan_3d
from medrecon.simulate import MRISettings, SimulationConfig, simulate

runner = CliRunner()
SHAPE = (12, 10, 8)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
CG = ["--method", "cg-sense", "--iterations", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("many")
    cfg = SimulationConfig(mri=MRISettings(coils=2, acceleration=2.0, calibration=4))
    for i in range(3):
        vol = Volume((60 + 10 * i) * np.roll(shepp_logan_3d(SHAPE), i, axis=1), AFFINE,
                     modality="MR")
        save_volume(vol, d / f"ref{i}.nii.gz")
        write_measurement(simulate(vol, cfg), d / "meas" / f"s{i}.h5")
    return d


def test_folder_with_a_corrupt_file_then_rerun(data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"s{i}.h5").write_bytes((data / "meas" / f"s{i}.h5").read_bytes())
    (folder / "broken.h5").write_bytes(b"\x00garbage" * 20)
    out = tmp_path / "out"
    r = runner.invoke(app, ["reconstruct-many", str(folder), "--out-dir", str(out), *CG])
    assert r.exit_code == 2, r.output
    failed = [line for line in r.stderr.splitlines() if line.startswith("Failed: ")]
    assert len(failed) == 1 and "broken.h5" in failed[0], r.stderr
    assert "Traceback" not in r.output
    assert "4 inputs: 3 reconstructed, 0 already complete, 1 failed" in r.stdout
    for i in range(3):
        assert load_volume(out / f"s{i}.nii.gz").shape == SHAPE
        assert (out / f"s{i}.reconstruct.yaml").is_file()
    table = json.loads((out / "summary.json").read_text())
    assert [t["status"] for t in table] == ["failed", "ok", "ok", "ok"]  # sorted folder order
    # the same command again: the three complete outputs are skipped, the corrupt one fails again
    (folder / "broken.h5").unlink()
    r = runner.invoke(app, ["reconstruct-many", str(folder), "--out-dir", str(out), *CG])
    assert r.exit_code == 0, r.output
    assert "3 inputs: 0 reconstructed, 3 already complete, 0 failed" in r.stdout


def test_manifest_with_references_and_names(data: Path, tmp_path: Path) -> None:
    manifest = data / "list.csv"  # paths relative to the manifest's folder
    manifest.write_text("measurement,reference,output\nmeas/s0.h5,ref0.nii.gz,first\n"
                        "meas/s2.h5,,\n")
    out = tmp_path / "out"
    r = runner.invoke(app, ["reconstruct-many", str(manifest), "--out-dir", str(out), *CG])
    assert r.exit_code == 0, r.output
    table = json.loads((out / "summary.json").read_text())
    assert [t["output"] for t in table] == [str(out / "first.nii.gz"), str(out / "s2.nii.gz")]
    assert table[0]["psnr"] > 15 and 0 < table[0]["ssim"] <= 1 and table[0]["nmse"] < 1
    assert table[1]["psnr"] is None
    header, first, second = (out / "summary.csv").read_text().splitlines()
    assert header.split(",")[:9] == ["input", "output", "method", "status", "seconds",
                                     "residual", "psnr", "ssim", "nmse"]
    assert first.split(",")[6] != "" and second.split(",")[6] == ""


@pytest.mark.parametrize(("args", "fragment"), [
    (["--steps", "3"], "--steps applies to --method diffusion only"),
    (["--format", "png"], "Unknown output format 'png'"),
    (["--set", "nonsense"], "--set expects KEY=VALUE"),
    (["--lam", "0.1", "--method", "zero-filled"], "lam does not apply to the method zero-filled"),
])
def test_user_mistakes_are_one_sentence(data: Path, tmp_path: Path, args: list[str],
                                        fragment: str) -> None:
    cmd = ["reconstruct-many", str(data / "meas"), "--out-dir", str(tmp_path / "o"), *CG, *args]
    r = runner.invoke(app, cmd)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("Error: ") and fragment in r.stderr, r.stderr
    assert "Traceback" not in r.output
    assert not (tmp_path / "o" / "summary.csv").exists()


def test_shares_reconstructs_method_and_diffusion_options() -> None:
    """One definition serves both commands: same flags, defaults and help."""
    from typer.main import get_command

    commands = get_command(app).commands  # type: ignore[attr-defined]
    one = {p.name: p for p in commands["reconstruct"].params}
    many = {p.name: p for p in commands["reconstruct-many"].params}
    shared = ("method", "lam", "iterations", "tol", "settings", "prior", "sampler", "steps",
              "samples", "seed", "guard")
    for name in shared:
        a, b = one[name], many[name]
        assert (a.opts, a.default, a.help, a.required) == (
            b.opts, b.default, b.help, b.required), name
    assert "std_out" in one and "std_out" not in many
