"""Regressions from the new-user pass over every command (issue 7 item 4): each bad input ends
in one sentence and exit code 2, with nothing written, and each warning is one stderr line."""

from __future__ import annotations

import errno
import gzip
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medrecon.cli.common import user_errors
from medrecon.cli.main import app
from tests.cli_assert import SIM, assert_user_error, files_in
from tests.prior_factory import export_broken_priors, export_tiny_prior

runner = CliRunner()


# ---- file-system errors: one sentence, never a traceback ----------------------------------
@pytest.mark.parametrize("args", [
    ["phantom", "{d}/notes.txt/p.nii.gz", "--size", "8"],
    ["convert", "{d}/ref.nii.gz", "{d}/notes.txt/o.nii.gz"],
    ["reconstruct", "{d}/m.h5", "{d}/notes.txt/r.nii.gz", "--method", "zero-filled"],
    ["simulate", "{d}/ref.nii.gz", "{d}/notes.txt/m.h5", *SIM],
    ["evaluate", "{d}/ref.nii.gz", "{d}/ref.nii.gz", "--json", "{d}/notes.txt/e.json"],
])
def test_output_under_a_file_is_refused_before_any_work(study: Path, args: list[str]) -> None:
    before = files_in(study)
    r = runner.invoke(app, [a.format(d=study) for a in args])
    assert_user_error(r, "notes.txt is a file, not a folder")
    assert r.stdout == ""  # refused before anything was computed or printed
    assert files_in(study) == before


@pytest.mark.parametrize(("code", "fragment"), [
    (errno.EACCES, "Permission denied for /x/out.nii.gz"),
    (errno.EROFS, "read-only"),
    (errno.ENOSPC, "No space left"),
])
def test_os_errors_become_one_sentence(code: int, fragment: str) -> None:
    demo = typer.Typer()

    @demo.command()
    @user_errors
    def fail() -> None:
        raise OSError(code, "system text", "/x/out.nii.gz")

    assert_user_error(runner.invoke(demo, []), fragment)


# ---- inputs that are not what they seem ---------------------------------------------------
def test_corrupt_and_misnamed_volumes(study: Path, tmp_path: Path) -> None:
    (tmp_path / "cut.nii.gz").write_bytes((study / "ref.nii.gz").read_bytes()[:300])
    r = runner.invoke(app, ["info", str(tmp_path / "cut.nii.gz")])
    assert_user_error(r, "Cannot read NIfTI file", "export it again")
    assert len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "vol.dat").write_bytes(gzip.decompress((study / "ref.nii.gz").read_bytes()))
    assert_user_error(runner.invoke(app, ["info", str(tmp_path / "vol.dat")]),
                      "holds NIfTI data", "rename it")
    for cmd in (["info", str(study / "m.h5")],
                ["evaluate", str(study / "m.h5"), str(study / "ref.nii.gz")]):
        assert_user_error(runner.invoke(app, cmd), "is an HDF5 file (a measurement?)")
    assert_user_error(runner.invoke(app, ["info", str(study / "notes.txt")]),
                      "neither DICOM nor NIfTI")


def test_truncated_measurement(study: Path, tmp_path: Path) -> None:
    (tmp_path / "cut.h5").write_bytes((study / "m.h5").read_bytes()[:3000])
    r = runner.invoke(app, ["reconstruct", str(tmp_path / "cut.h5"), str(tmp_path / "r.nii.gz"),
                            "--method", "zero-filled"])
    assert_user_error(r, "is truncated or corrupt")
    assert not (tmp_path / "r.nii.gz").exists()


# ---- phantom -------------------------------------------------------------------------------
def test_phantom_options(tmp_path: Path) -> None:
    r = runner.invoke(app, ["phantom", str(tmp_path / "a.nii.gz"), "--size", "8",
                            "--modality", "mri", "--kind", "Shepp-Logan"])
    assert r.exit_code == 0, r.output
    for args, fragment in ((["--contrast", "T2"], "--contrast applies to --kind head"),
                           (["--seed", "3"], "--seed applies to --kind head only"),
                           (["--kind", "head", "--modality", "CT", "--contrast", "T2"],
                            "--contrast applies")):
        r = runner.invoke(app, ["phantom", str(tmp_path / "b.nii.gz"), "--size", "8", *args])
        assert_user_error(r, fragment)
    r = runner.invoke(app, ["phantom", str(tmp_path / "c.txt"), "--size", "8"])
    assert_user_error(r, "give a .nii or .nii.gz file")
    assert files_in(tmp_path) == {"a.nii.gz"}


# ---- simulate ------------------------------------------------------------------------------
@pytest.mark.parametrize(("ref", "args", "fragment"), [
    ("ref.nii.gz", ["--acceleration", "0.5"], "Error: --acceleration must be >= 1.0, got 0.5."),
    ("ref.nii.gz", ["--coils", "0"], "Error: --coils must be >= 1, got 0."),
    ("ref.nii.gz", ["--snr", "0"], "Error: --snr must be > 0"),
    ("ct.nii.gz", ["--views", "0"], "Error: --views must be >= 1, got 0."),
    ("ct.nii.gz", ["--acceleration", "4"], "--acceleration applies to MRI simulation, but this "
                                           "is a CT simulation (from the reference's modality)"),
    ("ref.nii.gz", ["--views", "30"], "--views applies to CT simulation"),
    ("ref.nii.gz", ["--config", "{d}"], "is a folder; give a YAML file"),
    ("ref.nii.gz", ["--calibration", "24", "--device", "cpu"],
     "The calibration region (24) is larger than the phase-encode plane (12, 8); use "
     "--calibration 8 or less."),
    ("ref.nii.gz", ["--mask", "random"], "use --dims 2d, or --mask poisson / gaussian for 3d"),
    ("ref.nii.gz", ["--dims", "2d", "--mask", "poisson"], "use --dims 3d, or --mask random"),
])
def test_simulate_flag_errors_name_the_flag(study: Path, tmp_path: Path, ref: str,
                                            args: list[str], fragment: str) -> None:
    args = [a.format(d=study) for a in args]
    r = runner.invoke(app, ["simulate", str(study / ref), str(tmp_path / "m.h5"), *args])
    assert_user_error(r, fragment)
    assert "<defaults>" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_mri_simulation_of_a_ct_volume_warns_in_one_line(study: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["simulate", str(study / "ct.nii.gz"), str(tmp_path / "m.h5"),
                            "--modality", "mri", *SIM])
    assert r.exit_code == 0, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Warning: The reference is a CT volume (HU), "
                                                   "but MRI simulation uses the magnitude"), r.stderr
    assert "use --modality ct" in lines[0] and (tmp_path / "m.h5").is_file()
    r = runner.invoke(app, ["simulate", str(study / "ref.nii.gz"), str(tmp_path / "n.h5"), *SIM])
    assert r.exit_code == 0 and r.stderr == ""  # MR from MR: silent


# ---- reconstruct ---------------------------------------------------------------------------
def test_reconstruct_option_errors(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.nii.gz"
    m = str(study / "m.h5")
    cases = [
        (["--method", "l1-wavelet", "--set", "wavelet=xyz"],
         "l1-wavelet options: unknown wavelet 'xyz'"),
        (["--method", "tv", "--set", "tv_axes=[7]"], "tv_axes must list distinct image axes"),
        (["--method", "zero-filled", "--lam", "1"], "lam does not apply to the method zero-filled"),
        (["--method", "zero-filled", "--iterations", "3"], "iterations does not apply"),
        (["--method", "diffusion", "--set", "tiling=foo"], "Unknown diffusion tiling 'foo'"),
        (["--method", "diffusion", "--set", "noise_std=abc"], "key 'noise_std' must be a number"),
        (["--method", "diffusion", "--prior", "w.safetensors"], "is a weights file"),
    ]
    for args, fragment in cases:
        r = runner.invoke(app, ["reconstruct", m, str(out), "--no-progress", "--device", "cpu",
                                *args])
        assert_user_error(r, fragment)
    # A misspelt option key names the allowed ones and the likely one (config.py's wording).
    for args, key, hint in ((["--method", "tv", "--set", "wavelt=db4"], "wavelt", "tv_axes"),
                            (["--method", "diffusion", "--set", "tilling=blend"], "tilling",
                             "Did you mean 'tiling'?")):
        r = runner.invoke(app, ["reconstruct", m, str(out), "--no-progress", "--device", "cpu",
                                *args])
        assert r.exit_code == 2 and "Traceback" not in r.output
        assert f"has an unknown key '{key}'" in r.stderr and hint in r.stderr
    r = runner.invoke(app, ["reconstruct", m, m, "--method", "zero-filled", "--format", "nifti"])
    assert_user_error(r, "is also an input")
    r = runner.invoke(app, ["reconstruct", m, str(study / "ref.nii.gz"), "--method",
                            "zero-filled"])
    assert_user_error(r, "ref.nii.gz already exists; use --overwrite to replace it.")
    r = runner.invoke(app, ["reconstruct", m, str(study / "ref.nii.gz"), "--method",
                            "zero-filled", "--overwrite"])  # never over the reference
    assert_user_error(r, "is the reference study this measurement was simulated from")
    r = runner.invoke(app, ["reconstruct", m, str(tmp_path / "r.h5"), "--method", "zero-filled"])
    assert_user_error(r, "Cannot write a volume to r.h5")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("samples", ["1", "2"])
def test_diffusion_warns_when_the_voxel_size_differs_from_the_prior(study: Path,
                                                                   tmp_path: Path,
                                                                   samples: str) -> None:
    prior = export_tiny_prior(tmp_path / "prior", spacing_mm=4.0)  # the study is at 2 mm
    r = runner.invoke(app, ["reconstruct", str(study / "m.h5"), str(tmp_path / "r.nii.gz"),
                            "--method", "diffusion", "--prior", str(prior), "--steps", "1",
                            "--no-progress", "--device", "cpu", "--lam", "0.1",
                            "--samples", samples])
    assert r.exit_code == 0, r.output
    # Once, although the guard samples two or three times (the training part: one chain, or
    # two with K > 1; then all the data).
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Warning: voxel size"), r.stderr
    assert "2 x 2 x 2 mm lies outside the 2.67-6 mm per axis that prior 'tiny'" in lines[0]
    assert "(1 step," in r.stdout


def test_diffusion_sampler_settings(study: Path, tmp_path: Path) -> None:
    prior = export_tiny_prior(tmp_path / "prior")
    base = ["reconstruct", str(study / "m.h5"), str(tmp_path / "r.nii.gz"), "--method",
            "diffusion", "--prior", str(prior), "--steps", "2", "--no-progress", "--device", "cpu",
            "--overwrite"]
    r = runner.invoke(app, [*base, "--lam", "0.5", "--set", "eta=0.5", "--set", "cg_iters=2"])
    assert r.exit_code == 0, r.output
    assert "(2 steps, lam 0.5," in r.stdout
    r = runner.invoke(app, base)  # the default: lam chosen around MR 0.1, then the guard
    assert r.exit_code == 0, r.output
    assert "Self-tuned: lam auto = " in r.stdout and "0.025, 0.1, 0.4" in r.stdout
    assert sum(line.startswith("Guard: ") for line in r.stdout.splitlines()) == 1
    r = runner.invoke(app, [*base, "--set", "eta=2"])
    assert_user_error(r, "key 'eta' must be <= 1.0, got 2.")
    r = runner.invoke(app, [*base, "--set", "cg_iters=0"])
    assert_user_error(r, "key 'cg_iters' must be >= 1, got 0.")
    r = runner.invoke(app, [*base, "--lam", "0"])
    assert_user_error(r, "key 'lam' must be > 0.0, got 0.0.")
    r = runner.invoke(app, [*base, "--sampler", "diffpir", "--set", "zeta=3"])
    assert_user_error(r, "DiffPIR's zeta must lie in [0, 1], got 3.")


# ---- evaluate ------------------------------------------------------------------------------
def test_evaluate_errors(study: Path, tmp_path: Path) -> None:
    ref = str(study / "ref.nii.gz")
    r = runner.invoke(app, ["evaluate", str(study / "ct.nii.gz"), ref])
    assert_user_error(r, "The reconstruction is CT (HU) but the reference is MR (a.u.)")
    r = runner.invoke(app, ["evaluate", ref, ref, "--csv", ref])
    assert_user_error(r, "--csv", "is also an input")
    r = runner.invoke(app, ["evaluate", ref, ref, "--json", str(tmp_path / "x"), "--csv",
                            str(tmp_path / "x")])
    assert_user_error(r, "--json and --csv name the same file")
    r = runner.invoke(app, ["evaluate", ref, ref, "--window", "0", "1"])
    assert_user_error(r, "add --figure")
    r = runner.invoke(app, ["evaluate", ref, ref, "--window", "1", "0", "--figure",
                            str(tmp_path / "f.png")])
    assert_user_error(r, "LOW < HIGH")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_ct_figure_uses_the_soft_tissue_window(study: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import medrecon.report

    seen: dict[str, object] = {}

    def fake(volumes: object, path: Path, **kwargs: object) -> Path:
        seen.update(kwargs)
        return Path(path)

    monkeypatch.setattr(medrecon.report, "orthogonal_slices_figure", fake)
    ct = str(study / "ct.nii.gz")
    r = runner.invoke(app, ["evaluate", ct, ct, "--figure", str(tmp_path / "f.png")])
    assert r.exit_code == 0, r.output
    assert seen["window"] == (-160.0, 240.0)
    assert "Grey window -160 to 240 HU" in str(seen["footnote"])
    assert "data range L = " in str(seen["footnote"])


# ---- train and priors ----------------------------------------------------------------------
TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "prior" / "tiny.yaml"


def test_train_refuses_data_the_config_would_ignore(study: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--config", str(TINY_CONFIG), "--data",
                            str(study / "ref.nii.gz"), "--out", str(tmp_path / "run")])
    assert_user_error(r, "--data would be ignored", "data.source 'phantom'")
    r = runner.invoke(app, ["train", "--synthetic", "--out", str(study / "notes.txt")])
    assert_user_error(r, "--out", "is a file; give a folder name")
    assert list(tmp_path.iterdir()) == []


def test_train_passes_the_dist_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medrecon.priors.train as train_module

    seen: dict = {}

    def fake_train(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise train_module.InputError("stop here.")

    monkeypatch.setattr(train_module, "train", fake_train)
    r = runner.invoke(app, ["train", "--config", str(TINY_CONFIG), "--out",
                            str(tmp_path / "run"), "--dist-timeout", "2.5"])
    assert_user_error(r, "stop here.")
    assert seen["dist_timeout"] == 2.5


def test_failed_training_leaves_no_run_folder(study: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--config", str(TINY_CONFIG), "--set", "data.source=files",
                            "--data", str(bad), "--out", str(run), "--device", "cpu"])
    assert_user_error(r)
    assert not run.exists()


def test_training_on_one_corrupt_study_names_it(study: Path, tmp_path: Path) -> None:
    import hashlib

    def held_out(i: int) -> bool:  # the hash split puts this path into validation
        p = (tmp_path / f"s{i}.nii.gz").resolve()
        return int(hashlib.sha1(str(p).encode()).hexdigest()[:12], 16) / 16**12 < 0.1

    bad = tmp_path / f"s{next(i for i in range(10_000) if held_out(i))}.nii.gz"
    bad.write_bytes((study / "ref.nii.gz").read_bytes()[:300])  # a truncated NIfTI
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--config", str(TINY_CONFIG), "--set", "data.source=files",
                            "--data", str(bad), "--out", str(run), "--device", "cpu"])
    assert_user_error(r, f"Cannot read NIfTI file {bad}")
    assert not run.exists()


def test_priors_refuses_files_that_are_not_priors(study: Path, tmp_path: Path) -> None:
    assert_user_error(runner.invoke(app, ["priors", str(study / "notes.txt")]),
                      "is not a medrecon prior description")
    (tmp_path / "p.json").write_text(json.dumps({"format": "medrecon-prior"}))
    assert_user_error(runner.invoke(app, ["priors", str(tmp_path / "p.json")]),
                      "lacks the prior field 'name'")


@pytest.fixture(scope="module")
def broken_priors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good/ and three broken priors (corrupt NAME.json, weights missing, weights truncated),
    and model.bin (random bytes)."""
    return export_broken_priors(tmp_path_factory.mktemp("broken_priors"))


@pytest.mark.parametrize(("prior", "fragment"), [
    ("corrupt", "corrupt.json is corrupt (invalid JSON"),
    ("model.bin", "model.bin is a weights file, not a prior description"),
    ("missing", "missing.safetensors of prior missing.json is missing"),
    ("trunc", "trunc.safetensors of prior trunc.json is unreadable (truncated"),
])
def test_broken_priors_are_one_sentence_everywhere(study: Path, tmp_path: Path,
                                                   broken_priors: Path, prior: str,
                                                   fragment: str) -> None:
    p = str(broken_priors / prior)
    r = runner.invoke(app, ["reconstruct", str(study / "m.h5"), str(tmp_path / "r.nii.gz"),
                            "--method", "diffusion", "--prior", p, "--steps", "1",
                            "--device", "cpu", "--no-progress"])
    assert_user_error(r, fragment)
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--prior", p, "--size", "8",
                            "--device", "cpu", "--no-progress"])
    assert_user_error(r, fragment)
    if prior in ("corrupt", "model.bin"):  # listing an unusable path is an error too
        assert_user_error(runner.invoke(app, ["priors", p]), fragment)
    assert list(tmp_path.iterdir()) == []


def test_priors_marks_missing_and_truncated_weights(broken_priors: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("MEDRECON_PRIORS", os.pathsep.join(
        str(broken_priors / n) for n in ("good", "corrupt", "missing", "trunc")))
    r = runner.invoke(app, ["priors"])
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert "[" not in rows["good"]
    assert rows["missing"].endswith("[weights missing: not usable]")
    assert rows["trunc"].endswith("[weights unreadable: not usable]")
    assert rows["corrupt"].endswith("[description corrupt: not usable]")
    r = runner.invoke(app, ["priors", "--json", str(broken_priors / "trunc")])
    doc = {d["name"]: d["problem"] for d in json.loads(r.stdout)}
    assert doc["trunc"] == "weights unreadable" and doc["good"] is None
