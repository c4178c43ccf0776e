"""Denoising volumes larger than the prior's training patch.

The prior is trained on patches (e.g. 64^3) and is a convolutional U-Net, so a whole 256^3
volume does not fit its receptive field statistics and does not fit memory either. Four
tilings are offered:

* ``"fit"`` (default): random-offset non-overlapping tiles fitted to the volume instead of
  padded around it: each axis is cut at ``o, o + patch, o + 2 patch, ...`` (``o`` random, a
  multiple of ``min_tile``, or of ``size_multiple`` without one), and an end piece shorter
  than ``min_tile`` joins its neighbour, so the end tiles are between ``min_tile`` and
  ``patch + min_tile`` long. Every voxel is denoised once per call, in a tile of real
  neighbours (no wrap-around as in ``roll``), at 1x the network work of the volume, and the
  seams move from step to step, so the reverse process averages them out instead of
  accumulating them (PaDIS, Hu et al. 2024; DiffusionBlend, Song et al. 2024). The tiles of one
  shape go to the network together. Offsets on the coarse ``min_tile`` grid (0 or 32 for 64^3
  patches) keep the tile shapes few (lengths 32, 64 and the volume's remainder): every new
  input shape costs the GPU convolution libraries a plan search, and offsets in steps of 8
  gave tiles of up to 8 lengths per axis, 3 patches per network call and 2-4x the time of
  ``shift`` on an H100. On the coarse grid, against ``shift`` on the same H100 (50 steps,
  K = 4, test head): the same quality (MR R = 8 +0.05 dB, CT 30 views -0.02 dB) and 256^3 in
  14-16 s instead of 29-34 s (``benchmarks/RESULTS_sampling.md`` section 3c).
* ``"shift"``: the same random grid padded around the volume instead of fitted to it: the
  volume is cut into full patches on a grid whose origin is shifted by a random offset in
  [0, patch) per axis, so every tile has the training size, at up to (1 + patch / size)^3 the
  network work of the volume (3.4x for 128^3 with 64^3 patches, 2x for 256^3).
* ``"roll"``: random-shift tiling without the extra row of patches: the volume
  (reflect-padded to a multiple of the patch) is rolled circularly by the random offset, cut
  into exactly ceil(size / patch) patches per axis and rolled back. Cost 1x, one tile shape,
  at the price of border patches that join the two opposite faces of the volume (usually air)
  for that step (-0.13 dB MR, -0.49 dB CT against ``shift``).
* ``"blend"``: overlapping patches (stride = patch * (1 - overlap)) combined with raised-cosine
  weights normalised to sum to one at every voxel. Deterministic and seam-free at a single
  call, at (1 / (1 - overlap))^3 times the network cost (2.4x for overlap 0.25); use it for a
  single-shot denoise or when seams show.

Along an axis shorter than the patch, the tile is only as long as the axis rounded up to a
multiple of ``size_multiple`` (what the network needs: 8 for the default prior's four levels)
and at least ``min_tile`` long; with ``size_multiple=None`` such axes are padded to the full
patch. :func:`~medrecon.sampling.denoiser.prior_denoiser` sets ``min_tile`` to half the training
patch (32): a single slice or a 24-slice slab then costs a 64 x 64 x 32 tile per patch instead
of 64^3, a 40-slice slab a 40-deep one. Shorter tiles would cost less still, but the network,
trained on 64^3 patches, denoises them differently: on a real CT slice 8-deep tiles lost 2.1 dB
and 16-deep ones 0.9 dB against the full patch, 32-deep ones 0.2-0.3 dB on two CT slices and
nothing on MR (``benchmarks/RESULTS_sampling.md``, "Thin slabs and single slices"). Padding is by
reflection (statistics of a noisy state are preserved; zero padding would put an edge of pure
noise into the patch), and padded voxels are discarded. Tile sizes only change along axes the
volume does not fill, so larger volumes are tiled exactly as before.

When the prior ``uses_position``, each patch gets its centre in normalised coordinates of the
full volume, ``2 * centre / (shape - 1) - 1`` per voxel axis (the training convention of
:mod:`medrecon.priors.data`), clipped to [-1, 1] for border patches of the shifted grid. The
centre is that of a full training patch at the tile's origin, also for a shortened tile, so
the position input is what training (:mod:`medrecon.priors.synthetic.rendering`) gives a scan
shorter than the patch.

Patches from all chains are evaluated in batches of ``max_batch`` full-size patches (see
:func:`patches_for_memory`; shortened tiles go proportionally more to a batch), and with
``checkpoint=True`` each batch is recomputed in the backward pass (DPS) so that gradient memory
is bounded by one batch, not the volume.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = ["TILINGS", "PatchDenoiser", "TiledDenoiser", "blend_weights", "fit_segments",
           "patches_for_memory"]

#: The tiling modes of :class:`TiledDenoiser` (see the module docstring).
TILINGS: tuple[str, ...] = ("shift", "roll", "fit", "blend")

# patches (P, 1, X, Y, Z), sigma (P,), position (P, 3) or None -> x0_hat (P, 1, X, Y, Z)
PatchDenoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def patches_for_memory(budget_bytes: float, patch_size: Sequence[int],
                       bytes_per_voxel: float = 4096.0, grad: bool = False) -> int:
    """How many patches one network call may take under ``budget_bytes`` of activations.

    ``bytes_per_voxel`` is the network's peak activation memory per input voxel (inference,
    float32/bf16 mixed); a 3D U-Net of the default prior's size needs a few KiB. Gradients
    through the network (DPS) keep about 3x more. At least 1.
    """
    voxels = math.prod(int(p) for p in patch_size)
    per_patch = voxels * bytes_per_voxel * (3.0 if grad else 1.0)
    return max(1, int(budget_bytes // per_patch))


def _window_1d(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Raised cosine sin^2(pi (i + 0.5) / n), i = 0..n-1: positive everywhere, peaked centrally."""
    i = torch.arange(n, dtype=torch.float64, device=device)
    return (torch.sin(math.pi * (i + 0.5) / n) ** 2).to(dtype)


def _starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch origins covering [0, size) with the last patch flush with the end."""
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch, stride)) + [size - patch]
    return sorted(set(starts))


def blend_weights(shape: Sequence[int], patch: Sequence[int], overlap: float,
                  dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
                  ) -> tuple[list[tuple[int, int, int]], torch.Tensor, torch.Tensor]:
    """Origins of the overlapping patches, the per-patch window and the per-voxel normaliser.

    Returns:
        (origins, window (X, Y, Z), total (I, J, K)) with ``total`` the sum of the windows of
        all patches covering each voxel; the blending weight of a patch at a voxel is
        ``window / total`` and these weights sum to one at every voxel.
    """
    device = torch.device(device)
    strides = [max(1, int(round(p * (1.0 - overlap)))) for p in patch]
    axes = [_starts(int(s), int(p), st) for s, p, st in zip(shape, patch, strides, strict=True)]
    w = [_window_1d(int(p), dtype, device) for p in patch]
    window = w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]
    total = torch.zeros(tuple(int(s) for s in shape), dtype=dtype, device=device)
    origins = [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]
    for a, b, c in origins:
        pa, pb, pc = (min(int(p), int(s)) for p, s in zip(patch, shape, strict=True))
        total[a:a + pa, b:b + pb, c:c + pc] += window[:pa, :pb, :pc]
    return origins, window, total


def fit_segments(size: int, patch: int, offset: int, min_len: int) -> list[tuple[int, int]]:
    """(start, length) pieces that cover [0, size) exactly, cut at ``offset + t patch``; an end
    piece shorter than ``min_len`` joins its neighbour (when there is one)."""
    cuts = [0, *range(offset % patch or patch, size, patch), size]
    segs = [(a, b - a) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]
    if len(segs) > 1 and segs[0][1] < min_len:
        segs[:2] = [(0, segs[0][1] + segs[1][1])]
    if len(segs) > 1 and segs[-1][1] < min_len:
        (a, la), (_, lb) = segs[-2], segs[-1]
        segs[-2:] = [(a, la + lb)]
    return segs


def _pad(x: torch.Tensor, pads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Pad the last three dims of (N, I, J, K) by ((lo, hi), ...), reflecting (without
    repeating the edge voxel) in as many rounds as needed; a length-1 axis is replicated."""
    out = x
    for d, (lo, hi) in enumerate(pads):
        dim = out.ndim - 3 + d
        while lo > 0 or hi > 0:
            n = out.shape[dim]
            if n == 1:
                reps = [1] * out.ndim
                reps[dim] = lo + 1 + hi
                out = out.repeat(*reps)
                break
            a, b = min(lo, n - 1), min(hi, n - 1)
            parts = []
            if a:
                parts.append(out.index_select(dim, torch.arange(a, 0, -1, device=out.device)))
            parts.append(out)
            if b:
                parts.append(out.index_select(
                    dim, torch.arange(n - 2, n - 2 - b, -1, device=out.device)))
            out = torch.cat(parts, dim=dim)
            lo, hi = lo - a, hi - b
    return out


class TiledDenoiser:
    """``D(x (B, I, J, K), sigma (B,)) -> x0_hat (B, I, J, K)`` from a patch denoiser.

    Args:
        patch_denoiser: the prior on patches, see :data:`PatchDenoiser`.
        patch_size: (X, Y, Z) training patch size.
        mode: ``"fit"`` (random non-overlapping tiling per call), ``"shift"``, ``"roll"`` or
            ``"blend"``.
        overlap: fraction of the patch shared by neighbours in ``"blend"`` mode.
        max_batch: full-size patches per network call (memory budget,
            :func:`patches_for_memory`); shortened tiles go proportionally more to a call.
        size_multiple: along an axis shorter than the patch, the tile is the axis length
            rounded up to a multiple of this (the network's downsampling factor, see
            :func:`medrecon.priors.network.size_multiple`); None: the full patch.
        min_tile: with ``size_multiple``, the shortest such tile (a multiple of
            ``size_multiple``; capped at the patch; 0: no floor).
        uses_position: pass the normalised patch centres to the patch denoiser.
        generator: source of the random grid shifts (CPU generator; seeded for reproducibility).
        checkpoint: recompute each patch batch in the backward pass when gradients are needed.
        empty: optional boolean (I, J, K) mask of voxels known to be empty (CT: air that the
            data carve out, :func:`medrecon.operators.empty_space.empty_voxels`): the output
            holds ``empty_value`` there instead of the network's estimate, and ``fit`` skips
            the tiles that lie wholly inside it (no network call).
        empty_value: the model-space value of empty space (the prior's background, 0).
    Attributes:
        calls, patches: network calls and patches evaluated so far (for NFE/timing reports).
        network_seconds: time inside ``patch_denoiser`` so far, so that the caller can tell
            the network from the tiling around it (on CUDA measured by events, read when the
            attribute is read, so the hot path never waits for the GPU).
    """

    def __init__(self, patch_denoiser: PatchDenoiser, patch_size: Sequence[int],
                 mode: str = "fit", overlap: float = 0.25, max_batch: int = 8,
                 uses_position: bool = False, generator: torch.Generator | None = None,
                 checkpoint: bool = True, size_multiple: int | None = None,
                 min_tile: int = 0, empty: torch.Tensor | None = None,
                 empty_value: float = 0.0) -> None:
        if mode not in TILINGS:
            raise ValueError(f"tiling mode must be one of {', '.join(TILINGS)}, got {mode!r}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError("overlap must lie in [0, 1)")
        self.patch_denoiser = patch_denoiser
        self.patch = tuple(int(p) for p in patch_size)
        if size_multiple is not None and (size_multiple < 1
                                          or any(p % size_multiple for p in self.patch)):
            raise ValueError(f"size_multiple {size_multiple} must be positive and divide the "
                             f"patch size {self.patch}")
        if size_multiple is not None and min_tile % size_multiple:
            raise ValueError(f"min_tile {min_tile} must be a multiple of size_multiple "
                             f"{size_multiple}")
        self.size_multiple = size_multiple
        self.min_tile = int(min_tile)
        self.mode, self.overlap = mode, float(overlap)
        self.max_batch = max(1, int(max_batch))
        self.uses_position = uses_position
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.checkpoint = checkpoint
        self.empty = empty
        self.empty_value = float(empty_value)
        # the tile tests on the host: a device mask would wait for the GPU at every tile
        self._empty_host = None if empty is None else empty.detach().cpu()
        self.calls = 0
        self.patches = 0
        self._seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @property
    def network_seconds(self) -> float:
        """Seconds inside ``patch_denoiser`` so far (waits for the GPU's pending calls)."""
        if self._events:
            self._events[-1][1].synchronize()
            self._seconds += sum(a.elapsed_time(b) for a, b in self._events) / 1e3
            self._events.clear()
        return self._seconds

    # -- helpers ------------------------------------------------------------------------------
    def _tile_size(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """The tile (X, Y, Z) for a volume of ``shape``: the patch, shortened along axes the
        volume does not fill to the next multiple of ``size_multiple``, ``min_tile`` at least."""
        m = self.size_multiple
        if m is None:
            return self.patch  # type: ignore[return-value]
        return tuple(p if s >= p else min(p, max(self.min_tile, -(-int(s) // m) * m))
                     for s, p in zip(shape, self.patch, strict=True))  # type: ignore[return-value]

    def _positions(self, origins: list[tuple[int, int, int]], shape: Sequence[int],
                   device: torch.device, half: Sequence[float] | None = None) -> torch.Tensor:
        """(n, 3) normalised centres ``origin + half`` for origins given in unpadded volume
        coordinates; by default the centre of a full training patch at each origin, whatever
        the tile size (``fit`` passes its own tiles' half lengths)."""
        o = torch.tensor(origins, dtype=torch.float64)
        half = torch.tensor(half if half is not None else [p // 2 for p in self.patch],
                            dtype=torch.float64)
        size = torch.tensor([max(int(s) - 1, 1) for s in shape], dtype=torch.float64)
        pos = (2.0 * (o + half) / size - 1.0).clamp(-1.0, 1.0)
        return pos.to(device=device, dtype=torch.float32)

    def _call(self, args: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
              need_grad: bool) -> torch.Tensor:
        """One network call, recomputed in the backward pass when gradients are needed."""
        if need_grad and self.checkpoint:
            return _checkpoint(self.patch_denoiser, *args, use_reentrant=False)
        return self.patch_denoiser(*args)

    def _run(self, patches: torch.Tensor, sigma: torch.Tensor,
             position: torch.Tensor | None) -> torch.Tensor:
        """Evaluate (P, 1, X, Y, Z) patches in chunks of ``max_batch`` full patches' voxels."""
        outs = []
        need_grad = torch.is_grad_enabled() and patches.requires_grad
        per = max(1, self.max_batch * math.prod(self.patch) // math.prod(patches.shape[2:]))
        for i in range(0, patches.shape[0], per):
            sl = slice(i, i + per)
            pos = None if position is None else position[sl]
            args = (patches[sl], sigma[sl], pos)
            if patches.is_cuda:  # timed by events, read later: no wait on the hot path
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
                out = self._call(args, need_grad)
                end.record()
                self._events.append((start, end))
            else:
                t0 = time.perf_counter()
                out = self._call(args, need_grad)
                self._seconds += time.perf_counter() - t0
            outs.append(out.to(patches.dtype))
            self.calls += 1
            self.patches += int(args[0].shape[0])
        return torch.cat(outs, dim=0)

    # -- the tilings --------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"TiledDenoiser expects (B, I, J, K), got {tuple(x.shape)}")
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        if self.empty is not None and tuple(self.empty.shape) != tuple(x.shape[1:]):
            raise ValueError(f"the empty mask {tuple(self.empty.shape)} does not match the "
                             f"volume {tuple(x.shape[1:])}")
        if self.mode == "shift":
            out = self._shift(x, sigma)
        elif self.mode == "roll":
            out = self._roll(x, sigma)
        elif self.mode == "fit":
            out = self._fit(x, sigma)
        else:
            out = self._blend(x, sigma)
        if self.empty is None:
            return out
        return torch.where(self.empty.to(out.device), self.empty_value, out)

    def _tiles(self, xp: torch.Tensor, sigma: torch.Tensor, patch: tuple[int, int, int],
               origins_of: list[list[int]], shape: Sequence[int]) -> torch.Tensor:
        """Denoise (B, n_i p_i, n_j p_j, n_k p_k) as non-overlapping tiles of size ``patch``;
        ``origins_of`` gives each axis' tile origins in unpadded volume coordinates."""
        b = xp.shape[0]
        pi, pj, pk = patch
        ni, nj, nk = (n // p for n, p in zip(xp.shape[1:], patch, strict=True))
        blocks = xp.reshape(b, ni, pi, nj, pj, nk, pk).permute(0, 1, 3, 5, 2, 4, 6)
        blocks = blocks.reshape(b * ni * nj * nk, 1, pi, pj, pk)
        sig = sigma.repeat_interleave(ni * nj * nk)
        pos = None
        if self.uses_position:
            origins = [(a, c, d) for a in origins_of[0] for c in origins_of[1]
                       for d in origins_of[2]]
            pos = self._positions(origins, shape, xp.device).repeat(b, 1)
        out = self._run(blocks, sig, pos)
        out = out.reshape(b, ni, nj, nk, pi, pj, pk).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, ni * pi, nj * pj, nk * pk)

    def _roll(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[1:])
        patch = self._tile_size(shape)
        sizes = [math.ceil(s / p) * p for s, p in zip(shape, patch, strict=True)]
        xp = _pad(x, [(0, n - s) for n, s in zip(sizes, shape, strict=True)])
        offs = [int(torch.randint(p, (1,), generator=self.generator)) if n > p else 0
                for n, p in zip(sizes, patch, strict=True)]
        # After rolling by -o, patch t starts at voxel (t p + o) mod n of the padded volume.
        rolled = torch.roll(xp, shifts=[-o for o in offs], dims=(1, 2, 3))
        origins_of = [[(t * p + o) % n for t in range(n // p)]
                      for n, p, o in zip(sizes, patch, offs, strict=True)]
        out = self._tiles(rolled, sigma, patch, origins_of, shape)
        out = torch.roll(out, shifts=offs, dims=(1, 2, 3))
        return out[:, :shape[0], :shape[1], :shape[2]]

    def _shift(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        shape = x.shape[1:]
        patch = self._tile_size(shape)
        offs, pads, counts = [], [], []
        for s, p in zip(shape, patch, strict=True):
            if s <= p:  # one tile: pad up to the tile, no shift needed
                o = 0
            else:
                o = int(torch.randint(p, (1,), generator=self.generator))
            n = math.ceil((s + o) / p)
            offs.append(o)
            pads.append((o, n * p - s - o))
            counts.append(n)
        xp = _pad(x, pads)
        origins_of = [[t * p - o for t in range(n)]
                      for n, p, o in zip(counts, patch, offs, strict=True)]
        out = self._tiles(xp, sigma, patch, origins_of, shape)
        return out[:, offs[0]:offs[0] + shape[0], offs[1]:offs[1] + shape[1],
                   offs[2]:offs[2] + shape[2]]

    def _fit(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b, shape = x.shape[0], tuple(int(s) for s in x.shape[1:])
        tile = self._tile_size(shape)
        m = self.size_multiple or 1
        segs, sizes = [], []
        for s, p, t in zip(shape, self.patch, tile, strict=True):
            if s <= p:  # a short axis: one tile, padded up to the tile as in "shift"
                segs.append([(0, t)])
                sizes.append(t)
                continue
            n = -(-s // m) * m  # padded to the network's multiple
            step = max(self.min_tile, m)  # a coarse offset grid: few tile shapes (docstring)
            o = step * int(torch.randint(max(1, p // step), (1,), generator=self.generator))
            segs.append(fit_segments(n, p, o, step))
            sizes.append(n)
        xp = _pad(x, [(0, n - s) for n, s in zip(sizes, shape, strict=True)])
        # tiles wholly inside the empty mask are not denoised (__call__ fills them)
        empty = self._empty_host
        out = torch.empty_like(xp) if empty is None else torch.full_like(xp, self.empty_value)
        groups: dict[tuple[int, int, int], list[tuple[int, int, int]]] = {}
        for a, la in segs[0]:
            for c, lc in segs[1]:
                for d, ld in segs[2]:
                    if empty is not None and bool(empty[a:a + la, c:c + lc, d:d + ld].all()):
                        continue
                    groups.setdefault((la, lc, ld), []).append((a, c, d))
        for (la, lc, ld), origins in groups.items():
            blocks = torch.stack([xp[:, a:a + la, c:c + lc, d:d + ld] for a, c, d in origins],
                                 dim=1).reshape(b * len(origins), 1, la, lc, ld)
            pos = None if not self.uses_position else self._positions(
                origins, shape, x.device, half=(la / 2, lc / 2, ld / 2)).repeat(b, 1)
            den = self._run(blocks, sigma.repeat_interleave(len(origins)), pos)
            den = den.reshape(b, len(origins), la, lc, ld)
            for j, (a, c, d) in enumerate(origins):
                out[:, a:a + la, c:c + lc, d:d + ld] = den[:, j]
        return out[:, :shape[0], :shape[1], :shape[2]]

    def _blend(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b, shape = x.shape[0], tuple(x.shape[1:])
        patch = self._tile_size(shape)
        # Pad axes shorter than the tile (at the end) so every tile is full-size.
        pads = [(0, max(0, p - s)) for s, p in zip(shape, patch, strict=True)]
        xp = _pad(x, pads)
        pshape = tuple(xp.shape[1:])
        origins, window, total = blend_weights(pshape, patch, self.overlap,
                                               dtype=x.dtype, device=x.device)
        pi, pj, pk = patch
        out = torch.zeros_like(xp)
        # Chunks of origins so that at most ~max_batch full patches' voxels are materialised.
        full = self.max_batch * math.prod(self.patch) // math.prod(patch)
        per = max(1, max(self.max_batch, full) // b)
        pos_all = self._positions(origins, shape, x.device) if self.uses_position else None
        for i in range(0, len(origins), per):
            chunk = origins[i:i + per]
            patches = torch.stack([xp[:, a:a + pi, c:c + pj, d:d + pk] for a, c, d in chunk],
                                  dim=1)  # (B, n, X, Y, Z)
            n = len(chunk)
            flat = patches.reshape(b * n, 1, pi, pj, pk)
            sig = sigma.repeat_interleave(n)
            pos = None if pos_all is None else pos_all[i:i + n].repeat(b, 1)
            den = self._run(flat, sig, pos).reshape(b, n, pi, pj, pk) * window
            for j, (a, c, d) in enumerate(chunk):
                out[:, a:a + pi, c:c + pj, d:d + pk] += den[:, j]
        out = out / total
        return out[:, :shape[0], :shape[1], :shape[2]]
