"""Coil compression (``medrecon.operators.coil_compression``): the energy rule, the noise floor,
white noise staying white, and V = C reproducing the uncompressed problem."""

from __future__ import annotations

import pytest
import torch

from medrecon.errors import InputError
from medrecon.operators.coil_compression import (
    apply_compression,
    coil_energy_spectrum,
    compress_coils,
    virtual_coil_count,
)
from medrecon.operators.mri import SenseOperator
from medrecon.solvers import conjugate_gradient

SHAPE = (6, 9, 7)


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g, dtype=torch.float64),
                         torch.randn(shape, generator=g, dtype=torch.float64))


def _mask(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, *SHAPE[1:]), generator=g, dtype=torch.float64) < 0.6


def _rank_maps(c: int, rank: int, seed: int) -> torch.Tensor:
    """(C, *SHAPE) maps that are ``rank`` independent profiles mixed over C coils."""
    mix = _randn((c, rank), seed)
    return torch.einsum("cr,rijk->cijk", mix, _randn((rank, *SHAPE), seed + 1))


@pytest.mark.parametrize(("keep", "expected"), [(0.6, 1), (0.9, 2), (0.95, 3), (0.99, 3),
                                                (0.995, 4), (1.0, 4)])
def test_energy_rule_takes_the_fewest_coils(keep: float, expected: int) -> None:
    assert virtual_coil_count([0.6, 0.3, 0.09, 0.01], keep) == expected


def test_energy_rule_rejects_a_fraction_outside_0_1() -> None:
    for bad in (0.0, 1.5):
        with pytest.raises(InputError, match="coil energy"):
            virtual_coil_count([1.0], bad)


def test_signal_of_rank_two_needs_two_virtual_coils_and_the_noise_floor_is_not_signal() -> None:
    maps, mask = _rank_maps(6, 2, 3), _mask()
    op = SenseOperator(maps, mask, (0, 1, 2))
    clean = op.forward(_randn(SHAPE, 5))
    _, frac = coil_energy_spectrum(clean, mask)
    assert float(frac[:2].sum()) == pytest.approx(1.0, abs=1e-12)
    assert compress_coils(clean, maps, mask, keep=0.99).n_virtual == 2
    # White noise spreads evenly over the coil basis: counted as signal it asks for more
    # coils; with its expected floor 2 N sigma^2 taken off, the signal's two remain.
    sigma = 0.3 * float(clean.abs().std())
    noisy = (clean + sigma * _randn(tuple(clean.shape), 6)) * mask  # sigma per real part
    assert compress_coils(noisy, maps, mask, keep=0.99).n_virtual > 2
    assert compress_coils(noisy, maps, mask, keep=0.99, noise_std=sigma).n_virtual == 2


def test_compressed_operator_is_the_compression_of_the_full_one() -> None:
    maps, mask = _randn((5, *SHAPE), 8), _mask(1)
    op = SenseOperator(maps, mask, (0, 1, 2))
    x = _randn(SHAPE, 9)
    y = op.forward(x)
    cc = compress_coils(y, maps, mask, n_virtual=3)
    p = cc.matrix
    assert torch.allclose(p @ p.conj().T, torch.eye(3, dtype=p.dtype), atol=1e-12)
    small = SenseOperator(cc.maps, mask, (0, 1, 2))
    assert torch.allclose(small.forward(x), apply_compression(op.forward(x), p), atol=1e-12)
    assert torch.allclose(cc.kspace, apply_compression(y, p), atol=1e-12)
    # The energy kept is the data's: ||P y||^2 / ||y||^2 (noiseless data).
    kept = float(torch.linalg.vector_norm(cc.kspace) ** 2 / torch.linalg.vector_norm(y) ** 2)
    assert kept == pytest.approx(cc.kept, rel=1e-9)


def test_all_virtual_coils_reproduce_the_uncompressed_solution() -> None:
    maps, mask = _randn((4, *SHAPE), 10), _mask(2)
    op = SenseOperator(maps, mask, (0, 1, 2))
    y = (op.forward(_randn(SHAPE, 11)) + 0.1 * _randn((4, *SHAPE), 12)) * mask
    cc = compress_coils(y, maps, mask, n_virtual=4)
    small = SenseOperator(cc.maps, mask, (0, 1, 2))
    # A unitary change of coil basis: same data norm, same normal operator, same CG solution.
    assert float(torch.linalg.vector_norm(cc.kspace)) == pytest.approx(
        float(torch.linalg.vector_norm(y)), rel=1e-12)
    v = _randn(SHAPE, 13)
    assert torch.allclose(small.normal(v), op.normal(v), atol=1e-10)
    solve = [conjugate_gradient(o.normal, o.adjoint(d), max_iter=30, tol=0.0).x
             for o, d in ((op, y), (small, cc.kspace))]
    assert torch.allclose(solve[0], solve[1], atol=1e-9)


def test_white_noise_stays_white_with_the_same_sigma() -> None:
    c, sigma = 6, 0.7
    maps, mask = _rank_maps(c, 3, 14), torch.ones((1, *SHAPE[1:]), dtype=torch.bool)
    signal = SenseOperator(maps, mask, (0, 1, 2)).forward(_randn(SHAPE, 15))
    cc = compress_coils(signal, maps, mask, n_virtual=3)
    g = torch.Generator().manual_seed(16)
    n = 200_000
    noise = sigma * torch.complex(torch.randn((c, n), generator=g, dtype=torch.float64),
                                  torch.randn((c, n), generator=g, dtype=torch.float64))
    out = cc.matrix @ noise  # (V, N)
    cov = out @ out.conj().T / n  # expected 2 sigma^2 I
    assert torch.allclose(cov, 2 * sigma**2 * torch.eye(3, dtype=cov.dtype), atol=0.02)
    assert float(out.real.std()) == pytest.approx(sigma, rel=0.01)
    assert float(out.imag.std()) == pytest.approx(sigma, rel=0.01)


def test_errors_are_sentences() -> None:
    maps, mask = _randn((3, *SHAPE), 17), _mask(3)
    y = SenseOperator(maps, mask, (0, 1, 2)).forward(_randn(SHAPE, 18))
    with pytest.raises(InputError, match="virtual coils must lie in 1..3"):
        compress_coils(y, maps, mask, n_virtual=4)
    with pytest.raises(InputError, match="do not match"):
        compress_coils(y, maps[:2], mask)
    with pytest.raises(InputError, match="selects no k-space samples"):
        compress_coils(y, maps, torch.zeros_like(mask))
