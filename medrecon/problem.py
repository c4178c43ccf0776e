"""Measurement -> physics problem: the one place where a measurement file meets the physics.

:func:`measurement_problem` turns an MR or CT :class:`~medrecon.io.measurement.Measurement`
into a :class:`Problem`: the forward operator A, the data y as the solvers see them, the data
weights, the measurement noise (from the file, else estimated from the data) and the unit maps
between the image A acts on, the reference's units and a prior's model space. Classical
reconstruction (:mod:`medrecon.recon`) and posterior sampling (:mod:`medrecon.sampling`) both
start here, so the two never disagree about what a file means::

    from medrecon.problem import measurement_problem

    problem = measurement_problem(measurement, "cpu")
    x = problem.op.adjoint(problem.y)                 # zero-filled / backprojected image
    image = problem.units.to_reference(x)             # MR magnitude / CT HU
    print(problem.residual(x), problem.noise_std, problem.info)

=====  ===================================================  ======================================
       MR                                                   CT
=====  ===================================================  ======================================
A      SENSE ``M F S`` (:mod:`medrecon.operators.mri`);      ray-driven projector on mu in 1/mm,
       coil maps from the file, else estimated from the      only the measured views; with pixel
       calibration region (ESPIRiT, ``info["coil_maps"]``)   weights W: ``W A``
y      k-space (C, I, J, K), zeros off the mask               sinogram (V, R, C) of line integrals
                                                              (with weights: ``W y``)
noise  per real part: the file's ``noise.sigma``            Gaussian ``sigma_line_integral``, or
       (``Measurement.noise_std``: RMS complex / sqrt 2),    for Poisson data the ray-averaged
       else the robust spread of the outer 20 % of sampled   variance ``mean(exp(p) / I0)`` of the
       k-space (``info["noise_estimated"]``)                 log transform; else 0
units  x complex, reference = |x|                             x = mu (1/mm), reference = HU =
                                                              1000 (mu - mu_water) / mu_water
=====  ===================================================  ======================================

Model space. With ``model`` (a prior's intensity normalisation, see :class:`ModelRange`) the
unit map also places the image in the prior's model range, ``x = scale * z + offset``:

* MR: ``z = |x| / s`` with ``s`` the normalisation's robust scale of a 10-iteration CG
  least-squares image (the true image's scale is unknown); ``offset = 0``.
* CT: the prior's HU window ``HU = hu_min + z (hu_max - hu_min)`` and ``mu = mu_water (1 +
  HU / 1000)``, so ``scale = mu_water (hu_max - hu_min) / 1000`` and ``offset = mu_water (1 +
  hu_min / 1000)``.

Without a model, z is the classical solvers' unknown: the image itself for MR (scale 1) and
attenuation in units of water for CT (``scale = mu_water``), which keeps regularisation
weights dimensionless.

MR coil compression (``coil_energy``, used by the diffusion sampler on request, never by the
classical methods): data and maps are mapped onto the fewest virtual coils that keep that
fraction of the signal energy (:mod:`medrecon.operators.coil_compression`), after the scale and
the noise level were taken from all coils (an orthonormal compression keeps white noise white,
with the same sigma); ``info["virtual_coils"]`` and ``info["coil_energy_kept"]`` record it.

Nothing here changes the measurement: estimated coil maps live in the problem, not in the file
object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from medrecon.errors import InputError, MeasurementError
from medrecon.intensity import MU_WATER_PER_MM, mu_to_hu
from medrecon.operators.base import LinearOperator
from medrecon.operators.coils import DEFAULT_THRESHOLD
from medrecon.operators.empty_space import empty_threshold, empty_voxels

if TYPE_CHECKING:
    from medrecon.io.measurement import Measurement
    from medrecon.operators.ct_geometry import CTGeometry

Tensor = torch.Tensor

__all__ = ["ModelRange", "Problem", "UnitMap", "affine_spacing", "ct_geometry_keys",
           "ct_noise_std", "ct_ray_variance", "espirit_threshold", "estimate_maps",
           "estimated_maps_source", "kspace_tensor", "measurement_problem", "operator_support"]


class ModelRange(Protocol):
    """What the unit maps need from a prior's intensity normalisation
    (:class:`medrecon.priors.normalisation.Normalisation` provides it)."""

    ct_hu_min: float
    ct_hu_max: float

    def mr_scale(self, data: Tensor) -> float:
        """Robust MR scale of a magnitude image (maps to 1 in model space)."""
        ...


@dataclass(frozen=True)
class UnitMap:
    """Maps between model space z, the image x the operator acts on, and the reference's units.

    ``x = scale * z + offset`` (for MR times a unit-modulus phase that the sampler tracks);
    the reference's units are the MR magnitude ``|x|`` and CT Hounsfield units.

    Attributes:
        modality: "MR" or "CT".
        scale, offset: the affine map from model space to the image x.
        mu_water: CT water attenuation in 1/mm (HU <-> mu); None for MR.
        hu_window: CT (hu_min, hu_max) that model space [0, 1] spans, when a model was given.
    """

    modality: str
    scale: float = 1.0
    offset: float = 0.0
    mu_water: float | None = None
    hu_window: tuple[float, float] | None = None

    def to_physical(self, z: Tensor, phase: Tensor | None = None) -> Tensor:
        """Model space -> image x: ``scale * z + offset``, times ``phase`` when given (MR)."""
        x = self.scale * z + self.offset
        return x if phase is None else x * phase

    def to_reference(self, x: Any) -> Any:
        """Image x -> reference units: MR magnitude ``|x|`` (float32 tensor), CT HU (numpy array
        or tensor, as given)."""
        if self.modality == "MR":
            return torch.abs(x).to(torch.float32)
        assert self.mu_water is not None
        return mu_to_hu(x, self.mu_water)

    def model_to_reference(self, z: Tensor, phase: Tensor | None = None) -> Tensor:
        """Model space -> reference units (MR: ``|to_physical(z, phase)|``; CT with a model
        window: ``hu_min + z (hu_max - hu_min)``, the prior's own map)."""
        if self.modality == "CT" and self.hu_window is not None:
            lo, hi = self.hu_window
            return z * (hi - lo) + lo
        if self.modality == "MR":
            return self.to_physical(z, phase).abs()
        return self.to_reference(self.to_physical(z))


@dataclass(frozen=True)
class Problem:
    """A measurement as a linear inverse problem ``y = A x + n`` (see the module docstring).

    Attributes:
        modality: "MR" or "CT".
        op: the forward operator A (CT: including the pixel weights, when there are some).
        y: the data as the solvers see them, shape ``op.oshape``, on the problem's device.
        noise_std: standard deviation of each real component of n (real and imaginary parts
            separately for complex data), in the units of y; 0 for noiseless data.
        units: the unit maps of the image.
        info: how the problem was built (MR: ``coil_maps`` "file" / "estimated (espirit)" /
            "none (single coil)", ``noise_estimated``; CT: ``mu_water_per_mm``, ``geometry``,
            ``views``); JSON-serialisable.
        weights: CT per-pixel data weights W (already applied to ``op`` and ``y``), or None.
        geometry: CT geometry of the measured views; None for MR.
        spacing_mm: voxel size of the image grid (I, J, K) in mm.
        support: boolean ``(I, J, K)`` mask of the voxels the operator reaches (MR: where
            the coil maps are non-zero; CT: where some measured ray passes), or None when it
            reaches every voxel. Outside it ``A x`` does not depend on x, so the data say
            nothing there: reconstructions hold the minimum-norm value (x = 0) there, not
            what a regulariser or a prior would invent (see :func:`operator_support`).
        empty: CT: boolean ``(I, J, K)`` mask of the voxels a measured ray with (within noise)
            no attenuation crosses (:func:`~medrecon.operators.empty_space.empty_voxels`):
            air, where a prior need not guess; None for MR, when there are none, or when
            not asked for (``measurement_problem(empty_space=True)``: the diffusion sampler;
            the classical methods do not use it).
    """

    modality: str
    op: LinearOperator
    y: Tensor
    noise_std: float
    units: UnitMap
    info: Mapping[str, Any] = field(default_factory=dict)
    weights: Tensor | None = None
    geometry: CTGeometry | None = None
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    support: Tensor | None = None
    empty: Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The image grid (I, J, K) that ``op`` acts on."""
        return self.op.ishape

    def residual(self, x: Tensor) -> float:
        """Data-consistency residual ``||A x - y|| / ||y||`` (weighted for weighted CT data)."""
        with torch.no_grad():
            r = self.op(x) - self.y
            return float(torch.linalg.vector_norm(r)
                         / torch.linalg.vector_norm(self.y).clamp_min(1e-30))


class _Weighted(LinearOperator):
    """``W A`` for per-sample data weights W (CT pixel weights): the one place they are applied."""

    def __init__(self, op: LinearOperator, w: Tensor) -> None:
        super().__init__(op.ishape, op.oshape)
        self.op, self.w = op, w

    def _forward(self, x: Tensor) -> Tensor:
        return self.w * self.op.forward(x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.op.adjoint(self.w * y)


def operator_support(reach: Tensor) -> Tensor | None:
    """The support of an operator from a non-negative per-voxel ``reach`` (I, J, K): the voxels
    where it is above 1e-6 of its maximum, or None when that is every voxel.

    MR passes ``sum_c |S_c|^2`` (the diagonal of ``A^H A`` up to the sampled fraction: zero
    exactly where ESPIRiT cropped the maps); CT the backprojection of a sinogram of ones (zero
    where no measured ray passes, e.g. the corners outside a narrow detector's circle). The
    relative floor treats interpolation round-off as unreached, not as a (wildly
    noise-amplifying) measurement.
    """
    top = float(reach.max()) if reach.numel() else 0.0
    if top <= 0.0:
        return None  # nothing reached at all: leave it to the solvers to report
    support = reach > 1e-6 * top
    return None if bool(support.all()) else support


def kspace_tensor(m: Measurement, device: torch.device | str = "cpu") -> Tensor:
    """Measured k-space (C, I, J, K) as complex64 on ``device``, masked (zeros off the mask)."""
    y = torch.from_numpy(np.asarray(m.data, np.complex64)).to(device)
    mask = torch.as_tensor(np.asarray(m.mask)).to(device=device, dtype=torch.float32)
    return y * (mask > 0)


def measurement_problem(measurement: Measurement, device: torch.device | str = "cpu", *,
                        model: ModelRange | None = None, noise_std: float | None = None,
                        maps_method: str = "espirit", coil_batch: int | None = None,
                        coil_energy: float | None = None,
                        dtype: torch.dtype = torch.float32, map_sets: int = 1,
                        empty_space: bool = False) -> Problem:
    """The physics :class:`Problem` of an MR or CT measurement, on ``device``.

    Args:
        measurement: from :func:`~medrecon.io.measurement.read_measurement` or
            :func:`~medrecon.simulate.simulate`; it is not modified.
        device: where the operator and data live.
        model: a prior's intensity normalisation; places the unit map in its model range.
        noise_std: override the measurement noise (per real component, units of y).
        maps_method: MR without coil maps in the file: "espirit" or "lowres" estimation.
        coil_batch: MR: coils transformed at once by the SENSE operator (memory bound).
        coil_energy: MR: compress the coils onto the fewest virtual coils that keep this
            fraction of the signal energy (:mod:`medrecon.operators.coil_compression`;
            ``info["virtual_coils"]``); None or 1: all coils.
        dtype: CT real dtype of the projector and data.
        map_sets: MR with estimated ESPIRiT maps or map sets in the file: up to this many map
            sets (soft SENSE); with more than one the operator's image is ``(M, I, J, K)``,
            one image per set (1: plain ``(C, I, J, K)`` maps, the first set of the file's).
        empty_space: CT: carve the air out (``Problem.empty``), for the diffusion sampler,
            its only user (one backprojection and a dilation of the volume; off: None).

    Raises:
        MeasurementError: the operator description does not fit the data.
        InputError: a modality other than MR or CT.
    """
    device = torch.device(device)
    if measurement.modality == "MR":
        return _mr_problem(measurement, device, model, noise_std, maps_method, coil_batch,
                           map_sets, coil_energy)
    if measurement.modality == "CT":
        return _ct_problem(measurement, device, model, noise_std, dtype, empty_space)
    raise InputError(f"Reconstruction supports MR and CT measurements, not "
                     f"{measurement.modality}.")


# -------------------------------------------------------------------------------------------
# MR
# -------------------------------------------------------------------------------------------
def affine_spacing(m: Measurement) -> tuple[float, float, float]:
    """Voxel size (mm) along the three image axes from ``m``'s reference affine."""
    return tuple(float(s) for s in  # type: ignore[return-value]
                 np.linalg.norm(np.asarray(m.reference.affine)[:3, :3], axis=0))


def _mr_noise_estimate(y: Tensor, mask: Tensor) -> float:
    """Robust noise std (per real component) from the outer 20 % of sampled k-space.

    The signal there is small, so the median absolute deviation of the real and imaginary
    parts of the sampled values estimates the noise (slightly over, which errs on the side of
    not fitting noise).
    """
    shape = y.shape[-3:]
    grids = torch.meshgrid(*[torch.linspace(-1, 1, n, device=y.device) for n in shape],
                           indexing="ij")
    radius = torch.sqrt(sum(g**2 for g in grids[1:])) if shape[1] > 1 else grids[0].abs()
    outer = (radius > 0.8 * float(radius.max())) & (mask.expand(shape) > 0)
    vals = y[..., outer]
    if vals.numel() < 32:
        return 0.0
    parts = torch.cat([vals.real.flatten(), vals.imag.flatten()]).double()
    return float(1.4826 * (parts - parts.median()).abs().median())


#: ESPIRiT singular-value thresholds tried for a narrow calibration region (kernel under 6);
#: the last is the coil-map default.
ESPIRIT_THRESHOLDS = (0.002, 0.004, 0.01, DEFAULT_THRESHOLD)
#: Fraction of the sampled k-space held out for that choice (single samples, fixed seed).
THRESHOLD_HOLDOUT = 0.15


def estimate_maps(m: Measurement, device: torch.device | str = "cpu", *,
                  maps_method: str = "espirit", map_sets: int = 1,
                  kspace: Tensor | None = None,
                  details: dict[str, Any] | None = None) -> Tensor:
    """Coil maps of a multi-coil MR measurement, estimated from its calibration region as
    :func:`measurement_problem` estimates them for a file without maps: complex64 on
    ``device``, ``(C, I, J, K)``, or ``(M, C, I, J, K)`` for ``map_sets > 1`` (``1 <= M <=
    map_sets``; :func:`~medrecon.operators.coils.estimate_coil_maps`). ``kspace``: ``m``'s
    :func:`kspace_tensor` on ``device``, where the caller has it already.

    With ESPIRiT and a calibration region under 14 lines (kernel under 6) the default
    threshold cuts signal as well as noise and biases the maps (fastMRI's 4 centre lines at
    R = 8: CG-SENSE 3 dB under the zero-filled image, 7 dB under what a lower threshold gives;
    benchmarks/RESULTS_mri.md). There the maps' values come from the threshold of
    :data:`ESPIRIT_THRESHOLDS` that predicts held-out k-space best (:func:`espirit_threshold`)
    and their support from the default threshold, which crops more of the empty background.
    ``details``, if given, receives ``espirit_threshold`` and ``threshold_errors`` (the
    held-out error of each tried threshold) when the threshold was chosen so.
    """
    from medrecon.operators.coils import (
        MAX_AUTO_CALIBRATION,
        default_kernel,
        detect_calibration,
        estimate_coil_maps,
    )

    device = torch.device(device)
    y = kspace_tensor(m, device) if kspace is None else kspace
    mask = torch.as_tensor(m.mask).to(device)
    calib = m.acquisition.get("calibration")
    kwargs: dict[str, Any] = {"method": maps_method, "fft_dims": m.fft_dims}
    if calib is not None:
        kwargs["calibration"] = int(calib)
    support = None
    if maps_method == "espirit" and m.n_coils > 1:
        width = int(calib) if calib is not None else min(
            detect_calibration(mask, y.shape[1:], m.fft_dims), MAX_AUTO_CALIBRATION)
        if width > 0 and default_kernel(width) < 6:
            errors: dict[float, float] = {}
            kwargs["threshold"], support = espirit_threshold(m, y, mask, kwargs, errors)
            if details is not None:
                details.update(espirit_threshold=kwargs["threshold"], threshold_errors=errors)
    est = estimate_coil_maps(y, mask, map_sets=map_sets, **kwargs)
    if support is not None:
        est = est * support
    return est.to(device=device, dtype=torch.complex64)


def espirit_threshold(m: Measurement, y: Tensor, mask: Tensor, kwargs: Mapping[str, Any],
                      errors: dict[float, float] | None = None) -> tuple[float, Tensor]:
    """The ESPIRiT threshold of :data:`ESPIRIT_THRESHOLDS` whose maps predict held-out k-space
    best, and the support ``(I, J, K)`` (bool) of the maps of the default threshold (the last).

    A seeded :data:`THRESHOLD_HOLDOUT` of the sampled samples of ``y`` ``(C, I, J, K)`` is held
    out; CG-SENSE (lam 1e-3, 30 iterations: the cg-sense defaults) reconstructs from the rest
    with each threshold's maps (one set, on that support), and the relative error of ``A x``
    on the held-out samples decides (the lower threshold on ties). ``kwargs`` go to
    :func:`~medrecon.operators.coils.estimate_coil_maps` (``threshold`` excepted).

    Single samples, as the self-tuned weight holds out for regular line patterns: every line
    keeps its neighbours, so the error measures the maps, not a wider gap. Held-out samples
    inside the calibration region still enter the maps (ESPIRiT needs the region complete);
    they carry most of the held-out energy. On fastMRI-format brains with 4-8 calibration
    lines the choice gained 0.5-7 dB CG-SENSE and lost nowhere (RESULTS_mri.md).
    ``errors``, if given, receives each threshold's held-out error.
    """
    import warnings

    from medrecon.operators.coils import estimate_coil_maps
    from medrecon.operators.mri import SenseOperator
    from medrecon.solvers import conjugate_gradient

    shape = tuple(y.shape[1:])
    sampled = mask.expand(shape) != 0
    gen = torch.Generator().manual_seed(0)
    held = sampled & (torch.rand(shape, generator=gen) < THRESHOLD_HOLDOUT).to(y.device)
    train = (sampled & ~held).to(torch.float32)
    held_op_mask = held.to(torch.float32)
    y_held = y * held
    options = {k: v for k, v in kwargs.items() if k != "threshold"}
    support: Tensor | None = None
    best: tuple[float, float] | None = None
    for threshold in reversed(ESPIRIT_THRESHOLDS):  # the default first: it gives the support
        with warnings.catch_warnings():  # the final estimate warns, if it must
            warnings.simplefilter("ignore")
            maps = estimate_coil_maps(y, mask, threshold=threshold, **options)
        maps = maps.to(dtype=torch.complex64)
        if support is None:
            support = (maps.abs() ** 2).sum(0) > 0
        maps = maps * support
        op = SenseOperator(maps, train, fft_dims=m.fft_dims, image_shape=m.image_shape)
        x = conjugate_gradient(lambda v, op=op: op.normal(v) + 1e-3 * v, op.adjoint(y * train),
                               max_iter=30, tol=1e-4).x
        pred = SenseOperator(maps, held_op_mask, fft_dims=m.fft_dims,
                             image_shape=m.image_shape).forward(x)
        err = float(torch.linalg.vector_norm(pred - y_held)
                    / torch.linalg.vector_norm(y_held).clamp_min(1e-30))
        if errors is not None:
            errors[threshold] = err
        if best is None or err <= best[0]:
            best = (err, threshold)
    assert best is not None and support is not None
    return best[1], support


def estimated_maps_source(maps_method: str, shape: tuple[int, ...],
                          details: Mapping[str, Any] | None = None) -> str:
    """``info["coil_maps"]`` of maps estimated by ``maps_method`` of ``shape`` ``(C, I, J,
    K)`` (one set: "estimated (espirit)") or ``(M, C, I, J, K)`` (map sets: "estimated
    (espirit, 2 map sets)"), with the ESPIRiT threshold where :func:`estimate_maps` chose it
    on held-out k-space (its ``details``)."""
    parts = [maps_method]
    if len(shape) == 5:
        parts.append(f"{shape[0]} map sets")
    if details and "espirit_threshold" in details:
        errs = ", ".join(f"{t:g}: {e:.4g}" for t, e in sorted(details["threshold_errors"].items()))
        parts.append(f"threshold {details['espirit_threshold']:g} chosen on held-out k-space; "
                     f"held-out errors {errs}")
    return f"estimated ({', '.join(parts)})"


def _mr_problem(m: Measurement, device: torch.device, model: ModelRange | None,
                noise_std: float | None, maps_method: str,
                coil_batch: int | None, map_sets: int = 1,
                coil_energy: float | None = None) -> Problem:
    from medrecon.operators.mri import SenseOperator
    from medrecon.solvers import conjugate_gradient

    y = kspace_tensor(m, device)
    maps: Tensor | None
    if m.coil_maps is not None:
        maps, source = torch.from_numpy(np.asarray(m.coil_maps, np.complex64)), "file"
        if maps.ndim == 5:  # map sets in the file: up to map_sets of them, as when estimated
            maps = maps[:map_sets] if map_sets > 1 else maps[0]
            source = (f"file ({maps.shape[0]} map sets)" if maps.ndim == 5
                      else "file (first map set)")
        maps = maps.to(device)
    elif m.n_coils == 1:
        maps, source = None, "none (single coil)"
    else:
        # fastMRI files carry no maps: estimate them from the calibration region, once, here.
        details: dict[str, Any] = {}
        maps = estimate_maps(m, device, maps_method=maps_method, map_sets=map_sets, kspace=y,
                             details=details)
        source = estimated_maps_source(maps_method, tuple(maps.shape), details)
    op = SenseOperator(maps, torch.as_tensor(np.asarray(m.mask)).to(device),
                       fft_dims=m.fft_dims, coil_batch=coil_batch, image_shape=m.image_shape)
    info: dict[str, Any] = {"coil_maps": source}
    scale = 1.0
    if model is not None:
        rhs = op.adjoint(y)[None]
        ls = conjugate_gradient(op.normal, rhs, max_iter=10, tol=0.0, batched=True).x[0]
        scale = float(model.mr_scale(ls.abs()))
    if noise_std is None:
        noise_std = m.noise_std  # per real part (the file's RMS complex sigma / sqrt 2)
        if noise_std is None:
            mask = torch.as_tensor(np.asarray(m.mask), device=device)
            noise_std = _mr_noise_estimate(y, mask.float())
            info["noise_estimated"] = True
    support = None if maps is None else operator_support(
        (maps.abs() ** 2).sum(tuple(range(maps.ndim - 3))))  # over coils (and map sets)
    if support is not None:
        info["unsupported_fraction"] = round(1.0 - float(support.float().mean()), 4)
    if coil_energy is not None and coil_energy < 1.0 and maps is not None and maps.ndim == 4:
        # After the scale and the noise: both stay those of all coils (an orthonormal
        # compression keeps white noise white, with the same sigma).
        from medrecon.operators.coil_compression import compress_coils

        cc = compress_coils(y, maps, op.mask, keep=coil_energy, noise_std=float(noise_std))
        y = cc.kspace
        op = SenseOperator(cc.maps, op.mask, fft_dims=m.fft_dims, coil_batch=coil_batch,
                           image_shape=m.image_shape)
        info.update(virtual_coils=cc.n_virtual, coil_energy_kept=round(cc.kept, 5))
    return Problem("MR", op, y, float(noise_std), UnitMap("MR", scale=scale, offset=0.0), info,
                   spacing_mm=affine_spacing(m), support=support)


# -------------------------------------------------------------------------------------------
# CT
# -------------------------------------------------------------------------------------------
def ct_geometry_keys(operator: dict[str, Any]) -> dict[str, Any]:
    """The geometry keys of a CT operator description: nested under ``geometry``, or in the
    description itself (flat layout)."""
    g = operator.get("geometry")
    if isinstance(g, dict):
        return g
    return operator  # flat layout: the geometry keys sit in the operator description itself


def ct_noise_std(m: Measurement, y: Tensor | None = None) -> float:
    """Noise std of the line integrals ``y`` (unweighted; default: ``m``'s sinogram of the
    views its mask keeps, as its problem has them) from the file's noise model: Poisson the
    RMS over the rays of ``sqrt(I0 e^p + e^2) / (I0 e^p)``, Gaussian its sigma, else 0."""
    if y is None:
        data, mask = np.asarray(m.data, np.float32), m.mask
        if mask is not None and np.shape(mask) == (data.shape[0],):
            data = data[np.asarray(mask) > 0]
        y = torch.from_numpy(np.ascontiguousarray(data))
    nd = m.noise or {}
    if nd.get("model") == "gaussian":
        return float(nd.get("sigma_line_integral", 0.0))
    var = ct_ray_variance(m, y)
    return 0.0 if var is None else float(torch.sqrt(var.mean()))


def ct_ray_variance(m: Measurement, y: Tensor) -> Tensor | None:
    """Each ray's noise variance of the line integrals ``y`` under the file's Poisson model,
    ``(I0 e^-p + e^2) / (I0 e^-p)^2`` (float64, ``y``'s shape); None for other noise models
    (:func:`ct_noise_std` is its RMS)."""
    nd = m.noise or {}
    if nd.get("model") != "poisson":
        return None
    i0 = float(nd["i0"])
    e = float(nd.get("electronic_sigma_counts", 0.0))
    counts = i0 * torch.exp(-y.double())
    return (counts + e**2) / counts.clamp_min(1.0) ** 2


_PROJECTOR_CACHE: dict[Any, LinearOperator] = {}


def _shared_projector(geometry: Any, shape: tuple[int, ...], spacing: tuple[float, ...],
                      device: torch.device, dtype: torch.dtype) -> LinearOperator:
    """The CT projector of this geometry, reused from the previous measurement when it had the
    same one (a batch of scans from one protocol builds its ray tables and sparse matrix once);
    one entry, so a long-lived process holds at most one projector's caches."""
    from medrecon.operators.ct_projector import make_projector

    key = (geometry, shape, spacing, str(device), dtype)
    try:
        hash(key)
    except TypeError:  # a geometry with unhashable parts: build it anew
        return make_projector(geometry, shape, spacing, device=device, dtype=dtype)
    if key not in _PROJECTOR_CACHE:
        _PROJECTOR_CACHE.clear()
        _PROJECTOR_CACHE[key] = make_projector(geometry, shape, spacing, device=device,
                                               dtype=dtype)
    return _PROJECTOR_CACHE[key]


def _ct_problem(m: Measurement, device: torch.device, model: ModelRange | None,
                noise_std: float | None, dtype: torch.dtype,
                empty_space: bool = False) -> Problem:
    from medrecon.operators.ct_geometry import CTGeometry

    op_desc = dict(m.operator or {})
    geometry = CTGeometry.from_dict(ct_geometry_keys(op_desc))
    shape = tuple(int(n) for n in op_desc.get("image_shape", m.reference.shape))
    if shape != tuple(m.reference.shape):
        raise MeasurementError(f"The CT operator's image shape {shape} does not match the "
                               f"reference shape {m.reference.shape}.")
    if "spacing_mm" in op_desc:
        spacing = tuple(float(s) for s in op_desc["spacing_mm"])
    else:
        spacing = affine_spacing(m)
    data = np.asarray(m.data, dtype=np.float32)
    if data.shape != geometry.sinogram_shape:
        raise MeasurementError(f"The sinogram of shape {data.shape} does not match its "
                               f"geometry {geometry.sinogram_shape}.")
    mu_water = float(op_desc.get("mu_water_per_mm",
                                 ct_geometry_keys(op_desc).get("mu_water_per_mm",
                                                                 MU_WATER_PER_MM)))
    weights = None
    if m.mask is not None:
        mask = np.asarray(m.mask, dtype=np.float32)
        if mask.shape == (geometry.views,):
            keep = np.flatnonzero(mask > 0)
            if keep.size == 0:
                raise MeasurementError("The CT view mask selects no views.")
            geometry = dataclasses.replace(
                geometry, angles=tuple(geometry.angles[i] for i in keep),
                vectors=(None if geometry.vectors is None
                         else tuple(geometry.vectors[i] for i in keep)))
            data = data[keep]
        else:
            weights = torch.as_tensor(mask, dtype=dtype, device=device)
    op: LinearOperator = _shared_projector(geometry, shape, spacing,  # type: ignore[arg-type]
                                           device, dtype)
    y = torch.as_tensor(data, dtype=dtype, device=device)
    if noise_std is None:
        noise_std = ct_noise_std(m, y)
    empty = None
    if empty_space:
        air_noise = ct_noise_std(m, torch.zeros(1))  # the noise of a ray through air (p = 0)
        empty = empty_voxels(op, y, empty_threshold(mu_water, air_noise, spacing),
                             valid=None if weights is None else weights > 0)
    if weights is not None:
        op, y = _Weighted(op, weights), weights * y
    if model is not None:
        lo, hi = float(model.ct_hu_min), float(model.ct_hu_max)
        units = UnitMap("CT", scale=mu_water * (hi - lo) / 1000.0,
                        offset=mu_water * (1.0 + lo / 1000.0), mu_water=mu_water,
                        hu_window=(lo, hi))
    else:
        units = UnitMap("CT", scale=mu_water, offset=0.0, mu_water=mu_water)
    info: dict[str, Any] = {"mu_water_per_mm": mu_water, "geometry": geometry.kind,
                            "views": geometry.views}
    with torch.no_grad():
        support = operator_support(op.adjoint(torch.ones_like(y)).abs())
    if support is not None:
        info["unsupported_fraction"] = round(1.0 - float(support.float().mean()), 4)
    if empty is not None:
        info["empty_fraction"] = round(float(empty.float().mean()), 4)
    return Problem("CT", op, y, float(noise_std), units, info, weights=weights,
                   geometry=geometry, spacing_mm=spacing, support=support,  # type: ignore[arg-type]
                   empty=empty)
