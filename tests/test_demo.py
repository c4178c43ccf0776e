"""``medrecon demo`` end to end on a tiny grid with a tiny random-weight prior (CPU, seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from prior_factory import export_tiny_prior
from typer.testing import CliRunner

from medrecon.cli.main import app


@pytest.fixture(scope="module")
def tiny_prior_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_prior(tmp_path_factory.mktemp("prior"), "tiny-demo", patch=16, spacing_mm=8.0)


FILES = ("reference.nii.gz", "measurement.h5", "diffusion_mean.nii.gz",
         "diffusion_std.nii.gz", "figure.png")


def test_demo_api_both_modalities(tmp_path: Path, tiny_prior_path: Path) -> None:
    from medrecon.demo import run_demo
    from medrecon.io import load_volume
    from medrecon.io.measurement import read_measurement

    lines: list[str] = []
    out = tmp_path / "demo"
    res = run_demo(out, modality="both", device="cpu", samples=2, steps=3, seed=1,
                   prior=tiny_prior_path, size=16, baseline_iterations=10, progress=False,
                   echo=lines.append)
    for folder, baseline in (("mri", "baseline_l1-wavelet.nii.gz"), ("ct", "baseline_tv.nii.gz")):
        for name in (*FILES, baseline):
            assert (out / folder / name).is_file(), f"{folder}/{name} missing"
        ref = load_volume(out / folder / "reference.nii.gz")
        mean = load_volume(out / folder / "diffusion_mean.nii.gz")
        std = load_volume(out / folder / "diffusion_std.nii.gz")
        assert ref.shape == mean.shape == std.shape == (16, 16, 16)
        assert np.allclose(mean.affine, ref.affine)
        assert np.isfinite(std.data).all() and (std.data >= 0).all() and std.data.max() > 0
        assert read_measurement(out / folder / "measurement.h5").modality == ref.modality
        assert (out / folder / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # No staging folder is left behind.
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["modalities"]) == {"MRI", "CT"}
    for key, baseline in (("MRI", "l1-wavelet"), ("CT", "tv")):
        methods = doc["modalities"][key]["methods"]
        assert set(methods) == {baseline, "diffusion"}
        for m in methods.values():
            for metric in ("psnr", "ssim", "nmse", "hfen"):
                assert math.isfinite(m["metrics"][metric])
            assert math.isfinite(m["residual"])
        settings = doc["modalities"][key]["settings"]
        assert settings["shape"] == [16, 16, 16] and settings["steps"] == 3
        assert methods[baseline]["info"]["iterations"] == 10
        assert settings["samples"] == 2
        # The head comes from the held-out test split.
        assert settings["head_seed"] == 2_000_001
        cal = doc["modalities"][key]["diffusion_std"]["calibration_2std"]
        assert 0.0 <= cal <= 1.0
    # The numbers in the JSON are those of the returned result and the printed table.
    mri = res.results[0]
    assert doc["modalities"]["MRI"]["methods"]["diffusion"]["metrics"]["psnr"] == pytest.approx(
        mri.diffusion.metrics.volume["psnr"])
    assert any("diffusion - baseline" in line for line in lines)
    assert any("[MRI 4/5]" in line for line in lines)

    # The demo's diffusion is the one `reconstruct` path: the same call on the written
    # measurement gives the written mean and std.
    from medrecon.recon.base import ReconOptions
    from medrecon.reconstruct import reconstruct

    again = reconstruct(read_measurement(out / "mri" / "measurement.h5"), "diffusion",
                        ReconOptions(device="cpu", extra={
                            "prior": str(tiny_prior_path), "steps": 3, "samples": 2,
                            "seed": 1, "lam": 0.1, "guard": False}))  # the demo's fixed path
    assert again.std_volume is not None
    np.testing.assert_array_equal(again.volume.data,
                                  load_volume(out / "mri" / "diffusion_mean.nii.gz").data)
    np.testing.assert_array_equal(again.std_volume.data,
                                  load_volume(out / "mri" / "diffusion_std.nii.gz").data)


def test_demo_cli_rerun_replaces_only_its_own_files(tmp_path: Path,
                                                    tiny_prior_path: Path) -> None:
    out = tmp_path / "cli"
    (out / "mri").mkdir(parents=True)
    mine = out / "mri" / "my_notes.txt"
    mine.write_text("keep me")
    stale = out / "mri" / "figure.png"
    stale.write_bytes(b"old")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--modality", "mri",
                                      "--device", "cpu", "--samples", "2", "--steps", "2",
                                      "--size", "16", "--prior", str(tiny_prior_path),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Region (MRI):" in result.output and "L1-wavelet" in result.output
    assert "16x16x16 voxels" in result.output  # the chosen size is said
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["modalities"]) == {"MRI"}
    assert mine.read_text() == "keep me"
    assert stale.read_bytes()[:4] == b"\x89PNG"
    assert not (out / "ct").exists()


@pytest.mark.parametrize("args, message", [
    (["--modality", "pet"], "--modality must be mri, ct or both"),
    (["--samples", "1"], "at least 2 posterior samples"),
    (["--sampler", "ddpm"], "Unknown sampler"),
])
def test_demo_cli_user_errors(tmp_path: Path, tiny_prior_path: Path, args: list[str],
                              message: str) -> None:
    out = tmp_path / "bad"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--device", "cpu",
                                      "--prior", str(tiny_prior_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_demo_out_must_be_a_folder(tmp_path: Path, tiny_prior_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    result = CliRunner().invoke(app, ["demo", "--out", str(target), "--device", "cpu",
                                      "--prior", str(tiny_prior_path)])
    assert result.exit_code == 2
    assert "is a file" in result.output
    assert target.read_text() == "x"


def test_plan_defaults_per_device() -> None:
    from medrecon.demo import CPU_SHAPE, CPU_STEPS, GPU_SHAPE, GPU_STEPS, plan_demo

    cpu = plan_demo("both", device="cpu")
    assert [p.modality for p in cpu] == ["MR", "CT"]
    assert cpu[0].shape == CPU_SHAPE and cpu[0].steps == CPU_STEPS and cpu[0].samples == 3
    gpu = plan_demo("ct", device="cuda", steps=20)
    assert gpu[0].shape == GPU_SHAPE and gpu[0].steps == 20
    assert GPU_STEPS > CPU_STEPS
    # The calibration box fits inside the sampling budget of R = 8.
    from medrecon.demo import calibration_size

    assert calibration_size(64) ** 2 < 64 * 64 / 8
