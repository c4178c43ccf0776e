"""Coil maps estimated for a file without maps (``problem.estimate_maps``): with a narrow
calibration region the ESPIRiT threshold is chosen on held-out k-space (RESULTS_mri.md,
fastMRI-format brain at R = 8)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from medrecon.io import Volume
from medrecon.io.measurement import Measurement
from medrecon.metrics import psnr
from medrecon.operators.coils import DEFAULT_THRESHOLD, estimate_coil_maps
from medrecon.operators.functional.fft import ifftc
from medrecon.operators.mri import SenseOperator
from medrecon.problem import (
    ESPIRIT_THRESHOLDS,
    espirit_threshold,
    estimate_maps,
    estimated_maps_source,
    kspace_tensor,
)
from medrecon.simulate import MRISettings, SimulationConfig, simulate
from medrecon.solvers import conjugate_gradient


def _brain(calibration: int, acceleration: float) -> tuple[Measurement, np.ndarray]:
    """The real EPI brain nibabel ships (frame 0, every second voxel in-plane: 64 x 48, the 2
    central slices) as 2D multi-slice k-space: 8 coils, equispaced lines, SNR 30; the file's
    maps dropped (as in a fastMRI file). Returns (measurement, reference scaled to max 1)."""
    nib = pytest.importorskip("nibabel")
    path = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    vol = np.asarray(nib.load(path).dataobj)[..., 0].astype(np.float32)
    ref = vol[::2, ::2, 11:13]
    ref = ref / ref.max()
    cfg = SimulationConfig(seed=0, mri=MRISettings(
        coils=8, acceleration=acceleration, mask="equispaced", calibration=calibration,
        dims="2d", snr=30.0))
    m = simulate(Volume(ref, np.diag([4.0, 4.0, 2.2, 1.0]), modality="MR"), cfg)
    return dataclasses.replace(m, coil_maps=None), ref


def _cg_sense(m: Measurement, maps: torch.Tensor) -> np.ndarray:
    """|CG-SENSE| with the cg-sense defaults (lam 1e-3, 30 iterations)."""
    op = SenseOperator(maps, torch.as_tensor(np.asarray(m.mask)).float(), fft_dims=m.fft_dims,
                       image_shape=m.image_shape)
    x = conjugate_gradient(lambda v: op.normal(v) + 1e-3 * v, op.adjoint(kspace_tensor(m)),
                           max_iter=30, tol=1e-4).x
    return x.abs().numpy()


def test_four_calibration_lines_give_maps_that_beat_zero_filled() -> None:
    """fastMRI's R = 8 (4 centre lines, kernel 2): with the default threshold the maps are
    biased and CG-SENSE falls below the zero-filled root-sum-of-squares; with the threshold
    chosen on held-out k-space it is well above it."""
    m, ref = _brain(4, 8.0)
    y = kspace_tensor(m)
    zero_filled = torch.sqrt((ifftc(y, (1, 2)).abs() ** 2).sum(0)).numpy()
    zf = psnr(zero_filled, ref, data_range=1.0)
    old = estimate_coil_maps(y, m.mask, fft_dims=m.fft_dims).to(torch.complex64)
    assert psnr(_cg_sense(m, old), ref, data_range=1.0) < zf - 1.0
    details: dict = {}
    new = estimate_maps(m, details=details)
    assert new.shape == old.shape
    # The choice is recorded: the threshold and every tried threshold's held-out error.
    assert set(details["threshold_errors"]) == set(ESPIRIT_THRESHOLDS)
    assert details["threshold_errors"][details["espirit_threshold"]] == min(
        details["threshold_errors"].values())
    label = estimated_maps_source("espirit", tuple(new.shape), details)
    assert f"threshold {details['espirit_threshold']:g} chosen on held-out k-space" in label
    assert psnr(_cg_sense(m, new), ref, data_range=1.0) > zf + 2.0
    # The support is the default threshold's (it crops the empty background); values differ.
    torch.testing.assert_close((new.abs() ** 2).sum(0) > 0, (old.abs() ** 2).sum(0) > 0,
                               rtol=0, atol=0)
    threshold, support = espirit_threshold(m, y, torch.as_tensor(m.mask),
                                           {"method": "espirit", "fft_dims": m.fft_dims})
    assert threshold in ESPIRIT_THRESHOLDS and threshold < DEFAULT_THRESHOLD
    assert torch.equal(support, (old.abs() ** 2).sum(0) > 0)
    # Map sets get the same support.
    two = estimate_maps(m, map_sets=2)
    assert two.ndim == 5 and not bool(((two.abs() ** 2).sum((0, 1)) > 0)[~support].any())


def test_wide_calibration_keeps_the_default_threshold() -> None:
    """14 lines or more (kernel 6): the ESPIRiT default, unchanged and without the choice."""
    m, _ = _brain(16, 2.0)
    y = kspace_tensor(m)
    expected = estimate_coil_maps(y, m.mask, fft_dims=m.fft_dims).to(torch.complex64)
    details: dict = {}
    assert torch.equal(estimate_maps(m, details=details), expected)
    assert details == {} and estimated_maps_source("espirit", tuple(expected.shape),
                                                   details) == "estimated (espirit)"
