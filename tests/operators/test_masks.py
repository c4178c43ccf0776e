"""Sampling masks: shapes, calibration, target acceleration, reproducibility, density, errors."""

from __future__ import annotations

import numpy as np
import pytest

from medrecon.errors import InputError
from medrecon.operators.masks import (
    MaskKind,
    SamplingMask,
    calibration_slice,
    default_calibration,
    make_mask,
)

SHAPE3 = (16, 64, 48)


@pytest.mark.parametrize("kind", list(MaskKind))
@pytest.mark.parametrize("acceleration", [2.0, 4.0, 7.3, 12.0])
def test_3d_masks_hit_target_with_calibration_box(kind: MaskKind, acceleration: float) -> None:
    m = make_mask(kind, SHAPE3, acceleration, calibration=12, dims="3d", seed=3)
    assert isinstance(m, SamplingMask)
    assert m.mask.shape == (1, 64, 48) and m.mask.dtype == np.bool_
    plane = m.mask[0]
    # achieved value is what the mask really has, and within 5 % of the request
    assert m.acceleration == pytest.approx(plane.size / plane.sum())
    assert abs(m.acceleration / acceleration - 1) <= 0.05
    assert m.kind is kind and m.calibration == 12 and m.seed == 3
    assert m.target_acceleration == acceleration
    assert plane[calibration_slice(64, 12), calibration_slice(48, 12)].all()
    # something is sampled outside the box, in all four quadrants of the plane
    outside = plane.copy()
    outside[calibration_slice(64, 12), calibration_slice(48, 12)] = False
    for q in (outside[:32, :24], outside[:32, 24:], outside[32:, :24], outside[32:, 24:]):
        assert q.any()


@pytest.mark.parametrize("kind", ["random", "equispaced", "gaussian"])
@pytest.mark.parametrize("acceleration", [2.0, 4.0, 8.0])
def test_2d_masks_are_lines_with_centre(kind: str, acceleration: float) -> None:
    m = make_mask(kind, (20, 101, 9), acceleration, calibration=8, dims="2d", seed=1)
    assert m.mask.shape == (1, 101, 1)
    lines = m.mask[0, :, 0]
    assert lines[calibration_slice(101, 8)].all()
    assert abs(m.acceleration / acceleration - 1) <= 0.05
    assert m.acceleration == pytest.approx(101 / lines.sum())


def test_calibration_placement_follows_fastmri() -> None:
    # fastMRI: pad = (num_cols - num_low_freqs + 1) // 2
    assert calibration_slice(10, 4) == slice(3, 7)
    assert calibration_slice(9, 4) == slice(3, 7)
    assert calibration_slice(9, 3) == slice(3, 6)  # centred on the DC sample 9 // 2 = 4


def test_equispaced_2d_is_regular() -> None:
    m = make_mask("equispaced", (8, 120, 4), 4.0, calibration=0, dims="2d", seed=5)
    gaps = np.diff(np.flatnonzero(m.mask[0, :, 0]))
    assert set(gaps.tolist()) <= {4} and m.acceleration == pytest.approx(4.0)


@pytest.mark.parametrize("kind", list(MaskKind))
def test_reproducible_and_seed_dependent(kind: MaskKind) -> None:
    a = make_mask(kind, SHAPE3, 6.0, calibration=8, seed=11)
    b = make_mask(kind, SHAPE3, 6.0, calibration=8, seed=11)
    c = make_mask(kind, SHAPE3, 6.0, calibration=8, seed=12)
    assert np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask)
    # an explicit generator is honoured and recorded as seedless
    d = make_mask(kind, SHAPE3, 6.0, calibration=8, rng=np.random.default_rng(11))
    assert d.seed is None and np.array_equal(d.mask, a.mask)


@pytest.mark.parametrize("kind", ["poisson", "gaussian"])
def test_variable_density(kind: str) -> None:
    m = make_mask(kind, (8, 96, 96), 8.0, calibration=8, seed=0)
    plane = m.mask[0]
    jj, kk = np.meshgrid(np.arange(96) - 48, np.arange(96) - 48, indexing="ij")
    r = np.hypot(jj, kk)
    inner = plane[(r > 8) & (r < 24)].mean()
    outer = plane[(r > 36) & (r < 48)].mean()
    assert inner > 1.5 * outer


def test_poisson_disc_spacing() -> None:
    # no two samples outside the calibration box are adjacent at high acceleration
    m = make_mask("poisson", (4, 64, 64), 16.0, calibration=6, seed=2)
    plane = m.mask[0].copy()
    plane[calibration_slice(64, 6), calibration_slice(64, 6)] = False
    pts = np.argwhere(plane)
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 2.0
    # ... and the pattern is not a lattice: nearest-neighbour distances vary
    assert d.min(axis=1).std() > 0.1


def test_acceleration_one_is_fully_sampled() -> None:
    m = make_mask("poisson", (4, 10, 7), 1.0, calibration=4)
    assert m.mask.all() and m.acceleration == 1.0


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("random", SHAPE3, 0.5), {}, "at least 1"),
        (("random", SHAPE3, 4.0), {"calibration": 50}, "larger than the phase-encode"),
        (("random", SHAPE3, 40.0), {"calibration": 24}, "cannot be reached"),
        (("spiral", SHAPE3, 4.0), {}, "Unknown mask kind"),
        (("poisson", SHAPE3, 4.0), {"dims": "2d"}, "Poisson-disc masks are for 3D"),
        (("random", SHAPE3, 4.0), {"dims": "4d"}, "dims"),
        (("random", (4, 10), 4.0), {}, "three positive sizes"),
        (("equispaced", (4, 6, 1), 1.1), {"calibration": 0, "dims": "2d"}, "cannot reach"),
    ],
)
def test_impossible_requests(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make_mask(*args, **kwargs)


@pytest.mark.parametrize(("shape", "acceleration", "calibration", "dims"),
                         [(SHAPE3, 40.0, 24, "3d"), ((20, 200, 9), 20.0, 16, "2d"),
                          ((4, 30, 30), 10.0, 12, "3d")])
def test_unreachable_acceleration_names_flags_that_work(
        shape: tuple[int, int, int], acceleration: float, calibration: int, dims: str) -> None:
    """The message names --calibration / --acceleration with values that do succeed."""
    with pytest.raises(InputError, match=r"use --calibration (\d+) or less, or --acceleration "
                                         r"([\d.]+) or less\.$") as info:
        make_mask("random", shape, acceleration, calibration=calibration, dims=dims)
    import re

    found = re.search(r"--calibration (\d+) .* --acceleration ([\d.]+) ", str(info.value))
    assert found is not None
    max_calibration, max_acceleration = int(found[1]), float(found[2])
    assert max_calibration < calibration
    make_mask("random", shape, acceleration, calibration=max_calibration, dims=dims)
    with pytest.raises(InputError, match="cannot be reached"):
        make_mask("random", shape, acceleration, calibration=max_calibration + 1, dims=dims)
    m = make_mask("random", shape, max_acceleration, calibration=calibration, dims=dims)
    assert m.acceleration == pytest.approx(max_acceleration, rel=0.02)


@pytest.mark.parametrize(("plane", "expected"), [
    ((41, 25), 8), ((96, 24), 12), ((58, 24), 9), ((64, 10), 6), ((128, 128), 24), ((256,), 16)])
def test_default_calibration_fits_real_phase_encode_matrices(plane: tuple[int, ...],
                                                            expected: int) -> None:
    # The phase-encode planes of real MR volumes on which a fixed 24 failed.
    assert default_calibration(plane, 8.0) == expected
    dims = "2d" if len(plane) == 1 else "3d"
    shape = (8, plane[0], plane[1] if dims == "3d" else 3)
    for kind in (("random",) if dims == "2d" else ("poisson", "gaussian")):
        m = make_mask(kind, shape, 8.0, dims=dims, seed=0)  # no calibration given
        assert m.calibration == expected
        assert m.acceleration == pytest.approx(8.0, rel=0.05)
