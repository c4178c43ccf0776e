"""The calibrated std map: the scale's maths on a Gaussian case with a known posterior, its
storage in the prior's JSON, and its use by posterior_sample, reconstruct and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from prior_factory import export_tiny_prior

from medrecon.errors import InputError
from medrecon.priors import load_prior
from medrecon.priors.calibration import (
    CalibrationEntry,
    StdCalibration,
    calibrate_std,
    coverage,
    error_ratios,
    fit_alpha,
    heldout_alpha,
    output_std,
    std_factor,
    target_coverage,
    write_calibration,
)
from medrecon.sampling import posterior_sample
from medrecon.sampling.api import SamplerOptions, sample_problem
from medrecon.sampling.consistency import LinearProblem
from tests.sampling.gaussian import GaussianPrior, MatrixOperator, gaussian_posterior


def _entry(modality: str = "CT", alpha: float = 3.0, steps: int = 3, **options: float
           ) -> CalibrationEntry:
    opts = {"lam": 1.0, "eta": 0.85, "cg_iters": 5} if modality == "CT" else \
        {"lam": 0.1, "eta": 0.85, "cg_iters": 10}
    opts.update(options)
    return CalibrationEntry(modality=modality, sampler="dds", steps=steps, options=opts,
                            alpha=alpha, coverage=0.95, coverage_by_samples={2: 0.95},
                            cases=4, basis="test heads", fitted="2026-12-06, cpu")


def test_std_factor_is_the_student_t_correction() -> None:
    # Exact samples (alpha = 1): c(K) = sqrt(1 + 1/K) t_{K-1}(0.977) / 2.
    assert std_factor(1.0, 4) == pytest.approx(1.8486, abs=1e-3)
    assert std_factor(1.0, 10_000) == pytest.approx(1.0, abs=1e-3)
    assert std_factor(2.0, 10_000) == pytest.approx(2.0, abs=2e-3)
    assert std_factor(2.0, 3) > std_factor(2.0, 8) > 2.0
    assert target_coverage(2.0) == pytest.approx(0.9545, abs=1e-4)
    with pytest.raises(ValueError):
        std_factor(1.0, 1)


def _gaussian_case(spread: float, chains: int, trials: int, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(chains, trials * n) samples with ``spread`` times the exact posterior spread, and
    (trials * n,) truths drawn from the prior, measured through a random 3x4 operator."""
    g = torch.Generator().manual_seed(seed)
    n = 4
    prior = GaussianPrior(torch.zeros(n, dtype=torch.float64),
                          0.25 * torch.eye(n, dtype=torch.float64))
    a = torch.randn(3, n, generator=g, dtype=torch.float64)
    noise = 0.1
    truth = prior.sample(trials, g)                                  # (T, n)
    y = truth @ a.T + noise * torch.randn(trials, 3, generator=g, dtype=torch.float64)
    _, cov = gaussian_posterior(prior, a, y[0], noise)               # the same for every y
    means = torch.stack([gaussian_posterior(prior, a, yi, noise)[0] for yi in y])  # (T, n)
    chol = torch.linalg.cholesky(cov)
    z = torch.randn(chains, trials, n, generator=g, dtype=torch.float64)
    samples = means + spread * (z @ chol.T)
    return samples.reshape(chains, -1).numpy(), truth.reshape(-1).numpy()


@pytest.mark.parametrize("spread,alpha", [(1.0, 1.0), (0.5, 2.0)])
def test_fit_recovers_the_scale_of_a_known_gaussian_posterior(spread: float,
                                                              alpha: float) -> None:
    # Exact posterior samples need alpha = 1; chains that spread half as far need alpha = 2.
    samples, truth = _gaussian_case(spread, chains=6, trials=1500)
    ratios = {k: error_ratios(samples, truth, k) for k in (2, 3, 6)}
    fitted = fit_alpha(ratios)
    assert fitted == pytest.approx(alpha, rel=0.12)
    for k, r in ratios.items():  # the Student-t factor calibrates every K, not only the mean
        assert coverage(r, std_factor(fitted, k)) == pytest.approx(0.9545, abs=0.025)
    raw = coverage(ratios[3], 1.0)
    assert raw < 0.85  # the raw std of 3 samples is over-confident even for exact samples


@pytest.mark.parametrize("alpha", [0.7, 3.0, 12.0])
def test_heldout_alpha_recovers_the_scale_from_two_chains(alpha: float) -> None:
    """The model of the module on n held-out components: chains spread by sigma around a mean
    that misses the truth by alpha sigma; the held-out data add noise. Two chains, the truth
    unseen, recover alpha."""
    from medrecon.holdout import HeldOut

    g = torch.Generator().manual_seed(3)
    n, sigma, noise = 40_000, 0.5, 0.2
    truth = torch.randn(n, generator=g, dtype=torch.float64)
    centre = truth + alpha * sigma * torch.randn(n, generator=g, dtype=torch.float64)
    p1, p2 = (centre + sigma * torch.randn(n, generator=g, dtype=torch.float64)
              for _ in range(2))
    y = truth + noise * torch.randn(n, generator=g, dtype=torch.float64)
    held = HeldOut(lambda x: x, y, noise_var=noise**2, noise_count=float(n))
    assert held.std_alpha(p1, p2) == pytest.approx(alpha, rel=0.05)
    # cannot tell: unknown noise; an error within the noise's own spread; chains that agree
    assert HeldOut(lambda x: x, y).std_alpha(p1, p2) is None
    assert HeldOut(lambda x: x, truth + 1e-9, noise_var=1.0,
                   noise_count=float(n)).std_alpha(truth, truth + 1e-3) is None
    assert heldout_alpha(10.0, 0.0, 1.0, 0.1) is None


@pytest.mark.parametrize("weight", [0.0, 0.3])
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_heldout_scale_of_a_blend_and_its_coverage(weight: float, scale: float) -> None:
    """The model of :func:`output_std` on n components: the truth misses the posterior mean by
    alpha sigma, the classical image lies ``d`` from it, and the output ``w mean_K + (1 - w)
    x_c`` misses the truth by ``scale`` times the model's error. Two chains and the held-out
    data recover ``scale`` (the truth unseen), and 2 std of the map then cover about 95 % of
    the errors of a K = 4 output."""
    from medrecon.holdout import HeldOut

    g = torch.Generator().manual_seed(4)
    n, sigma, alpha, noise = 40_000, 0.5, 2.0, 0.2

    def randn() -> torch.Tensor:
        return torch.randn(n, generator=g, dtype=torch.float64)

    centre = randn()  # the posterior mean
    d = 1.5 * sigma * randn() * (randn() > 0)  # the classical image's offset, half the voxels
    p1, p2 = centre + sigma * randn(), centre + sigma * randn()
    q = weight * 0.5 * (p1 + p2) + (1 - weight) * (centre + d)
    # the truth: the output's error is scale x (the posterior's spread, the 2-chain mean's
    # scatter through w, the offset through 1 - w)
    truth = q - scale * (weight * 0.5 * (p1 + p2 - 2 * centre) + (1 - weight) * d
                         + alpha * sigma * randn())
    y = truth + noise * randn()
    held = HeldOut(lambda x: x, y, noise_var=noise**2, noise_count=float(n))
    est = held.std_scale(p1, p2, weight, centre + d, alpha)
    assert est == pytest.approx(scale, rel=0.05)
    assert HeldOut(lambda x: x, y).std_scale(p1, p2, weight, centre + d, alpha) is None
    # the K = 4 output of the same posterior, and its map at the recovered scale
    chains = centre[None] + sigma * torch.randn((4, n), generator=g, dtype=torch.float64)
    mean = chains.mean(0)
    out = weight * mean + (1 - weight) * (centre + d)
    x = out - scale * (weight * (mean - centre) + (1 - weight) * d + alpha * sigma * randn())
    std = output_std(chains.std(0).numpy(), (centre + d - mean).numpy(), weight, alpha, 4, est)
    assert coverage(np.abs((out - x).numpy()) / std, 1.0) == pytest.approx(0.9545, abs=0.03)
    # weight 1: the module's map, std_factor times the spread
    np.testing.assert_allclose(output_std(std, std, 1.0, alpha, 4),
                               std_factor(alpha, 4) * std, rtol=1e-6)


def test_dds_on_a_gaussian_prior_needs_no_scale() -> None:
    # DDS is exact for a Gaussian prior up to time discretisation: truths drawn from the exact
    # posterior of one measurement lie within the calibrated band of alpha ~ 1.
    g = torch.Generator().manual_seed(1)
    n, groups, k = 4, 1000, 4
    prior = GaussianPrior(torch.zeros(n, dtype=torch.float64),
                          0.25 * torch.eye(n, dtype=torch.float64))
    a = torch.randn(3, n, generator=g, dtype=torch.float64)
    y = a @ prior.sample(1, g)[0] + 0.1 * torch.randn(3, generator=g, dtype=torch.float64)
    mu, cov = gaussian_posterior(prior, a, y, 0.1)
    problem = LinearProblem(MatrixOperator(a), y, noise_std=0.1)
    out = sample_problem(prior.denoiser, problem, (n,), sampler="dds", steps=60,
                         samples=groups * k, seed=0, dtype=torch.float64, keep_samples=True,
                         options=SamplerOptions(normalise_operator=False))
    truth = mu + torch.randn(groups, n, generator=g, dtype=torch.float64) @ \
        torch.linalg.cholesky(cov).T
    # Group j of K chains is paired with truth j: stack as (K, groups * n).
    chains = out.samples.reshape(groups, k, n).permute(1, 0, 2).reshape(k, -1).numpy()
    ratios = error_ratios(chains, truth.reshape(-1).numpy(), k)
    assert 0.85 < fit_alpha({k: ratios}) < 1.2  # measured 1.00 (60 steps: 7 % narrow)


def test_entries_match_settings_and_the_nearest_steps() -> None:
    calib = StdCalibration(entries=(_entry(steps=8, alpha=2.0), _entry(steps=50, alpha=3.0),
                                    _entry("MR", alpha=4.0)))
    ct = {"lam": 1.0, "eta": 0.85, "cg_iters": 5, "zeta_dps": 1.0}
    assert calib.find("CT", "dds", 10, ct).alpha == 2.0
    assert calib.find("CT", "dds", 40, ct).alpha == 3.0
    assert calib.find("CT", "dds", 200, ct) is None  # 4x the steps fitted: unmeasured
    assert calib.find("CT", "dds", 10, {**ct, "lam": 0.3}) is None  # other spread
    assert calib.find("CT", "pc", 10, ct) is None
    again = StdCalibration.from_dict(json.loads(json.dumps(calib.to_dict())))
    assert again == calib
    newer = calib.with_entry(_entry(steps=8, alpha=5.0))
    assert len(newer.entries) == 3 and newer.find("CT", "dds", 8, ct).alpha == 5.0


def test_calibrate_std_scales_or_says_uncalibrated() -> None:
    std = np.ones((2, 3), np.float32)
    opts = {"lam": 1.0, "eta": 0.85, "cg_iters": 5}
    calib = StdCalibration(entries=(_entry(alpha=3.0, steps=3),))
    out, note = calibrate_std(std, calib, modality="CT", sampler="dds", steps=3, samples=4,
                              options=opts)
    assert np.allclose(out, std_factor(3.0, 4)) and out.dtype == np.float32
    assert note.calibrated and "2 std covered 95 % there" in note.line
    assert "synthetic heads" in note.line and "K = 4" in note.line
    same, none = calibrate_std(std, None, modality="CT", sampler="dds", steps=3, samples=4,
                               options=opts, prior_name="p")
    assert same is std and none.factor is None and none.line.startswith("std map uncalibrated")
    _, other = calibrate_std(std, calib, modality="CT", sampler="dds", steps=3, samples=4,
                             options={**opts, "eta": 0.5})
    assert not other.calibrated and "eta 0.5" in other.line
    _, far = calibrate_std(std, calib, modality="CT", sampler="dds", steps=50, samples=4,
                           options=opts)
    assert not far.calibrated and "near 50 steps" in far.line


@pytest.fixture(scope="module")
def calibrated_prior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    js = export_tiny_prior(tmp_path_factory.mktemp("calibrated"), name="calibrated")
    write_calibration(js, [_entry("CT", alpha=3.0, steps=3)])
    return js


def test_the_scale_is_read_from_the_json_and_applied(calibrated_prior: Path, tiny_prior_path,
                                                     ct_measurement) -> None:
    doc = json.loads(calibrated_prior.read_text())
    assert doc["std_calibration"]["entries"][0]["alpha"] == 3.0
    prior, plain = load_prior(calibrated_prior), load_prior(tiny_prior_path)
    assert prior.std_calibration is not None and plain.std_calibration is None
    m, _ = ct_measurement
    kw = {"sampler": "dds", "steps": 3, "samples": 3, "seed": 2, "device": "cpu"}
    cal, raw = posterior_sample(m, prior, **kw), posterior_sample(m, plain, **kw)
    factor = std_factor(3.0, 3)
    assert cal.info["std_factor"] == pytest.approx(factor)
    np.testing.assert_allclose(cal.std, raw.std * factor, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cal.mean, raw.mean)
    assert raw.info["std_factor"] is None
    assert "uncalibrated" in raw.info["std_calibration_line"]
    one = posterior_sample(m, prior, **{**kw, "samples": 1})
    assert one.std is None and "std_calibration" not in one.info  # K = 1: no std map


def test_reconstruct_records_the_basis(calibrated_prior: Path, ct_measurement) -> None:
    from medrecon.recon.base import ReconOptions
    from medrecon.reconstruct import reconstruct

    m, _ = ct_measurement
    res = reconstruct(m, "diffusion", ReconOptions(device="cpu", extra={
        "prior": str(calibrated_prior), "steps": 3, "samples": 2, "seed": 0,
        "lam": 1.0, "guard": False}))  # the weight the entry was fitted at
    assert res.settings.resolved["std_factor"] == pytest.approx(std_factor(3.0, 2))
    assert "covered 95 % there" in res.settings.resolved["std_calibration"]
    assert res.std_volume is not None
    assert f"calibrated x{std_factor(3.0, 2):.3g}" in res.std_volume.series_description


def test_a_malformed_calibration_is_one_sentence(tmp_path: Path) -> None:
    js = export_tiny_prior(tmp_path, name="bad")
    doc = json.loads(js.read_text())
    doc["std_calibration"] = {"entries": [{"modality": "MR", "alpha": -1}]}
    js.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="invalid 'std_calibration'"):
        load_prior(js)


def test_error_ratios_handle_chains_that_agree() -> None:
    samples = np.array([[1.0, 2.0, 0.0], [1.0, 2.0, 2.0]])
    r = error_ratios(samples, np.array([1.0, 3.0, 1.0]), 2)
    assert r[0, 0] == 0.0 and math.isinf(r[0, 1]) and r[0, 2] == 0.0


def test_cli_prints_the_basis_beside_the_std_output(calibrated_prior: Path, tiny_prior_path,
                                                    ct_measurement, tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from medrecon.cli.main import app
    from medrecon.io import load_volume
    from medrecon.io.measurement import write_measurement

    meas = write_measurement(ct_measurement[0], tmp_path / "ct.h5")
    for prior, expected in ((calibrated_prior, "std map calibrated on synthetic heads"),
                            (tiny_prior_path, "std map uncalibrated")):
        out = tmp_path / f"{prior.stem}.nii.gz"
        result = CliRunner().invoke(app, [
            "reconstruct", str(meas), str(out), "--method", "diffusion", "--prior", str(prior),
            "--steps", "3", "--samples", "2", "--device", "cpu", "--no-progress",
            "--lam", "1", "--guard", "off"])  # the weight the entry was fitted at
        assert result.exit_code == 0, result.output
        std_line = next(x for x in result.output.splitlines() if "standard deviation" in x)
        assert expected in std_line
        settings = yaml.safe_load((tmp_path / f"{prior.stem}.reconstruct.yaml").read_text())
        assert expected in settings["resolved"]["std_calibration"]
        assert ("calibrated x" if prior == calibrated_prior else "uncalibrated") in \
            load_volume(tmp_path / f"{prior.stem}_std.nii.gz").series_description


def test_spectral_energy_keeps_white_noise_and_stands_for_the_image_energy() -> None:
    """CT's held-out energy (:class:`medrecon.holdout.SpectralEnergy`): white noise keeps its
    expected energy (so the noise term stays ``sigma^2 n``), and parallel projections of
    images of equal energy but different texture get about equal weighted energy (the
    Fourier slice theorem's ``|omega|``), where their plain energies differ by 6x:
    a coarse error weighs far more in the projections than in the image."""
    import torch.nn.functional as F

    from medrecon.holdout import SpectralEnergy
    from medrecon.operators.ct_geometry import default_geometry
    from medrecon.operators.ct_projector import CTProjector

    g = torch.Generator().manual_seed(5)
    energy = SpectralEnergy(48)
    noise = torch.randn(400, 2, 48, generator=g, dtype=torch.float64)
    assert energy(noise) / noise.numel() == pytest.approx(1.0, rel=0.02)
    assert energy.rms == pytest.approx((4 / 3) ** 0.5, rel=0.01)  # a ramp: E[w^2] / E[w]^2

    n = 48
    geometry = default_geometry((n, n, 1), (1.0, 1.0, 1.0), "parallel", views=90)
    op = CTProjector(geometry, (n, n, 1), (1.0, 1.0, 1.0))
    weigh = SpectralEnergy(geometry.detector_cols)
    yy, xx = torch.meshgrid(torch.arange(n) - n / 2, torch.arange(n) - n / 2, indexing="ij")
    disk = ((xx**2 + yy**2) < (n / 3) ** 2).float()
    k = torch.exp(-torch.arange(-4, 5) ** 2 / 2.0)  # texture of about one pixel
    k = (k / k.sum()).view(1, 1, -1, 1)
    fine = F.conv2d(F.conv2d(torch.randn(1, 1, n, n, generator=g), k, padding=(4, 0)),
                    k.transpose(2, 3), padding=(0, 4))[0, 0] * disk
    coarse = torch.exp(-(xx**2 + yy**2) / (2 * 6.0**2))
    plain, ramp = [], []
    for image in (fine, coarse):
        p = op.forward((image / image.norm())[..., None])
        plain.append(float((p**2).sum()))
        ramp.append(weigh(p))
    assert plain[1] / plain[0] > 5.0  # measured 6.2
    assert 0.85 < ramp[1] / ramp[0] < 1.3  # measured 1.17


def test_the_ct_split_weighs_its_held_out_energy_and_mr_does_not() -> None:
    """The std map's held-out energies: ramp-weighted on a CT split, plain on an MR one."""
    from medrecon.holdout import SpectralEnergy, holdout_split
    from medrecon.phantoms import shepp_logan_volume
    from medrecon.simulate import CTSettings, MRISettings, SimulationConfig, simulate

    ct = simulate(shepp_logan_volume(16, modality="CT"), SimulationConfig(
        modality="ct", seed=0, ct=CTSettings(geometry="parallel", views=14)))
    held = holdout_split(ct, torch.device("cpu")).held
    assert isinstance(held.spectral, SpectralEnergy)
    r = held.predict(torch.ones(16, 16, 16)) - held.y
    assert held.energy(r) == pytest.approx(held.spectral(r))
    assert held.energy(r) != pytest.approx(float(torch.linalg.vector_norm(r)) ** 2, rel=0.1)
    mr = simulate(shepp_logan_volume(16), SimulationConfig(modality="mri", seed=0, mri=MRISettings(
        coils=2, acceleration=2.0, calibration=4)))
    held = holdout_split(mr, torch.device("cpu")).held
    r = held.y * 0.5
    assert held.spectral is None
    assert held.energy(r) == pytest.approx(float(torch.linalg.vector_norm(r)) ** 2)
