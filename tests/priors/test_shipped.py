"""The shipped default prior loads offline on CPU and denoises held-out synthetic heads."""

from __future__ import annotations

import math

import pytest
import torch

from medrecon.priors import list_priors, load_prior, modality_id


def test_default_prior_is_listed_and_small() -> None:
    infos = {i.name: i for i in list_priors()}
    assert "default" in infos
    d = infos["default"]
    assert d.shipped and d.modalities == ("MR", "CT") and d.patch_size == (64, 64, 64)
    assert d.size_bytes <= 30_000_000 and d.steps > 0


@pytest.mark.slow
def test_default_prior_loads_and_denoises_a_held_out_head() -> None:
    from medrecon.priors.synthetic import SPLITS, generate_head

    prior = load_prior("default", device="cpu")
    den = prior.denoiser
    assert not den.training and prior.uses_position
    assert prior.sigma_min < prior.sigma_max
    # a held-out (test-seed) CT head at the prior's spacing; a 32^3 patch from its centre
    vol = generate_head((32, 32, 32), prior.spacing_mm[0], "CT", seed=SPLITS["test"].start)
    x = torch.as_tensor(prior.normalisation.to_model(vol.data, "CT")).clamp_min(0)[None, None]
    sigma = 0.1
    noisy = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = den(noisy, sigma, modality=torch.tensor([modality_id("CT")]),
                position=torch.zeros(1, 3))
    psnr_in = 10 * math.log10(1 / float(((noisy - x) ** 2).mean()))
    psnr_out = 10 * math.log10(1 / float(((d - x) ** 2).mean()))
    assert psnr_out > psnr_in + 6.0, (psnr_in, psnr_out)


def test_default_prior_carries_a_std_calibration() -> None:
    # Fitted by benchmarks/std_calibration.py on validation heads (RESULTS_std_calibration.md):
    # the CPU demo's DDS settings (8 steps) and the CLI's 20 and 50 steps are covered for MR and
    # CT, with 2 std covering 90-98 % there; more steps spread the chains more (smaller alpha).
    from medrecon.sampling import SamplerOptions

    calib = load_prior("default", device="cpu").std_calibration
    assert calib is not None
    for modality in ("MR", "CT"):
        opts = SamplerOptions.defaults(modality, "dds")
        alphas = []
        for steps in (8, 20, 50):
            entry = calib.find(modality, "dds", steps, {"lam": opts.lam, "eta": opts.eta,
                                                        "cg_iters": opts.cg_iters})
            assert entry is not None and entry.steps == steps
            assert entry.alpha > 1.0  # the raw spread is over-confident
            assert 0.90 <= entry.coverage <= 0.98
            alphas.append(entry.alpha)
        assert alphas == sorted(alphas, reverse=True)


def test_default_prior_calibrates_every_weight_the_self_tuning_can_pick() -> None:
    # --lam auto picks one of DIFFUSION_FACTORS x the default, or one step beyond either end;
    # the std map of the CLI's 50 steps must stay calibrated whichever it picks. Data-trusting
    # weights narrow the chains, so alpha falls as lam grows.
    from medrecon.guard import DIFFUSION_FACTORS
    from medrecon.sampling import SamplerOptions

    calib = load_prior("default", device="cpu").std_calibration
    assert calib is not None
    step = DIFFUSION_FACTORS[1] / DIFFUSION_FACTORS[0]
    factors = (DIFFUSION_FACTORS[0] / step, *DIFFUSION_FACTORS, DIFFUSION_FACTORS[-1] * step)
    for modality in ("MR", "CT"):
        opts = SamplerOptions.defaults(modality, "dds")
        alphas = []
        for f in factors:
            entry = calib.find(modality, "dds", 50, {"lam": opts.lam * f, "eta": opts.eta,
                                                     "cg_iters": opts.cg_iters})
            assert entry is not None and entry.steps == 50, (modality, f)
            assert 0.90 <= entry.coverage <= 0.98
            alphas.append(entry.alpha)
        assert alphas == sorted(alphas, reverse=True), alphas
