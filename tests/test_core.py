"""Tests of the lead-owned core: Volume, atomic writes, the LinearOperator base, phantoms, CLI shell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medrecon.io import Volume, load_volume, save_volume
from medrecon.io.atomic import atomic_dir, atomic_file
from medrecon.operators.base import Identity, LinearOperator, adjoint_mismatch
from medrecon.phantoms import SHEPP_LOGAN_3D, ellipsoid_phantom, shepp_logan_3d


def test_volume_geometry_properties() -> None:
    affine = np.diag([-0.5, -0.7, 2.0, 1.0])
    vol = Volume(np.zeros((4, 5, 6)), affine, modality="CT", units="HU")
    assert vol.data.dtype == np.float32
    assert vol.shape == (4, 5, 6)
    assert vol.spacing == pytest.approx((0.5, 0.7, 2.0))
    assert vol.orientation == "LPS"
    other = vol.with_data(np.ones((4, 5, 6)))
    assert other.same_geometry(vol) and other.modality == "CT"
    with pytest.raises(ValueError):
        vol.with_data(np.ones((4, 5, 7)))
    with pytest.raises(ValueError):
        Volume(np.zeros((4, 5)), affine)


def test_atomic_file_keeps_target_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_dir_replaces_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "series"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_nifti_round_trip_keeps_affine_and_metadata(tmp_path: Path, rng: np.random.Generator) -> None:
    a = np.eye(4)
    a[:3, :3] = np.array([[0.9, 0.1, 0.0], [-0.1, 0.9, 0.05], [0.0, -0.05, 2.5]])
    a[:3, 3] = [10.0, -20.0, 5.5]
    vol = Volume(rng.normal(size=(5, 6, 7)), a, modality="MR", units="a.u.",
                 series_description="T1 test")
    path = save_volume(vol, tmp_path / "v.nii.gz")
    back = load_volume(path)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-6)
    assert (back.modality, back.units, back.series_description) == ("MR", "a.u.", "T1 test")


def test_nifti_4d_needs_a_frame(tmp_path: Path) -> None:
    import nibabel as nib

    from medrecon.errors import InputError

    path = tmp_path / "four.nii"
    nib.save(nib.Nifti1Image(np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5),
                             np.eye(4)), str(path))
    with pytest.raises(InputError, match="4D with 5 frames"):
        load_volume(path)
    frame = load_volume(path, frame=3)
    assert frame.shape == (2, 3, 4)
    assert frame.data[0, 0, 0] == 3.0
    with pytest.raises(InputError, match="out of range"):
        load_volume(path, frame=5)


class _Matrix(LinearOperator):
    def __init__(self, m: torch.Tensor) -> None:
        super().__init__((m.shape[1],), (m.shape[0],))
        self.m = m

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.m.T

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.m.conj()


def test_linear_operator_algebra(generator: torch.Generator) -> None:
    a = _Matrix(torch.randn(5, 3, dtype=torch.complex128, generator=generator))
    b = _Matrix(torch.randn(3, 4, dtype=torch.complex128, generator=generator))
    ab = a @ b
    assert (ab.ishape, ab.oshape) == ((4,), (5,))
    for op in (a, a.H, ab, ab.H, 2.5 * ab, Identity((4,))):
        assert adjoint_mismatch(op) < 1e-12
    x = torch.randn(4, dtype=torch.complex128, generator=generator)
    torch.testing.assert_close(ab(x), a.m @ (b.m @ x))
    torch.testing.assert_close((2.0 * ab).normal(x), 4.0 * ab.H(ab(x)))
    assert a.H.H is a
    with pytest.raises(ValueError, match="must end in shape"):
        a(torch.zeros(4, dtype=torch.complex128))
    with pytest.raises(ValueError, match="cannot compose"):
        _ = a @ a


def test_broken_adjoint_is_detected(generator: torch.Generator) -> None:
    class Broken(_Matrix):
        def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
            return y @ self.m  # missing conjugate

    op = Broken(torch.randn(5, 3, dtype=torch.complex128, generator=generator))
    assert adjoint_mismatch(op) > 1e-3


def test_phantom_values_and_partial_volume() -> None:
    p = shepp_logan_3d((32, 32, 32))
    assert p.shape == (32, 32, 32)
    assert p.max() == pytest.approx(1.0)
    assert p[0, 0, 0] == 0.0  # outside the head
    assert p[16, 16, 16] > 0.0
    # Oversampling approximates the volume integral of the outer shell.
    outer = SHEPP_LOGAN_3D[:1]
    fine = ellipsoid_phantom((24, 24, 24), outer, oversample=4)
    expected = 4.0 / 3.0 * np.pi * np.prod(outer[0].axes) / 8.0 * 24**3
    assert fine.sum() == pytest.approx(expected, rel=0.02)


def test_cli_version_help_and_phantom(tmp_path: Path) -> None:
    from medrecon import __version__
    from medrecon.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    res = runner.invoke(app, ["phantom", str(tmp_path / "p.nii.gz"), "--size", "16",
                              "--modality", "CT"])
    assert res.exit_code == 0, res.output
    vol = load_volume(tmp_path / "p.nii.gz")
    assert vol.shape == (16, 16, 16) and vol.units == "HU"
    assert vol.data.min() == pytest.approx(-1000.0) and vol.data.max() == pytest.approx(1000.0)
    res = runner.invoke(app, ["phantom", str(tmp_path / "q.nii.gz"), "--modality", "PET"])
    assert res.exit_code == 2
    assert "Error: --modality must be MR or CT" in res.output
    assert "Traceback" not in res.output


def test_cli_phantom_head(tmp_path: Path) -> None:
    from medrecon.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["phantom", str(tmp_path / "h.nii.gz"), "--kind", "head",
                              "--size", "24", "--spacing", "8", "--modality", "CT"])
    assert res.exit_code == 0, res.output
    vol = load_volume(tmp_path / "h.nii.gz")
    assert vol.shape == (24, 24, 24) and vol.units == "HU"
    assert vol.data.min() < -900.0 and vol.data.max() > 300.0  # air and bone
    res = runner.invoke(app, ["phantom", str(tmp_path / "x.nii.gz"), "--kind", "cube"])
    assert res.exit_code == 2 and "--kind must be" in res.output
