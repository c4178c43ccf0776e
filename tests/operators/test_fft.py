"""Centred orthonormal FFT: equal to numpy.fft with shifts on odd and even sizes; exact inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.operators.functional.fft import fftc, ifftc


def _np_fftc(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"),
                           axes=axes)


def _np_ifftc(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"),
                           axes=axes)


@pytest.mark.parametrize("shape", [(9, 10, 7), (8, 6, 4), (5, 5, 5), (1, 4, 3)])
@pytest.mark.parametrize("axes", [(0, 1, 2), (0, 1), (1,), (2, 0)])
def test_matches_numpy(shape: tuple[int, ...], axes: tuple[int, ...],
                       rng: np.random.Generator) -> None:
    x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    got = fftc(torch.from_numpy(x), axes).numpy()
    np.testing.assert_allclose(got, _np_fftc(x, axes), rtol=0, atol=1e-12)
    got_inv = ifftc(torch.from_numpy(x), axes).numpy()
    np.testing.assert_allclose(got_inv, _np_ifftc(x, axes), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [7, 8])
def test_centre_is_dc(n: int) -> None:
    # A constant image has all its energy at the centre sample n // 2 (odd and even n).
    x = torch.ones(n, dtype=torch.complex128)
    k = fftc(x, (0,))
    assert abs(k[n // 2] - np.sqrt(n)) < 1e-12
    k[n // 2] = 0
    assert float(k.abs().max()) < 1e-12
    # ... and a centred delta transforms to a constant of modulus 1/sqrt(n).
    d = torch.zeros(n, dtype=torch.complex128)
    d[n // 2] = 1
    assert torch.allclose(fftc(d, (0,)), torch.full((n,), 1 / np.sqrt(n), dtype=torch.complex128))


def test_inverse_and_parseval(generator: torch.Generator) -> None:
    x = torch.randn((3, 9, 10, 7), generator=generator, dtype=torch.complex128)
    k = fftc(x, (-3, -2, -1))
    assert torch.allclose(ifftc(k, (-3, -2, -1)), x, atol=1e-13)
    assert abs(float(torch.linalg.vector_norm(k) / torch.linalg.vector_norm(x)) - 1) < 1e-13
    # the leading batch axis is untouched: each batch element transforms independently
    assert torch.allclose(k[1], fftc(x[1], (0, 1, 2)), atol=1e-13)


def test_real_input_keeps_precision() -> None:
    assert fftc(torch.ones(4, 5, dtype=torch.float64), (0, 1)).dtype == torch.complex128
    assert fftc(torch.ones(4, 5, dtype=torch.float32), (0, 1)).dtype == torch.complex64
    assert ifftc(torch.ones(4, 5, dtype=torch.complex64), (1,)).dtype == torch.complex64


def test_repeated_axis_is_rejected() -> None:
    with pytest.raises(ValueError, match="repeat"):
        fftc(torch.ones(4, 5), (1, -1))


@pytest.mark.gpu
def test_cuda_matches_cpu(generator: torch.Generator) -> None:
    x = torch.randn((9, 10, 7), generator=generator, dtype=torch.complex64)
    got = fftc(x.cuda(), (0, 1, 2)).cpu()
    assert torch.allclose(got, fftc(x, (0, 1, 2)), atol=1e-5)
