"""``medrecon.solvers``: CG, the power method, FISTA, PDHG and the proximal maps, checked against
closed forms."""

from __future__ import annotations

import pytest
import torch

from medrecon.operators.finite_difference import FiniteDifference
from medrecon.solvers import (
    conjugate_gradient,
    fista,
    inner,
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
    res = conjugate_gradient(lambda v: ah @ (a @ v) + 0.3 * v, ah @ y, max_iter=200, tol=1e-12,
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
    est = power_iteration(lambda v: n @ v, _complex((20,), generator), iters=200)
    top = float(torch.linalg.eigvalsh(n).max())
    assert est.rayleigh == pytest.approx(top, rel=1e-6)
    assert est.gain == pytest.approx(top, rel=1e-6) and est.rayleigh <= est.gain * (1 + 1e-12)
    assert power_iteration(lambda v: 0 * v, _complex((20,), generator)).gain == 0.0


def test_batched_cg_solves_each_item_with_its_own_steps() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    spd = m @ m.T + 0.1 * torch.eye(6, dtype=torch.float64)
    rhs = torch.randn(3, 6, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.0, 1.0, 10.0], dtype=torch.float64)
    res = conjugate_gradient(lambda v: v @ spd + shift[:, None] * v, rhs, max_iter=20, tol=0.0,
                             batched=True)
    for i in range(3):
        ref = torch.linalg.solve(spd + shift[i] * torch.eye(6, dtype=torch.float64), rhs[i])
        torch.testing.assert_close(res.x[i], ref, rtol=1e-9, atol=1e-9)
        # One item alone takes the same steps as in the batch.
        alone = conjugate_gradient(lambda v, s=float(shift[i]): v @ spd + s * v, rhs[i],
                                   max_iter=20, tol=0.0)
        torch.testing.assert_close(alone.x, res.x[i], rtol=1e-12, atol=1e-12)
    assert res.converged and res.iterations <= 7  # 6 unknowns: exact in 6 steps


def test_batched_cg_freezes_converged_items() -> None:
    # Item 0 is solved at the start (rhs = 0), item 1 needs iterations: the solved one must stay
    # exactly where it is instead of dividing by a zero curvature.
    spd = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    rhs = torch.stack([torch.zeros(3, dtype=torch.float64),
                       torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)])
    res = conjugate_gradient(lambda v: v @ spd, rhs, max_iter=10, tol=1e-12, batched=True)
    assert torch.equal(res.x[0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(res.x[1], torch.tensor([1.0, 0.5, 1 / 3], dtype=torch.float64))
    assert torch.isfinite(res.x).all()


def test_inner_product_real_part_per_item() -> None:
    a = torch.tensor([[1 + 2j, 3j], [1.0 + 0j, 0j]], dtype=torch.complex128)
    b = torch.tensor([[2 + 0j, 1j], [0j, 5 + 0j]], dtype=torch.complex128)
    assert torch.equal(inner(a, b, batched=True), torch.tensor([5.0, 0.0], dtype=torch.float64))
    assert float(inner(a, b)) == 5.0


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
