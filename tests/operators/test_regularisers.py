"""The regularisers' operators: finite differences (TV) and orthonormal wavelets (L1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.operators.base import adjoint_mismatch
from medrecon.operators.finite_difference import (
    FiniteDifference,
    divergence,
    finite_difference,
    spacing_weights,
)
from medrecon.operators.wavelets import WaveletTransform
from medrecon.solvers import power_iteration


@pytest.mark.parametrize(("shape", "dims"), [((5, 6, 7), (0, 1, 2)), ((4, 1, 9), (0, 1)),
                                             ((3, 8, 2), (2,))])
def test_finite_difference_adjoint(shape: tuple[int, int, int], dims: tuple[int, ...]) -> None:
    d = FiniteDifference(shape, dims)
    assert adjoint_mismatch(d, complex_input=True) < 1e-12
    assert adjoint_mismatch(d, complex_input=False) < 1e-12
    g = torch.randn(d.oshape, dtype=torch.float64)
    assert torch.allclose(divergence(g, dims), -d.adjoint(g))


def test_finite_difference_values_and_norm() -> None:
    x = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    g = finite_difference(x)
    assert torch.all(g[0, 0] == 12) and torch.all(g[0, 1] == 0)  # Neumann: 0 at the last index
    assert torch.all(g[1, :, :2] == 4) and torch.all(g[2, :, :, :3] == 1)
    d = FiniteDifference((8, 9, 10))
    gen = torch.Generator().manual_seed(0)
    norm2 = power_iteration(lambda v: d.adjoint(d.forward(v)),
                            torch.randn(8, 9, 10, generator=gen), iters=100).rayleigh
    assert 8.0 < norm2 <= 12.0  # ||D||^2 < 4 per axis


def test_spacing_weights() -> None:
    """h_min / h per axis; None for equal sizes, axes of one voxel left out."""
    assert spacing_weights((0.5, 0.5, 2.0)) == (1.0, 1.0, 0.25)
    assert spacing_weights((1.0, 1.0, 1.0)) is None
    assert spacing_weights((0.86, 0.86, 1.0), shape=(512, 512, 1)) is None  # one slice
    assert spacing_weights((0.5, 0.5, 2.0), dims=(0, 1)) is None  # in-plane axes only
    assert spacing_weights((2.0, 1.0, 4.0), shape=(3, 1, 5)) == (1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="positive"):
        spacing_weights((1.0, 0.0, 1.0))


def test_weighted_finite_difference_adjoint_and_norm() -> None:
    """D_w = diag(w) D: the adjoint holds and ||D_w||^2 stays under 4 sum w^2."""
    w = (1.0, 0.5, 0.1)
    d = FiniteDifference((6, 7, 8), weights=w)
    assert adjoint_mismatch(d, complex_input=False) < 1e-12
    x = torch.randn(6, 7, 8, dtype=torch.float64)
    g = d.forward(x)
    plain = finite_difference(x)
    for i, wi in enumerate(w):
        assert torch.allclose(g[i], wi * plain[i])
    assert torch.allclose(divergence(g, weights=w), -d.adjoint(g))
    norm2 = power_iteration(lambda v: d.adjoint(d.forward(v)),
                            torch.randn(6, 7, 8, dtype=torch.float64), iters=100).rayleigh
    assert 0.7 * d.norm_bound < norm2 <= d.norm_bound == pytest.approx(4 * 1.26)
    with pytest.raises(ValueError, match="weights"):
        FiniteDifference((4, 4, 4), weights=(1.0, 1.0))


def test_finite_difference_batched() -> None:
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    g = finite_difference(x)
    assert g.shape == (3, 2, 5, 6, 7)
    assert torch.allclose(g[:, 1], finite_difference(x[1]))


@pytest.mark.parametrize("wavelet", ["haar", "db2", "db4", "sym4"])
@pytest.mark.parametrize("shape", [(5, 6, 7), (16, 8, 8), (16, 12, 9)])
def test_wavelet_isometry_and_adjoint(wavelet: str, shape: tuple[int, int, int]) -> None:
    w = WaveletTransform(shape, wavelet)
    assert adjoint_mismatch(w) < 1e-12
    x = torch.randn(shape, dtype=torch.complex128)
    c = w.forward(x)
    assert float(c.norm() / x.norm()) == pytest.approx(1.0, abs=1e-12)  # isometry
    assert torch.allclose(w.adjoint(c), x, atol=1e-12)  # W^H W = I
    if w.oshape == w.ishape:  # no padding: unitary
        cc = torch.randn(shape, dtype=torch.complex128)
        assert torch.allclose(w.forward(w.adjoint(cc)), cc, atol=1e-12)


def test_haar_one_level_values() -> None:
    w = WaveletTransform((4, 1, 1), "haar", levels=1, axes=(0,))
    c = w.forward(torch.tensor([1.0, 3.0, 2.0, 2.0], dtype=torch.float64)[:, None, None])
    s = 2**-0.5
    expected = torch.tensor([4 * s, 4 * s, -2 * s, 0.0], dtype=torch.float64)
    assert torch.allclose(c[:, 0, 0].abs(), expected.abs())
    assert torch.allclose(c[:2, 0, 0], expected[:2])


def test_db4_details_vanish_on_cubics() -> None:
    # db4 has 4 vanishing moments: detail coefficients of a cubic are 0 away from the wrap.
    w = WaveletTransform((64, 1, 1), "db4", levels=1, axes=(0,))
    t = torch.arange(64, dtype=torch.float64)
    c = w.forward((0.01 * t**3 - t**2 + 3 * t)[:, None, None])[:, 0, 0]
    details = c[32:]
    assert float(details[:28].abs().max()) < 1e-8 * float(c.abs().max())
    assert float(details[28:].abs().max()) > 1.0  # the periodic wrap is not smooth


def test_wavelet_levels_and_errors() -> None:
    assert WaveletTransform((64, 64, 64), "db4").levels == 3
    assert WaveletTransform((64, 64, 64), "haar").levels == 5
    assert WaveletTransform((10, 10, 10), "db4", levels=2).oshape == (12, 12, 12)
    assert WaveletTransform((10, 10, 3), "haar", levels=1, axes=(0, 1)).oshape == (10, 10, 3)
    with pytest.raises(ValueError, match="not orthogonal"):
        WaveletTransform((8, 8, 8), "bior2.2")
    with pytest.raises(ValueError, match="unknown wavelet"):
        WaveletTransform((8, 8, 8), "nope")


def test_haar_matches_pywavelets() -> None:
    # Same transform as PyWavelets' periodized multi-level Haar (coefficient layout differs,
    # so compare the sorted coefficient magnitudes), and better energy compaction than voxels.
    import pywt

    from medrecon.phantoms import shepp_logan_3d

    x = shepp_logan_3d((32, 32, 32)).astype(np.float64)
    w = WaveletTransform(x.shape, "haar", levels=3)
    ours = w.forward(torch.from_numpy(x)).numpy()
    ref = pywt.coeffs_to_array(pywt.wavedecn(x, "haar", mode="periodization", level=3))[0]
    assert np.allclose(np.sort(np.abs(ours.ravel())), np.sort(np.abs(ref.ravel())), atol=1e-12)

    def top5(c: np.ndarray) -> float:
        e = np.sort(np.abs(c.ravel()) ** 2)[::-1]
        return float(e.cumsum()[int(0.05 * e.size)] / e.sum())

    db4 = WaveletTransform(x.shape, "db4").forward(torch.from_numpy(x)).numpy()
    assert top5(db4) > top5(x) + 0.05


@pytest.mark.gpu
def test_wavelet_and_gradient_on_cuda_match_cpu() -> None:
    x = torch.randn((12, 10, 9), dtype=torch.complex64)
    w = WaveletTransform(x.shape, "db4")
    assert torch.allclose(w.forward(x.cuda()).cpu(), w.forward(x), atol=1e-5)
    assert torch.allclose(w.adjoint(w.forward(x.cuda())).cpu(), x, atol=1e-5)
    assert torch.allclose(finite_difference(x.cuda()).cpu(), finite_difference(x))


def test_wavelet_builds_its_taps_and_indices_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside an iterative solver the transform runs twice per iteration: after its first
    call per dtype and device it builds no tensor from host data (on a GPU each such tap
    tensor is a copy that waits for the stream) and gives the fresh transform's result bit
    for bit; another dtype gets taps of its own."""
    x = torch.randn((12, 10, 9), dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    w = WaveletTransform(x.shape, "db2")
    first = w.forward(x)
    w.adjoint(first)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tensor built inside the transform's loop")

    with monkeypatch.context() as mp:
        mp.setattr(torch, "tensor", refuse)
        mp.setattr(torch, "arange", refuse)
        again, back = w.forward(x), w.adjoint(first)
    fresh = WaveletTransform(x.shape, "db2")
    assert torch.equal(again, fresh.forward(x)) and torch.equal(again, first)
    assert torch.equal(back, fresh.adjoint(first))
    real = w.forward(x.real)
    assert real.dtype == torch.float32
    assert torch.equal(real, fresh.forward(x.real))
