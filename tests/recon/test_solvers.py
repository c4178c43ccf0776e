"""Shared solvers and regularisation building blocks, checked against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.operators.base import adjoint_mismatch
from medrecon.recon.solvers import (
    FiniteDifference,
    WaveletTransform,
    conjugate_gradient,
    divergence,
    finite_difference,
    fista,
    pdhg,
    power_iteration,
    project_l2_ball,
    soft_threshold,
)


def _complex(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.complex(torch.randn(shape, generator=g, dtype=torch.float64),
                         torch.randn(shape, generator=g, dtype=torch.float64))


@pytest.fixture
def system(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    a = _complex((30, 20), generator)
    y = _complex((30,), generator)
    return a, y


def test_cg_matches_direct_tikhonov_solution(system: tuple[torch.Tensor, torch.Tensor]) -> None:
    a, y = system
    ah = a.conj().T
    calls: list[int] = []
    res = conjugate_gradient(lambda v: ah @ (a @ v), ah @ y, max_iter=200, tol=1e-12, lam=0.3,
                             callback=lambda k, x: calls.append(k))
    exact = torch.linalg.solve(ah @ a + 0.3 * torch.eye(20, dtype=a.dtype), ah @ y)
    assert res.converged and res.iterations <= 25  # n = 20 unknowns: CG is exact in n steps
    assert float((res.x - exact).norm() / exact.norm()) < 1e-9
    assert calls == list(range(1, res.iterations + 1))
    assert res.history[-1] < 1e-12


def test_cg_stops_at_tolerance_and_warm_start(system: tuple[torch.Tensor, torch.Tensor]) -> None:
    a, y = system
    ah = a.conj().T
    loose = conjugate_gradient(lambda v: ah @ (a @ v), ah @ y, max_iter=200, tol=1e-2)
    tight = conjugate_gradient(lambda v: ah @ (a @ v), ah @ y, max_iter=200, tol=1e-10)
    assert loose.iterations < tight.iterations
    assert loose.history[-1] < 1e-2 <= loose.history[-2]
    again = conjugate_gradient(lambda v: ah @ (a @ v), ah @ y, x0=tight.x, tol=1e-8)
    assert again.iterations == 0 and again.converged


def test_power_iteration_finds_largest_eigenvalue(
        system: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator) -> None:
    a, _ = system
    n = a.conj().T @ a
    est = power_iteration(lambda v: n @ v, torch.zeros(20, dtype=a.dtype), iters=200,
                          generator=generator)
    assert est == pytest.approx(float(torch.linalg.eigvalsh(n).max()), rel=1e-6)


def test_soft_threshold_complex_and_real() -> None:
    x = torch.tensor([3 + 4j, 0.1 + 0j, -2j], dtype=torch.complex128)
    out = soft_threshold(x, 1.0)
    assert torch.allclose(out.abs(), torch.tensor([4.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(out[0] / out[0].abs(), x[0] / x[0].abs())  # phase kept
    r = soft_threshold(torch.tensor([-3.0, 0.5, 2.0]), 1.0)
    assert torch.equal(r, torch.tensor([-2.0, 0.0, 1.0]))


def test_project_l2_ball() -> None:
    y = torch.tensor([[3.0, 0.1], [4.0, 0.0]])  # two vectors along dim 0: (3, 4) and (0.1, 0)
    p = project_l2_ball(y, 1.0, dim=0)
    assert torch.allclose(p[:, 0], torch.tensor([0.6, 0.8]))
    assert torch.allclose(p[:, 1], y[:, 1])


def test_fista_solves_lasso_with_orthonormal_design(generator: torch.Generator) -> None:
    # min 1/2 ||x - b||^2 + lam ||x||_1 has the solution soft(b, lam).
    b = _complex((50,), generator)
    res = fista(lambda x: x - b, lambda v, s: soft_threshold(v, 0.7 * s),
                torch.zeros_like(b), step=1.0, max_iter=50, tol=1e-12)
    assert torch.allclose(res.x, soft_threshold(b, 0.7), atol=1e-12)


def test_fista_least_squares_converges(system: tuple[torch.Tensor, torch.Tensor]) -> None:
    a, y = system
    ah = a.conj().t()
    lip = float(torch.linalg.eigvalsh(ah @ a).max())
    res = fista(lambda x: ah @ (a @ x - y), lambda v, s: v, torch.zeros(20, dtype=a.dtype),
                step=1.0 / lip, max_iter=3000, tol=1e-11)
    exact = torch.linalg.lstsq(a, y).solution
    assert res.converged
    assert float((res.x - exact).norm() / exact.norm()) < 1e-6


def test_pdhg_l1_denoising_matches_soft_threshold(generator: torch.Generator) -> None:
    # min lam ||x||_1 + 1/2 ||x - b||^2 with K = I: f = lam ||.||_1 (f* = box), g quadratic.
    b = torch.randn(40, generator=generator, dtype=torch.float64)
    lam = 0.5
    res = pdhg(lambda x: x, lambda y: y, lambda v, s: v.clamp(-lam, lam),
               lambda v, t: (v + t * b) / (1 + t), torch.zeros_like(b), tau=0.9, sigma=0.9,
               max_iter=2000, tol=1e-13)
    assert torch.allclose(res.x, soft_threshold(b, lam), atol=1e-8)


def test_pdhg_tv_denoising_large_lam_gives_mean(generator: torch.Generator) -> None:
    # Huge TV weight: the minimiser of 1/2||x - b||^2 + lam TV(x) is the constant mean(b).
    b = torch.randn((6, 5, 4), generator=generator, dtype=torch.float64)
    d = FiniteDifference(b.shape)
    res = pdhg(d.forward, d.adjoint, lambda v, s: project_l2_ball(v, 1e3, 0), lambda v, t: v,
               b.clone(), tau=0.5, sigma=0.95 * (2.0 - 0.5) / 12, grad_h=lambda x: x - b,
               max_iter=3000, tol=1e-12)
    assert torch.allclose(res.x, torch.full_like(b, float(b.mean())), atol=1e-6)


def test_pdhg_condat_vu_and_plain_agree(generator: torch.Generator) -> None:
    # Same TV problem solved two ways: data term dualised vs. used through its gradient.
    b = torch.randn((7, 6, 5), generator=generator, dtype=torch.float64)
    d = FiniteDifference(b.shape)
    lam = 0.3
    prox = lambda v, s: project_l2_ball(v, lam, 0)  # noqa: E731
    plain = pdhg(d.forward, d.adjoint, prox, lambda v, t: (v + t * b) / (1 + t), b.clone(),
                 tau=0.25, sigma=0.25, max_iter=4000, tol=1e-12)
    cv = pdhg(d.forward, d.adjoint, prox, lambda v, t: v, b.clone(), tau=0.9,
              sigma=0.95 * (1 / 0.9 - 0.5) / 12, grad_h=lambda x: x - b, max_iter=4000, tol=1e-12)
    assert float((plain.x - cv.x).norm() / plain.x.norm()) < 1e-5
    assert float((plain.x - b).norm()) > 0.1  # the regulariser did something


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
    norm2 = power_iteration(lambda v: d.adjoint(d.forward(v)), torch.zeros(8, 9, 10),
                            iters=100, generator=gen)
    assert 8.0 < norm2 <= 12.0  # ||D||^2 < 4 per axis


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
