"""Hostile and malformed input (issue 15 item 7): every case ends in one sentence and exit code
2, with nothing written, and without allocating what a file merely declares."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medrecon.cli.main import app
from medrecon.io import Volume
from tests.cli_assert import SIM, assert_user_error, files_in

runner = CliRunner()


def _huge(f: h5py.File) -> None:
    del f["data"]  # 582 TiB declared in a few bytes: chunked and never written
    f.create_dataset("data", shape=(8, 10**5, 10**5, 1000), dtype="complex64",
                     chunks=(1, 1, 64, 64))


def _strings(f: h5py.File) -> None:
    del f["data"]
    f.create_dataset("data", data=np.array([b"abc"] * 4))


def _version_text(f: h5py.File) -> None:
    f.attrs["format_version"] = "one"


def _fft_dims_int(f: h5py.File) -> None:
    op = json.loads(f.attrs["operator"])
    op["fft_dims"] = 3
    f.attrs["operator"] = json.dumps(op)


def _zero_affine(f: h5py.File) -> None:
    f["reference"]["affine"][...] = 0.0


def _singular_affine(f: h5py.File) -> None:
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    a[:3, 2] = a[:3, 0]  # two parallel voxel axes
    f["reference"]["affine"][...] = a


@pytest.mark.parametrize(("edit", "fragment"), [
    (_huge, "declares shape (8, 100000, 100000, 1000)"),
    (_strings, "not numbers"),
    (_version_text, "'format_version' must be an integer"),
    (_fft_dims_int, "fft_dims must be"),
    (_zero_affine, "zero or singular affine"),
    (_singular_affine, "zero or singular affine"),
])
def test_hostile_measurement_files_end_in_one_sentence(
        study: Path, tmp_path: Path, edit: Callable[[h5py.File], Any], fragment: str) -> None:
    bad = tmp_path / "bad.h5"
    shutil.copy(study / "m.h5", bad)
    with h5py.File(bad, "a") as f:
        edit(f)
    before = files_in(tmp_path)
    r = runner.invoke(app, ["reconstruct", str(bad), str(tmp_path / "r.nii.gz"),
                            "--method", "zero-filled"])
    assert_user_error(r, fragment)
    assert files_in(tmp_path) == before


def _nifti_with_sform(path: Path, data: np.ndarray, sform: np.ndarray) -> None:
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_sform(sform, 1)
    img.header.set_qform(None, 0)
    img.update_header = lambda: None  # type: ignore[method-assign]  # keep the bad sform
    nib.save(img, str(path))


@pytest.mark.parametrize("command", ["info", "simulate", "convert"])
@pytest.mark.parametrize("kind", ["zero", "singular", "rgb"])
def test_bad_nifti_is_refused_on_input(tmp_path: Path, command: str, kind: str) -> None:
    src = tmp_path / "in.nii.gz"
    data = np.ones((6, 6, 4), np.float32)
    if kind == "zero":
        _nifti_with_sform(src, data, np.zeros((4, 4)))
    elif kind == "singular":
        a = np.eye(4)
        a[2, 2] = 0.0
        _nifti_with_sform(src, data, a)
    else:
        rgb = np.zeros((6, 6, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(src))
    args = {"info": ["info", str(src)],
            "simulate": ["simulate", str(src), str(tmp_path / "m.h5"), *SIM],
            "convert": ["convert", str(src), str(tmp_path / "o.nii.gz")]}[command]
    r = runner.invoke(app, args)
    assert_user_error(r, "colour (RGB)" if kind == "rgb" else "zero or singular affine")
    assert files_in(tmp_path) == {"in.nii.gz"}


def test_simulate_api_refuses_a_singular_affine() -> None:
    from medrecon.errors import InputError
    from medrecon.simulate import simulate

    vol = Volume(np.ones((6, 6, 4), np.float32), np.diag([1.0, 1.0, 0.0, 1.0]), modality="MR")
    with pytest.raises(InputError, match="zero or singular affine"):
        simulate(vol)


@pytest.mark.parametrize(("side", "fragment"), [
    (60000, "more than half of this machine's memory"),  # would be 40 GiB of float32
    (16, "holds 128 bytes of pixel data"),  # 8x8 pixels under a 16x16 header
])
def test_dicom_rows_columns_not_matching_pixel_data(tmp_path: Path, side: int,
                                                    fragment: str) -> None:
    from tests.dicom_factory import edit, write_series

    files = write_series(tmp_path / "dcm", np.zeros((8, 8, 3), np.float32), np.eye(4))
    for f in files:
        edit(f, Rows=side, Columns=side)
    r = runner.invoke(app, ["convert", str(tmp_path / "dcm"), str(tmp_path / "o.nii.gz")])
    assert_user_error(r, fragment)
    assert files_in(tmp_path) == {"dcm"}


DEEP = "[" * 100_000 + "]" * 100_000


def _deep_safetensors(prior_json: Path) -> None:
    shard = prior_json.parent / json.loads(prior_json.read_text())["weights"][0]
    header = DEEP.encode()
    shard.write_bytes(len(header).to_bytes(8, "little") + header)


@pytest.mark.parametrize(("damage", "fragment"), [
    (lambda js: js.write_text(json.dumps({**json.loads(js.read_text()),
                                          "network": {**json.loads(js.read_text())["network"],
                                                      "channels": [65536]}})),
     "declare about"),
    (lambda js: js.write_text(DEEP), "nested more than 64 levels deep"),
    (_deep_safetensors, "nested more than 64 levels deep"),
])
def test_hostile_priorfiles_in(study: Path, tmp_path: Path, damage: Callable[[Path], None],
                             fragment: str) -> None:
    from tests.prior_factory import export_tiny_prior

    prior = export_tiny_prior(tmp_path / "prior")
    damage(prior)
    out = tmp_path / "out"
    out.mkdir()
    r = runner.invoke(app, ["reconstruct", str(study / "m.h5"), str(out / "r.nii.gz"),
                            "--method", "diffusion", "--prior", str(prior), "--steps", "1",
                            "--no-progress", "--device", "cpu"])
    assert_user_error(r, fragment)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("text", [DEEP, "a:\n" + "".join("  " * i + "b:\n" for i in range(1, 3000))])
def test_deeply_nested_config_is_refused(study: Path, tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "deep.yaml"
    cfg.write_text(text)
    r = runner.invoke(app, ["simulate", str(study / "ref.nii.gz"), str(tmp_path / "m.h5"),
                            "--config", str(cfg), *SIM])
    assert_user_error(r, "nested more than 64 levels deep")
    assert files_in(tmp_path) == {"deep.yaml"}


@pytest.mark.parametrize(("args", "fragment"), [
    (["--set", "optim.steps=[1"], "must be an integer"),
    (["--set", f"optim.steps={DEEP}"], "nested more than 64 levels deep"),
    (["--steps", "5", "--set", "optim.steps=7"], "optim.steps is set twice"),
    (["--set", "optim=3", "--set", "optim.steps=2"], "conflict"),
    (["--set", "optim"], "must look like section.key=value"),
])
def test_unparsable_or_conflicting_train_settings(tmp_path: Path, args: list[str],
                                                  fragment: str) -> None:
    r = runner.invoke(app, ["train", "-o", str(tmp_path / "run"), *args, "--device", "cpu"])
    assert_user_error(r, fragment)
    assert list(tmp_path.iterdir()) == []


def test_samples_beyond_memory_are_refused_before_sampling(study: Path, tmp_path: Path) -> None:
    from tests.prior_factory import export_tiny_prior

    prior = export_tiny_prior(tmp_path / "prior")
    out = tmp_path / "out"
    out.mkdir()
    r = runner.invoke(app, ["reconstruct", str(study / "m.h5"), str(out / "r.nii.gz"),
                            "--method", "diffusion", "--prior", str(prior), "--steps", "1",
                            "--samples", "100000000", "--no-progress", "--device", "cpu"])
    msg = assert_user_error(r, "100000000 posterior samples need about", "use at most")
    assert "Traceback" not in msg
    assert list(out.iterdir()) == []


def test_a_failed_last_rename_leaves_no_output_and_names_the_target(
        study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        if str(dst).endswith(".png"):  # the figure is renamed last
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    ref = str(study / "ref.nii.gz")
    r = runner.invoke(app, ["evaluate", ref, ref, "--json", str(tmp_path / "e.json"),
                            "--csv", str(tmp_path / "e.csv"), "--figure",
                            str(tmp_path / "e.png")])
    msg = assert_user_error(r, f"No space left on the device while writing {tmp_path / 'e.png'}")
    assert ".tmp" not in msg
    assert list(tmp_path.iterdir()) == []


def test_output_group_restores_what_a_failed_group_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from medrecon.io.atomic import atomic_file, output_group

    (tmp_path / "a.txt").write_text("old a")
    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        if str(dst).endswith("b.txt"):
            raise OSError(28, "No space left on device", str(src))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError) as info, output_group():
        for name in ("a.txt", "b.txt"):
            with atomic_file(tmp_path / name) as tmp:
                tmp.write_text("new")
    assert info.value.filename == str(tmp_path / "b.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old a"


@pytest.mark.parametrize(("args", "fragment"), [
    (["phantom", "{d}/p.nii.gz", "--size", "3"], "Invalid value for '--size'"),
    (["simulate", "{d}/in.nii.gz", "{d}/m.h5", "--frame", "-1"], "Invalid value for '--frame'"),
    (["phantom", "{d}/p.nii.gz", "--size", "many"], "Invalid value for '--size'"),
])
def test_option_range_errors_are_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    r = runner.invoke(app, [a.format(d=tmp_path) for a in args])
    assert_user_error(r, fragment)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Usage:" not in r.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["simulate", "reconstruct", "evaluate", "convert"])
def test_one_overwrite_policy(study: Path, tmp_path: Path, command: str) -> None:
    """Every command refuses to replace an existing output unless --overwrite, and never
    writes over its own input, --overwrite or not (issue 15 item 6)."""
    ref, m = str(study / "ref.nii.gz"), str(study / "m.h5")
    out = {"simulate": tmp_path / "o.h5", "reconstruct": tmp_path / "o.nii.gz",
           "evaluate": tmp_path / "o.json", "convert": tmp_path / "o.nii.gz"}[command]
    args = {"simulate": ["simulate", ref, str(out), *SIM],
            "reconstruct": ["reconstruct", m, str(out), "--method", "zero-filled"],
            "evaluate": ["evaluate", ref, ref, "--json", str(out)],
            "convert": ["convert", ref, str(out)]}[command]
    out.write_text("keep me")
    assert_user_error(runner.invoke(app, args), "already exists; use --overwrite to replace it")
    assert out.read_text() == "keep me"
    r = runner.invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 0 and out.read_bytes() != b"keep me"
    own = {"simulate": ["simulate", ref, ref, *SIM],
           "reconstruct": ["reconstruct", m, m, "--method", "zero-filled", "--format", "nifti"],
           "evaluate": ["evaluate", ref, ref, "--json", ref],
           "convert": ["convert", ref, ref]}[command]
    before = (study / "ref.nii.gz").read_bytes()
    r = runner.invoke(app, [*own, "--overwrite"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert (study / "ref.nii.gz").read_bytes() == before


def test_voxel_size_notice_comes_before_sampling(study: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15 item 9: the notice is a warning raised before the first network call."""
    import warnings

    import medrecon.sampling.api as api
    from medrecon.io.measurement import read_measurement
    from medrecon.priors import load_prior
    from tests.prior_factory import export_tiny_prior

    prior = load_prior(export_tiny_prior(tmp_path / "prior", spacing_mm=4.0))  # study: 2 mm
    seen: list[int] = []
    real = api.sample_problem

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(len(caught))  # warnings issued before sampling started
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "sample_problem", spy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = api.posterior_sample(read_measurement(study / "m.h5"), prior, steps=1,
                                   device="cpu", progress=True)
    voxel = [w for w in caught if "voxel size" in str(w.message)]
    assert seen == [1] and len(voxel) == 1
    assert "lies outside the" in res.info["warning"] and "prior 'tiny'" in res.info["warning"]
    # A caller's later run (the guard's): no second warning, the notice still in its info.
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        quiet = api.posterior_sample(read_measurement(study / "m.h5"), prior, steps=1,
                                     device="cpu", voxel_size_warning=False)
    assert not [w for w in again if "voxel size" in str(w.message)]
    assert quiet.info["warning"] == res.info["warning"]


def test_progress_bar_is_quiet_when_stderr_is_not_a_terminal(study: Path, tmp_path: Path) -> None:
    from tests.prior_factory import export_tiny_prior

    prior = export_tiny_prior(tmp_path / "prior")
    r = runner.invoke(app, ["reconstruct", str(study / "m.h5"), str(tmp_path / "r.nii.gz"),
                            "--method", "diffusion", "--prior", str(prior), "--steps", "2",
                            "--progress", "--device", "cpu", "--lam", "0.1", "--guard", "off"])
    assert r.exit_code == 0, r.output
    assert "diffusion (" not in r.stderr and "step" not in r.stderr, r.stderr
