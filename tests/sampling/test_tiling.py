"""Tiling: an exactly local denoiser is reproduced, weights sum to one, positions are right."""

from __future__ import annotations

import pytest
import torch

from medrecon.sampling.tiling import (
    TiledDenoiser,
    _pad,
    blend_weights,
    fit_segments,
    patches_for_memory,
)


def _pointwise(x: torch.Tensor, sigma: torch.Tensor, position: torch.Tensor | None) -> torch.Tensor:
    """An exactly local denoiser: the Gaussian shrinkage x / (1 + sigma^2) + a nonlinearity."""
    s = sigma.reshape(-1, 1, 1, 1, 1)
    return torch.tanh(x) / (1.0 + s**2) + 0.1 * x**2


def _reference(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return _pointwise(x[:, None], sigma, None)[:, 0]


@pytest.mark.parametrize("mode", ["shift", "roll", "fit", "blend"])
@pytest.mark.parametrize("shape", [(20, 13, 9), (8, 8, 8), (5, 17, 3), (11, 9, 1)])
@pytest.mark.parametrize("multiple", [None, 4])
def test_pointwise_denoiser_tiled_equals_untiled(mode: str, shape: tuple[int, int, int],
                                                 multiple: int | None) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.5, 3.0], dtype=torch.float64)
    tiled = TiledDenoiser(_pointwise, (8, 8, 8), mode=mode, overlap=0.5, max_batch=3,
                          generator=torch.Generator().manual_seed(1), size_multiple=multiple)
    for _ in range(3):  # several calls: different random shifts each time
        torch.testing.assert_close(tiled(x, sigma), _reference(x, sigma), rtol=1e-12,
                                   atol=1e-12)
    assert tiled.patches > 0
    if multiple is None:  # full patches: at most max_batch of them per call
        assert tiled.calls >= tiled.patches / 3


@pytest.mark.parametrize("shape,overlap", [((20, 13, 9), 0.25), ((30, 8, 17), 0.5),
                                           ((8, 8, 8), 0.25)])
def test_blend_weights_sum_to_one(shape: tuple[int, int, int], overlap: float) -> None:
    patch = (8, 8, 8)
    origins, window, total = blend_weights(shape, patch, overlap)
    acc = torch.zeros(shape, dtype=torch.float64)
    for a, b, c in origins:
        w = window[: shape[0] - a, : shape[1] - b, : shape[2] - c]
        pa, pb, pc = w.shape
        acc[a:a + pa, b:b + pb, c:c + pc] += w / total[a:a + pa, b:b + pb, c:c + pc]
    torch.testing.assert_close(acc, torch.ones(shape, dtype=torch.float64), rtol=1e-12,
                               atol=1e-12)
    assert float(window.min()) > 0  # every covered voxel has positive weight


def test_shift_tiles_cover_each_voxel_once_and_shift_between_calls() -> None:
    seen: list[torch.Tensor] = []

    def count(x: torch.Tensor, sigma: torch.Tensor, position: torch.Tensor | None) -> torch.Tensor:
        seen.append(x.detach().clone())
        return torch.ones_like(x)

    tiled = TiledDenoiser(count, (8, 8, 8), mode="shift", max_batch=100,
                          generator=torch.Generator().manual_seed(3))
    x = torch.arange(20 * 13 * 9, dtype=torch.float64).reshape(1, 20, 13, 9)
    out = tiled(x, torch.tensor([1.0]))
    assert torch.equal(out, torch.ones_like(x))
    first = seen[0]
    tiled(x, torch.tensor([1.0]))
    second = seen[1]
    # A different grid at the second call (random shifts): the first patch holds other voxels.
    assert not torch.equal(first[0], second[0])


@pytest.mark.parametrize("size,offset,expect", [
    (64, 24, [(0, 24), (24, 40)]),             # the end piece of 8 joins its neighbour
    (64, 8, [(0, 40), (40, 24)]),              # the first piece of 8 joins its neighbour
    (40, 0, [(0, 40)]),                        # offset 0 cuts at the patch; 8 joins
    (100, 8, [(0, 40), (40, 32), (72, 28)]),
    (100, 28, [(0, 28), (28, 32), (60, 40)]),
    (20, 4, [(0, 20)]),
])
def test_fit_segments_cover_the_axis_with_no_short_piece(size: int, offset: int,
                                                         expect: list) -> None:
    segs = fit_segments(size, 32, offset, 16)
    assert segs == expect
    assert sum(n for _, n in segs) == size


def test_fit_tiles_the_volume_once_with_real_neighbours() -> None:
    """``fit``: every voxel in exactly one tile (1x the volume's voxels, no padding along axes
    longer than the patch), tiles between min_tile and patch + min_tile long, and a different
    grid at each call."""
    shapes: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor, sigma: torch.Tensor, position: torch.Tensor | None) -> torch.Tensor:
        shapes.extend([tuple(x.shape[2:])] * x.shape[0])
        return x + 1.0

    x = torch.randn(1, 40, 24, 17, generator=torch.Generator().manual_seed(0))
    tiled = TiledDenoiser(fn, (16, 16, 16), mode="fit", size_multiple=4, min_tile=8,
                          max_batch=4, generator=torch.Generator().manual_seed(2))
    grids = []
    for _ in range(6):
        shapes.clear()
        torch.testing.assert_close(tiled(x, torch.tensor([1.0])), x + 1.0)
        assert sum(torch.Size(s).numel() for s in shapes) == 40 * 24 * 20  # 17 -> 20, not 32
        assert all(8 <= n < 16 + 8 for s in shapes for n in s)
        grids.append(sorted(set(shapes)))
    assert len({tuple(g) for g in grids}) > 1
    # Offsets on the min_tile grid (0 or 8): few tile lengths, so few network input shapes.
    assert {s[0] for g in grids for s in g} == {8, 16}
    assert {s[2] for g in grids for s in g} <= {8, 12, 20}


def test_position_is_the_normalised_patch_centre() -> None:
    shape = (24, 16, 8)
    patch = (8, 8, 8)

    def centre_map(x: torch.Tensor, sigma: torch.Tensor,
                   position: torch.Tensor | None) -> torch.Tensor:
        assert position is not None and position.shape == (x.shape[0], 3)
        # Voxel value = first position coordinate, so the output reveals which patch it was in.
        return position[:, 0].reshape(-1, 1, 1, 1, 1).expand_as(x).to(x.dtype)

    tiled = TiledDenoiser(centre_map, patch, mode="blend", overlap=0.0, uses_position=True)
    out = tiled(torch.zeros(1, *shape, dtype=torch.float64), torch.tensor([1.0]))
    # Patches start at 0, 8, 16 along axis 0: centres 4, 12, 20 -> 2 c / 23 - 1.
    for start in (0, 8, 16):
        expect = 2.0 * (start + 4) / 23.0 - 1.0
        assert float(out[0, start + 3, 5, 5]) == pytest.approx(expect, abs=1e-6)

    tiled_shift = TiledDenoiser(centre_map, patch, mode="shift", uses_position=True,
                                generator=torch.Generator().manual_seed(0))
    out = tiled_shift(torch.zeros(1, *shape, dtype=torch.float64), torch.tensor([1.0]))
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    # The value at voxel i is its patch centre: within half a patch of i in normalised units.
    i = torch.arange(shape[0], dtype=torch.float64)
    assert float((out[0, :, 0, 0] - (2 * i / 23 - 1)).abs().max()) <= 2 * 4 / 23 + 1e-6


@pytest.mark.parametrize("mode", ["shift", "roll", "fit", "blend"])
def test_gradients_flow_through_checkpointed_tiles(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 12, 10, 9, generator=g, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.7], dtype=torch.float64)
    tiled = TiledDenoiser(_pointwise, (8, 8, 8), mode=mode, max_batch=2, checkpoint=True)
    (grad,) = torch.autograd.grad(tiled(x, sigma).sum(), x)
    xr = x.detach().clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(_reference(xr, sigma).sum(), xr)
    torch.testing.assert_close(grad, ref, rtol=1e-12, atol=1e-12)


def test_reflect_pad_beyond_size_and_length_one() -> None:
    x = torch.arange(3, dtype=torch.float64).reshape(1, 3, 1, 1)
    out = _pad(x, [(4, 5), (0, 2), (0, 0)])
    assert out.shape == (1, 12, 3, 1)
    # reflection without edge repetition: ... 2 1 0 1 2 1 0 ...
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor(
        [0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1], dtype=torch.float64))


def test_patches_for_memory() -> None:
    assert patches_for_memory(8 * 2**30, (64, 64, 64), bytes_per_voxel=4096) == 8
    assert patches_for_memory(1.0, (64, 64, 64)) == 1
    assert patches_for_memory(8 * 2**30, (64, 64, 64), 4096, grad=True) == 2


def test_roll_uses_the_minimal_number_of_patches() -> None:
    calls: list[int] = []

    def count(x: torch.Tensor, sigma: torch.Tensor, position: torch.Tensor | None) -> torch.Tensor:
        calls.append(x.shape[0])
        return x

    x = torch.randn(1, 16, 16, 12, generator=torch.Generator().manual_seed(0))
    roll = TiledDenoiser(count, (8, 8, 8), mode="roll", max_batch=100,
                         generator=torch.Generator().manual_seed(1))
    for _ in range(4):
        torch.testing.assert_close(roll(x, torch.tensor([1.0])), x)
    assert calls == [2 * 2 * 2] * 4  # ceil(16/8) * ceil(16/8) * ceil(12/8), whatever the shift


@pytest.mark.parametrize("mode", ["shift", "roll", "blend"])
def test_short_axes_get_short_tiles_with_the_full_patch_position(mode: str) -> None:
    """A thin slab is tiled with tiles cut to a multiple of the network's factor along its
    short axes (a slice: 4 deep, not 16), the full patch along the others, and every tile's
    position input is the one a full patch at the same origin gets."""
    seen: dict[int | None, list[tuple[tuple[int, ...], torch.Tensor]]] = {None: [], 4: []}

    def record(multiple: int | None):
        def fn(x: torch.Tensor, sigma: torch.Tensor,
               position: torch.Tensor | None) -> torch.Tensor:
            assert position is not None
            seen[multiple].append((tuple(x.shape[2:]), position.clone()))
            return x
        return fn

    x = torch.randn(1, 20, 6, 1, generator=torch.Generator().manual_seed(0))
    for multiple in (None, 4):
        tiled = TiledDenoiser(record(multiple), (16, 16, 16), mode=mode, overlap=0.25,
                              uses_position=True, size_multiple=multiple,
                              generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(tiled(x, torch.tensor([1.0])), x)
    assert {shape for shape, _ in seen[None]} == {(16, 16, 16)}
    assert {shape for shape, _ in seen[4]} == {(16, 8, 4)}  # 6 -> 8, 1 -> 4
    # Same grid along the long axis (same seed), same positions: only the padding changed.
    torch.testing.assert_close(torch.cat([p for _, p in seen[4]]),
                               torch.cat([p for _, p in seen[None]]))
    voxels = {m: sum(p.shape[0] * torch.Size(s).numel() for s, p in seen[m]) for m in seen}
    assert voxels[4] * 8 == voxels[None]  # 16 x 8 x 4 tiles instead of 16^3


def test_short_tiles_share_a_call_in_proportion() -> None:
    """max_batch counts full patches: tiles 1/8 of a patch go 8 times as many to a call."""
    sizes: list[int] = []

    def count(x: torch.Tensor, sigma: torch.Tensor, position: torch.Tensor | None) -> torch.Tensor:
        sizes.append(x.shape[0])
        return x

    tiled = TiledDenoiser(count, (8, 8, 8), mode="roll", max_batch=2, size_multiple=2)
    x = torch.randn(1, 32, 32, 1, generator=torch.Generator().manual_seed(0))
    tiled(x, torch.tensor([1.0]))
    assert sizes == [8, 8]  # 16 tiles of 8 x 8 x 2 in calls of 2 * 4


def test_size_multiple_must_divide_the_patch() -> None:
    with pytest.raises(ValueError, match="divide"):
        TiledDenoiser(_pointwise, (8, 8, 8), size_multiple=3)
    with pytest.raises(ValueError, match="min_tile"):
        TiledDenoiser(_pointwise, (8, 8, 8), size_multiple=4, min_tile=6)


@pytest.mark.parametrize("mode", ["shift", "roll", "fit", "blend"])
def test_min_tile_is_the_shortest_tile(mode: str) -> None:
    """Short axes get tiles of at least ``min_tile``: a slice 8 deep, 6 voxels 8, 10 voxels
    12 (the next multiple of 4); results still equal the untiled denoiser's."""
    shapes: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor, sigma: torch.Tensor, position: torch.Tensor | None) -> torch.Tensor:
        shapes.append(tuple(x.shape[2:]))
        return _pointwise(x, sigma, position)

    x = torch.randn(1, 6, 10, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = torch.tensor([0.5], dtype=torch.float64)
    tiled = TiledDenoiser(fn, (16, 16, 16), mode=mode, size_multiple=4, min_tile=8)
    torch.testing.assert_close(tiled(x, sigma), _reference(x, sigma), rtol=1e-12, atol=1e-12)
    assert set(shapes) == {(8, 12, 8)}


def test_prior_denoiser_tiles_thin_volumes_from_half_the_patch(tmp_path) -> None:
    """The prior's denoiser: the network's factor (1 for the one-level test prior) and half
    the 8-voxel training patch as the shortest tile."""
    from prior_factory import export_tiny_prior

    from medrecon.priors import load_prior
    from medrecon.sampling.denoiser import prior_denoiser

    den = prior_denoiser(load_prior(export_tiny_prior(tmp_path)), "MR")
    assert (den.size_multiple, den.min_tile) == (1, 4)
    out = den(torch.randn(1, 9, 8, 1), torch.tensor([1.0]))
    assert out.shape == (1, 9, 8, 1) and bool(torch.isfinite(out).all())


def test_a_real_unet_denoises_a_slice_in_short_tiles() -> None:
    """The factor read off a built MONAI U-Net is what it needs: a two-level network (factor 2)
    runs on 8 x 8 x 2 tiles of a single slice, and a tile of odd depth would not fit it."""
    from medrecon.priors.network import NetworkConfig, build_network, size_multiple

    torch.manual_seed(0)
    cfg = NetworkConfig(channels=(8, 8), num_res_blocks=(1, 1), attention_levels=(False, True),
                        num_head_channels=8, norm_num_groups=4, num_modalities=0,
                        position_channels=0)
    net = build_network(cfg).eval()
    assert size_multiple(net) == cfg.downsampling_factor == 2
    shapes: list[tuple[int, ...]] = []

    def patch_fn(x: torch.Tensor, sigma: torch.Tensor,
                 position: torch.Tensor | None) -> torch.Tensor:
        shapes.append(tuple(x.shape[2:]))
        return net(x.float(), sigma.float())

    tiled = TiledDenoiser(patch_fn, (8, 8, 8), size_multiple=size_multiple(net),
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = tiled(torch.randn(1, 12, 9, 1), torch.tensor([1.0]))
        assert out.shape == (1, 12, 9, 1) and bool(torch.isfinite(out).all())
        assert {s[2] for s in shapes} == {2}
        with pytest.raises(RuntimeError):
            net(torch.randn(1, 1, 8, 8, 3), torch.tensor([1.0]))


def test_prior_denoiser_precisions(tmp_path) -> None:
    """``bf16-full`` runs a bf16 copy of the network (the caller's prior stays float32) and
    agrees with float32 to bf16's resolution; an unknown precision is a user error."""
    from prior_factory import export_tiny_prior

    from medrecon.errors import InputError
    from medrecon.priors import load_prior
    from medrecon.sampling.denoiser import prior_denoiser

    prior = load_prior(export_tiny_prior(tmp_path))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # MONAI starts the output layer at zero: give every weight a value
        for p in prior.denoiser.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    x = torch.randn(1, 8, 8, 8, generator=g)
    sigma = torch.tensor([0.5])
    with torch.no_grad():
        ref = prior_denoiser(prior, "MR", precision="fp32")(x, sigma)
        full = prior_denoiser(prior, "MR", precision="bf16-full")(x, sigma)
    assert full.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in prior.denoiser.parameters())
    err = float((full - ref).abs().max())
    assert 0.0 < err < 0.05 * float(ref.abs().max())  # bf16 rounding, not another network
    with pytest.raises(InputError, match="precision"):
        prior_denoiser(prior, "MR", precision="fp16")
