"""The prior as a whole-volume denoiser on a device: tiling, precision, CUDA graphs.

:func:`prior_denoiser` turns a :class:`~medrecon.priors.Prior` (a patch network) into the
``D(x (B, I, J, K), sigma (B,))`` that every sampler of :mod:`medrecon.sampling` calls: patches
of the training size (:mod:`medrecon.sampling.tiling`), the modality, position and voxel-size
conditions, the network precision (:data:`PRECISIONS`) and, on CUDA, graph replays of the
network calls (:mod:`medrecon.sampling.graphs`). :func:`prior_on_device` gives the prior on the
sampling device without moving the caller's.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

import torch

from medrecon.errors import InputError
from medrecon.sampling.graphs import GraphedPatchDenoiser
from medrecon.sampling.tiling import PatchDenoiser, TiledDenoiser, patches_for_memory

if TYPE_CHECKING:
    from medrecon.priors import Prior

__all__ = ["AUTO_PRECISION", "PRECISIONS", "prior_denoiser", "prior_on_device"]

#: Network precisions of :func:`prior_denoiser`.
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "bf16-full", "fp32")
#: What ``precision="auto"`` means on CUDA: the bf16 network, 1.21x faster per pass than
#: autocast on an H200 (215 against 260 ms for a 256^3 volume) at the same quality (50 steps,
#: K = 4, test head, H100: MR R = 8 34.856 dB either way, CT 30 views 30.086 against 30.084;
#: benchmarks/RESULTS_sampling.md section 3c).
AUTO_PRECISION = "bf16-full"


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
                   cuda_graphs: bool = True) -> TiledDenoiser:
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
    ``cuda_graphs=False``.
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
    use_bf16 = precision == "bf16"
    if precision == "bf16-full":
        net = copy.deepcopy(net)
        net.network.to(torch.bfloat16)
    spacing = torch.tensor(spacing_mm or prior.spacing_mm, dtype=torch.float32, device=device)

    def patch_fn(xp: torch.Tensor, sig: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        labels = None if mod is None else torch.full((xp.shape[0],), mod, dtype=torch.long,
                                                     device=xp.device)
        # no autocast weight cache: a CUDA graph must recompute its casts at every replay
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16,
                            cache_enabled=False):
            out = net(xp.float(), sig.float(), modality=labels, position=pos,
                      spacing=spacing.expand(xp.shape[0], 3))
        return out.float()

    # Thin volumes: tiles as short as the network allows, but not under half the training
    # patch, where the denoiser drifts from its full-patch output (see medrecon.sampling.tiling).
    factor = size_multiple(net)
    min_tile = -(-(min(prior.patch_size) // 2) // factor) * factor
    if max_batch is None:
        if memory_budget_gb is not None:
            max_batch = patches_for_memory(memory_budget_gb * 2**30, prior.patch_size)
        elif device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            max_batch = patches_for_memory(0.5 * free, prior.patch_size)
        else:
            max_batch = 2
    fn: PatchDenoiser = patch_fn
    if cuda_graphs and device.type == "cuda":
        fn = GraphedPatchDenoiser(patch_fn)
    return TiledDenoiser(fn, prior.patch_size, mode=tiling, overlap=overlap,
                         max_batch=max_batch, uses_position=prior.uses_position,
                         generator=torch.Generator().manual_seed(int(seed) + 7919),
                         size_multiple=factor, min_tile=min_tile)
