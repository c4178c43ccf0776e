"""Evaluating Volumes: grids (reordered axes), CT padding, foreground masks, regions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medrecon.errors import GeometryError, InputError
from medrecon.evaluation import compare_volumes, foreground_mask, padding_mask
from medrecon.io import Volume
from medrecon.metrics import evaluate_volumes, psnr
from medrecon.phantoms import shepp_logan_3d

SHAPE = (20, 17, 14)  # odd, non-cubic: catches axis mix-ups


@pytest.fixture
def pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ref = ndimage.gaussian_filter(rng.random(SHAPE), 2.0) * 3.0 + 1.0
    x = ref + 0.05 * rng.standard_normal(SHAPE)
    return x, ref


def test_foreground_mask_of_phantom_with_noise(rng: np.random.Generator) -> None:
    ref = shepp_logan_3d((64, 64, 64)).astype(np.float64)
    noisy = ref + 0.03 * rng.standard_normal(ref.shape)
    mask = foreground_mask(noisy)
    inside = ref > 0
    # Covers the head (ventricles included, though darker than the threshold) ...
    assert (mask & inside).sum() / inside.sum() > 0.99
    # ... and little background (the outline may grow by about a voxel).
    assert (mask & ~inside).sum() / inside.sum() < 0.08
    assert not ndimage.binary_fill_holes(mask).sum() > mask.sum()  # no holes
    assert ndimage.label(mask)[1] == 1  # one component


def test_foreground_mask_drops_specks_and_keeps_border_objects() -> None:
    vol = np.zeros((30, 30, 20))
    vol[5:25, 5:25, :] = 1.0  # touches the k borders: must not be eroded there
    vol[12:18, 12:18, 5:15] = 0.0  # an interior dark cavity: filled
    vol[1, 1, 1] = 1.0  # a speck: dropped
    mask = foreground_mask(vol)
    expected = np.zeros_like(vol, dtype=bool)
    expected[5:25, 5:25, :] = True
    assert not (mask & ~expected).any()
    # All of the box but (at most) its four long edges, which the median filter rounds off.
    assert mask[6:24, 6:24, :].all() and mask[5:25, 5:25, :].sum() >= 20 * 20 * 20 - 4 * 20
    with pytest.raises(InputError, match="constant"):
        foreground_mask(np.ones((8, 8, 8)))


def _ct_crop_without_air(rng: np.random.Generator) -> np.ndarray:
    """A 32^3 cube inside a CT head: brain (~35 HU), CSF (~8 HU) and bone along one edge."""
    vol = 35.0 + 5.0 * rng.standard_normal((32, 32, 32))
    vol[:, :, :4] = 8.0 + 5.0 * rng.standard_normal((32, 32, 4))
    vol[:6, :6, :] = 1200.0  # bone touching the border: the only class the old rule kept
    return vol


def test_foreground_mask_of_a_ct_crop_without_air_keeps_every_voxel(
        rng: np.random.Generator) -> None:
    crop = _ct_crop_without_air(rng)
    assert foreground_mask(crop).mean() < 0.1  # unknown modality: only the bone (the old flaw)
    assert foreground_mask(crop, modality="CT").all()
    # A Volume carries its modality (and units), so compare_volumes and --mask auto get it.
    ct = _vol(crop)
    ct.modality, ct.units = "CT", "HU"
    assert foreground_mask(ct).all()
    _, mask = compare_volumes(ct, ct, mask="auto")
    assert mask is not None and mask.all()


def test_foreground_mask_of_ct_with_air_excludes_only_air(rng: np.random.Generator) -> None:
    g = np.indices((32, 32, 32)).astype(float)
    inside = ((g - 15.5) ** 2).sum(axis=0) < 12.0**2
    vol = np.where(inside, 35.0, -1000.0) + 5.0 * rng.standard_normal(inside.shape)
    vol[inside & (g[0] < 8)] = 1500.0  # bone: Otsu alone would keep only this
    mask = foreground_mask(vol, modality="CT")
    assert mask[inside].mean() > 0.99 and (mask & ~inside).sum() < 0.05 * inside.sum()
    assert np.array_equal(mask, foreground_mask(vol))  # with air the generic rule already works


def test_foreground_mask_of_an_mr_crop_without_background(rng: np.random.Generator) -> None:
    # T2-like: dark white matter (0.25) beside bright CSF (1.0), no near-zero background.
    vol = 0.35 + 0.02 * rng.standard_normal((24, 24, 24))
    vol[:, :8, :] = 0.25 + 0.02 * rng.standard_normal((24, 8, 24))
    vol[10:14, 10:14, :] = 1.0
    assert foreground_mask(vol).all()
    assert foreground_mask(vol, modality="MR").all()


def _vol(data: np.ndarray, affine: np.ndarray | None = None) -> Volume:
    return Volume(data, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine)


def test_compare_volumes_checks_grids_and_masks(pair: tuple[np.ndarray, np.ndarray]) -> None:
    x, ref = pair
    res, m = compare_volumes(_vol(x), _vol(ref))
    assert m is None and res.volume["psnr"] == pytest.approx(psnr(x.astype(np.float32),
                                                                  ref.astype(np.float32)))
    shifted = np.diag([1.0, 1.0, 2.0, 1.0])
    shifted[0, 3] = 0.01
    with pytest.raises(GeometryError, match="different grids"):
        compare_volumes(_vol(x, shifted), _vol(ref))
    with pytest.raises(GeometryError, match="shape"):
        compare_volumes(_vol(x[:, :, :-1]), _vol(ref))
    box = np.zeros(SHAPE)
    box[3:9, 3:9, 3:9] = 1
    res, m = compare_volumes(_vol(x), _vol(ref), mask=_vol(box))
    assert m is not None and m.sum() == 216 and res.region_voxels == 216
    with pytest.raises(GeometryError, match="different grid"):
        compare_volumes(_vol(x), _vol(ref), mask=_vol(box, shifted))
    with pytest.raises(InputError, match="empty"):
        compare_volumes(_vol(x), _vol(ref), mask=_vol(np.zeros(SHAPE)))
    res, m = compare_volumes(_vol(x), _vol(ref), mask="auto")
    assert m is not None and "auto foreground" in res.region


def _head_ct(rng: np.random.Generator, padding: float = -3024.0) -> tuple[Volume, np.ndarray]:
    """A CT head slab in HU with padding outside the scan circle, and the padding mask."""
    g = np.indices((32, 32, 4)).astype(float)
    r = np.hypot(g[0] - 15.5, g[1] - 15.5)
    hu = np.where(r < 11, 40.0, -1000.0) + 5.0 * rng.standard_normal(r.shape)
    hu[(r >= 9) & (r < 11)] = 1200.0
    pad = r >= 15
    hu[pad] = padding
    return Volume(hu, np.diag([0.8, 0.8, 2.0, 1.0]), modality="CT", units="HU"), pad


def test_ct_padding_is_left_out_of_region_and_data_range(rng: np.random.Generator) -> None:
    ref, pad = _head_ct(rng)
    # An FBP-like reconstruction: air (not padding) outside the circle, small errors inside.
    rec = ref.with_data(np.where(pad, -1000.0, ref.data + 10.0 * rng.standard_normal(pad.shape)))
    assert np.array_equal(padding_mask(ref), pad)
    res, region = compare_volumes(rec, ref)
    assert region is not None and np.array_equal(region, ~pad)
    inside = ref.data[~pad]
    assert res.data_range == pytest.approx(float(inside.max() - inside.min()))
    assert res.data_range_source == "reference max - min outside padding"
    assert "outside CT padding" in res.region and f"{int(pad.sum())} padding voxels" in res.region
    expected = evaluate_volumes(rec.data, ref.data, mask=~pad, data_range=res.data_range)
    assert res.volume["psnr"] == pytest.approx(expected.volume["psnr"])
    assert res.volume["psnr"] > 40.0
    kept, _ = compare_volumes(rec, ref, exclude_padding=False)
    assert kept.volume["psnr"] < res.volume["psnr"] - 15.0  # the 2000 HU padding error
    # With a mask, the region is the mask without padding; an explicit data range is kept.
    res, region = compare_volumes(rec, ref, mask=np.ones(pad.shape, bool), data_range=3000.0)
    assert np.array_equal(region, ~pad) and res.data_range == 3000.0
    # MR volumes have no padding, whatever their values.
    mr = Volume(ref.data, ref.affine, modality="MR")
    assert padding_mask(mr) is None
    with pytest.raises(InputError, match="only CT padding"):
        compare_volumes(ref, ref.with_data(np.full(pad.shape, -3024.0)))


def test_pixel_padding_value_of_the_dicom_header(rng: np.random.Generator) -> None:
    import pydicom

    ref, pad = _head_ct(rng, padding=-1024.0)  # padded with a value above -1500 HU
    assert padding_mask(ref) is None  # without the header it looks like air
    header = pydicom.Dataset()
    header.PixelPaddingValue = 0  # stored value; HU = 1 * 0 - 1024
    header.RescaleSlope, header.RescaleIntercept = 1, -1024
    ref.dicom_header = header
    assert np.array_equal(padding_mask(ref), pad)
    header.PixelPaddingRangeLimit = 30  # stored 0 to 30: -1024 to -994 HU, air included
    assert padding_mask(ref).sum() > pad.sum()


def test_auto_mask_of_padded_ct_keeps_air_out(rng: np.random.Generator) -> None:
    ref, pad = _head_ct(rng)
    inside = Volume(np.where(pad, -1000.0, ref.data), ref.affine, modality="CT", units="HU")
    assert np.array_equal(foreground_mask(ref), foreground_mask(inside))
    air = ~pad & (ref.data < -500)
    assert foreground_mask(ref)[air].mean() < 0.1  # at most the outline's voxel of closing
    assert not foreground_mask(ref)[pad].any()


def test_same_voxels_in_another_axis_order_are_reoriented(rng: np.random.Generator) -> None:
    data = rng.random((6, 5, 4)).astype(np.float32)
    las = np.array([[-1.0, 0, 0, 10], [0, 1.2, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    ref = Volume(data, las)
    # LAI (the slices of a DICOM round trip reversed) and a permuted, flipped copy.
    lai = las.copy()
    lai[:3, 2] *= -1
    lai[:3, 3] = las[:3, 3] + 3 * las[:3, 2]
    flipped = Volume(data[:, :, ::-1], lai)
    perm = np.zeros((4, 4))
    perm[3, 3] = 1
    perm[:3, 0], perm[:3, 1], perm[:3, 2] = las[:3, 2], -las[:3, 0], las[:3, 1]
    perm[:3, 3] = las[:3, 3] + 5 * las[:3, 0]
    permuted = Volume(np.transpose(data, (2, 0, 1))[:, ::-1, :], perm)
    for other, code in ((flipped, "LAI -> LAS"), (permuted, "SRA -> LAS")):
        moved = other.reoriented_like(ref)
        assert moved is not None and np.array_equal(moved.data, data)
        np.testing.assert_array_equal(moved.affine, las)
        res, _ = compare_volumes(other, ref)
        assert res.volume["nmse"] == 0.0 and res.inputs["reoriented"] == code
    # A mask volume in the other order is reordered too.
    box = np.zeros(data.shape)
    box[1:4, 1:3, 1:3] = 1
    res, m = compare_volumes(ref, ref, mask=Volume(box[:, :, ::-1], lai))
    assert np.array_equal(m, box > 0)
    # Shifted by one voxel, or a partial overlap: not the same voxels, refused.
    shifted = las.copy()
    shifted[:3, 3] += las[:3, 2]
    assert Volume(data, shifted).reoriented_like(ref) is None
    with pytest.raises(GeometryError, match="different grids"):
        compare_volumes(Volume(data[:, :, ::-1], shifted), ref)
    assert Volume(data, np.zeros((4, 4))).reoriented_like(ref) is None  # singular affine
