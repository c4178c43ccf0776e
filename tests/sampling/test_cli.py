"""``medrecon reconstruct --method diffusion`` end to end on tiny MR and CT files (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from medrecon.cli.main import app


@pytest.mark.parametrize("which", ["mr", "ct"])
def test_cli_diffusion_writes_mean_and_std(which: str, mr_measurement, ct_measurement,
                                           tiny_prior_path, tmp_path) -> None:
    from medrecon.io import load_volume
    from medrecon.io.measurement import write_measurement

    m, vol = mr_measurement if which == "mr" else ct_measurement
    meas = write_measurement(m, tmp_path / f"{which}.h5")
    out, std = tmp_path / "recon.nii.gz", tmp_path / "spread.nii.gz"
    result = CliRunner().invoke(app, [
        "reconstruct", str(meas), str(out), "--method", "diffusion",
        "--prior", str(tiny_prior_path), "--sampler", "dds", "--steps", "3", "--samples", "2",
        "--seed", "0", "--device", "cpu", "--std-out", str(std), "--no-progress",
        "--guard", "off"])  # the sampler's own mean and std (the guard: tests/test_guard.py)
    assert result.exit_code == 0, result.output
    assert "residual" in result.output
    rec, spread = load_volume(out), load_volume(std)
    assert rec.shape == vol.shape and spread.shape == vol.shape
    assert np.allclose(rec.affine, vol.affine, atol=1e-4)
    assert np.isfinite(rec.data).all() and (spread.data >= 0).all()
    assert float(spread.data.max()) > 0


def test_cli_diffusion_options_rejected_for_classical(ct_measurement, tmp_path) -> None:
    from medrecon.io.measurement import write_measurement

    meas = write_measurement(ct_measurement[0], tmp_path / "ct.h5")
    result = CliRunner().invoke(app, ["reconstruct", str(meas), str(tmp_path / "o.nii.gz"),
                                      "--method", "fbp", "--sampler", "dps"])
    assert result.exit_code == 2
    assert "--sampler applies to --method diffusion only." in result.output
    result = CliRunner().invoke(app, ["reconstruct", str(meas), str(tmp_path / "o.nii.gz"),
                                      "--method", "diffusion", "--std-out",
                                      str(tmp_path / "s.nii.gz")])
    assert result.exit_code == 2
    assert "--samples 2 or more" in result.output
    assert not (tmp_path / "o.nii.gz").exists()


def test_cli_unknown_sampler(ct_measurement, tiny_prior_path, tmp_path) -> None:
    from medrecon.io.measurement import write_measurement

    meas = write_measurement(ct_measurement[0], tmp_path / "ct.h5")
    result = CliRunner().invoke(app, ["reconstruct", str(meas), str(tmp_path / "o.nii.gz"),
                                      "--method", "diffusion", "--prior", str(tiny_prior_path),
                                      "--sampler", "ddpm", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 2
    assert "Unknown sampler 'ddpm'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.parametrize("which", ["mr", "ct"])
def test_cli_diffusion_with_the_shipped_default_prior(which: str, mr_measurement, ct_measurement,
                                                      tmp_path) -> None:
    """The shipped prior loads offline and reconstructs a tiny file (one 64^3 patch, 1 step;
    a fixed weight and no guard, which would add several sampling runs)."""
    from medrecon.io import load_volume
    from medrecon.io.measurement import write_measurement

    m, vol = mr_measurement if which == "mr" else ct_measurement
    meas = write_measurement(m, tmp_path / f"{which}.h5")
    out = tmp_path / "recon.nii.gz"
    result = CliRunner().invoke(app, [
        "reconstruct", str(meas), str(out), "--method", "diffusion", "--steps", "1",
        "--lam", "0.1" if which == "mr" else "1", "--guard", "off", "--device", "cpu",
        "--no-progress"])
    assert result.exit_code == 0, result.output
    rec = load_volume(out)
    assert rec.shape == vol.shape and np.isfinite(rec.data).all()
