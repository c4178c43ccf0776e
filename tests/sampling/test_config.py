"""``DiffusionConfig``: the typed, validated settings of ``--method diffusion``."""

from __future__ import annotations

from pathlib import Path

import pytest

from medrecon.config import dump_config, from_dict, load_config, to_dict
from medrecon.errors import ConfigError
from medrecon.sampling.api import SamplerOptions
from medrecon.sampling.config import DiffusionConfig


def test_defaults_and_sampler_options_per_modality() -> None:
    cfg = DiffusionConfig()
    assert (cfg.prior, cfg.sampler, cfg.steps, cfg.samples, cfg.tiling, cfg.precision) == (
        "default", "dds", 50, 1, "fit", "auto")
    assert cfg.sampler_options("MR") == SamplerOptions.defaults("MR", "dds")
    assert cfg.sampler_options("CT") == SamplerOptions()
    mr = cfg.resolved("MR")
    assert (mr.lam, mr.cg_iters, mr.eta, mr.zeta) == (0.1, 10, 0.85, 1.0)
    assert DiffusionConfig(sampler="diffpir").resolved("CT").zeta == 0.3


def test_overrides_reach_the_sampler() -> None:
    cfg = from_dict(DiffusionConfig, {"sampler": " DiffPIR", "lam": 0.5, "eta": 0.2,
                                      "cg_iters": 3, "zeta": 0.7, "tiling": "ROLL"})
    assert (cfg.sampler, cfg.tiling) == ("diffpir", "roll")
    opt = cfg.sampler_options("MR")
    assert (opt.lam, opt.eta, opt.cg_iters, opt.zeta_diffpir) == (0.5, 0.2, 3, 0.7)
    assert DiffusionConfig(sampler="dps", zeta=2.0).sampler_options("CT").zeta_dps == 2.0
    dds = from_dict(DiffusionConfig, {"cg_iters_high": 3})
    assert dds.sampler_options("MR").cg_iters_high == 3
    assert dds.resolved("MR").cg_iters_high == 3
    assert DiffusionConfig(sampler="dps").resolved("MR").cg_iters_high is None


def test_coil_energy_reaches_the_mr_problem_only() -> None:
    cfg = from_dict(DiffusionConfig, {"coil_energy": 0.99})
    assert cfg.sampler_options("MR").coil_energy == 0.99
    assert cfg.sampler_options("CT").coil_energy is None
    assert cfg.resolved("MR").coil_energy == 0.99 and cfg.resolved("CT").coil_energy is None
    # The default, written into the settings file: 1 (all coils) for MR.
    assert DiffusionConfig().resolved("MR").coil_energy == 1.0


@pytest.mark.parametrize(("data", "fragment"), [
    ({"tilling": "roll"}, "Did you mean 'tiling'?"),
    ({"tiling": "foo"}, "Unknown diffusion tiling 'foo'"),
    ({"precision": "fp16"}, "Unknown network precision 'fp16'"),
    ({"sampler": "ddpm"}, "Unknown sampler 'ddpm'"),
    ({"eta": 2}, "key 'eta' must be <= 1.0"),
    ({"cg_iters": 0}, "key 'cg_iters' must be >= 1"),
    ({"samples": "four"}, "key 'samples' must be an integer"),
    ({"lam": 0}, "key 'lam' must be > 0.0"),
    ({"coil_energy": 1.5}, "key 'coil_energy' must be <= 1.0"),
    ({"noise_std": "abc"}, "key 'noise_std' must be a number"),
    ({"prior": "w.safetensors"}, "is a weights file"),
    ({"sampler": "diffpir", "zeta": 3}, "DiffPIR's zeta must lie in [0, 1], got 3"),
])
def test_bad_settings_are_one_sentence(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(DiffusionConfig, data, source="diffusion options")
    assert fragment in str(exc.value) and str(exc.value).startswith("diffusion options: ")


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = DiffusionConfig(samples=4, seed=3, tiling="blend", memory_budget_gb=2.5).resolved("CT")
    path = dump_config(cfg, tmp_path / "d.yaml")
    assert load_config(path, DiffusionConfig) == cfg
    assert to_dict(cfg)["samples"] == 4
