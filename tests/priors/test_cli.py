"""``medrecon train`` end to end on CPU with the tiny config, and ``medrecon priors``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medrecon.cli.main import app
from medrecon.io import Volume, save_volume
from tests.priors.conftest import TINY_CONFIG

runner = CliRunner()


def _studies(tmp: Path) -> Path:
    d = tmp / "studies"
    rng = np.random.default_rng(0)
    for i, mod in enumerate(("MR", "CT", "MR")):
        data = rng.uniform(0, 1, (20, 20, 20)).astype(np.float32)
        data = data * 1000 - 1000 if mod == "CT" else data * 300
        save_volume(Volume(data, np.diag([2.0, 2.0, 2.0, 1.0]), modality=mod),
                    d / f"s{i}.nii.gz")
    return d


def test_train_end_to_end_on_nifti_files_then_resume_and_list(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--data", str(_studies(tmp_path)), "--config", str(TINY_CONFIG),
            "--out", str(run), "--set", "data.source=files", "--set", "data.val_fraction=0.34",
            "--set", "log.preview_every=2", "--steps", "2", "--device", "cpu"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "step 2" in r.output
    for name in ("config.yaml", "log.csv", "val.csv", "checkpoint/state.json",
                 "prior/tiny.json", "previews/step_0000002.png"):
        assert (run / name).is_file(), name
    assert len(list((run / "cache").glob("*.npy"))) == 3  # preprocessed volumes cached
    assert (run / "previews" / "step_0000002.png").read_bytes()[:4] == b"\x89PNG"
    # resume to 4 steps; the config comes from the run folder
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "studies"), "--out", str(run),
                            "--resume", "--steps", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 4
    r = runner.invoke(app, ["priors", str(run), "--json"])
    assert r.exit_code == 0, r.output
    listed = {d["name"]: d for d in json.loads(r.output)}
    assert listed["tiny"]["steps"] == 4 and listed["tiny"]["patch_size"] == [16, 16, 16]
    assert "default" in listed and listed["default"]["shipped"]
    r = runner.invoke(app, ["priors"])
    assert r.exit_code == 0 and "default" in r.output and "MR+CT" in r.output


def test_train_user_errors_are_one_sentence(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--config", str(TINY_CONFIG), "--out", str(tmp_path / "o"),
                            "--set", "data.source=files"])
    assert r.exit_code == 2 and "Error: Give training data" in r.output
    r = runner.invoke(app, ["train", "--config", str(tmp_path / "nope.yaml"), "--synthetic",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["train", "--config", str(TINY_CONFIG), "--out", str(tmp_path / "o"),
                            "--set", "optim.stepz=3"])
    assert r.exit_code == 2 and "stepz" in r.output
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--synthetic",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "either --data or --synthetic" in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_train_synthetic_heads_through_the_cli(tmp_path: Path) -> None:
    run = tmp_path / "syn"
    r = runner.invoke(app, ["train", "--synthetic", "--config", str(TINY_CONFIG), "--out",
                            str(run), "--steps", "1", "--set", "data.train_volumes=1",
                            "--set", "data.val_volumes=1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["config"]["data"]["source"] == "synthetic" and state["step"] == 1
    assert "synthetic" in (run / "config.yaml").read_text()
