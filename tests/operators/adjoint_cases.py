"""The operator cases of the one shared adjoint test (tests/operators/test_adjoint.py).

Every measurement operator joins the test by adding a factory here:

    @register_operator_case("ct-parallel")
    def _case_parallel() -> tuple[LinearOperator, bool]:
        return CTProjector(...float64 geometry, odd non-square shapes...), False

A factory takes no arguments and returns ``(operator, complex_input)``: a float64 / complex128
operator on odd, non-square shapes (they expose fftshift and geometry bugs) and whether its input
is complex. The test checks, for every case, the relative adjoint mismatch
``|<Ax, y> - <x, A^H y>| / (|Ax| |y|) <= 1e-10``, linearity, and ``normal(x) == adjoint(forward(x))``.
Each factory is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from medrecon.operators.base import LinearOperator
from medrecon.operators.coil_compression import compress_coils
from medrecon.operators.ct_geometry import CTGeometry, default_geometry
from medrecon.operators.ct_projector import CTProjector
from medrecon.operators.mri import FFTOperator, SenseOperator

__all__ = ["OperatorFactory", "operator_cases", "register_operator_case"]

OperatorFactory = Callable[[], tuple[LinearOperator, bool]]

_CASES: dict[str, OperatorFactory] = {}


def register_operator_case(name: str) -> Callable[[OperatorFactory], OperatorFactory]:
    """Decorator registering ``factory`` under ``name``; a name taken twice raises ValueError."""

    def decorate(factory: OperatorFactory) -> OperatorFactory:
        if name in _CASES:
            raise ValueError(f"operator case {name!r} is already registered")
        _CASES[name] = factory
        return factory

    return decorate


def operator_cases() -> dict[str, OperatorFactory]:
    """All cases, sorted by name."""
    return dict(sorted(_CASES.items()))


# -------------------------------------------------------------------------------------------
# MRI: FFT and SENSE (medrecon.operators.mri)
# -------------------------------------------------------------------------------------------
_SHAPE = (9, 10, 7)


def _case_maps(n_coils: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    re = torch.randn((n_coils, *_SHAPE), generator=g, dtype=torch.float64)
    im = torch.randn((n_coils, *_SHAPE), generator=g, dtype=torch.float64)
    return torch.complex(re, im)


def _case_mask(shape: Sequence[int], seed: int, weights: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(tuple(shape), generator=g, dtype=torch.float64)
    return u if weights else u < 0.5


@register_operator_case("fft-3d")
def _fft_3d() -> tuple[LinearOperator, bool]:
    return FFTOperator(_SHAPE, (0, 1, 2)), True


@register_operator_case("fft-axes-0-2")
def _fft_two_axes() -> tuple[LinearOperator, bool]:
    return FFTOperator(_SHAPE, (0, 2)), True


@register_operator_case("sense-single-coil-3d")
def _sense_single() -> tuple[LinearOperator, bool]:
    return SenseOperator(None, _case_mask((1, 10, 7), 1), (0, 1, 2), image_shape=_SHAPE), True


@register_operator_case("sense-multicoil-3d")
def _sense_multi_3d() -> tuple[LinearOperator, bool]:
    return SenseOperator(_case_maps(4, 2), _case_mask((1, 10, 7), 3), (0, 1, 2)), True


@register_operator_case("sense-multicoil-2d-multislice")
def _sense_2d() -> tuple[LinearOperator, bool]:
    return SenseOperator(_case_maps(4, 4), _case_mask((1, 10, 1), 5), (0, 1)), True


@register_operator_case("sense-multicoil-2d-per-slice-mask")
def _sense_2d_per_slice() -> tuple[LinearOperator, bool]:
    return SenseOperator(_case_maps(3, 6), _case_mask((1, 10, 7), 7), (0, 1)), True


@register_operator_case("sense-coil-batched")
def _sense_batched() -> tuple[LinearOperator, bool]:
    # 5 coils in chunks of 2 leaves an uneven last chunk.
    return SenseOperator(_case_maps(5, 8), _case_mask((1, 10, 7), 9), (0, 1, 2), coil_batch=2), True


@register_operator_case("sense-map-sets-2d-multislice")
def _sense_map_sets_2d() -> tuple[LinearOperator, bool]:
    # Two ESPIRiT-style map sets: image (2, I, J, K), one coil image sum per coil.
    maps = _case_maps(8, 18).reshape(2, 4, *_SHAPE)
    return SenseOperator(maps, _case_mask((1, 10, 1), 19), (0, 1)), True


@register_operator_case("sense-map-sets-coil-batched")
def _sense_map_sets_batched() -> tuple[LinearOperator, bool]:
    maps = _case_maps(15, 20).reshape(3, 5, *_SHAPE)
    return SenseOperator(maps, _case_mask((1, 10, 7), 21), (0, 1, 2), coil_batch=2), True


@register_operator_case("sense-weighted-mask")
def _sense_weighted() -> tuple[LinearOperator, bool]:
    return SenseOperator(_case_maps(2, 10), _case_mask((9, 10, 7), 11, weights=True),
                         (0, 1, 2)), True


@register_operator_case("sense-composed-with-fft")
def _sense_composed() -> tuple[LinearOperator, bool]:
    # k-space -> image -> multi-coil k-space: exercises ComposedOperator.
    sense = SenseOperator(_case_maps(3, 12), _case_mask((1, 10, 7), 13), (0, 1, 2))
    return sense @ FFTOperator(_SHAPE, (0, 1, 2)).H, True


@register_operator_case("sense-adjoint-as-operator")
def _sense_h() -> tuple[LinearOperator, bool]:
    return SenseOperator(_case_maps(3, 14), _case_mask((1, 10, 1), 15), (0, 1)).H, True


@register_operator_case("sense-virtual-coils")
def _sense_virtual() -> tuple[LinearOperator, bool]:
    # 5 coils compressed onto 3 virtual ones (medrecon.operators.coil_compression).
    maps, mask = _case_maps(5, 18), _case_mask((1, 10, 7), 19)
    kspace = SenseOperator(maps, mask, (0, 1, 2)).forward(_case_maps(1, 20)[0])
    cc = compress_coils(kspace, maps, mask, n_virtual=3)
    return SenseOperator(cc.maps, mask, (0, 1, 2)), True


@register_operator_case("sense-scaled")
def _sense_scaled() -> tuple[LinearOperator, bool]:
    return 2.5 * SenseOperator(_case_maps(2, 16), _case_mask((1, 10, 7), 17), (0, 1, 2)), True


# -------------------------------------------------------------------------------------------
# CT: parallel, fan and cone-beam projectors (medrecon.operators.ct_projector)
# -------------------------------------------------------------------------------------------
_CASE_SHAPE = (13, 11, 5)
_CASE_SPACING = (1.0, 1.3, 2.1)


# The 2D cases use the sparse system matrix (the default); their "-rays" twins the ray-driven
# kernels. Small max_points split both the matrix build and the ray kernels into many chunks.
@register_operator_case("ct-parallel")
def _case_parallel() -> tuple[LinearOperator, bool]:
    g = default_geometry(_CASE_SHAPE, _CASE_SPACING, "parallel", 7, 180.0)
    return CTProjector(g, _CASE_SHAPE, _CASE_SPACING, max_points=5000, method="sparse"), False


@register_operator_case("ct-parallel-rays")
def _case_parallel_rays() -> tuple[LinearOperator, bool]:
    g = default_geometry(_CASE_SHAPE, _CASE_SPACING, "parallel", 7, 180.0)
    return CTProjector(g, _CASE_SHAPE, _CASE_SPACING, max_points=5000, method="rays"), False


@register_operator_case("ct-fan")
def _case_fan() -> tuple[LinearOperator, bool]:
    g = default_geometry(_CASE_SHAPE, _CASE_SPACING, "fan", 7, 360.0)
    return CTProjector(g, _CASE_SHAPE, _CASE_SPACING, max_points=5000, method="sparse"), False


@register_operator_case("ct-fan-rays")
def _case_fan_rays() -> tuple[LinearOperator, bool]:
    g = default_geometry(_CASE_SHAPE, _CASE_SPACING, "fan", 7, 360.0)
    return CTProjector(g, _CASE_SHAPE, _CASE_SPACING, max_points=5000, method="rays"), False


@register_operator_case("ct-cone")
def _case_cone() -> tuple[LinearOperator, bool]:
    g = default_geometry(_CASE_SHAPE, _CASE_SPACING, "cone", 5, 360.0)
    return CTProjector(g, _CASE_SHAPE, _CASE_SPACING, max_points=20000), False


@register_operator_case("ct-cone-vectors")
def _case_cone_vectors() -> tuple[LinearOperator, bool]:
    # A helical-like arbitrary trajectory with a tilted detector.
    vectors = []
    for n in range(4):
        th = 0.9 * n
        src = (60 * math.cos(th), 60 * math.sin(th), -3.0 + 2.0 * n)
        det = (-50 * math.cos(th), -50 * math.sin(th), 1.0 - n)
        eu = (-math.sin(th), math.cos(th), 0.1)
        ev = (0.05, 0.0, 1.0)
        vectors.append((*src, *det, *eu, *ev))
    g = CTGeometry("cone", tuple(0.9 * n for n in range(4)), 9, 23, 2.3, 2.1,
                   vectors=tuple(vectors))
    return CTProjector(g, _CASE_SHAPE, _CASE_SPACING), False
