"""The guard on a long parallel-beam CT volume (medrecon.guard with medrecon.slab): the
weight, the chains and TV's self-tuning run on a slab of slices; the fallback is TV's one
solve on all the data at the weight its slab tuning chose."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prior_factory import export_tiny_prior

from medrecon import guard as guard_module
from medrecon.guard import guarded_diffusion
from medrecon.holdout import holdout_split
from medrecon.io import Volume
from medrecon.io.measurement import Measurement
from medrecon.problem import measurement_problem
from medrecon.recon import ct
from medrecon.recon.base import ReconOptions
from medrecon.sampling import api
from medrecon.sampling.config import DiffusionConfig
from medrecon.simulate import CTSettings, SimulationConfig, simulate
from medrecon.slab import measurement_slab

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny tensors: one torch thread is faster on a shared runner."""


@pytest.fixture(scope="module")
def prior(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from medrecon.priors import load_prior

    path: Path = export_tiny_prior(tmp_path_factory.mktemp("prior"))
    return load_prior(path)


class _Checkerboard:
    """A whole-volume model-space denoiser (what :func:`medrecon.sampling.denoiser.
    prior_denoiser` returns) that answers a loud checkerboard whatever it is shown."""

    patches, calls = 1, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        idx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in x.shape[1:]],
                                         indexing="ij"))
        return ((idx.sum(0) % 2).to(x.dtype) * 4.0 - 1.0).expand_as(x).clone()


def _ct_long() -> Measurement:
    """A head-like blob in a volume 20 slices long (an 8-slice slab applies: 20 > 12)."""
    shape = (14, 14, 20)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = np.sqrt(i**2 + j**2 + (k / 0.6) ** 2) < 0.8
    hu = np.where(inside, 0.0, -1000.0).astype(np.float32)
    vol = Volume(hu, np.diag([2.0, 2.0, 2.0, 1.0]), modality="CT", units="HU")
    return simulate(vol, SimulationConfig(modality="ct", seed=2,  # type: ignore[arg-type]
                                          ct=CTSettings(views=21, dose_i0=1e5)))


def test_ct_guard_chooses_on_a_slab_and_solves_tv_on_all_data(
        prior: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "prior_denoiser", lambda *a, **k: _Checkerboard())
    runs: list[tuple[tuple[int, ...], float | None]] = []
    sample = guard_module._sample

    def recording(measurement: Measurement, prior: Any, config: DiffusionConfig,
                  *args: Any, **kwargs: Any) -> Any:
        runs.append((measurement.image_shape, config.noise_std))
        return sample(measurement, prior, config, *args, **kwargs)

    monkeypatch.setattr(guard_module, "_sample", recording)
    m = _ct_long()
    cfg = DiffusionConfig(steps=4, samples=2, seed=0, tune_slab=8)
    out = guarded_diffusion(m, cfg, prior, CPU)
    # the slab's sampling runs weigh the data by the whole volume's noise std, which is
    # smaller than the slab's own (its rows hold the matter)
    whole_std = measurement_problem(m, CPU).noise_std
    *tuning, final = runs  # the last: the final run on all the data, for the std map (K = 2)
    assert tuning and all(shape == (14, 14, 8) for shape, _ in tuning)
    assert final[0] == m.image_shape and "std_image" in out.info
    assert all(std == pytest.approx(whole_std, rel=1e-6) for _, std in runs)
    sub_std = measurement_problem(measurement_slab(m, CPU, 8)[0], CPU).noise_std  # type: ignore[index]
    assert sub_std > 1.02 * whole_std
    guard, slab = out.info["guard"], out.info["tune_slab"]
    assert guard["choice"] == "classical" and guard["method"] == "tv"
    assert (slab["axis"], slab["stop"] - slab["start"], slab["length"]) == (2, 8, 20)
    assert f"on {slab['text']}" in out.info["guard_line"]
    assert f"weight chosen on {slab['text']}" in out.info["autotune_line"]
    assert list(out.info["stage_seconds"])[:2] == ["set-up", f"slab ({slab['text']}) and split"]
    assert "guard: classical all-data solve" in out.info["stage_seconds"]
    lam = guard["classical_lam"]
    tuned = ct.tv_method(m, ReconOptions(tol=1e-4, extra={"tune_slab": 8}), CPU)
    assert tuned.info["tune_slab"] == slab
    assert tuned.info["lam"] == pytest.approx(lam, rel=1e-6)
    fixed = ct.tv_method(m, ReconOptions(lam=lam, tol=1e-4), CPU)
    assert out.image.shape == m.image_shape
    np.testing.assert_array_equal(out.image, fixed.image)
    sub, _ = measurement_slab(m, CPU, 8) or (None, None)
    assert sub is not None and holdout_split(sub, CPU).text in guard["holdout"]
