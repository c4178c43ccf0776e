"""CT reconstructions: FBP/FDK scaling (water = 0 HU), scikit-image peer check, iterative methods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medrecon.errors import InputError
from medrecon.intensity import hu_to_mu, mu_to_hu
from medrecon.io.measurement import (
    Measurement,
    ReferenceGeometry,
    read_measurement,
    write_measurement,
)
from medrecon.io.operator_schema import ct_operator_description
from medrecon.io.volume import Volume
from medrecon.methods import available_methods, get_method
from medrecon.operators.base import adjoint_mismatch
from medrecon.operators.ct_geometry import CTGeometry, default_geometry
from medrecon.operators.ct_projector import make_projector
from medrecon.phantoms import SHEPP_LOGAN_3D, Ellipsoid, ellipsoid_phantom
from medrecon.problem import measurement_problem
from medrecon.recon.base import ReconOptions
from medrecon.recon.ct import cgls, sirt
from medrecon.recon.ct_analytic import (
    FILTERS,
    analytic_reconstruction,
    fbp,
    fdk,
    ramp_filter,
)
from medrecon.simulate import simulate_sinogram

CPU = torch.device("cpu")


def _water_cylinder(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                    radius_mm: float, half_length_mm: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """HU volume: water (0 HU) cylinder along k in air (-1000 HU); and the in-plane radius map."""
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing[0]
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing[1]
    z = (np.arange(shape[2]) - (shape[2] - 1) / 2) * spacing[2]
    r = np.sqrt(x[:, None] ** 2 + y[None, :] ** 2)
    inside = (r < radius_mm)[:, :, None] & np.ones(shape[2], dtype=bool)[None, None, :]
    if half_length_mm is not None:
        inside &= (np.abs(z) < half_length_mm)[None, None, :]
    return np.where(inside, 0.0, -1000.0), r


@pytest.mark.parametrize(("kind", "range_deg", "window"), [
    ("parallel", 180, "ram-lak"), ("parallel", 360, "shepp-logan"), ("parallel", 270, "hann"),
    ("fan", 360, "ram-lak"), ("fan", 360, "hann"), ("fan", 250, "shepp-logan"),
])
def test_fbp_water_cylinder_is_zero_hu(kind: str, range_deg: float, window: str) -> None:
    shape, spacing = (57, 51, 2), (0.8, 0.9, 2.0)
    hu, r = _water_cylinder(shape, spacing, 17.0)
    g = default_geometry(shape, spacing, kind, 90, range_deg)
    p = make_projector(g, shape, spacing, dtype=torch.float64)(torch.from_numpy(hu_to_mu(hu)))
    rec = mu_to_hu(fbp(p, g, shape, spacing, window).numpy())
    centre = rec[r < 12.0]
    assert abs(float(centre.mean())) < 2.0  # HU
    assert float(centre.std()) < 25.0
    assert abs(float(rec[r > 21.0].mean()) + 1000.0) < 5.0  # air stays air


def test_fdk_water_cylinder_is_zero_hu() -> None:
    # A finite cylinder, so that the central slices are inside the fully measured region.
    shape, spacing = (37, 35, 21), (1.0, 1.1, 1.2)
    hu, r = _water_cylinder(shape, spacing, 12.0, half_length_mm=9.0)
    g = default_geometry(shape, spacing, "cone", 48)
    p = make_projector(g, shape, spacing, dtype=torch.float64)(torch.from_numpy(hu_to_mu(hu)))
    rec = mu_to_hu(fdk(p, g, shape, spacing, "hann").numpy())
    mid = rec[:, :, 8:13][r < 8.0]
    assert abs(float(mid.mean())) < 3.0
    assert float(mid.std()) < 20.0
    assert abs(float(rec[:, :, 10][r > 16.0].mean()) + 1000.0) < 10.0


def test_short_fan_scan_needs_fan_angle() -> None:
    shape, spacing = (31, 29, 1), (1.0, 1.0, 1.0)
    g = default_geometry(shape, spacing, "fan", 40, 180)
    with pytest.raises(InputError, match="at least 180 deg plus the fan angle"):
        fbp(torch.zeros(g.sinogram_shape), g, shape, spacing)
    with pytest.raises(InputError):
        fdk(torch.zeros(g.sinogram_shape), g, shape, spacing)
    with pytest.raises(InputError, match="Unknown FBP filter"):
        fbp(torch.zeros(g.sinogram_shape), g, shape, spacing, "butterworth")


def test_ramp_filter_shapes() -> None:
    for name in FILTERS:
        h = ramp_filter(37, 0.5, name)
        assert h.shape == (128,)
        assert abs(h[0]) < 0.05 * h.max()  # the discrete ramp is ~0 at DC
        assert h[32] > 0  # positive at mid frequencies
    # Windows only attenuate: Hann vanishes at Nyquist, Ram-Lak is largest there.
    assert ramp_filter(37, 0.5, "hann")[64] == pytest.approx(0.0, abs=1e-12)
    assert ramp_filter(37, 0.5, "ram-lak")[64] == pytest.approx(np.max(ramp_filter(37, 0.5)))


def test_peer_check_against_scikit_image() -> None:
    """Our parallel projector and FBP agree with skimage's radon / iradon.

    Conventions, checked here: skimage's image ``[row, col]`` is our ``(i, j)`` (one slice),
    its ``theta`` in degrees is our angle in radians, its detector (``circle=True``: as many
    bins as the image width, centre bin ``N // 2``) is our default one for odd N with 1 mm
    pixels and 1 mm voxels, and its sums over unit pixels are our line integrals in mm. The
    sinogram is transposed: skimage (detector, views), ours (views, rows = 1, cols).
    """
    from skimage.data import shepp_logan_phantom
    from skimage.transform import iradon, radon, resize

    n = 101
    img = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    yy, xx = np.mgrid[:n, :n]
    img[(yy - n // 2) ** 2 + (xx - n // 2) ** 2 > (n // 2 - 1) ** 2] = 0.0
    theta = np.linspace(0.0, 180.0, 60, endpoint=False)
    g = CTGeometry("parallel", tuple(np.deg2rad(theta)), 1, n, 1.0, 1.0)
    vol = img[:, :, None]
    p = make_projector(g, vol.shape, (1.0, 1.0, 1.0), dtype=torch.float64)(
        torch.from_numpy(vol.copy()))
    sk = radon(img, theta=theta, circle=True)
    assert np.linalg.norm(p[:, 0].numpy() - sk.T) / np.linalg.norm(sk) < 0.01
    inner = (yy - n // 2) ** 2 + (xx - n // 2) ** 2 <= 45**2
    for ours, theirs in [("ram-lak", "ramp"), ("shepp-logan", "shepp-logan"), ("hann", "hann")]:
        rec = fbp(p, g, vol.shape, (1.0, 1.0, 1.0), ours)[:, :, 0].numpy()
        ref = iradon(sk, theta=theta, filter_name=theirs, circle=True)
        assert np.linalg.norm((rec - ref)[inner]) / np.linalg.norm(ref[inner]) < 0.02
        assert rec[inner].mean() / ref[inner].mean() == pytest.approx(1.0, abs=0.005)


def _phantom_volume(n: int = 48, k: int = 2) -> Volume:
    """A CT-like Shepp-Logan in HU: bone rim 1000 HU, brain 40 HU, ventricles 10 HU."""
    values = [2000, -960, -30, -30, 30, 30, 30, 30, 30, 30]
    ells = tuple(Ellipsoid(v, e.centre, e.axes, e.phi)
                 for v, e in zip(values, SHEPP_LOGAN_3D, strict=True))
    hu = ellipsoid_phantom((n, n, k), ells) - 1000.0
    return Volume(hu, np.diag([-1.0, -1.0, 2.0, 1.0]), modality="CT", units="HU")


def _measurement(vol: Volume, kind: str, views: int, dose: float | None = None,
                 mask: np.ndarray | None = None) -> Measurement:
    sino, gdict, noise = simulate_sinogram(vol, kind, views, None, dose, 0.0, 0, "cpu")
    return Measurement("CT", sino, mask, ReferenceGeometry.from_volume(vol), noise=noise,
                       operator=ct_operator_description(gdict, vol.shape, vol.spacing))


def test_methods_registered() -> None:
    assert {"fbp", "fdk", "sirt", "cgls", "tv"} <= set(available_methods("CT"))


def test_registered_methods_reconstruct_in_hu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    vol = _phantom_volume()
    path = write_measurement(_measurement(vol, "parallel", 40), tmp_path / "ct.h5")
    m = read_measurement(path)
    ref = vol.data
    fg = ref > -500

    def err(img: np.ndarray) -> float:
        return float(np.sqrt(np.mean((img - ref)[fg] ** 2)))

    outs = {}
    for name, opts in [("fbp", ReconOptions(extra={"filter": "hann"})),
                       ("sirt", ReconOptions(iterations=30)),
                       ("cgls", ReconOptions(iterations=12)),
                       ("tv", ReconOptions(iterations=40))]:
        out = get_method("CT", name)(m, opts, CPU)
        assert out.image.shape == vol.shape
        assert np.isfinite(out.residual) and out.residual < 0.1
        outs[name] = out
    zero = float(np.sqrt(np.mean((ref[fg] + 1000.0) ** 2)))  # an all-air image's error
    for name, out in outs.items():
        assert err(out.image) < 0.35 * zero, name
    assert outs["cgls"].residual < outs["fbp"].residual
    assert outs["tv"].info["warm_start"] == "fbp"
    assert outs["fbp"].info["algorithm"] == "fbp"
    # Air reconstructs near -1000 HU, soft tissue near its value.
    brain = (ref > 30) & (ref < 50)
    assert abs(float(np.median(outs["tv"].image[brain])) - 40.0) < 40.0


def test_tv_beats_fbp_on_sparse_noisy_views() -> None:
    from scipy.ndimage import binary_erosion

    vol = _phantom_volume(48, 1)
    m = _measurement(vol, "parallel", 20, dose=2e4)
    ref = vol.data
    soft = binary_erosion(((ref > -100) & (ref < 200))[:, :, 0], iterations=2)[:, :, None]
    fbp_img = get_method("CT", "fbp")(m, ReconOptions(extra={"filter": "hann"}), CPU).image
    tv_img = get_method("CT", "tv")(m, ReconOptions(lam=3e-3, iterations=80), CPU).image
    rmse = [float(np.sqrt(np.mean((a - ref)[soft] ** 2))) for a in (fbp_img, tv_img)]
    assert rmse[1] < 0.6 * rmse[0]  # noise and streaks in soft tissue (measured: 37 -> 13 HU)


def test_fdk_method_on_cone_measurement_and_view_mask() -> None:
    vol = _phantom_volume(32, 12)
    full = _measurement(vol, "cone", 24)
    out = get_method("CT", "fdk")(full, ReconOptions(), CPU)
    assert out.info["algorithm"] == "fdk"
    assert abs(float(np.median(out.image[:, :, 6][vol.data[:, :, 6] > 0])) - 40.0) < 60.0
    # A view mask drops views: the operator keeps only the measured ones.
    mask = np.ones(24, dtype=np.uint8)
    mask[1::2] = 0
    sparse = Measurement("CT", full.data, mask, full.reference, noise=full.noise,
                         operator=full.operator)
    problem = measurement_problem(sparse, CPU)
    assert problem.op.oshape == (12, *full.data.shape[1:])
    assert adjoint_mismatch(make_projector(problem.geometry, vol.shape, vol.spacing,
                                           dtype=torch.float64), complex_input=False) < 1e-10
    out2 = get_method("CT", "cgls")(sparse, ReconOptions(iterations=5), CPU)
    assert out2.info["views"] == 12


def test_sirt_and_cgls_converge_on_consistent_data() -> None:
    shape, spacing = (21, 19, 1), (1.0, 1.0, 1.0)
    g = default_geometry(shape, spacing, "parallel", 30)
    op = make_projector(g, shape, spacing, dtype=torch.float64)
    x_true = torch.from_numpy(ellipsoid_phantom(shape, SHEPP_LOGAN_3D[:4]).astype(np.float64))
    x_true = x_true.clamp(min=0)
    y = op(x_true)
    x0 = torch.zeros(shape, dtype=torch.float64)
    res_c = cgls(op.forward, op.adjoint, y, x0, max_iter=60, tol=1e-8)
    res_s = sirt(op.forward, op.adjoint, y, x0, max_iter=200)
    for res in (res_c, res_s):
        rel = float(torch.linalg.vector_norm(op(res.x) - y) / torch.linalg.vector_norm(y))
        assert rel < 0.02
    assert res_c.history[-1] < res_c.history[0]
    assert float(res_s.x.min()) >= 0.0  # SIRT's non-negativity
    # The analytic reconstruction of the same data is in the right range as well.
    rec = analytic_reconstruction(y, g, shape, spacing)
    assert float(torch.corrcoef(torch.stack([rec.flatten(), x_true.flatten()]))[0, 1]) > 0.9


def test_angular_range_from_angles_for_arbitrary_order() -> None:
    # Views given in shuffled order reconstruct the same as sorted ones.
    shape, spacing = (31, 31, 1), (1.0, 1.0, 1.0)
    g = default_geometry(shape, spacing, "parallel", 24)
    perm = np.random.default_rng(0).permutation(24)
    gp = CTGeometry("parallel", tuple(g.angles[i] for i in perm), g.detector_rows,
                    g.detector_cols, g.pixel_rows_mm, g.pixel_cols_mm)
    x = torch.from_numpy(ellipsoid_phantom(shape, SHEPP_LOGAN_3D[:2]).astype(np.float64))
    p = make_projector(g, shape, spacing, dtype=torch.float64)(x)
    torch.testing.assert_close(fbp(p[perm], gp, shape, spacing), fbp(p, g, shape, spacing))
    assert math.isclose(sum(g.angles[1:2]), math.pi / 24)


@pytest.mark.gpu
def test_cuda_analytic_and_iterative_match_cpu() -> None:
    vol = _phantom_volume(32, 6)
    for kind in ("fan", "cone"):
        m = _measurement(vol, kind, 24)
        for name in ("fbp", "cgls"):
            opts = ReconOptions(iterations=5)
            cpu = get_method("CT", name)(m, opts, CPU).image
            gpu = get_method("CT", name)(m, opts, torch.device("cuda")).image
            np.testing.assert_allclose(gpu, cpu, atol=2.0)  # HU, float32 on both


def test_tv_weighs_thick_slices_apart() -> None:
    """TV's gradient is in physical units: across 10 mm slices the z-differences weigh 0.1 of
    the in-plane ones, so a slice's result stays near its own single-slice TV result, while
    1 mm slices (isotropic TV) pull it toward its neighbour."""
    base = _phantom_volume(48, 1).data[:, :, 0]
    yy, xx = np.meshgrid(np.arange(48) - 20, np.arange(48) - 28, indexing="ij")
    other = np.where(np.hypot(yy, xx) < 12, 40.0, -1000.0)  # a different second slice
    opts = ReconOptions(lam=3e-3, iterations=150)
    tv = get_method("CT", "tv")
    change = {}
    for dz in (1.0, 10.0):
        two = Volume(np.stack([base, other], axis=2), np.diag([-1.0, -1.0, dz, 1.0]),
                     modality="CT", units="HU")
        one = Volume(base[:, :, None], np.diag([-1.0, -1.0, dz, 1.0]), modality="CT",
                     units="HU")
        out = tv(_measurement(two, "parallel", 20), opts, CPU)
        alone = tv(_measurement(one, "parallel", 20), opts, CPU).image[:, :, 0]
        change[dz] = float(np.sqrt(np.mean((out.image[:, :, 0] - alone) ** 2)))
        assert out.info.get("tv_axis_weights") == (None if dz == 1.0 else [1.0, 1.0, 0.1])
    assert change[10.0] < 0.4 * change[1.0]  # measured: 14 against 47 HU
