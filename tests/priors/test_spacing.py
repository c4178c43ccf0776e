"""Voxel-size conditioning: exact warm start from a prior without it, rendered training, the
trained range in the prior's JSON, and the sampler passing the measurement's voxel size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from prior_factory import export_tiny_prior

from medrecon.errors import InputError
from medrecon.priors import load_prior
from medrecon.priors.checkpoint import export_prior, warm_start_weights
from medrecon.priors.train import make_denoiser, prior_info, train

SPACINGS = torch.tensor([[0.4, 0.4, 0.4], [2.0, 2.0, 2.0], [0.5, 0.5, 5.0], [4.0, 4.0, 6.0]])


def _rendered(tiny_config, **changes):  # type: ignore[no-untyped-def]
    return tiny_config.replace(data={"source": "rendered"}, network={"spacing_embed": 8},
                               **changes)


def _export_old(cfg, path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A trained-looking prior without voxel-size input (random weights, seed 3)."""
    torch.manual_seed(3)
    den = make_denoiser(cfg)
    for prm in den.parameters():  # MONAI zero-initialises the output layer: undo that
        prm.data.normal_(0, 0.05)
    return export_prior(path, "old", den.state_dict(), prior_info(cfg, 40))


def test_warm_start_with_voxel_size_input_equals_the_old_prior(tiny_config,
                                                               tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    js = _export_old(tiny_config, tmp_path / "old")
    old = load_prior(js).denoiser
    new_cfg = _rendered(tiny_config, init_from=str(js))
    weights, lineage = warm_start_weights(str(js), new_cfg)
    assert lineage == {"init_from": "old", "init_steps": 40}
    new = make_denoiser(new_cfg).eval()
    missing, unexpected = new.load_state_dict(weights, strict=False)
    assert missing and all(k.startswith("network.class_embedding.spacing.") for k in missing)
    assert not unexpected
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 16, 16, 16, generator=g)
    mod, pos = torch.tensor([0, 1, 0, 1]), torch.rand(4, 3, generator=g) * 2 - 1
    with torch.no_grad():
        ref = old(x, 0.3, modality=mod, position=pos)
        assert ref.abs().max() > 0
        for sp in (SPACINGS, SPACINGS.flip(0)):
            assert torch.equal(new(x, 0.3, modality=mod, position=pos, spacing=sp), ref)
        # once the embedding's output layer moves, the voxel size changes the output
        torch.nn.init.normal_(new.network.class_embedding.spacing[2].weight, std=0.5)
        a = new(x, 0.3, modality=mod, position=pos, spacing=SPACINGS)
        b = new(x, 0.3, modality=mod, position=pos, spacing=SPACINGS.flip(0))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="voxel size"):
        new(x, 0.3, modality=mod, position=pos)


def test_warm_start_refuses_a_prior_that_does_not_fit(tiny_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    js = _export_old(tiny_config, tmp_path / "old")
    wider = _rendered(tiny_config).replace(network={"channels": (8, 24)})
    with pytest.raises(InputError, match="network.channels"):
        warm_start_weights(str(js), wider)
    other_sigma = _rendered(tiny_config).replace(denoiser={"sigma_data": 0.7})
    with pytest.raises(InputError, match="denoiser settings differ"):
        warm_start_weights(str(js), other_sigma)


def test_rendered_training_resumes_exactly_and_records_range_and_lineage(
        tiny_config, tmp_path: Path, fake_renderer: None) -> None:  # type: ignore[no-untyped-def]
    old = _export_old(tiny_config, tmp_path / "old")
    cfg = _rendered(tiny_config, init_from=str(old)).replace(
        optim={"steps": 4}, log={"val_every": 2, "ckpt_every": 100, "preview_every": 4,
                                 "log_every": 2, "val_patches": 4})
    full = train(cfg, tmp_path / "full", progress=False)
    part = train(cfg.replace(optim={"steps": 2}), tmp_path / "part", progress=False)
    rest = train(cfg, tmp_path / "part", resume=True, progress=False)
    assert part.losses + rest.losses == full.losses
    assert all(np.isfinite(full.losses))
    doc = json.loads(full.prior_json.read_text())
    lo, hi = doc["spacing_range_mm"]
    assert (lo, hi) == (0.4, 6.0)  # the fake renderer's support, rounded outwards
    assert doc["version"] == 2 and doc["network"]["spacing_embed"] == 8
    for d in (doc, json.loads(rest.prior_json.read_text())):
        assert d["training"]["init_from"] == "old" and d["training"]["init_steps"] == 40
        assert d["training"]["total_steps"] == 44
    header = (tmp_path / "full" / "val.csv").read_text().splitlines()[0].split(",")
    assert {"psnr_0.05_ref", "psnr_0.05_fine", "psnr_0.5_MR", "psnr_0.5_CT"} <= set(header)
    assert (tmp_path / "full" / "previews" / "step_0000004.png").stat().st_size > 0
    prior = load_prior(full.prior_json)
    assert prior.uses_spacing and prior.spacing_range_mm == (lo, hi)
    assert prior.voxel_size_warning((0.45, 0.45, 5.0)) is None
    assert "outside the 0.4-6 mm" in str(prior.voxel_size_warning((0.2, 0.2, 1.0)))


def test_rendered_batches_are_a_function_of_the_step(tiny_config, fake_renderer: None) -> None:  # type: ignore[no-untyped-def]
    from medrecon.priors.data import RenderedPatchSource

    cfg = _rendered(tiny_config)
    src = RenderedPatchSource(cfg.data, cfg.normalisation, seed=0)
    a, b, c = src.batch(5, 6), src.batch(5, 6), src.batch(6, 6)
    assert torch.equal(a.x, b.x) and torch.equal(a.spacing, b.spacing)
    assert not torch.equal(a.x, c.x)
    assert a.x.shape == (6, 1, 16, 16, 16) and a.spacing.shape == (6, 3)
    assert set(a.modality.tolist()) <= {0, 1}
    assert a.x.min() >= 0 and a.x.max() <= 1.0 + 1e-6  # model space: MR ~[0, 1], CT window
    fixed = src.batch(0, 3, spacing=(2.0, 2.0, 2.0))
    assert torch.equal(fixed.spacing, torch.full((3, 3), 2.0))
    mr_only = RenderedPatchSource(cfg.data.__class__(**{**cfg.data.__dict__,
                                                        "modalities": ("MR",)}),
                                  cfg.normalisation, seed=0)
    assert mr_only.batch(0, 4).modality.tolist() == [0, 0, 0, 0]


def test_old_priors_keep_the_one_and_a_half_rule(tmp_path: Path) -> None:
    prior = load_prior(export_tiny_prior(tmp_path))  # a format-1 style JSON: no range
    assert not prior.uses_spacing
    assert prior.spacing_range_mm == pytest.approx((2 / 1.5, 3.0))
    assert prior.voxel_size_warning((2.0, 2.0, 2.9)) is None
    msg = prior.voxel_size_warning((0.48, 0.48, 2.0))
    assert msg is not None and "0.48 x 0.48 x 2 mm" in msg and "'tiny'" in msg
    assert "\n" not in msg and not msg.endswith(".")


def test_the_sampler_passes_the_measurements_voxel_size(tmp_path: Path) -> None:
    from medrecon.io.volume import Volume
    from medrecon.sampling import posterior_sample
    from medrecon.simulate import CTSettings, SimulationConfig, simulate

    prior = load_prior(export_tiny_prior(tmp_path, spacing_embed=8,
                                         spacing_range_mm=(0.4, 6.0)))
    seen: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:  # type: ignore[type-arg]
        seen.append(kwargs["spacing"].clone())

    prior.denoiser.register_forward_pre_hook(record, with_kwargs=True)
    hu = np.full((12, 12, 3), -1000.0, np.float32)
    hu[3:9, 3:9, :] = 0.0
    results = {}
    for sp in ((0.5, 0.5, 5.0), (0.25, 0.25, 1.0)):
        vol = Volume(hu, np.diag([*sp, 1.0]), modality="CT", units="HU")
        m = simulate(vol, SimulationConfig(modality="ct", seed=2, ct=CTSettings(views=12)))
        seen.clear()
        results[sp] = posterior_sample(m, prior, steps=2, device="cpu")
        assert seen and all(torch.allclose(s, torch.tensor(sp).expand_as(s)) for s in seen)
    assert "warning" not in results[(0.5, 0.5, 5.0)].info
    assert "outside the 0.4-6 mm" in results[(0.25, 0.25, 1.0)].info["warning"]


def test_the_next_default_config_warm_starts_exactly_from_the_shipped_prior() -> None:
    from medrecon.priors.config import load_train_config

    cfg = load_train_config(Path(__file__).resolve().parents[2] / "configs" / "prior"
                            / "default_v2.yaml")
    assert cfg.init_from == "default" and cfg.data.source == "rendered"
    weights, lineage = warm_start_weights(cfg.init_from, cfg)
    assert lineage["init_from"] == "default" and lineage["init_steps"] > 0
    new = make_denoiser(cfg).eval()
    missing, unexpected = new.load_state_dict(weights, strict=False)
    assert not unexpected and len(missing) == 4  # the voxel-size MLP: 2 weights, 2 biases
    old = load_prior("default").denoiser
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    cond = {"modality": torch.tensor([0, 1]), "position": torch.zeros(2, 3)}
    with torch.no_grad():
        assert torch.equal(new(x, 0.5, spacing=SPACINGS[2:], **cond), old(x, 0.5, **cond))


def test_the_real_renderer_feeds_the_training_source(tiny_config) -> None:  # type: ignore[no-untyped-def]
    """RenderedPatchSource on medrecon.priors.synthetic itself (not the test double): the
    recorded range is the distribution's documented support, and batches are model space."""
    from medrecon.priors.data import RenderedPatchSource, SpacingRange
    from medrecon.priors.synthetic import randomisation

    rng = SpacingRange.of_renderer()
    assert (rng.low, rng.high) == (randomisation.SPACING_RANGE_MM[0],
                                   randomisation.MAX_THICKNESS_MM)
    cfg = _rendered(tiny_config).replace(data={"source": "rendered", "patch_size": (8, 8, 8)})
    src = RenderedPatchSource(cfg.data, cfg.normalisation, seed=0)
    a = src.batch(3, 4)
    assert a.x.shape == (4, 1, 8, 8, 8) and torch.isfinite(a.x).all() and a.x.min() >= 0
    assert ((a.spacing >= rng.low) & (a.spacing <= rng.high)).all()
    assert (a.position.abs() <= 1).all()
    assert torch.equal(src.batch(3, 4).x, a.x)
