"""Typed YAML configs: loading, nesting, enums, overrides, round trips, and every error path."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal

import pytest

from medrecon.config import dump_config, from_dict, load_config, option, to_dict
from medrecon.errors import ConfigError


class Sampler(StrEnum):
    EDM = "edm"
    DDIM = "ddim"


@dataclass(frozen=True)
class Net:
    channels: tuple[int, ...] = option((32, 64), ge=1)
    dropout: float = option(0.0, ge=0.0, lt=1.0)
    attention: bool = False

    def __post_init__(self) -> None:
        if self.attention and len(self.channels) < 2:
            raise ValueError("attention needs at least two levels")


@dataclass(frozen=True)
class Run:
    name: str
    sampler: Sampler = Sampler.EDM
    steps: int = option(50, ge=1, help="reverse-diffusion steps")
    sigma_range: tuple[float, float] = (0.002, 80.0)
    net: Net = field(default_factory=Net)
    out: Path | None = None
    seed: int | None = None
    tags: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    precision: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        if self.sigma_range[0] >= self.sigma_range[1]:
            raise ValueError("sigma_range must be increasing")
        if self.seed is not None and self.seed < 0:
            raise ConfigError("seed must not be negative.")


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_full_config(tmp_path: Path) -> None:
    p = write(tmp_path, """
name: demo
sampler: ddim
steps: 20
sigma_range: [0.01, 50]
net:
  channels: [16, 32, 64]
  dropout: 1e-1      # YAML 1.1 reads this as a string; float fields accept it
  attention: true
out: results/run1
seed: 7
tags: [a, b]
weights: {dc: 1.5, prior: 2}
precision: bf16
""")
    cfg = load_config(p, Run)
    assert cfg == Run(name="demo", sampler=Sampler.DDIM, steps=20, sigma_range=(0.01, 50.0),
                      net=Net(channels=(16, 32, 64), dropout=0.1, attention=True),
                      out=Path("results/run1"), seed=7, tags=["a", "b"],
                      weights={"dc": 1.5, "prior": 2.0}, precision="bf16")
    assert isinstance(cfg.sampler, Sampler) and isinstance(cfg.sigma_range, tuple)
    assert isinstance(cfg.net.channels, tuple) and isinstance(cfg.weights["prior"], float)


def test_defaults_and_empty_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "name: x\n"), Run)
    assert cfg.steps == 50 and cfg.net == Net() and cfg.out is None
    assert load_config(write(tmp_path, "", "empty.yaml"), Net) == Net()
    assert load_config(None, Net) == Net()


def test_enum_values_are_case_insensitive_and_names_accepted() -> None:
    assert from_dict(Run, {"name": "x", "sampler": "DDIM"}).sampler is Sampler.DDIM
    assert from_dict(Run, {"name": "x", "sampler": "EDM"}).sampler is Sampler.EDM


def test_round_trip_dump_and_load(tmp_path: Path) -> None:
    cfg = Run(name="r", sampler=Sampler.DDIM, net=Net(channels=(8,)), out=Path("o"), seed=3,
              tags=["t"], weights={"a": 0.5})
    out = dump_config(cfg, tmp_path / "sub" / "config.yaml")
    assert out.is_file()
    text = out.read_text()
    assert "sampler: ddim" in text and "!!python" not in text  # plain data, no tags
    assert load_config(out, Run) == cfg
    assert to_dict(cfg)["net"] == {"channels": [8], "dropout": 0.0, "attention": False}
    assert not list((tmp_path / "sub").glob(".*tmp*"))  # atomic: no temporary left behind


def test_overrides(tmp_path: Path) -> None:
    p = write(tmp_path, "name: x\nnet: {dropout: 0.2}\n")
    cfg = load_config(p, Run, overrides=["steps=5", "net.attention=true", "sampler=ddim"])
    assert cfg.steps == 5 and cfg.net.attention and cfg.net.dropout == 0.2
    assert cfg.sampler is Sampler.DDIM
    cfg = load_config(p, Run, overrides={"net.channels": [4, 4]})
    assert cfg.net.channels == (4, 4)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(p, Run, overrides=["steps"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(p, Run, overrides=["name.sub=1"])
    with pytest.raises(ConfigError, match="overrides.*'steps' must be >= 1"):
        load_config(p, Run, overrides=["steps=0"])


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("name: x\nstepz: 3\n", r"run\.yaml: has an unknown key 'stepz'.*Did you mean 'steps'\?"),
        ("name: x\nnet: {chanels: [1]}\n", r"unknown key 'net\.chanels'.*'channels'"),
        ("steps: 3\n", r"run\.yaml: key 'name' is required"),
        ("name: 12\n", r"key 'name' must be a string, got 12"),
        ("name: x\nsteps: 2.5\n", r"key 'steps' must be an integer, got 2\.5"),
        ("name: x\nsteps: true\n", r"key 'steps' must be an integer, got true"),
        ("name: x\nsteps: '5'\n", r"key 'steps' must be an integer, got '5'"),
        ("name: x\nsteps: 0\n", r"key 'steps' must be >= 1, got 0"),
        ("name: x\nnet: {dropout: 1.0}\n", r"key 'net\.dropout' must be < 1\.0"),
        ("name: x\nnet: {dropout: .nan}\n", r"key 'net\.dropout' must be >= 0\.0"),
        ("name: x\nnet: {dropout: fast}\n", r"key 'net\.dropout' must be a number, got 'fast'"),
        ("name: x\nnet: {channels: [8, 0]}\n", r"key 'net\.channels' must be >= 1, got 0"),
        ("name: x\nnet: {channels: [8, a]}\n", r"key 'net\.channels\[1\]' must be an integer"),
        ("name: x\nnet: {attention: 1}\n", r"key 'net\.attention' must be true or false"),
        ("name: x\nnet: [1, 2]\n", r"key 'net' must be a mapping of Net options"),
        ("name: x\nsampler: euler\n", r"key 'sampler' must be one of 'edm', 'ddim', got 'euler'"),
        ("name: x\nsigma_range: [1.0]\n", r"key 'sigma_range' must be a list of 2 items, got 1"),
        ("name: x\nsigma_range: 3\n", r"key 'sigma_range' must be a list, got 3"),
        ("name: x\nsigma_range: [5, 1]\n", r"run\.yaml: sigma_range must be increasing\.$"),
        ("name: x\nseed: abc\n", r"key 'seed' must be an integer, got 'abc'"),
        ("name: x\nnet: {attention: true, channels: [4]}\n",
         r"run\.yaml: in 'net': attention needs at least two levels\.$"),
        ("name: x\nseed: -1\n", r"run\.yaml: seed must not be negative\.$"),
        ("name: x\nsteps: null\n", r"key 'steps' must not be null"),
        ("name: x\ntags: a\n", r"key 'tags' must be a list"),
        ("name: x\nweights: {dc: x}\n", r"key 'weights\.dc' must be a number"),
        ("name: x\nprecision: fp16\n", r"key 'precision' must be one of 'fp32', 'bf16'"),
        ("- a\n- b\n", r"run\.yaml: must hold a mapping of options at the top level"),
        ("name: [unclosed\n", r"run\.yaml: YAML syntax error at line \d+, column \d+"),
    ],
)
def test_error_sentences(tmp_path: Path, text: str, pattern: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(p, Run)
    msg = str(info.value)
    assert str(p) in msg and "\n" not in msg.strip()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", Run)


def test_from_dict_rejects_non_dataclass() -> None:
    with pytest.raises(TypeError):
        from_dict(dict, {})  # type: ignore[arg-type]


def test_configs_are_frozen() -> None:
    import dataclasses

    cfg = from_dict(Net, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dropout = 0.5  # type: ignore[misc]
