"""The registry behind the one shared adjoint test.

Every measurement operator joins ``tests/operators/test_adjoint.py`` by registering a factory:

    from medrecon.operators.registry import register_operator_case

    @register_operator_case("ct-parallel-3d")
    def _case() -> tuple[LinearOperator, bool]:
        return ParallelBeamOperator(...float64 geometry, odd non-square shapes...), False

A factory takes no arguments and returns ``(operator, complex_input)``: a float64 / complex128
operator on odd, non-square shapes (they expose fftshift and geometry bugs) and whether its input
is complex. The test checks, for every case, the relative adjoint mismatch
``|<Ax, y> - <x, A^H y>| / (|Ax| |y|) <= 1e-10``, linearity, and ``normal(x) == adjoint(forward(x))``.

Cases may live in any module. :func:`operator_cases` imports the modules listed in
:data:`KNOWN_CASE_MODULES` (each only if it exists, so a module added later by another part of the
project joins without changing this file's logic) before returning the table; import errors in an
existing module are not swallowed.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

from medrecon.operators.base import LinearOperator

__all__ = [
    "KNOWN_CASE_MODULES",
    "OperatorFactory",
    "operator_cases",
    "register_operator_case",
]

OperatorFactory = Callable[[], tuple[LinearOperator, bool]]

#: Modules that register adjoint-test cases at import time (imported by :func:`operator_cases`).
KNOWN_CASE_MODULES: tuple[str, ...] = (
    "medrecon.operators.mri",
    "medrecon.operators.ct",
)

_CASES: dict[str, OperatorFactory] = {}


def _identity(f: OperatorFactory) -> str:
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"


def register_operator_case(name: str) -> Callable[[OperatorFactory], OperatorFactory]:
    """Decorator registering ``factory`` under ``name`` for the shared adjoint test.

    Registering the same function twice (a module re-imported) is harmless; a different factory
    under a name already taken raises ``ValueError``, so two cases can never shadow each other.
    """

    def decorate(factory: OperatorFactory) -> OperatorFactory:
        old = _CASES.get(name)
        if old is not None and _identity(old) != _identity(factory):
            raise ValueError(
                f"operator case {name!r} is already registered by {_identity(old)}"
            )
        _CASES[name] = factory
        return factory

    return decorate


def load_known_modules() -> None:
    """Import every module of :data:`KNOWN_CASE_MODULES` that exists, so its cases register."""
    for module in KNOWN_CASE_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def operator_cases() -> dict[str, OperatorFactory]:
    """All registered cases, sorted by name, after importing the known operator modules."""
    load_known_modules()
    return dict(sorted(_CASES.items()))
