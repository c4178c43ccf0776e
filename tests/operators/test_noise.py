"""Receiver noise: level, SNR definition, coil covariance, masking, reproducibility, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.errors import InputError
from medrecon.operators.noise import add_noise, coil_noise_covariance, prewhiten, sigma_for_snr


def _zeros(shape: tuple[int, ...] = (4, 16, 20, 15)) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.complex128)


def test_sigma_is_complex_std_per_coil() -> None:
    noisy, sigma = add_noise(_zeros(), sigma=0.3, generator=0)
    assert sigma == 0.3
    assert float(noisy.abs().pow(2).mean().sqrt()) == pytest.approx(0.3, rel=0.02)
    assert float(noisy.real.std()) == pytest.approx(0.3 / np.sqrt(2), rel=0.03)
    assert float(noisy.imag.std()) == pytest.approx(0.3 / np.sqrt(2), rel=0.03)
    assert abs(float((noisy.real * noisy.imag).mean())) < 0.01 * 0.3**2  # circular


def test_snr_definition(generator: torch.Generator) -> None:
    y = torch.randn((3, 9, 10, 7), generator=generator, dtype=torch.complex128) * 5
    rms = float(y.abs().pow(2).mean().sqrt())
    assert sigma_for_snr(y, 20.0) == pytest.approx(rms / 20)
    _, sigma = add_noise(y, snr=20.0, generator=1)
    assert sigma == pytest.approx(rms / 20)


def test_mask_zeroes_unacquired_and_sigma_is_mask_independent(generator: torch.Generator) -> None:
    y = torch.randn((2, 9, 10, 7), generator=generator, dtype=torch.complex128)
    mask = torch.rand((1, 10, 7), generator=generator) < 0.3
    noisy, sigma = add_noise(y, snr=10.0, mask=mask, generator=2)
    _, sigma_full = add_noise(y, snr=10.0, generator=2)
    assert sigma == sigma_full
    assert torch.all(noisy[:, :, ~mask[0]] == 0)
    assert torch.all(noisy[:, :, mask[0]] != y[:, :, mask[0]])


def test_reproducible_with_seed_and_generator() -> None:
    a, _ = add_noise(_zeros(), sigma=1.0, generator=5)
    b, _ = add_noise(_zeros(), sigma=1.0, generator=torch.Generator().manual_seed(5))
    c, _ = add_noise(_zeros(), sigma=1.0, generator=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.gpu
def test_a_seed_gives_the_same_noise_on_the_gpu() -> None:
    a, _ = add_noise(_zeros(), sigma=1.0, generator=5)
    b, _ = add_noise(_zeros().cuda(), sigma=1.0, generator=5)
    assert b.device.type == "cuda"
    torch.testing.assert_close(b.cpu(), a)


def test_coloured_noise_has_requested_covariance() -> None:
    psi = coil_noise_covariance(4, correlation=0.4, seed=3)
    assert np.allclose(psi, psi.conj().T) and np.linalg.eigvalsh(psi).min() > 0
    assert np.mean(np.diag(psi).real) == pytest.approx(1.0)
    assert np.abs(psi[0, 1]) > 0.1  # neighbours really are correlated
    noisy, sigma = add_noise(_zeros((4, 64, 64, 32)), sigma=2.0, covariance=psi, generator=0)
    flat = noisy.reshape(4, -1).numpy()
    emp = flat @ flat.conj().T / flat.shape[1]
    np.testing.assert_allclose(emp, sigma**2 * psi, atol=0.03 * sigma**2)
    # prewhitening makes it white again with the same sigma
    white = prewhiten(noisy, psi).reshape(4, -1).numpy()
    emp_w = white @ white.conj().T / white.shape[1]
    np.testing.assert_allclose(emp_w, sigma**2 * np.eye(4), atol=0.03 * sigma**2)


def test_zero_sigma_returns_masked_copy(generator: torch.Generator) -> None:
    y = torch.randn((2, 3, 4, 5), generator=generator, dtype=torch.complex64)
    out, sigma = add_noise(y, sigma=0.0)
    assert sigma == 0.0 and torch.equal(out, y) and out is not y


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"sigma": 1.0, "snr": 3.0}, "exactly one"),
        ({"sigma": -1.0}, "non-negative"),
        ({"snr": 0.0}, "positive"),
        ({"sigma": 1.0, "covariance": np.eye(3)}, "shape \\(4, 4\\)"),
        ({"sigma": 1.0, "covariance": np.array([[1, 2, 0, 0], [2, 1, 0, 0], [0, 0, 1, 0],
                                                  [0, 0, 0, 1]])}, "positive definite"),
        ({"sigma": 1.0, "covariance": np.triu(np.ones((4, 4)))}, "Hermitian"),
        ({"sigma": 1.0, "mask": np.ones((3, 3))}, "does not fit"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        add_noise(_zeros((4, 5, 6, 7)) + 1, **kwargs)


def test_zero_signal_snr_is_an_error() -> None:
    with pytest.raises(InputError, match="signal is zero"):
        add_noise(_zeros(), snr=10.0)
