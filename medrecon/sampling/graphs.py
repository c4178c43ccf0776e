"""CUDA graphs of the patch network: one launch per call instead of hundreds.

In eager mode every network call costs the CPU a few hundred kernel launches. Large batches
hide that behind the GPU's own work, but small volumes and the ``fit`` tiling's groups of a
few tiles do not: at 128^3 ``fit`` made 3.6 network calls of about 4 tiles per step and spent
41 ms on each (H200), about what a call of 26 full patches costs. A CUDA graph records the
kernels of one call once and replays them with a single launch; on an H100 that took 0.9 s
off a 50-step 128^3 run and 0.6-1.0 s off 256^3 ones (``benchmarks/RESULTS_sampling.md`` 3c).
The first calls cost more: in a fresh process a 256^3 CT run met 21 call signatures, whose
eager first calls took 3.4 s (cuDNN plans and kernel loading per shape) and whose captures
(each empties PyTorch's cached GPU memory first, as ``torch.cuda.graph`` does) 1.4 s, against
9.3 s for the 166 replays (H100, ``benchmarks/RESULTS_sampling.md`` 3d).

:class:`GraphedPatchDenoiser` wraps a :data:`~medrecon.sampling.tiling.PatchDenoiser`. The
first call with a given input signature (batch, tile shape, dtype, device) runs eagerly (it
warms cuDNN's plans and the allocator up); the second captures a graph into static input
buffers, and every later call copies its inputs into them, replays, and returns a copy of the
static output. All graphs share one memory pool: they are only ever replayed one at a time,
and each graph's output stays allocated. Calls that need gradients (DPS), CPU tensors, more
than ``max_graphs`` signatures, or a capture that fails (an operation that cannot be captured)
run eagerly, so the wrapper never changes what is computed, only how it is launched.
"""

from __future__ import annotations

import torch

from medrecon.sampling.tiling import PatchDenoiser

__all__ = ["GraphedPatchDenoiser"]

_Key = tuple[tuple[int, ...], torch.dtype, torch.device, bool]


class GraphedPatchDenoiser:
    """``fn(patches, sigma, position)`` replayed from CUDA graphs (see the module docstring).

    Attributes:
        captured: number of graphs captured so far; ``replays``: calls served by a graph.
    """

    def __init__(self, fn: PatchDenoiser, max_graphs: int = 64) -> None:
        self.fn = fn
        self.max_graphs = int(max_graphs)
        self.enabled = True
        self.replays = 0
        self._seen: set[_Key] = set()
        self._graphs: dict[_Key, tuple[torch.cuda.CUDAGraph, list[torch.Tensor | None],
                                       torch.Tensor]] = {}
        self._pool: tuple[int, int] | None = None

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor,
                 position: torch.Tensor | None) -> torch.Tensor:
        if not (self.enabled and x.is_cuda) or (torch.is_grad_enabled() and x.requires_grad):
            return self.fn(x, sigma, position)
        key: _Key = (tuple(x.shape), x.dtype, x.device, position is not None)
        entry = self._graphs.get(key)
        if entry is None:
            if key not in self._seen or len(self._graphs) >= self.max_graphs:
                self._seen.add(key)  # first time: eager, as warm-up for the capture
                return self.fn(x, sigma, position)
            entry = self._capture(key, x, sigma, position)
            if entry is None:
                return self.fn(x, sigma, position)
        graph, static, out = entry
        for buf, value in zip(static, (x, sigma, position), strict=True):
            if buf is not None:
                buf.copy_(value)
        graph.replay()
        self.replays += 1
        return out.clone()

    def _capture(self, key: _Key, x: torch.Tensor, sigma: torch.Tensor,
                 position: torch.Tensor | None
                 ) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor | None], torch.Tensor] | None:
        static: list[torch.Tensor | None] = [x.clone(), sigma.clone(),
                                             None if position is None else position.clone()]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                out = self.fn(static[0], static[1], static[2])  # type: ignore[arg-type]
        except RuntimeError:  # an operation that cannot be captured: stay eager from now on
            self.enabled = False
            return None
        self._pool = graph.pool()
        self._graphs[key] = (graph, static, out)
        return self._graphs[key]
