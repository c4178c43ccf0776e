"""The slab of a parallel- or fan-beam CT measurement (medrecon.slab) is its exact sub-problem,
and CT TV's self-tuning on it (medrecon.recon.ct) ends in one all-data solve."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medrecon.io import Volume
from medrecon.io.measurement import Measurement
from medrecon.problem import measurement_problem
from medrecon.recon import ct
from medrecon.recon.base import ReconOptions
from medrecon.simulate import CTSettings, SimulationConfig, simulate
from medrecon.slab import measurement_slab, slab_axis

CPU = torch.device("cpu")


def _ct(shape: tuple[int, int, int], slices: slice, kind: str = "parallel",
        spacing: tuple[float, float, float] = (1.0, 1.2, 2.0), views: int = 12) -> Measurement:
    """A water block in air whose matter lies in ``slices`` of K (air elsewhere)."""
    hu = np.full(shape, -1000.0, np.float32)
    hu[3:shape[0] - 3, 3:shape[1] - 3, slices] = 0.0
    hu[6:9, 6:9, slices] = 400.0
    vol = Volume(hu, np.diag([*spacing, 1.0]), modality="CT", units="HU")
    vol.affine[:3, 3] = (-10.0, 5.0, 7.0)
    return simulate(vol, SimulationConfig(modality="ct", seed=1, ct=CTSettings(
        geometry=kind, views=views, dose_i0=1e5)))


@pytest.mark.parametrize("kind", ["parallel", "fan"])
def test_ct_slab_is_the_exact_sub_problem(kind: str) -> None:
    """The slab's operator is the full operator's rows: ``A_slab x[slab] == (A x)[:, rows]``
    (slices are independent), its data are the sinogram's rows, the per-view mask and the
    noise model stay, a per-pixel weight mask is cut, and the geometry is the slab's."""
    shape = (16, 14, 30)
    m = _ct(shape, slice(12, 24), kind)
    assert slab_axis(m) == 2
    sub, slab = measurement_slab(m, CPU, rows=8) or (None, None)
    assert sub is not None and slab is not None
    assert (slab.axis, slab.stop - slab.start, slab.length) == (2, 8, 30)
    assert 12 <= slab.start and slab.stop <= 24  # on the matter, not in air
    assert sub.image_shape == (16, 14, 8)
    assert sub.operator["geometry"]["detector_rows"] == 8
    assert sub.operator["image_shape"] == [16, 14, 8]
    assert np.array_equal(sub.data, m.data[:, slab.start:slab.stop])
    assert sub.noise == m.noise
    full_p, sub_p = measurement_problem(m, CPU), measurement_problem(sub, CPU)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    whole = full_p.op.forward(x)[:, slab.start:slab.stop]
    part = sub_p.op.forward(slab.take(x))
    assert float((part - whole).abs().max()) < 1e-5 * float(whole.abs().max())
    origin = m.reference.affine @ np.array([0.0, 0.0, slab.start, 1.0])
    assert np.allclose(sub.reference.affine[:, 3], origin)
    assert np.allclose(sub.reference.affine[:3, :3], m.reference.affine[:3, :3])
    assert sub.acquisition["slab"]["text"] == slab.text == f"slices {slab.start}-" \
        f"{slab.stop - 1} of 30"
    # masks: per-pixel weights are cut to the rows, per-view masks stay as they are
    weights = np.random.default_rng(0).uniform(0.5, 1.0, m.data.shape).astype(np.float32)
    wsub, wslab = measurement_slab(dataclasses.replace(m, mask=weights), CPU, rows=8) or (
        None, None)
    assert wsub is not None and wslab is not None
    assert np.array_equal(wsub.mask, weights[:, wslab.start:wslab.stop])
    views = np.ones(m.data.shape[0], np.float32)
    views[::3] = 0.0
    vsub, _ = measurement_slab(dataclasses.replace(m, mask=views), CPU, rows=8) or (None, None)
    assert vsub is not None and np.array_equal(vsub.mask, views)


def test_ct_slab_picks_the_most_attenuating_rows_seen() -> None:
    """The pick follows the summed line integrals of the views the mask keeps."""
    m = _ct((16, 14, 30), slice(0, 30))
    data = np.zeros_like(m.data)
    data[:, 20:26] = 1.0  # matter in slices 20-25 ...
    data[0, 2:8] = 100.0  # ... and a bright view over slices 2-7 that the mask leaves out
    found = measurement_slab(dataclasses.replace(m, data=data), CPU, rows=6)
    assert found is not None and found[1].start == 2
    views = np.ones(m.data.shape[0], np.float32)
    views[0] = 0.0
    found = measurement_slab(dataclasses.replace(m, data=data, mask=views), CPU, rows=6)
    assert found is not None and found[1].start == 20


def test_no_ct_slab_for_cone_beam_short_volumes_or_rows_off_the_slices() -> None:
    """Cone beam, a volume up to 1.5x the slab, ``rows`` 0, a row pitch other than the slice
    spacing or a row offset: None."""
    cone = _ct((14, 14, 30), slice(0, 30), "cone", spacing=(1.0, 1.0, 0.25))
    assert slab_axis(cone) is None and measurement_slab(cone, CPU, rows=8) is None
    m = _ct((16, 14, 30), slice(0, 30))
    assert measurement_slab(m, CPU, rows=20) is None  # 30 <= 30
    assert measurement_slab(m, CPU, rows=0) is None
    assert measurement_slab(m, CPU, rows=19) is not None  # 30 > 28
    geometry = m.operator["geometry"]
    for change in ({"pixel_rows_mm": 2.5}, {"offset_rows_mm": 1.0}):
        moved = dataclasses.replace(m, operator={**m.operator,
                                                 "geometry": {**geometry, **change}})
        assert slab_axis(moved) is None and measurement_slab(moved, CPU, rows=8) is None


def test_ct_tv_weight_chosen_on_the_slab_then_one_all_data_solve() -> None:
    """Self-tuned TV on a long CT volume: the weight is the one chosen on the slab's
    measurement alone, info says which slices, and the image is the all-data solve at that
    weight; ``tune_slab=0`` tunes on the whole volume."""
    m = _ct((16, 14, 30), slice(8, 24))
    extra = {"tune_slab": 12, "sure": False}
    out = ct.tv_method(m, ReconOptions(iterations=8, extra=extra), CPU)
    slab = out.info["tune_slab"]
    assert slab["stop"] - slab["start"] == 12 and out.image.shape == m.image_shape
    assert f"weight chosen on {slab['text']}" in out.info["autotune_line"]
    sub, _ = measurement_slab(m, CPU, rows=12) or (None, None)
    assert sub is not None
    on_slab = ct.tv_method(sub, ReconOptions(iterations=8, extra={**extra, "tune_slab": 0}),
                           CPU)
    assert out.info["lam"] == pytest.approx(on_slab.info["lam"], rel=1e-6)
    fixed = ct.tv_method(m, ReconOptions(iterations=8, lam=out.info["lam"], extra=extra), CPU)
    assert np.allclose(out.image, fixed.image, rtol=0, atol=1e-4)  # HU
    whole = ct.tv_method(m, ReconOptions(iterations=8, extra={**extra, "tune_slab": 0}), CPU)
    assert "tune_slab" not in whole.info and "weight chosen on" not in whole.info[
        "autotune_line"]
    # the guard's call (keep_training) tunes on what it is given: the guard cuts its own slab
    kept = ct.tv_method(m, ReconOptions(iterations=8, extra=extra), CPU, keep_training=True)
    assert "tune_slab" not in kept.info
