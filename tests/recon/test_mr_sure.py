"""MR self-tuned weights with SURE (medrecon.recon.sure through medrecon.recon.mri._weight)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medrecon.io import Volume
from medrecon.io.measurement import Measurement
from medrecon.methods import get_method
from medrecon.phantoms import shepp_logan_3d
from medrecon.problem import measurement_problem
from medrecon.recon import mri
from medrecon.recon.base import ReconOptions
from medrecon.recon.sure import discrepancy, noise_count, sure, sure_probe
from medrecon.simulate import MRISettings, SimulationConfig, simulate

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def case() -> tuple[Measurement, np.ndarray]:
    """Shepp-Logan 16 x 14 x 6, 4 coils, R = 3, SNR 20, no phase: ``A x_true`` is exact."""
    ref = Volume(shepp_logan_3d((16, 14, 6)), np.eye(4), modality="MR")
    cfg = SimulationConfig(seed=3, mri=MRISettings(coils=4, acceleration=3.0, calibration=4,
                                                   snr=20.0, phase="none"))
    return simulate(ref, cfg), ref.data


def test_noise_std_per_part_and_count_match_the_simulated_noise(
        case: tuple[Measurement, np.ndarray]) -> None:
    """The simulator's sigma is the RMS complex std: the problem's noise_std is that of each
    part, sigma / sqrt(2), and the misfit of the true image in those units is ~1 over
    2 x coils x sampled points (it would be 1/2 with the file's sigma taken per part)."""
    m, ref = case
    problem = measurement_problem(m, CPU)
    assert problem.noise_std == pytest.approx(m.noise["sigma"] / np.sqrt(2.0))
    assert problem.noise_std == pytest.approx(m.noise_std)
    assert noise_count(problem) == 2 * 4 * 16 * float((np.asarray(m.mask) > 0).sum())
    x_true = torch.as_tensor(ref).to(torch.complex64)
    assert discrepancy(problem, x_true) == pytest.approx(1.0, abs=0.06)
    # Without the RMS complex definition, sigma is per part (the Measurement's own meaning).
    per_part = dataclasses.replace(m, noise={"model": "gaussian", "sigma": 0.5})
    assert per_part.noise_std == 0.5 and measurement_problem(per_part, CPU).noise_std == 0.5
    assert dataclasses.replace(m, noise={}).noise_std is None


def test_sure_estimates_the_in_sample_risk_of_l1_wavelet(
        case: tuple[Measurement, np.ndarray]) -> None:
    """SURE of L1-wavelet on complex multi-coil k-space (one Monte-Carlo probe) against the
    true in-sample risk ``||A (x - x_true)||^2 / (sigma^2 n)``, from under- to over-smoothed
    weights: within 0.05 + 10 % (the risk spans more than 5x)."""
    m, ref = case
    clean = measurement_problem(m, CPU)
    x_true = torch.as_tensor(ref).to(torch.complex64)
    sigma = 0.02
    gen = torch.Generator().manual_seed(5)
    noise = torch.complex(torch.randn(clean.y.shape, generator=gen),
                          torch.randn(clean.y.shape, generator=gen))
    problem = dataclasses.replace(
        clean, y=(clean.op(x_true) + sigma * noise) * (clean.op.mask > 0), noise_std=sigma)
    probe = sure_probe(problem, seed=1)
    assert probe is not None
    assert torch.all(probe.direction[..., ~(clean.op.mask > 0).expand(16, 14, 6)] == 0)
    settings = mri.method_settings(mri.L1WaveletSettings, {"map_sets": 1}, "l1-wavelet")
    risks, estimates = [], []
    for lam in (1e-4, 1e-2, 1e-1):
        x = mri._l1_solve(problem, lam, settings, 60, 0.0, False, CPU)[0].x
        x2 = mri._l1_solve(probe.nudged, lam, settings, 60, 0.0, False, CPU)[0].x
        err = torch.view_as_real(problem.op(x) - problem.op(x_true)).double()
        risks.append(float((err ** 2).sum()) / (sigma ** 2 * noise_count(problem)))
        estimates.append(sure(problem, x, x2, probe))
    assert max(risks) > 5 * min(risks), (risks, estimates)
    for r, e in zip(risks, estimates, strict=True):
        assert abs(e - r) < 0.05 + 0.1 * r, (risks, estimates)


def test_unknown_noise_level_keeps_the_held_out_rule(
        case: tuple[Measurement, np.ndarray]) -> None:
    """Without sigma in the file (fastMRI) the self-tuning is the held-out samples' alone, as
    with ``sure=false``, and the report says why; with it, the line names the summed risk."""
    m, _ = case
    spec = get_method("MR", "l1-wavelet")
    opts = {"iterations": 20}
    unknown = spec(dataclasses.replace(m, noise={}), ReconOptions(**opts), CPU).info
    off = spec(m, ReconOptions(**opts, extra={"sure": False}), CPU).info
    default = spec(m, ReconOptions(**opts), CPU).info
    folds = unknown["autotune"]["folds"]
    assert folds > 1  # a few held-out lines per draw: the rules pool the folds' (the note)
    pooled = f"; held-out terms pooled over {folds} disjoint folds"
    assert unknown["autotune"]["note"] == ("held-out samples alone: no noise level in the file"
                                           + pooled)
    assert off["autotune"]["note"] == "held-out samples alone (sure=false)" + pooled
    assert unknown["lam"] == off["lam"]
    assert unknown["autotune"]["heldout_errors"] == off["autotune"]["heldout_errors"]
    assert default["autotune"]["note"].startswith("held-out + SURE risk")
    assert "held-out + SURE risk" in default["autotune_line"]
    # the report's errors stay the held-out relative residuals, whatever the criterion
    assert default["autotune"]["heldout_errors"] == off["autotune"]["heldout_errors"]
