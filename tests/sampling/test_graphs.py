"""CUDA graphs of the patch network: the same results as eager calls, eager where they cannot
apply (CPU, gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.sampling.graphs import GraphedPatchDenoiser


def _net(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.GroupNorm(2, 4),
                               torch.nn.SiLU(), torch.nn.Conv3d(4, 1, 3, padding=1)).to(device)


def _fn(net: torch.nn.Module, calls: list[int]):
    def fn(x: torch.Tensor, sigma: torch.Tensor, position: torch.Tensor | None) -> torch.Tensor:
        calls.append(x.shape[0])
        out = net(x) * sigma.reshape(-1, 1, 1, 1, 1)
        return out if position is None else out + position[:, :1].reshape(-1, 1, 1, 1, 1)
    return fn


def test_cpu_and_gradient_calls_run_eagerly() -> None:
    calls: list[int] = []
    net = _net("cpu")
    graphed = GraphedPatchDenoiser(_fn(net, calls))
    x = torch.randn(2, 1, 4, 4, 4, requires_grad=True)
    sigma = torch.ones(2)
    for _ in range(3):
        out = graphed(x, sigma, None)
    out.sum().backward()  # gradients flow: nothing was captured
    assert x.grad is not None and graphed.captured == 0 and graphed.replays == 0
    assert calls == [2, 2, 2]


@pytest.mark.gpu
def test_graph_replays_match_eager_calls() -> None:
    calls: list[int] = []
    net = _net("cuda")
    eager = _fn(net, [])
    graphed = GraphedPatchDenoiser(_fn(net, calls), max_graphs=2)
    g = torch.Generator("cuda").manual_seed(0)
    with torch.no_grad():
        for shape in [(3, 1, 8, 8, 8), (3, 1, 8, 8, 8), (3, 1, 8, 8, 8), (2, 1, 8, 4, 8),
                      (2, 1, 8, 4, 8), (1, 1, 4, 4, 4), (1, 1, 4, 4, 4), (1, 1, 4, 4, 4)]:
            x = torch.randn(shape, generator=g, device="cuda")
            sigma = torch.rand(shape[0], generator=g, device="cuda")
            pos = torch.rand(shape[0], 3, generator=g, device="cuda")
            torch.testing.assert_close(graphed(x, sigma, pos), eager(x, sigma, pos))
    # first call of a shape eager, second captured (the graph's recording and replay), later
    # ones replayed; the third shape exceeds max_graphs and stays eager
    assert graphed.captured == 2 and graphed.replays == 3
    assert len(calls) == 2 + 2 + 3  # eager + capture per captured shape, all eager for the last


def test_runs_share_the_patch_function_only_inside_the_block(tiny_prior_path) -> None:
    from medrecon.priors import load_prior
    from medrecon.sampling.denoiser import prior_denoiser, shared_network_calls

    prior = load_prior(tiny_prior_path)
    mod = prior.modalities[0]
    outside = [prior_denoiser(prior, mod, seed=s) for s in (0, 1)]
    assert outside[0].patch_denoiser is not outside[1].patch_denoiser
    with shared_network_calls():
        a = prior_denoiser(prior, mod, seed=0)
        with shared_network_calls():  # a nested block joins the outer one
            b = prior_denoiser(prior, mod, seed=1)
        other = prior_denoiser(prior, mod, seed=0, spacing_mm=(1.0, 1.0, 1.0))
        again = prior_denoiser(prior, mod, seed=0)  # one key kept at a time: built anew
    after = prior_denoiser(prior, mod, seed=0)
    assert a.patch_denoiser is b.patch_denoiser  # one network function for both runs
    assert a.generator is not b.generator  # each run its own tiling offsets
    assert other.patch_denoiser is not a.patch_denoiser  # another voxel size: its own
    assert again.patch_denoiser is not a.patch_denoiser
    assert after.patch_denoiser is not a.patch_denoiser  # nothing kept after the block


@pytest.mark.gpu
def test_runs_inside_the_block_replay_the_first_runs_graphs(tiny_prior_path,
                                                            mr_measurement) -> None:
    from medrecon.priors import load_prior
    from medrecon.sampling import posterior_sample
    from medrecon.sampling.denoiser import prior_denoiser, shared_network_calls

    prior = load_prior(tiny_prior_path, device="cuda")
    m, _ = mr_measurement

    def run(seed: int):  # noqa: ANN202
        return posterior_sample(m, prior, steps=4, samples=1, seed=seed, device="cuda")

    alone = run(0)
    with shared_network_calls():
        first = run(0)
        fn = prior_denoiser(prior, m.modality, device=first.info["device"],
                            spacing_mm=tuple(first.info["spacing_mm"])).patch_denoiser
        replays = fn.replays
        second = run(0)
    assert fn.replays > replays  # the second run was served by the first run's function
    # the same computation; a run alone may batch its patches differently (its own memory
    # estimate), which moves bf16 results by rounding only
    for res in (first, second):
        np.testing.assert_allclose(res.mean, alone.mean, rtol=1e-2,
                                   atol=1e-2 * np.abs(alone.mean).max())
