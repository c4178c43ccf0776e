"""fastMRI import: axes, mask, geometry, no coil maps, and the refused files."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from medrecon.errors import MeasurementError
from medrecon.io.fastmri import is_fastmri_file, read_fastmri
from medrecon.io.measurement import read_measurement

ISMRMRD = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <encoding>
    <encodedSpace>
      <matrixSize><x>{nx}</x><y>{ny}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fx}</x><y>{fy}</y><z>3.0</z></fieldOfView_mm>
    </encodedSpace>
  </encoding>
</ismrmrdHeader>"""


def _fastmri(path: Path, rng: np.random.Generator, coils: int | None = 4, mask: bool = True,
             header: bool = True) -> np.ndarray:
    slices, nx, ny = 3, 12, 10
    shape = (slices, coils, nx, ny) if coils else (slices, nx, ny)
    k = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    lines = np.zeros(ny, bool)
    lines[[0, 3, 4, 5, 6, 8]] = True
    if not mask:
        k[..., ~lines] = 0  # fully sampled training files: unacquired lines are zeros
    with h5py.File(path, "w") as f:
        f["kspace"] = k
        if mask:
            f["mask"] = lines.astype(np.float32)
        if header:
            f["ismrmrd_header"] = ISMRMRD.format(nx=nx, ny=ny, fx=240.0, fy=200.0).encode()
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["acceleration"] = 4
    return k


@pytest.mark.parametrize("coils", [4, None])
def test_fastmri_axes_mask_and_geometry(tmp_path: Path, rng: np.random.Generator,
                                        coils: int | None) -> None:
    k = _fastmri(tmp_path / "file1000.h5", rng, coils=coils)
    assert is_fastmri_file(tmp_path / "file1000.h5")
    m = read_measurement(tmp_path / "file1000.h5")
    c = coils or 1
    assert m.data.shape == (c, 12, 10, 3) and m.modality == "MR"
    k4 = k if coils else k[:, None]
    # data[c, i, j, k] = kspace[k, c, i, j], zero off the mask
    assert m.data[1 % c, 5, 3, 2] == k4[2, 1 % c, 5, 3]
    assert m.data[0, 5, 1, 0] == 0
    assert m.mask.shape == (1, 10, 1) and m.mask[0, :, 0].sum() == 6
    assert m.fft_dims == (0, 1) and m.operator["dims"] == "2d"
    assert m.acquisition["acceleration"] == pytest.approx(10 / 6)
    assert m.acquisition["nominal_acceleration"] == 4
    assert np.allclose(m.reference.spacing if hasattr(m.reference, "spacing") else
                       np.linalg.norm(m.reference.affine[:3, :3], axis=0), [20.0, 20.0, 3.0])
    centre = m.reference.affine @ np.array([5.5, 4.5, 1.0, 1.0])
    assert np.allclose(centre[:3], 0.0)
    assert m.coil_maps is None


def test_fastmri_without_mask_or_header(tmp_path: Path, rng: np.random.Generator) -> None:
    _fastmri(tmp_path / "f.h5", rng, mask=False, header=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = read_fastmri(tmp_path / "f.h5")
    assert any("using 1 mm" in str(w.message) for w in caught)
    assert np.allclose(np.abs(np.diag(m.reference.affine)[:3]), 1.0)
    assert m.mask[0, :, 0].tolist() == [1, 0, 0, 1, 1, 1, 1, 0, 1, 0]


@pytest.mark.filterwarnings("ignore:.*using 1 mm")
def test_fastmri_reader_leaves_coil_maps_to_problem_building(tmp_path: Path) -> None:
    # A multi-coil file with a fully sampled centre, the case ESPIRiT needs: the reader is a
    # file format and returns no maps (problem building estimates them), the k-space as stored.
    rng = np.random.default_rng(3)
    nx, ny, ns, nc = 12, 10, 2, 4
    k = (rng.standard_normal((ns, nc, nx, ny))
         + 1j * rng.standard_normal((ns, nc, nx, ny))).astype(np.complex64)
    lines = np.zeros(ny, bool)
    lines[3:7] = True
    lines[::3] = True
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["kspace"] = k
        f["mask"] = lines
    for m in (read_fastmri(tmp_path / "f.h5"), read_measurement(tmp_path / "f.h5")):
        assert m.coil_maps is None
        assert "coil_maps" not in m.acquisition
        assert m.data.shape == (nc, nx, ny, ns)
        expected = np.transpose(k, (1, 2, 3, 0)) * lines[None, None, :, None]
        assert np.array_equal(m.data, expected)
        assert m.mask[0, :, 0].astype(bool).tolist() == lines.tolist()



def test_fastmri_errors(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "real.h5", "w") as f:
        f["kspace"] = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(MeasurementError, match="must be complex"):
        read_measurement(tmp_path / "real.h5")
    with h5py.File(tmp_path / "mask.h5", "w") as f:
        f["kspace"] = np.ones((2, 3, 4), np.complex64)
        f["mask"] = np.ones(7)
    with pytest.raises(MeasurementError, match="ky lines"):
        read_measurement(tmp_path / "mask.h5")
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f["kspace"] = np.full((2, 3, 4), np.nan, np.complex64)
    with pytest.raises(MeasurementError, match="NaN"):
        read_measurement(tmp_path / "nan.h5")
