"""SENSE operator: explicit formula, axis conventions, batching, coil chunks, errors, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.errors import GeometryError, InputError
from medrecon.operators.functional.fft import fftc, ifftc
from medrecon.operators.mri import FFTOperator, SenseOperator

SHAPE = (9, 10, 7)


def _maps(n: int, g: torch.Generator, dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    return torch.randn((n, *SHAPE), generator=g, dtype=dtype)


def _image(g: torch.Generator, dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    return torch.randn(SHAPE, generator=g, dtype=dtype)


def test_forward_matches_numpy_formula(generator: torch.Generator,
                                       rng: np.random.Generator) -> None:
    maps = _maps(4, generator)
    mask = rng.random((1, 10, 7)) < 0.4
    x = _image(generator)
    op = SenseOperator(maps, mask, (0, 1, 2))
    y = op(x).numpy()
    s, xn = maps.numpy(), x.numpy()
    axes = (1, 2, 3)
    ref = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(s * xn, axes=axes), axes=axes,
                                      norm="ortho"), axes=axes) * mask
    np.testing.assert_allclose(y, ref, atol=1e-12)
    # unsampled phase encodes are exactly zero, on every readout sample and coil
    assert np.all(y[:, :, ~mask[0]] == 0)
    assert op.oshape == (4, *SHAPE)


def test_multislice_does_not_mix_slices(generator: torch.Generator) -> None:
    maps = _maps(3, generator)
    mask = torch.zeros((1, 10, 1), dtype=torch.bool)
    mask[0, ::2, 0] = True
    op = SenseOperator(maps, mask, (0, 1))
    x = _image(generator)
    x2 = x.clone()
    x2[..., 3] = 0  # changing slice 3 changes k-space of slice 3 only
    diff = (op(x) - op(x2)).abs().sum(dim=(0, 1, 2))
    assert float(diff[3]) > 0
    assert float(diff[torch.arange(7) != 3].max()) == 0
    # per slice it is a 2D FFT over (readout, phase)
    expected = fftc(maps[:, :, :, 5] * x[:, :, 5], (1, 2)) * mask[0, :, 0]
    assert torch.allclose(op(x)[:, :, :, 5], expected, atol=1e-12)


def test_adjoint_formula_and_zero_filled(generator: torch.Generator) -> None:
    maps = _maps(2, generator)
    mask = torch.rand((1, 10, 7), generator=generator) < 0.5
    op = SenseOperator(maps, mask, (0, 1, 2))
    y = torch.randn((2, *SHAPE), generator=generator, dtype=torch.complex128)
    expected = (maps.conj() * ifftc(y * mask, (1, 2, 3))).sum(0)
    assert torch.allclose(op.adjoint(y), expected, atol=1e-12)
    # fully sampled single coil: A is the unitary FFT, so A^H A = I
    full = SenseOperator(None, torch.ones(1, 1, 1, dtype=torch.bool), (0, 1, 2), image_shape=SHAPE)
    x = _image(generator)
    assert torch.allclose(full.normal(x), x, atol=1e-12)
    assert torch.allclose(full(x)[0], FFTOperator(SHAPE, (0, 1, 2))(x), atol=1e-12)


def test_coil_batching_gives_identical_results(generator: torch.Generator) -> None:
    maps = _maps(5, generator)
    mask = torch.rand((1, 10, 7), generator=generator) < 0.5
    x = _image(generator)
    ref = SenseOperator(maps, mask, (0, 1, 2))
    for batch in (1, 2, 3, 5, 9):
        op = SenseOperator(maps, mask, (0, 1, 2), coil_batch=batch)
        y = ref(x)
        assert torch.allclose(op(x), y, atol=1e-12)
        assert torch.allclose(op.adjoint(y), ref.adjoint(y), atol=1e-12)
        assert torch.allclose(op.normal(x), ref.normal(x), atol=1e-12)


def test_leading_batch_dimensions(generator: torch.Generator) -> None:
    maps = _maps(3, generator)
    mask = torch.rand((1, 10, 7), generator=generator) < 0.5
    op = SenseOperator(maps, mask, (0, 1, 2), coil_batch=2)
    xb = torch.randn((2, *SHAPE), generator=generator, dtype=torch.complex128)
    yb = op(xb)
    assert yb.shape == (2, 3, *SHAPE)
    assert torch.allclose(yb[1], op(xb[1]), atol=1e-12)
    assert torch.allclose(op.adjoint(yb)[0], op.adjoint(yb[0]), atol=1e-12)
    assert torch.allclose(op.normal(xb)[1], op.normal(xb[1]), atol=1e-12)


def test_dtype_follows_inputs_and_maps(generator: torch.Generator) -> None:
    maps64 = _maps(2, generator, torch.complex64)
    mask = torch.ones((1, 10, 7))
    op = SenseOperator(maps64, mask, (0, 1, 2))
    assert op(_image(generator, torch.float32)).dtype == torch.complex64
    assert op(_image(generator, torch.complex128)).dtype == torch.complex128
    single = SenseOperator(None, mask, (0, 1), image_shape=SHAPE)
    assert single(_image(generator, torch.float64)).dtype == torch.complex128
    # real image input is treated as a complex image with zero imaginary part
    x = _image(generator, torch.float64)
    assert torch.allclose(single(x), single(x.to(torch.complex128)))


def test_weighted_mask_normal_uses_square(generator: torch.Generator) -> None:
    w = torch.rand((1, 10, 7), generator=generator, dtype=torch.float64)
    op = SenseOperator(None, w, (0, 1, 2), image_shape=SHAPE)
    x = _image(generator)
    expected = ifftc(fftc(x, (0, 1, 2)) * w**2, (0, 1, 2))
    assert torch.allclose(op.normal(x), expected, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"maps": torch.ones(2, 9, 10, dtype=torch.complex64), "mask": torch.ones(1, 10, 7),
          "fft_dims": (0, 1, 2)}, GeometryError, "shape \\(C, I, J, K\\)"),
        ({"maps": torch.ones(2, *SHAPE, dtype=torch.complex64), "mask": torch.ones(1, 11, 7),
          "fft_dims": (0, 1, 2)}, GeometryError, "cannot be broadcast"),
        ({"maps": None, "mask": torch.ones(10, 7), "fft_dims": (0, 1, 2)}, GeometryError,
         "image shape must be given"),
        ({"maps": None, "mask": torch.ones(*SHAPE), "fft_dims": (0, 3)}, InputError,
         "fft_dims"),
        ({"maps": None, "mask": torch.ones(*SHAPE), "fft_dims": (1, 1)}, InputError,
         "fft_dims"),
        ({"maps": None, "mask": -torch.ones(*SHAPE), "fft_dims": (0, 1)}, InputError,
         "non-negative"),
        ({"maps": None, "mask": torch.ones(*SHAPE), "fft_dims": (0, 1), "coil_batch": 0},
         InputError, "coil_batch"),
    ],
)
def test_invalid_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SenseOperator(**kwargs)


def test_wrong_input_shape_is_rejected(generator: torch.Generator) -> None:
    op = SenseOperator(_maps(2, generator), torch.ones(1, 10, 7), (0, 1, 2))
    with pytest.raises(ValueError, match="must end in shape"):
        op(torch.zeros(9, 10, 8, dtype=torch.complex128))


@pytest.mark.gpu
def test_cuda_matches_cpu(generator: torch.Generator) -> None:
    maps = _maps(4, generator, torch.complex64)
    mask = torch.rand((1, 10, 7), generator=generator) < 0.5
    x = _image(generator, torch.complex64)
    cpu = SenseOperator(maps, mask, (0, 1, 2), coil_batch=3)
    gpu = cpu.to("cuda")
    y = gpu(x.cuda())
    assert y.device.type == "cuda"
    assert torch.allclose(y.cpu(), cpu(x), atol=1e-5)
    # maps left on the CPU follow a CUDA input too
    assert torch.allclose(cpu.normal(x.cuda()).cpu(), cpu.normal(x), atol=1e-4)


def test_gradient_through_operator_is_adjoint_residual(generator: torch.Generator) -> None:
    # Samplers use autograd through A (DPS guidance): d|Ax - y|^2 / dx* must be 2 A^H (Ax - y).
    op = SenseOperator(_maps(5, generator), torch.rand((1, 10, 7), generator=generator) < 0.5,
                       (0, 1, 2), coil_batch=2)
    x = _image(generator).requires_grad_(True)
    y = torch.randn((5, *SHAPE), generator=generator, dtype=torch.complex128)
    (op(x) - y).abs().pow(2).sum().backward()
    assert x.grad is not None
    expected = 2 * op.adjoint(op(x.detach()) - y)
    assert torch.allclose(x.grad, expected, atol=1e-12)


def test_fully_sampled_sense_with_normalised_maps_is_an_isometry(
        generator: torch.Generator) -> None:
    # sum_c |S_c|^2 = 1 and a unitary FFT make A^H A = I when nothing is undersampled.
    from medrecon.operators.coil_simulation import simulate_coil_maps
    from medrecon.operators.masks import make_mask

    maps = simulate_coil_maps(SHAPE, 4, dtype=torch.complex128)
    full = SenseOperator(maps, np.ones((1, 1, 1), dtype=bool), (0, 1, 2))
    x = _image(generator)
    assert torch.allclose(full.normal(x), x, atol=1e-12)
    assert abs(float(full(x).norm() / x.norm()) - 1) < 1e-12
    # an undersampled operator built from a SamplingMask contracts: |Ax| < |x|
    sm = make_mask("poisson", SHAPE, 2.0, calibration=4, seed=0)
    under = SenseOperator(maps, sm.mask, (0, 1, 2))
    assert float(under(x).norm()) < float(x.norm())


def test_map_sets_sum_the_sets_before_the_fft(generator: torch.Generator) -> None:
    """Maps (M, C, I, J, K): one image per set, y_c = M F sum_m S_mc x_m, x_m = sum_c S_mc^H."""
    s1, s2 = _maps(3, generator), _maps(3, generator)
    mask = torch.rand((1, 10, 1), generator=generator) < 0.5
    op = SenseOperator(torch.stack([s1, s2]), mask, (0, 1))
    one, two = SenseOperator(s1, mask, (0, 1)), SenseOperator(s2, mask, (0, 1))
    assert op.sets == 2 and op.ishape == (2, *SHAPE) and op.oshape == (3, *SHAPE)
    assert op.image_shape == SHAPE
    x1, x2 = _image(generator), _image(generator)
    x = torch.stack([x1, x2])
    y = op(x)
    assert torch.allclose(y, one(x1) + two(x2), atol=1e-12)
    adj = op.adjoint(y)
    assert torch.allclose(adj[0], one.adjoint(y), atol=1e-12)
    assert torch.allclose(adj[1], two.adjoint(y), atol=1e-12)
    batch = torch.stack([x, x.flip(0)])  # leading batch axis before the set axis
    assert op(batch).shape == (2, 3, *SHAPE)
    assert torch.allclose(op(batch)[1], op(x.flip(0)), atol=1e-12)
    assert torch.allclose(op.normal(batch), op.adjoint(op(batch)), atol=1e-10)
    chunked = SenseOperator(torch.stack([s1, s2]), mask, (0, 1), coil_batch=2)
    assert torch.allclose(chunked(x), y, atol=1e-12)
    assert torch.allclose(chunked.normal(x), op.normal(x), atol=1e-10)
    single = SenseOperator(s1[None], mask, (0, 1))  # one set in the 5D layout
    assert torch.allclose(single(x1[None]), one(x1), atol=1e-12)
    assert op.to(dtype=torch.complex64).sets == 2


@pytest.mark.parametrize("mask_shape,fft_dims", [
    ((9, 10, 7), (0, 1, 2)),  # varies along every axis: all three FFTs stay
    ((1, 10, 7), (0, 1, 2)),  # 3D, fully sampled readout: 2D FFTs
    ((1, 10, 1), (0, 1)),     # 2D multi-slice, same lines in every slice
    ((1, 10, 7), (0, 1)),     # 2D multi-slice, a pattern per slice
])
@pytest.mark.parametrize("maps_none", [False, True])
def test_normal_without_centring_shifts_equals_adjoint_of_forward(
        generator: torch.Generator, rng: np.random.Generator, mask_shape: tuple[int, ...],
        fft_dims: tuple[int, ...], maps_none: bool) -> None:
    # Odd (9, 7) and even (10) sizes: the normal operator's uncentred FFTs with the pre-shifted
    # weight must equal A^H A with the centred transforms exactly, for weighted masks too.
    mask = rng.random(mask_shape) * (rng.random(mask_shape) < 0.5)
    maps = None if maps_none else _maps(3, generator)
    op = SenseOperator(maps, mask, fft_dims, image_shape=SHAPE)
    x = torch.randn((2, *SHAPE), generator=generator, dtype=torch.complex128)
    assert torch.allclose(op.normal(x), op.adjoint(op(x)), atol=1e-12)
