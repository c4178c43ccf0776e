"""NIfTI reading/writing and the load_volume / save_volume dispatch."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import oblique_affine

from medrecon.errors import InputError
from medrecon.io import Volume, load_volume, save_volume
from medrecon.io.nifti import read_nifti, write_nifti


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_round_trip_exact(tmp_path: Path, rng: np.random.Generator, name: str) -> None:
    data = rng.normal(size=(5, 6, 7)).astype(np.float32)
    affine = oblique_affine()
    vol = Volume(data, affine, modality="CT", units="HU", series_description="desc")
    path = save_volume(vol, tmp_path / name)
    back = load_volume(path)
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)  # float32 sform
    assert (back.modality, back.units, back.series_description) == ("CT", "HU", "desc")
    assert back.meta["format"] == "nifti"
    # foreign tools see the same geometry
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert int(img.header["sform_code"]) == 1


def test_4d_needs_a_frame(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4 * 3, dtype=np.float32).reshape(2, 3, 4, 3)
    path = tmp_path / "dyn.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(InputError, match="4D with 3 frames"):
        read_nifti(path)
    np.testing.assert_array_equal(read_nifti(path, frame=2).data, data[..., 2])
    with pytest.raises(InputError, match="out of range"):
        read_nifti(path, frame=3)


def test_2d_becomes_one_slice(tmp_path: Path) -> None:
    path = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 5), dtype=np.float32), np.eye(4)), str(path))
    assert read_nifti(path).shape == (4, 5, 1)


def test_corrupt_and_misnamed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    with pytest.raises(InputError, match="Cannot read NIfTI"):
        load_volume(bad)
    with pytest.raises(InputError, match=r"\.nii"):
        write_nifti(Volume(np.zeros((2, 2, 2)), np.eye(4)), tmp_path / "x.img")


def test_dispatch_rejects_options_of_the_other_format(tmp_path: Path) -> None:
    vol = Volume(np.zeros((2, 2, 2)), np.eye(4))
    nii = save_volume(vol, tmp_path / "a.nii")
    with pytest.raises(InputError, match="--series"):
        load_volume(nii, series="1.2.3")
    dcm = save_volume(vol, tmp_path / "dcm")
    with pytest.raises(InputError, match="--frame"):
        load_volume(dcm, frame=0)
    with pytest.raises(InputError, match="folder"):
        save_volume(vol, tmp_path / "b.nii", format="dicom")
    with pytest.raises(InputError, match="Unknown output format"):
        save_volume(vol, tmp_path / "c", format="png")
    with pytest.raises(InputError, match="does not exist"):
        load_volume(tmp_path / "nothing.nii")


def test_description_is_a_c_string(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4))
    img.header["descrip"] = b"FSL5.0\x00\x00garbage"
    nib.save(img, str(tmp_path / "fsl.nii"))
    assert read_nifti(tmp_path / "fsl.nii").series_description == "FSL5.0"
    # Control characters never reach a Volume, whatever wrote them.
    assert Volume(np.zeros((1, 1, 1)), np.eye(4), series_description="a\x00b\tc").series_description \
        == "a b c"


def test_values_spanning_air_to_bone_read_as_ct(tmp_path: Path) -> None:
    hu = np.full((10, 10, 3), -1000.0, np.float32)
    hu[2:8, 2:8] = 30.0
    hu[4, 4] = 1200.0
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(tmp_path / "ct.nii"))
    vol = read_nifti(tmp_path / "ct.nii")
    assert (vol.modality, vol.units) == ("CT", "HU")
    assert "values span air to bone (-1000 to 1200)" in vol.meta["modality_note"]
    # Without bone (soft tissue and air only), or with MR magnitudes, the file stays unlabelled.
    for data in (np.where(hu > 1000, 30.0, hu), np.abs(hu)):
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(tmp_path / "x.nii"))
        vol = read_nifti(tmp_path / "x.nii")
        assert vol.modality == "OT" and "modality_note" not in vol.meta
