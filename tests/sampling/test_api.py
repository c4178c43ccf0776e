"""The measurement-level API: units, hard data consistency, reproducibility, registry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medrecon.problem import measurement_problem
from medrecon.sampling import (
    LinearProblem,
    SamplerOptions,
    calibration,
    posterior_sample,
    sample_problem,
)


@pytest.fixture(scope="module")
def tiny_prior(tiny_prior_path):
    from medrecon.priors import load_prior

    return load_prior(tiny_prior_path)


def _shrink(sd: float = 0.5):
    """Exact denoiser of an isotropic N(0, sd^2) prior, on any shape."""

    def d(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return x * sd**2 / (sd**2 + s**2)

    return d


def test_noiseless_cartesian_hard_consistency_magnitude_prior() -> None:
    """Single-coil Cartesian MRI, complex image with phase, magnitude prior: DDS with
    noiseless data leaves |M(A x) - y| at rounding level (A A^H = M, CG converges in 1 step)."""
    from medrecon.operators.mri import SenseOperator

    g = torch.Generator().manual_seed(0)
    shape = (6, 8, 5)
    mask = (torch.rand(1, 8, 5, generator=g) < 0.4).float()
    op = SenseOperator(None, mask, fft_dims=(0, 1, 2), image_shape=shape)
    mag = torch.rand(shape, generator=g) + 0.5
    phase = torch.exp(1j * torch.linspace(0, 2, shape[0]))[:, None, None]
    y = op(mag * phase)
    prob = LinearProblem(op, y, noise_std=0.0, scale=2.0, complex_image=True)
    res = sample_problem(_shrink(), prob, shape, sampler="dds", steps=8, samples=3, seed=0,
                         options=SamplerOptions(cg_iters=3), keep_samples=True)
    assert res.residual < 1e-5
    x = prob.to_physical(res.samples, res.phase)
    r = prob.op(x) - prob.y
    assert float(r.abs().max()) < 1e-5 * float(prob.y.abs().max())
    # The same with PC + projection and with DiffPIR.
    for sampler, opts in (("pc", SamplerOptions()), ("pc", SamplerOptions(pc_mode="score")),
                          ("diffpir", SamplerOptions())):
        prob = LinearProblem(op, y, noise_std=0.0, scale=2.0, complex_image=True)
        res = sample_problem(_shrink(), prob, shape, sampler=sampler, steps=6, samples=2,
                             options=opts)
        assert res.residual < 1e-5, (sampler, opts)


def test_ct_units_model_space_round_trip(ct_measurement, tiny_prior) -> None:
    """The reference volume mapped into model space reproduces the noiseless sinogram: the
    HU -> model -> mu scaling of the data term is right."""
    m, vol = ct_measurement
    prob = LinearProblem.from_problem(measurement_problem(m, "cpu",
                                                          model=tiny_prior.normalisation))
    z = torch.as_tensor(tiny_prior.normalisation.to_model(vol.data, "CT"))[None]
    rel = float(prob.residual_norm(z)[0] / torch.linalg.vector_norm(prob.y))
    assert rel < 1e-4 and not prob.complex_image
    # A wrong scale (e.g. HU treated as mu) is far off.
    wrong = LinearProblem(prob.op, prob.y, scale=prob.scale * 1.1, offset=prob.offset)
    assert float(wrong.residual_norm(z)[0] / torch.linalg.vector_norm(prob.y)) > 1e-2
    assert prob.offset == pytest.approx(0.0, abs=1e-12)  # default window: air -> mu = 0


def test_mr_scale_matches_reference(mr_measurement, tiny_prior) -> None:
    m, vol = mr_measurement
    prob = LinearProblem.from_problem(measurement_problem(m, "cpu",
                                                          model=tiny_prior.normalisation))
    ref_scale = tiny_prior.normalisation.mr_scale(vol.data)
    assert prob.scale == pytest.approx(ref_scale, rel=0.3) and prob.complex_image
    assert prob.noise_std == pytest.approx(float(m.noise["sigma"]) / np.sqrt(2.0))  # per part
    z = torch.rand(2, *vol.shape)
    phase = prob.init_phase(2)
    assert phase is not None and phase.shape == (2, *vol.shape)
    torch.testing.assert_close(prob.to_model(prob.to_physical(z, phase), phase), z, rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="needs the phase"):
        prob.to_physical(z)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prob.scale = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("sampler,nfe", [("dds", 4), ("pc", 7), ("diffpir", 4), ("dps", 4)])
def test_posterior_sample_ct_runs_and_is_reproducible(ct_measurement, tiny_prior,
                                                      sampler: str, nfe: int) -> None:
    m, vol = ct_measurement
    one = posterior_sample(m, tiny_prior, sampler=sampler, steps=4, samples=2, seed=3,
                           device="cpu")
    two = posterior_sample(m, tiny_prior, sampler=sampler, steps=4, samples=2, seed=3,
                           device="cpu")
    other = posterior_sample(m, tiny_prior, sampler=sampler, steps=4, samples=2, seed=4,
                             device="cpu")
    assert one.mean.shape == vol.shape and one.std.shape == vol.shape
    assert np.isfinite(one.mean).all() and (one.std >= 0).all()
    assert np.array_equal(one.mean, two.mean)
    assert not np.array_equal(one.mean, other.mean)
    assert one.nfe == nfe
    assert np.isfinite(one.residual)
    assert 0 < one.timings["network_fraction"] <= 1


def test_posterior_sample_mr(mr_measurement, tiny_prior) -> None:
    m, vol = mr_measurement
    res = posterior_sample(m, tiny_prior, sampler="dds", steps=4, samples=1, seed=0,
                           device="cpu")
    assert res.mean.shape == vol.shape and res.std is None
    assert (res.mean >= 0).all()  # magnitudes
    # DDS's proximal step keeps the estimate close to the data even with a random prior.
    assert res.residual < 0.2
    assert res.info["modality"] == "MR" and res.info["patches"] > 0
    assert (res.info["lam"], res.info["cg_iters"]) == (0.1, 10)  # the MR defaults


def test_posterior_sample_mr_on_virtual_coils(mr_measurement, tiny_prior) -> None:
    m, vol = mr_measurement
    opt = SamplerOptions.defaults("MR", "dds", coil_energy=0.5)
    res = posterior_sample(m, tiny_prior, steps=3, seed=0, device="cpu", options=opt)
    assert res.info["virtual_coils"] == 1 < m.data.shape[0]
    assert 0.5 <= res.info["coil_energy_kept"] < 1.0 and res.mean.shape == vol.shape
    plain = posterior_sample(m, tiny_prior, steps=3, seed=0, device="cpu")
    assert "virtual_coils" not in plain.info


def test_dds_cg_schedule_applies_only_to_steps_followed_by_high_noise() -> None:
    from medrecon.sampling.consistency import noisy_steps_above
    from tests.sampling.gaussian import MatrixOperator

    g = torch.Generator().manual_seed(4)
    a = torch.randn(5, 8, generator=g, dtype=torch.float64)
    problem = LinearProblem(MatrixOperator(a), a @ torch.randn(8, generator=g,
                                                               dtype=torch.float64),
                            noise_std=0.01)

    def run(steps: int, **kw: int) -> torch.Tensor:
        opt = SamplerOptions(cg_iters=4, **kw)  # type: ignore[arg-type]
        return sample_problem(_shrink(), problem, (8,), steps=steps, samples=2, seed=1,
                              options=opt, dtype=torch.float64).mean

    assert torch.equal(run(10, cg_iters_high=4), run(10))
    assert not torch.allclose(run(10, cg_iters_high=1), run(10))
    # Two steps: the first is followed by the last level (~0), so nothing is cut.
    assert torch.equal(run(2, cg_iters_high=1), run(2))
    assert noisy_steps_above([80.0, 40.0, 10.0, 1.0, 0.0], 5.0) == 10.0
    assert noisy_steps_above([3.0, 1.0, 0.0], 5.0) == 3.0  # no step: nothing is above s[0]


def test_posterior_sample_leaves_the_callers_objects_alone(ct_measurement, tiny_prior) -> None:
    from medrecon.sampling.denoiser import prior_on_device

    m, _ = ct_measurement
    weights = {k: v.clone() for k, v in tiny_prior.denoiser.state_dict().items()}
    data = m.data.copy()
    net = tiny_prior.denoiser
    posterior_sample(m, tiny_prior, steps=2, device="cpu")
    assert tiny_prior.denoiser is net and np.array_equal(m.data, data)
    after = tiny_prior.denoiser.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
    # On its own device the prior is used as it is; elsewhere a moved copy is (meta: no data).
    assert prior_on_device(tiny_prior, torch.device("cpu")) is tiny_prior
    moved = prior_on_device(tiny_prior, torch.device("meta"))
    assert moved is not tiny_prior and next(moved.denoiser.parameters()).is_meta
    assert next(tiny_prior.denoiser.parameters()).device.type == "cpu"


def test_sample_problem_leaves_the_problem_alone() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 6, generator=g, dtype=torch.float64)

    from medrecon.operators.base import LinearOperator

    class MatrixOp(LinearOperator):
        def __init__(self) -> None:
            super().__init__((6,), (4,))

        def _forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ a.T

        def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
            return y @ a

    prob = LinearProblem(MatrixOp(), torch.ones(4, dtype=torch.float64), noise_std=0.1)
    op, y = prob.op, prob.y
    sample_problem(_shrink(), prob, (6,), steps=3, samples=2, dtype=torch.float64)
    assert prob.op is op and prob.y is y and prob.noise_std == 0.1


def test_diffusion_registered_in_reconstruct(ct_measurement, tiny_prior_path) -> None:
    from medrecon.methods import available_methods
    from medrecon.recon.base import ReconOptions
    from medrecon.reconstruct import reconstruct

    assert "diffusion" in available_methods("MR") and "diffusion" in available_methods("CT")
    m, vol = ct_measurement
    opts = ReconOptions(device="cpu", extra={"prior": str(tiny_prior_path), "steps": 3,
                                             "samples": 2, "seed": 1})
    result = reconstruct(m, "diffusion", opts)
    assert result.volume.shape == vol.shape
    assert np.allclose(result.volume.affine, vol.affine)
    assert result.output.info["std_image"].shape == vol.shape
    assert result.output.iterations == 3


def test_coil_energy_reaches_the_run_and_its_settings(mr_measurement, tiny_prior_path) -> None:
    from medrecon.recon.base import ReconOptions
    from medrecon.reconstruct import reconstruct

    m, _ = mr_measurement
    opts = ReconOptions(device="cpu", extra={"prior": str(tiny_prior_path), "steps": 2,
                                             "lam": 0.1, "guard": False,
                                             "coil_energy": 0.5})
    result = reconstruct(m, "diffusion", opts)
    assert result.settings.options["coil_energy"] == 0.5
    assert result.settings.options["cg_iters_high"] == 2  # the MR default schedule
    assert result.settings.resolved["virtual_coils"] == 1
    assert 0.5 <= result.settings.resolved["coil_energy_kept"] < 1.0


def test_unknown_sampler_is_a_user_error(ct_measurement, tiny_prior) -> None:
    from medrecon.errors import InputError

    with pytest.raises(InputError, match="sampler"):
        posterior_sample(ct_measurement[0], tiny_prior, sampler="ddpm", steps=2)


def test_sampler_defaults_per_modality() -> None:
    from medrecon.sampling.api import SamplerOptions

    mr = SamplerOptions.defaults("MR", "dds")
    assert (mr.lam, mr.cg_iters) == (0.1, 10)
    assert SamplerOptions.defaults("CT", "dds") == SamplerOptions()
    # MR weights doubled with noise_std per real part (MODALITY_DEFAULTS): the rest as usual
    for name in ("pc", "diffpir"):
        assert SamplerOptions.defaults("MR", name) == SamplerOptions(lam=2.0)
    assert SamplerOptions.defaults("MR", "dps") == SamplerOptions()
    assert SamplerOptions.defaults(None) == SamplerOptions()
    assert SamplerOptions.defaults("mr", "dds", lam=2.0).lam == 2.0


@pytest.mark.parametrize("sampler, mode", [("dds", "projection"), ("diffpir", "projection"),
                                           ("pc", "score")])
def test_simulated_mr_samples_as_before_the_per_part_noise_fix(
        mr_measurement, tiny_prior, sampler: str, mode: str) -> None:
    """The data term's weight goes as lam * noise_std^2: the MR defaults (doubled when
    noise_std became the per-part std, the simulator's RMS complex sigma / sqrt 2) sample a
    simulated file exactly as the former pair (noise_std = sigma, half the weight) did."""
    m, _ = mr_measurement
    kw = {"sampler": sampler, "steps": 3, "samples": 2, "seed": 4, "device": "cpu"}
    now = SamplerOptions.defaults("MR", sampler, pc_mode=mode)
    new = posterior_sample(m, tiny_prior, options=now, **kw)
    old = posterior_sample(m, tiny_prior, noise_std=float(m.noise["sigma"]),
                           options=dataclasses.replace(now, lam=now.lam / 2), **kw)
    assert new.info["noise_std"] == pytest.approx(old.info["noise_std"] / np.sqrt(2.0))
    np.testing.assert_allclose(new.mean, old.mean, rtol=1e-4, atol=1e-5 * float(old.mean.max()))
    np.testing.assert_allclose(new.std, old.std, rtol=1e-3, atol=1e-5 * float(old.std.max()))


def test_dps_step_keeps_the_papers_per_value_guidance() -> None:
    from medrecon.sampling.api import dps_step

    assert dps_step(1.0, 256 * 256 * 3, 1000) == pytest.approx(1.0)
    assert dps_step(1.0, 4 * 256 * 256 * 3, 1000) == pytest.approx(2.0)  # sqrt of the size
    assert dps_step(0.5, 256 * 256 * 3, 100) == pytest.approx(5.0)  # inverse of the steps


def test_calibration_of_a_calibrated_gaussian() -> None:
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((40, 40, 40))
    frac = calibration(np.zeros_like(truth), np.ones_like(truth), truth, k=2.0)
    assert frac == pytest.approx(0.9545, abs=0.005)
    assert calibration(np.zeros_like(truth), 0.5 * np.ones_like(truth), truth) < 0.8


@pytest.mark.gpu
def test_posterior_sample_on_cuda_is_reproducible(mr_measurement, tiny_prior_path) -> None:
    from medrecon.priors import load_prior

    prior = load_prior(tiny_prior_path, device="cuda")
    m, vol = mr_measurement
    one = posterior_sample(m, prior, sampler="dds", steps=4, samples=2, seed=5, device="cuda")
    two = posterior_sample(m, prior, sampler="dds", steps=4, samples=2, seed=5, device="cuda")
    assert one.mean.shape == vol.shape and np.isfinite(one.mean).all()
    assert np.array_equal(one.mean, two.mean)
    assert one.info["device"].startswith("cuda")
