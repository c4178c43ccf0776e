"""CT projectors: matched adjoints, closed-form ellipse/ellipsoid projections, geometry I/O."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from medrecon.errors import GeometryError, InputError
from medrecon.operators.base import adjoint_mismatch
from medrecon.operators.ct_geometry import CTGeometry, default_geometry, ray_lines
from medrecon.operators.ct_projector import CTProjector, make_projector
from medrecon.operators.functional.projectors import csr_matmul
from medrecon.phantoms import Ellipsoid, analytic_projection, ellipsoid_phantom
from tests.operators.adjoint_cases import operator_cases

SHAPE = (33, 41, 17)
SPACING = (0.9, 0.8, 1.7)

# A skull-and-brain-like pair of ellipsoids, large enough that a moderate grid resolves them.
ELLIPSOIDS = (
    Ellipsoid(1.0, (0.05, -0.05, 0.0), (0.8, 0.65, 0.8), 0.3),
    Ellipsoid(-0.25, (-0.1, 0.1, 0.1), (0.35, 0.45, 0.4), -0.4),
)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", [n for n in operator_cases() if n.startswith("ct-")])
def test_registered_ct_cases_adjoint(name: str) -> None:
    op, complex_input = operator_cases()[name]()
    assert not complex_input
    assert adjoint_mismatch(op, complex_input=False, seed=3) <= 1e-10


def test_all_kinds_registered() -> None:
    names = set(operator_cases())
    assert {"ct-parallel", "ct-fan", "ct-cone", "ct-cone-vectors", "ct-parallel-rays",
            "ct-fan-rays"} <= names


@pytest.mark.parametrize(("kind", "method"), [
    ("parallel", "rays"), ("parallel", "sparse"), ("fan", "rays"), ("fan", "sparse"),
    ("cone", "rays")])
def test_adjoint_default_geometry_small_chunks(kind: str, method: str) -> None:
    # Tiny chunks force many ray chunks (of the kernels or of the matrix build), exercising the
    # chunk bookkeeping in both directions.
    g = default_geometry(SHAPE, SPACING, kind, 6 if kind == "cone" else 11)
    op = CTProjector(g, SHAPE, SPACING, max_points=150_000, method=method)
    assert adjoint_mismatch(op, complex_input=False, seed=1) <= 1e-10
    big = CTProjector(g, SHAPE, SPACING, method="rays")
    x = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op(x), big(x), rtol=1e-12, atol=1e-12)


# -- the sparse system matrix of the 2D kinds ---------------------------------------------------
@pytest.mark.parametrize("kind", ["parallel", "fan"])
@pytest.mark.parametrize(("shape", "views"), [((13, 11, 5), 7), ((16, 20, 4), 12),
                                              ((9, 9, 1), 1), ((24, 17, 3), 30),
                                              ((10, 9, 12), 5)])  # 36 columns: CPU blocks
def test_sparse_equals_rays(kind: str, shape: tuple[int, int, int], views: int) -> None:
    spacing = (1.1, 0.7, 2.0)
    g = default_geometry(shape, spacing, kind, views)
    sparse = CTProjector(g, shape, spacing)
    rays = CTProjector(g, shape, spacing, method="rays")
    assert sparse.method_for("cpu", torch.float64) == "sparse"
    assert rays.method_for("cpu", torch.float64) == "rays"
    gen = torch.Generator().manual_seed(4)
    x = torch.randn((3, *shape), dtype=torch.float64, generator=gen)  # a batch
    y = torch.randn((3, *g.sinogram_shape), dtype=torch.float64, generator=gen)
    torch.testing.assert_close(sparse(x), rays(x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(sparse.H(y), rays.H(y), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(sparse(x[1]), rays(x[1]), rtol=1e-13, atol=1e-13)
    assert adjoint_mismatch(sparse, complex_input=False, seed=2) <= 1e-14


def test_sparse_matrix_is_exact_and_its_transpose_is_stored() -> None:
    # Columns of A are the projections of single pixels; A^T is A transposed.
    shape, spacing = (7, 6, 1), (1.0, 1.2, 1.0)
    g = default_geometry(shape, spacing, "fan", 5)
    op = CTProjector(g, shape, spacing)
    system = op.sparse_system("cpu", torch.float64)
    assert system is not None and system.nnz > 0 and system.build_s >= 0
    a = system.matrix.to_dense()
    eye = torch.eye(shape[0] * shape[1], dtype=torch.float64).reshape(-1, *shape)
    rays = CTProjector(g, shape, spacing, method="rays")
    columns = rays(eye).reshape(-1, g.views * g.detector_cols).T
    torch.testing.assert_close(a, columns, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(system.transpose.to_dense(), a.T, rtol=0, atol=0)
    assert int((a != 0).sum()) == system.nnz  # no stored zeros, duplicates merged
    assert op.sparse_system("cpu", torch.float64) is system  # cached
    again = CTProjector(g, shape, spacing).sparse_system("cpu", torch.float64)
    assert again is not None and torch.equal(again.matrix.values(), system.matrix.values())


def test_csr_matmul_column_blocks() -> None:
    gen = torch.Generator().manual_seed(12)
    dense_a = torch.randn(7, 9, dtype=torch.float64, generator=gen)
    dense_a[dense_a.abs() < 0.8] = 0.0
    a = dense_a.to_sparse_csr()
    x = torch.randn(9, 10, dtype=torch.float64, generator=gen)
    for block in (1, 3, 10, None):
        torch.testing.assert_close(csr_matmul(a, x, block), dense_a @ x, rtol=1e-14, atol=1e-14)


def test_sparse_float32_and_autograd() -> None:
    g = default_geometry(SHAPE, SPACING, "parallel", 9)
    sparse, rays = CTProjector(g, SHAPE, SPACING), CTProjector(g, SHAPE, SPACING, method="rays")
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(SHAPE, generator=gen)
    w = torch.rand(g.sinogram_shape, generator=gen)
    assert sparse(x).dtype == torch.float32 and sparse.method_for() == "sparse"
    torch.testing.assert_close(sparse(x), rays(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse.H(w), rays.H(w), rtol=1e-5, atol=1e-5)
    xr = x.clone().requires_grad_(True)
    (sparse(xr) * w).sum().backward()
    torch.testing.assert_close(xr.grad, sparse.H(w))


def test_sparse_budget_falls_back_to_rays() -> None:
    g = default_geometry(SHAPE, SPACING, "fan", 6)
    tiny = CTProjector(g, SHAPE, SPACING, sparse_max_nnz=100)
    assert tiny.sparse_system("cpu", torch.float64) is None
    assert tiny.method_for("cpu", torch.float64) == "rays"
    x = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    rays = CTProjector(g, SHAPE, SPACING, method="rays")
    torch.testing.assert_close(tiny(x), rays(x), rtol=0, atol=0)  # the very same kernels
    # A tiny share of memory also means rays; "sparse" insists and says why it cannot.
    frac = CTProjector(g, SHAPE, SPACING, sparse_memory_fraction=1e-12)
    assert frac.method_for("cpu", torch.float64) == "rays"
    with pytest.raises(InputError, match="nonzeros"):
        CTProjector(g, SHAPE, SPACING, method="sparse", sparse_max_nnz=100)(x)
    # Cone beam and half precision never build a matrix.
    cone = default_geometry(SHAPE, SPACING, "cone", 3)
    assert CTProjector(cone, SHAPE, SPACING).method_for("cpu", torch.float64) == "rays"
    assert CTProjector(g, SHAPE, SPACING).method_for("cpu", torch.bfloat16) == "rays"


def test_method_errors() -> None:
    g = default_geometry(SHAPE, SPACING, "parallel", 4)
    with pytest.raises(InputError):
        CTProjector(g, SHAPE, SPACING, method="dense")
    with pytest.raises(InputError):
        CTProjector(default_geometry(SHAPE, SPACING, "cone", 4), SHAPE, SPACING,
                    method="sparse")
    with pytest.raises(InputError):
        CTProjector(g, SHAPE, SPACING, sparse_memory_fraction=0.0)


@pytest.mark.parametrize("method", ["sparse", "rays"])
def test_batch_and_autograd_use_the_adjoint(method: str) -> None:
    g = default_geometry(SHAPE, SPACING, "fan", 9)
    op = make_projector(g, SHAPE, SPACING, dtype=torch.float64, method=method)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn((2, *SHAPE), dtype=torch.float64, generator=gen)
    y = op(x)
    assert y.shape == (2, *g.sinogram_shape)
    torch.testing.assert_close(y[1], op(x[1]))
    # Gradient of <A x, w> is A^T w, computed by the custom autograd function.
    w = torch.randn(g.sinogram_shape, dtype=torch.float64, generator=gen)
    xr = x[0].clone().requires_grad_(True)
    (op(xr) * w).sum().backward()
    torch.testing.assert_close(xr.grad, op.H(w))
    wr = w.clone().requires_grad_(True)
    (op.H(wr) * x[0]).sum().backward()
    torch.testing.assert_close(wr.grad, op(x[0]))


def test_linearity_and_float32() -> None:
    g = default_geometry(SHAPE, SPACING, "cone", 4)
    op = make_projector(g, SHAPE, SPACING)
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(SHAPE, generator=gen)
    b = torch.rand(SHAPE, generator=gen)
    torch.testing.assert_close(op(2 * a - b), 2 * op(a) - op(b), rtol=1e-4, atol=1e-4)
    assert op(a).dtype == torch.float32
    assert float(op(a).min()) >= 0.0
    with pytest.raises(TypeError):
        op(a.to(torch.complex64))


def _voxelise_inplane(shape: tuple[int, int, int], oversample: int) -> np.ndarray:
    """Partial-volume voxelisation, oversampled in-plane (slices sampled at their centre)."""
    fine = ellipsoid_phantom((shape[0] * oversample, shape[1] * oversample, shape[2]), ELLIPSOIDS)
    return fine.reshape(shape[0], oversample, shape[1], oversample, shape[2]).mean(axis=(1, 3))


@pytest.mark.parametrize("kind", ["parallel", "fan"])
def test_2d_projection_matches_closed_form(kind: str) -> None:
    # Ray-driven interpolation blurs sharp edges by about a voxel, so the relative error falls
    # like the voxel size over the ellipse size (1.6 % at 64 px, 0.8 % at 128 px).
    shape, spacing = (160, 144, 2), (0.8, 0.9, 1.0)
    vol = _voxelise_inplane(shape, 2)
    g = default_geometry(shape, spacing, kind, 12)
    p = make_projector(g, shape, spacing)(torch.from_numpy(vol)).numpy()
    exact = analytic_projection(ELLIPSOIDS, g, shape, spacing)
    assert exact.max() > 50.0  # the phantom really is in the field of view
    assert _rel(p, exact) < 0.01


def test_cone_projection_matches_closed_form() -> None:
    shape, spacing = (192, 176, 160), (0.5, 0.55, 0.6)
    vol = ellipsoid_phantom(shape, ELLIPSOIDS)
    g0 = default_geometry(shape, spacing, "cone", 3)
    # A coarser detector with the same coverage keeps the test fast; rows far off the central
    # plane exercise the cone angle.
    g = dataclasses.replace(g0, detector_rows=31, detector_cols=41,
                            pixel_rows_mm=g0.pixel_rows_mm * g0.detector_rows / 31,
                            pixel_cols_mm=g0.pixel_cols_mm * g0.detector_cols / 41 * 0.8)
    p = make_projector(g, shape, spacing)(torch.from_numpy(vol)).numpy()
    exact = analytic_projection(ELLIPSOIDS, g, shape, spacing)
    # Rays more than 8 degrees off the central plane cross the ellipsoid: the cone angle matters.
    _, d = ray_lines(g, shape, spacing)
    steep = np.abs(d[..., 2].numpy()) > math.sin(math.radians(8.0))
    assert np.count_nonzero(exact[steep]) > 20
    assert _rel(p, exact) < 0.01


def test_vector_geometry_equals_circular_cone() -> None:
    g = default_geometry(SHAPE, SPACING, "cone", 5)
    src, det, eu, ev = g.frames()
    vectors = torch.cat([src, det, eu, ev], dim=1).tolist()
    gv = dataclasses.replace(g, vectors=tuple(tuple(v) for v in vectors))
    x = torch.rand(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(make_projector(gv, SHAPE, SPACING)(x),
                               make_projector(g, SHAPE, SPACING)(x))


def test_rotation_axis_is_k_and_orientation() -> None:
    # A point-like blob off-centre along +x (axis i): at theta = 0 rays run along x, so the blob
    # lands on the central column; at theta = 90 deg it lands at u = -x (e_u = (-1, 0, 0)).
    shape, spacing = (31, 31, 3), (1.0, 1.0, 2.0)
    vol = np.zeros(shape, dtype=np.float32)
    vol[15 + 8, 15, 2] = 1.0
    g = default_geometry(shape, spacing, "parallel", 2, 180.0)
    p = make_projector(g, shape, spacing)(torch.from_numpy(vol)).numpy()
    centre = (g.detector_cols - 1) / 2
    assert np.argmax(p[0, 2]) == pytest.approx(centre, abs=0.5)
    assert np.argmax(p[1, 2]) == pytest.approx(centre - 8, abs=0.5)
    assert p[:, :2].max() == 0.0  # slices are independent: rows 0, 1 see nothing


def test_default_geometry_covers_fov_and_magnifies() -> None:
    for kind in ("parallel", "fan", "cone"):
        g = default_geometry(SHAPE, SPACING, kind, 8)
        assert g.views == 8
        p, d = ray_lines(g, SHAPE, SPACING)
        assert p.shape == (8, g.detector_rows, g.detector_cols, 3)
        # Field-of-view corners project inside the detector: a uniform block gives zero
        # line integrals on the outermost columns.
        op = make_projector(g, SHAPE, SPACING)
        y = op(torch.ones(SHAPE))
        assert float(y[:, :, 0].abs().max()) == 0.0
        assert float(y[:, :, -1].abs().max()) == 0.0
        if kind == "cone":
            assert float(y[:, 0].abs().max()) == 0.0 and float(y[:, -1].abs().max()) == 0.0
        if kind != "parallel":
            assert g.source_detector_mm / g.source_isocentre_mm == pytest.approx(2.0)
            assert g.pixel_cols_mm == pytest.approx(2.0 * min(SPACING[:2]))
    assert default_geometry(SHAPE, SPACING, "parallel", 4).angles[1] == pytest.approx(math.pi / 4)
    assert default_geometry(SHAPE, SPACING, "fan", 4).angles[1] == pytest.approx(math.pi / 2)


def test_geometry_dict_round_trip() -> None:
    g = default_geometry(SHAPE, SPACING, "cone", 7, 200.0)
    d = json.loads(json.dumps(g.to_dict()))
    assert CTGeometry.from_dict(d) == g
    assert CTGeometry.from_dict(json.dumps(d)) == g
    # Survives being merged into an operator description whose own kind is "ct".
    assert CTGeometry.from_dict({**d, "kind": "ct"}) == g
    gv = dataclasses.replace(g, vectors=tuple((1.0,) * 12 for _ in range(7)))
    assert CTGeometry.from_dict(json.loads(json.dumps(gv.to_dict()))) == gv


def test_geometry_errors() -> None:
    with pytest.raises(GeometryError):
        CTGeometry("helical", (0.0,), 1, 1, 1.0, 1.0)
    with pytest.raises(GeometryError):
        CTGeometry("fan", (0.0,), 1, 5, 1.0, 1.0, source_isocentre_mm=100.0,
                   source_detector_mm=50.0)
    with pytest.raises(GeometryError):
        CTGeometry.from_dict({"kind": "cone"})
    with pytest.raises(InputError):
        default_geometry(SHAPE, SPACING, "spiral", 10)
    with pytest.raises(InputError):
        default_geometry(SHAPE, SPACING, "fan", 0)
    g = default_geometry(SHAPE, SPACING, "parallel", 4)
    with pytest.raises(GeometryError):  # one detector row per slice for 2D geometries
        CTProjector(g, (33, 41, 5), SPACING)
    tight = dataclasses.replace(default_geometry(SHAPE, SPACING, "fan", 4),
                                source_isocentre_mm=10.0)
    with pytest.raises(GeometryError):  # the source inside the field of view
        CTProjector(tight, SHAPE, SPACING)


@pytest.mark.gpu
@pytest.mark.parametrize(("kind", "method"), [("cone", "auto"), ("parallel", "sparse"),
                                              ("fan", "sparse"), ("fan", "rays")])
def test_cuda_matches_cpu(kind: str, method: str) -> None:
    g = default_geometry(SHAPE, SPACING, kind, 6)
    op = make_projector(g, SHAPE, SPACING, device="cuda", dtype=torch.float64, method=method)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((2, *SHAPE), dtype=torch.float64, generator=gen)
    y = torch.rand((2, *g.sinogram_shape), dtype=torch.float64, generator=gen)
    torch.testing.assert_close(op(x.cuda()).cpu(), op(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.H(y.cuda()).cpu(), op.H(y), rtol=1e-10, atol=1e-10)
    assert adjoint_mismatch(op, complex_input=False, device="cuda") <= 1e-10
    if method == "sparse":
        assert op.method_for("cuda", torch.float64) == "sparse"
        torch.testing.assert_close(op(x.cuda().float()).cpu(), op(x.float()), rtol=1e-5,
                                   atol=1e-5)
