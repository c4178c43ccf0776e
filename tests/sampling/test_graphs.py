"""CUDA graphs of the patch network: the same results as eager calls, eager where they cannot
apply (CPU, gradients)."""

from __future__ import annotations

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
