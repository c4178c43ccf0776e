"""The prior as a whole-volume denoiser on a device: tiling, precision, CUDA graphs.

:func:`prior_denoiser` turns a :class:`~medrecon.priors.Prior` (a patch network) into the
``D(x (B, I, J, K), sigma (B,))`` that every sampler of :mod:`medrecon.sampling` calls: patches
of the training size (:mod:`medrecon.sampling.tiling`), the modality, position and voxel-size
conditions, the network precision (:data:`PRECISIONS`) and, on CUDA, graph replays of the
network calls (:mod:`medrecon.sampling.graphs`). :func:`prior_on_device` gives the prior on the
sampling device without moving the caller's.

Inside :func:`shared_network_calls`, sampling runs of one prior on one device, modality and
voxel size share one patch function: its bf16 copy of the network and, on CUDA, its graphs,
which the first run captures and later runs replay. A run of another prior, device, modality
or voxel size replaces it (one is kept at a time). The guard's runs use it (up to 7 sampling
runs on volumes of one shape, :mod:`medrecon.guard`), and so do the studies of
``reconstruct-many`` (:mod:`medrecon.batch`): in a fresh process each new call signature cost
0.15-0.5 s of eager set-up and about 0.07 s of capture per run, 21 signatures for a 256^3 CT
run (``benchmarks/RESULTS_sampling.md`` 3d). Outside the block nothing is kept, so a caller's
GPU memory is never held by graphs after a run returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from medrecon.errors import InputError
from medrecon.sampling.graphs import GraphedPatchDenoiser
from medrecon.sampling.tiling import PatchDenoiser, TiledDenoiser, patches_for_memory

if TYPE_CHECKING:
    from medrecon.priors import Prior

__all__ = ["AUTO_PRECISION", "PRECISIONS", "prior_denoiser", "prior_on_device",
           "shared_network_calls"]

#: Network precisions of :func:`prior_denoiser`.
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "bf16-full", "fp32")
#: What ``precision="auto"`` means on CUDA: the bf16 network, 1.21x faster per pass than
#: autocast on an H200 (215 against 260 ms for a 256^3 volume) at the same quality (50 steps,
#: K = 4, test head, H100: MR R = 8 34.856 dB either way, CT 30 views 30.086 against 30.084;
#: benchmarks/RESULTS_sampling.md section 3c).
AUTO_PRECISION = "bf16-full"


#: The patch functions shared inside :func:`shared_network_calls` (None outside), by key
#: (network, device, precision, modality label, voxel size, graphs), with the memory-derived
#: batch of the first run; each value keeps its network alive, so the key's ``id`` cannot be
#: reused while the entry exists.
_SHARED: contextvars.ContextVar[
    dict[tuple[Any, ...], tuple[torch.nn.Module, PatchDenoiser, int]] | None] = (
        contextvars.ContextVar("medrecon_shared_patch_fns", default=None))


@contextlib.contextmanager
def shared_network_calls() -> Iterator[None]:
    """Let the sampling runs inside the block share their patch functions (module docstring);
    nested blocks join the outer one, which frees everything when it ends."""
    if _SHARED.get() is not None:
        yield
        return
    token = _SHARED.set({})
    try:
        yield
    finally:
        shared = _SHARED.get()
        _SHARED.reset(token)
        if shared:
            shared.clear()


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None
                                                              else current)


def prior_on_device(prior: Prior, device: torch.device) -> Prior:
    """``prior`` itself when its network lies on ``device``, else a copy moved there.

    The caller's prior is never moved or changed (a prior loaded once can serve several
    devices); the copy costs one transfer of the weights per call.
    """
    net = prior.denoiser
    tensors = [*net.parameters(), *net.buffers()]
    if all(_same_device(t.device, device) for t in tensors):
        return prior
    return dataclasses.replace(prior, denoiser=copy.deepcopy(net).to(device))


def prior_denoiser(prior: Prior, modality: str, *, tiling: str = "fit", overlap: float = 0.25,
                   memory_budget_gb: float | None = None, max_batch: int | None = None,
                   seed: int = 0, precision: str = "auto",
                   device: torch.device | str = "cpu",
                   spacing_mm: tuple[float, float, float] | None = None,
                   cuda_graphs: bool = True, empty: torch.Tensor | None = None,
                   empty_value: float = 0.0) -> TiledDenoiser:
    """The prior as a whole-volume model-space denoiser ``D(x (B, I, J, K), sigma (B,))``.

    Patches of ``prior.patch_size`` (``fit`` tiling by default, see
    :mod:`medrecon.sampling.tiling`; along axes shorter than a patch, tiles only as long as the
    axis, at least half the patch), the modality label when the prior is conditioned on it,
    normalised patch centres when it uses position, the voxel size ``spacing_mm`` (mm along
    I, J, K; default the prior's own) when it is conditioned on it.

    ``precision``: ``"bf16"`` (autocast: bf16 convolutions, float32 weights and normalisation),
    ``"bf16-full"`` (a bf16 copy of the network, GroupNorm and activations in bf16 too: fewer
    float32 round trips through memory), ``"fp32"``, or ``"auto"``: :data:`AUTO_PRECISION` on
    CUDA, ``"bf16"`` on CPUs with bf16 in hardware, else ``"fp32"``. On CUDA the network
    calls are replayed from CUDA graphs (:mod:`medrecon.sampling.graphs`) unless
    ``cuda_graphs=False``. ``empty`` (boolean (I, J, K), e.g. CT air carved out by the
    data) holds ``empty_value`` instead of the network's estimate, see
    :class:`~medrecon.sampling.tiling.TiledDenoiser`.
    """
    from medrecon.device import cpu_has_native_bf16
    from medrecon.priors import modality_id
    from medrecon.priors.network import size_multiple

    if modality not in prior.modalities:
        raise InputError(f"The prior {prior.name!r} was trained on "
                         f"{', '.join(prior.modalities)}, not {modality}.")
    device = torch.device(device)
    net = prior.denoiser
    mod = modality_id(modality) if getattr(net, "num_modalities", 0) else None
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "auto":
        # bf16 on CPUs with bf16 in hardware: about -35 % network time on a 2-core AMX Xeon
        # (benchmarks/RESULTS.md).
        precision = (AUTO_PRECISION if device.type == "cuda" else
                     "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32")
    spacing_mm = tuple(float(v) for v in (spacing_mm or prior.spacing_mm))
    graphs = cuda_graphs and device.type == "cuda"
    if max_batch is None and memory_budget_gb is not None:
        max_batch = patches_for_memory(memory_budget_gb * 2**30, prior.patch_size)
    shared = _SHARED.get()
    key = (id(net), str(device), precision, mod, spacing_mm, graphs)
    if shared is not None and key in shared:
        # the first run's batch too: the memory its graphs hold would shrink a new estimate
        # and give every call a new signature
        _, fn, auto_batch = shared[key]
    else:
        fn = _patch_function(net, precision, mod, spacing_mm, device, graphs)
        auto_batch = 2
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            auto_batch = patches_for_memory(0.5 * free, prior.patch_size)
        if shared is not None:  # the latest key only: another's graphs are freed
            shared.clear()
            shared[key] = (net, fn, auto_batch)
    # Thin volumes: tiles as short as the network allows, but not under half the training
    # patch, where the denoiser drifts from its full-patch output (see medrecon.sampling.tiling).
    factor = size_multiple(net)
    min_tile = -(-(min(prior.patch_size) // 2) // factor) * factor
    return TiledDenoiser(fn, prior.patch_size, mode=tiling, overlap=overlap,
                         max_batch=auto_batch if max_batch is None else max_batch,
                         uses_position=prior.uses_position,
                         generator=torch.Generator().manual_seed(int(seed) + 7919),
                         size_multiple=factor, min_tile=min_tile, empty=empty,
                         empty_value=empty_value)


def _patch_function(net: torch.nn.Module, precision: str, mod: int | None,
                    spacing_mm: tuple[float, ...], device: torch.device,
                    graphs: bool) -> PatchDenoiser:
    """``fn(patches, sigma, position)`` of :func:`prior_denoiser` for a resolved precision."""
    use_bf16 = precision == "bf16"
    if precision == "bf16-full":
        net = copy.deepcopy(net)
        net.network.to(torch.bfloat16)
    spacing = torch.tensor(spacing_mm, dtype=torch.float32, device=device)

    def patch_fn(xp: torch.Tensor, sig: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        labels = None if mod is None else torch.full((xp.shape[0],), mod, dtype=torch.long,
                                                     device=xp.device)
        # no autocast weight cache: a CUDA graph must recompute its casts at every replay
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16,
                            cache_enabled=False):
            out = net(xp.float(), sig.float(), modality=labels, position=pos,
                      spacing=spacing.expand(xp.shape[0], 3))
        return out.float()

    return GraphedPatchDenoiser(patch_fn) if graphs else patch_fn
