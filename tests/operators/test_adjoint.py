"""The one shared adjoint test: every registered operator case (MRI, CT, ...) must pass it.

Cases register in :mod:`tests.operators.adjoint_cases`; see that module. Checks, in float64 / complex128 on odd non-square shapes:

* adjointness ``|<Ax, y> - <x, A^H y>| / (|Ax| |y|) <= 1e-10``,
* linearity ``A(a x + b z) = a A x + b A z``,
* ``normal(x) == adjoint(forward(x))`` (the cheaper normal must be the same operator).
"""

from __future__ import annotations

import pytest
import torch

from medrecon.operators.base import adjoint_mismatch, random_like_shape
from tests.operators.adjoint_cases import operator_cases

CASES = operator_cases()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def test_registry_holds_the_mri_cases() -> None:
    names = set(CASES)
    for expected in ("fft-3d", "sense-single-coil-3d", "sense-multicoil-3d",
                     "sense-multicoil-2d-multislice", "sense-coil-batched",
                     "sense-composed-with-fft", "sense-adjoint-as-operator"):
        assert expected in names


def test_registry_holds_the_ct_cases_with_both_2d_methods() -> None:
    # The 2D CT cases run the sparse system matrix; their "-rays" twins the ray kernels.
    for name, expected in (("ct-parallel", "sparse"), ("ct-fan", "sparse"),
                           ("ct-parallel-rays", "rays"), ("ct-fan-rays", "rays"),
                           ("ct-cone", "rays"), ("ct-cone-vectors", "rays")):
        op, _ = CASES[name]()
        assert op.method_for("cpu", torch.float64) == expected  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", list(CASES))
def test_adjoint(name: str) -> None:
    op, complex_input = CASES[name]()
    for seed in (0, 1):
        assert adjoint_mismatch(op, complex_input=complex_input, seed=seed) <= 1e-10


@pytest.mark.parametrize("name", list(CASES))
def test_linearity(name: str) -> None:
    op, complex_input = CASES[name]()
    g = torch.Generator().manual_seed(7)
    x = random_like_shape(op.ishape, complex_input, g)
    z = random_like_shape(op.ishape, complex_input, g)
    a, b = (1.5 - 0.5j, -0.75 + 2j) if complex_input else (1.5, -0.75)
    lhs = op.forward(a * x + b * z)
    rhs = a * op.forward(x) + b * op.forward(z)
    assert tuple(lhs.shape) == op.oshape
    assert _rel(lhs, rhs) <= 1e-12


@pytest.mark.parametrize("name", list(CASES))
def test_normal_equals_adjoint_of_forward(name: str) -> None:
    op, complex_input = CASES[name]()
    g = torch.Generator().manual_seed(11)
    x = random_like_shape(op.ishape, complex_input, g)
    expected = op.adjoint(op.forward(x))
    got = op.normal(x)
    assert tuple(got.shape) == op.ishape
    assert _rel(got, expected) <= 1e-12
