"""The one path from a reference volume and acquisition settings to a :class:`Measurement`.

``medrecon simulate`` and the Python API both call :func:`simulate`::

    from medrecon.io import load_volume
    from medrecon.simulate import SimulationConfig, MRISettings, simulate
    from medrecon.io.measurement import write_measurement

    cfg = SimulationConfig(mri=MRISettings(coils=8, acceleration=8, mask="poisson"))
    m = simulate(load_volume("t1.nii.gz"), cfg)
    write_measurement(m, "t1_R8.h5")

MRI model (k-space of shape (C, I, J, K), operator of :mod:`medrecon.operators.mri`)::

    x = |reference| * exp(i phi)            magnitude reference times a smooth synthetic phase
    y = M (F (S_c x) + n_c)                 simulated coil maps S, seeded mask M, noise n

* Synthetic phase (default ``phase: smooth``): ``phi`` is a random quadratic polynomial of the
  normalised voxel coordinates (each axis mapped to [-1, 1]; 10 coefficients drawn from N(0, 1)
  with the run's seed), shifted and scaled so that it spans ``phase_range`` radians peak to peak
  (default pi). Real MR images carry such slowly varying phase (B0 inhomogeneity, receive
  phase); a real-valued object would let methods exploit a constraint real data do not offer.
  ``phase: none`` simulates a real-valued object.
* Coil maps: :func:`medrecon.operators.coil_simulation.simulate_coil_maps` (``sum_c |S_c|^2 = 1``),
  stored in the file. The loops ring around the axis that is not phase encoded: the readout
  axis 0 for 3D (as a head coil around the S-I readout of a sagittal 3D scan, so both
  phase-encode axes J, K see coil variation) and the slice axis 2 for 2D multi-slice.
* Mask: :func:`medrecon.operators.masks.make_mask` ("poisson" / "gaussian" for the 3D
  phase-encode plane (J, K), "random" / "equispaced" lines for 2D multi-slice), with a fully
  sampled calibration region (by default sized from the phase-encode matrix,
  :func:`~medrecon.operators.masks.default_calibration`); the achieved acceleration and the
  calibration used are stored.
* Noise: :func:`medrecon.operators.noise.add_noise`, complex Gaussian per coil with either a
  target ``snr`` (RMS of the fully sampled noise-free k-space over sigma) or an explicit
  ``noise_sigma`` (RMS complex standard deviation per sample, recorded as such in the file:
  each real part has ``sigma / sqrt(2)``, :attr:`~medrecon.io.measurement.Measurement.noise_std`),
  seeded.

CT model (sinogram of shape (views, detector rows, detector columns)): :func:`simulate_sinogram`
maps HU to attenuation, projects it with the :func:`~medrecon.operators.ct_geometry.default_geometry`
projector of :mod:`medrecon.operators.ct_projector` and adds Poisson / electronic noise
(:func:`add_ct_noise`), with the geometry settings of :class:`CTSettings`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from medrecon import __version__
from medrecon.config import option
from medrecon.errors import InputError
from medrecon.intensity import looks_like_hu
from medrecon.io.measurement import RMS_COMPLEX_SIGMA, Measurement, ReferenceGeometry
from medrecon.io.operator_schema import ct_operator_description, mri_operator_description
from medrecon.io.volume import Volume, check_affine

if TYPE_CHECKING:
    import torch

__all__ = [
    "Modality",
    "MaskKind",
    "Dims",
    "PhaseModel",
    "CoilModel",
    "CTGeometryKind",
    "MRISettings",
    "CTSettings",
    "SimulationConfig",
    "simulate",
    "smooth_phase",
    "COUNT_FLOOR",
    "DEFAULT_DOSE_I0",
    "add_ct_noise",
    "simulate_sinogram",
]


class Modality(StrEnum):
    MRI = "mri"
    CT = "ct"


class MaskKind(StrEnum):
    POISSON = "poisson"
    GAUSSIAN = "gaussian"
    RANDOM = "random"
    EQUISPACED = "equispaced"


class Dims(StrEnum):
    THREE_D = "3d"
    TWO_D = "2d"


class PhaseModel(StrEnum):
    SMOOTH = "smooth"
    NONE = "none"


class CoilModel(StrEnum):
    BIOT_SAVART = "biot-savart"
    BIRDCAGE = "birdcage"


class CTGeometryKind(StrEnum):
    PARALLEL = "parallel"
    FAN = "fan"
    CONE = "cone"


@dataclass(frozen=True)
class MRISettings:
    """MRI acquisition settings (see the module docstring for the model)."""

    coils: int = option(8, ge=1, le=128, help="Number of receive coils.")
    acceleration: float = option(8.0, ge=1.0, help="Target acceleration (total / acquired).")
    mask: MaskKind = MaskKind.POISSON
    calibration: int | None = option(None, ge=0, help="Fully sampled centre: lines (2D) or box "
                                                      "side (3D); None: from the matrix.")
    snr: float | None = option(30.0, gt=0.0, help="Target SNR; exclusive with noise_sigma.")
    noise_sigma: float | None = option(None, ge=0.0, help="Complex noise std per sample.")
    dims: Dims = Dims.THREE_D
    phase: PhaseModel = PhaseModel.SMOOTH
    phase_range: float = option(float(np.pi), ge=0.0, help="Peak-to-peak phase in radians.")
    coil_model: CoilModel = CoilModel.BIOT_SAVART

    def __post_init__(self) -> None:
        _coerce_enums(self, mask=MaskKind, dims=Dims, phase=PhaseModel, coil_model=CoilModel)
        if self.snr is not None and self.noise_sigma is not None:
            raise ValueError("give either snr or noise_sigma, not both")
        if self.dims == Dims.THREE_D and self.mask in (MaskKind.RANDOM, MaskKind.EQUISPACED):
            raise ValueError(f"mask {self.mask.value!r} samples lines of a 2D acquisition; "
                             f"use --dims 2d, or --mask poisson / gaussian for 3d")
        if self.dims == Dims.TWO_D and self.mask in (MaskKind.POISSON, MaskKind.GAUSSIAN):
            raise ValueError(f"mask {self.mask.value!r} samples the 3D phase-encode plane; "
                             f"use --dims 3d, or --mask random / equispaced for 2d")


#: Incident photons per ray of a simulated CT scan unless told otherwise: a sparse-view study at
#: about a routine dose, as every CT benchmark and the demo simulate it. MR's default is noisy
#: too (SNR 30): noise-free data would let every method look better than on a real scan and
#: give the self-tuning and the guard no noise level to weigh.
DEFAULT_DOSE_I0 = 1e5


@dataclass(frozen=True)
class CTSettings:
    """CT acquisition settings, passed to :func:`simulate_sinogram`."""

    geometry: CTGeometryKind = CTGeometryKind.PARALLEL
    views: int = option(60, ge=1, help="Number of projection angles.")
    angular_range_deg: float | None = option(None, gt=0.0, le=360.0,
                                             help="Angular range; default 180 (parallel) "
                                                  "or 360 (fan, cone).")
    dose_i0: float | None = option(DEFAULT_DOSE_I0, gt=0.0,
                                   help="Incident photons per ray (Poisson noise); None: "
                                        "noise-free.")
    electronic_sigma: float = option(0.0, ge=0.0, help="Electronic noise std (photon counts).")

    def __post_init__(self) -> None:
        _coerce_enums(self, geometry=CTGeometryKind)


@dataclass(frozen=True)
class SimulationConfig:
    """Everything ``medrecon simulate`` needs besides the reference volume."""

    modality: Modality = Modality.MRI
    seed: int = option(0, ge=0, help="Seed of the mask, phase, coils and noise.")
    mri: MRISettings = field(default_factory=MRISettings)
    ct: CTSettings = field(default_factory=CTSettings)

    def __post_init__(self) -> None:
        _coerce_enums(self, modality=Modality)


def _coerce_enums(obj: Any, **enums: type[StrEnum]) -> None:
    """Let Python callers pass plain strings ("poisson") for StrEnum fields."""
    for name, enum_type in enums.items():
        value = getattr(obj, name)
        if not isinstance(value, enum_type):
            try:
                object.__setattr__(obj, name, enum_type(str(value).lower()))
            except ValueError:
                allowed = ", ".join(e.value for e in enum_type)
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def smooth_phase(shape: tuple[int, int, int], phase_range: float, seed: int) -> np.ndarray:
    """A smooth random phase map (radians) spanning ``phase_range`` peak to peak.

    A quadratic polynomial of the normalised coordinates (each axis in [-1, 1]) with N(0, 1)
    coefficients from ``np.random.default_rng(seed)``, mapped affinely onto
    [-phase_range / 2, phase_range / 2]. Returns float64 of ``shape``.
    """
    rng = np.random.default_rng([int(seed), 0x9A5E])  # a stream separate from the mask's
    axes = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z, np.ones_like(x)]
    coef = rng.standard_normal(len(terms))
    p = sum(c * t for c, t in zip(coef, terms, strict=True))
    span = float(p.max() - p.min())
    if span == 0 or phase_range == 0:
        return np.zeros(shape)
    return (p - (p.max() + p.min()) / 2.0) * (phase_range / span)


def simulate(volume: Volume, config: SimulationConfig | None = None,
             device: str | Any = "cpu") -> Measurement:
    """Simulate an undersampled MRI or CT acquisition of ``volume``.

    Args:
        volume: the reference (MR magnitude in any units; CT in HU), shape (I, J, K).
        config: acquisition settings; defaults to :class:`SimulationConfig` ().
        device: "cpu", "cuda", "auto" or a torch device; results depend only on the seed (and
            the device, for floating-point round-off).

    Returns:
        The measurement, with the reference geometry of ``volume``.

    Warns:
        UserWarning: an MRI simulation of a CT volume (modality CT, units HU, or a band of air
            values near -1000 in a volume not marked MR): its magnitude |HU| makes air bright.
    """
    from medrecon.device import resolve_device

    config = config or SimulationConfig()
    dev = resolve_device(device) if isinstance(device, str) else device
    if not np.all(np.isfinite(volume.data)):
        raise InputError("The reference volume contains NaN or infinite values.")
    check_affine(volume.affine, "The reference volume")
    if config.modality == Modality.MRI:
        why = _ct_like(volume)
        if why:
            warnings.warn(f"The reference is {why}, but MRI simulation uses the magnitude of its "
                          f"values, so air (-1000 HU) becomes the brightest signal; use "
                          f"--modality ct, or give an MR volume.", UserWarning, stacklevel=2)
    reference = ReferenceGeometry.from_volume(volume)
    if config.modality == Modality.CT:
        return _simulate_ct(volume, config, reference, dev)
    return _simulate_mri(volume, config, reference, dev)


def _ct_like(volume: Volume) -> str:
    """Why ``volume`` looks like CT in HU ("" when it does not)."""
    if volume.modality.upper() == "CT":
        return "a CT volume (HU)"
    if volume.units.upper() == "HU":
        return "in HU (CT)"
    if volume.modality.upper() != "MR" and looks_like_hu(volume.data, need_bone=False):
        return f"likely CT in HU (values down to {float(np.min(volume.data)):.0f})"
    return ""


#: A volume with fewer slices than this along K is a thin slab, usually scanned in 2D.
THIN_SLAB = 8


def _check_calibration(shape: tuple[int, ...], calibration: int | None, dims: Dims) -> None:
    """Refuse a 3D acquisition of a single slice, and a calibration region larger than the
    phase-encode plane, naming the fix (``--dims 2d`` for a single slice or thin slab)."""
    if dims == Dims.THREE_D and shape[2] == 1:
        raise InputError(f"The reference is a single slice ({shape[0]} x {shape[1]} x 1), which "
                         f"has no second phase-encode axis for 3D sampling; use --dims 2d.")
    plane = (shape[1],) if dims == Dims.TWO_D else (shape[1], shape[2])
    if calibration is not None and calibration > min(plane):
        what = (f"the {plane[0]} phase-encode lines" if dims == Dims.TWO_D
                else f"the phase-encode plane {plane}")
        slab = (f", or --dims 2d for this thin slab of {shape[2]} slices"
                if dims == Dims.THREE_D and shape[2] < THIN_SLAB else "")
        raise InputError(f"The calibration region ({calibration}) is larger than {what}; "
                         f"use --calibration {min(plane)} or less{slab}.")


def _simulate_mri(volume: Volume, config: SimulationConfig, reference: ReferenceGeometry,
                  device: Any) -> Measurement:
    import torch

    from medrecon.operators.coil_simulation import simulate_coil_maps
    from medrecon.operators.masks import make_mask
    from medrecon.operators.mri import SenseOperator
    from medrecon.operators.noise import add_noise

    s = config.mri
    shape = volume.shape
    _check_calibration(shape, s.calibration, s.dims)
    magnitude = np.abs(volume.data.astype(np.float64))
    if s.phase == PhaseModel.SMOOTH:
        image = magnitude * np.exp(1j * smooth_phase(shape, s.phase_range, config.seed))
    else:
        image = magnitude.astype(np.complex128)
    x = torch.from_numpy(image.astype(np.complex64)).to(device)

    if s.dims == Dims.THREE_D:
        # Ring the coils around the readout axis 0 so that both phase-encode axes (J, K) see
        # coil variation (a head coil around the S-I readout of a sagittal 3D scan);
        # simulate_coil_maps rings around its axis 2, hence the axis permutation.
        perm_shape = (shape[1], shape[2], shape[0])
        sp = volume.spacing
        maps = simulate_coil_maps(perm_shape, s.coils, model=s.coil_model.value,
                                  spacing=(sp[1], sp[2], sp[0]), device=device)
        maps = maps.permute(0, 3, 1, 2).contiguous()
    else:
        # 2D multi-slice: ring around the slice axis 2, coil variation in the (I, J) plane.
        maps = simulate_coil_maps(shape, s.coils, model=s.coil_model.value,
                                  spacing=volume.spacing, device=device)
    sm = make_mask(s.mask.value, shape, s.acceleration, calibration=s.calibration,
                   dims=s.dims.value, seed=config.seed)
    fft_dims = (0, 1, 2) if s.dims == Dims.THREE_D else (0, 1)
    full = SenseOperator(maps, np.ones((1, 1, 1), dtype=bool), fft_dims)
    with torch.no_grad():
        kspace = full.forward(x)
        gen = torch.Generator().manual_seed(int(config.seed))  # the same data on any device
        noisy, sigma = add_noise(kspace, sigma=s.noise_sigma, snr=s.snr,
                                 mask=torch.from_numpy(sm.mask).to(kspace.device),
                                 generator=gen)
    del kspace
    noise = {"model": "complex-gaussian", "sigma": float(sigma),
             "sigma_definition": RMS_COMPLEX_SIGMA}
    if s.snr is not None:
        noise["snr"] = float(s.snr)
        noise["snr_definition"] = "sqrt(mean |y_full|^2) / sigma over the noise-free, fully " \
                                  "sampled multi-coil k-space"
    acquisition = {
        "source": "simulated",
        "acceleration": float(sm.acceleration),
        "target_acceleration": float(s.acceleration),
        "mask": s.mask.value,
        "calibration": int(sm.calibration),
        "dims": s.dims.value,
        "coils": int(s.coils),
        "coil_model": s.coil_model.value,
        "seed": int(config.seed),
        "snr": None if s.snr is None else float(s.snr),
        "phase": s.phase.value,
        "phase_range_rad": float(s.phase_range) if s.phase == PhaseModel.SMOOTH else 0.0,
        "version": __version__,
        "reference_source": str(volume.meta.get("source", volume.meta.get("path", ""))),
    }
    return Measurement(
        modality="MR",
        data=noisy.cpu().numpy().astype(np.complex64),
        mask=np.asarray(sm.mask, dtype=np.uint8),
        reference=reference,
        coil_maps=maps.cpu().numpy().astype(np.complex64),
        noise=noise,
        operator=mri_operator_description(shape, s.coils, s.dims.value),
        acquisition=acquisition,
    )


def _simulate_ct(volume: Volume, config: SimulationConfig, reference: ReferenceGeometry,
                 device: Any) -> Measurement:
    c = config.ct
    sinogram, geometry, noise = simulate_sinogram(
        volume, c.geometry.value, c.views, angular_range_deg=c.angular_range_deg,
        dose_i0=c.dose_i0, electronic_sigma=c.electronic_sigma, seed=config.seed,
        device=device)
    acquisition = {
        "source": "simulated",
        "geometry": c.geometry.value,
        "views": int(c.views),
        "angular_range_deg": c.angular_range_deg,
        "dose_i0": c.dose_i0,
        "electronic_sigma": float(c.electronic_sigma),
        "seed": int(config.seed),
        "version": __version__,
        "reference_source": str(volume.meta.get("source", volume.meta.get("path", ""))),
    }
    return Measurement(
        modality="CT",
        data=np.asarray(sinogram, dtype=np.float32),
        mask=None,
        reference=reference,
        noise=dict(noise),
        operator=ct_operator_description(geometry, volume.shape, volume.spacing),
        acquisition=acquisition,
    )


# -------------------------------------------------------------------------------------------
# CT: noise and sinogram simulation
# -------------------------------------------------------------------------------------------
#: Counts below this floor (after electronic noise) are clipped before the log, as scanners do.
COUNT_FLOOR = 0.5


def add_ct_noise(line_integrals: torch.Tensor, dose_i0: float | None, electronic_sigma: float,
                 generator: torch.Generator, line_integral_sigma: float = 0.0
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Noisy line integrals and a description of the noise model.

    * ``dose_i0`` given: transmitted counts ``N ~ Poisson(I0 exp(-p))`` plus electronic noise
      ``Normal(0, electronic_sigma^2)`` in photon counts, clipped at :data:`COUNT_FLOOR`
      photons (as scanners do before the log), then ``p_noisy = -log(N / I0)``.
    * ``line_integral_sigma`` > 0 (without a dose): Gaussian noise of that standard deviation
      added to the line integrals directly (dimensionless) -- the usual weighted-least-squares
      approximation of the above.
    * neither: noiseless (a copy).

    Raises:
        InputError: for non-positive doses, negative sigmas, electronic noise without a dose,
            or both noise models at once.
    """
    import torch

    meta: dict[str, Any]
    if electronic_sigma < 0 or line_integral_sigma < 0:
        raise InputError("Noise standard deviations must be >= 0.")
    if dose_i0 is not None:
        if not (math.isfinite(dose_i0) and dose_i0 > 0):
            raise InputError(f"The dose I0 must be a positive number of photons, got {dose_i0}.")
        if line_integral_sigma > 0:
            raise InputError("Choose either Poisson noise (a dose I0) or Gaussian noise on the "
                             "line integrals, not both.")
        expected = float(dose_i0) * torch.exp(-line_integrals.double())
        counts = torch.poisson(expected, generator=generator)
        if electronic_sigma > 0:
            counts = counts + electronic_sigma * torch.randn(
                counts.shape, generator=generator, dtype=counts.dtype, device=counts.device)
        clipped = int((counts < COUNT_FLOOR).sum())
        counts = counts.clamp(min=COUNT_FLOOR)
        noisy = (-torch.log(counts / float(dose_i0))).to(line_integrals.dtype)
        meta = {"model": "poisson", "i0": float(dose_i0),
                "electronic_sigma_counts": float(electronic_sigma), "count_floor": COUNT_FLOOR,
                "clipped_counts": clipped}
        return noisy, meta
    if electronic_sigma > 0:
        raise InputError("Electronic noise is given in photon counts and needs a dose I0; "
                         "for Gaussian noise on the line integrals use line_integral_sigma.")
    if line_integral_sigma > 0:
        noise = torch.randn(line_integrals.shape, generator=generator,
                            dtype=line_integrals.dtype, device=line_integrals.device)
        return line_integrals + line_integral_sigma * noise, {
            "model": "gaussian", "sigma_line_integral": float(line_integral_sigma)}
    return line_integrals.clone(), {"model": "none"}


def simulate_sinogram(volume: Volume, geometry_kind: str, views: int,
                      angular_range_deg: float | None = None, dose_i0: float | None = None,
                      electronic_sigma: float = 0.0, seed: int = 0,
                      device: torch.device | str = "cpu", line_integral_sigma: float = 0.0
                      ) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """Simulate a CT acquisition of an HU volume.

    HU -> mu (:func:`medrecon.intensity.hu_to_mu`, air clipped at 0) -> line integrals with the
    :func:`~medrecon.operators.ct_geometry.default_geometry` projector (float32, on ``device``) -> noise (:func:`add_ct_noise`,
    seeded by ``seed`` on the CPU, so the noise does not depend on the device).

    Args:
        volume: the reference in HU (modality CT).
        geometry_kind: "parallel", "fan" or "cone".
        views: number of projections, equispaced over ``angular_range_deg`` (default 180 for
            parallel, 360 for fan and cone).
        dose_i0: incident photons per detector pixel (Poisson noise); None: no Poisson noise.
        electronic_sigma: electronic noise std in photon counts (needs ``dose_i0``).
        seed: noise seed.
        device: where to project.
        line_integral_sigma: Gaussian noise std on the line integrals (without ``dose_i0``).

    Returns:
        (sinogram float32 (views, rows, cols) of line integrals, geometry dict
        (:meth:`~medrecon.operators.ct_geometry.CTGeometry.to_dict` plus ``mu_water_per_mm`` and ``effective_energy_kev``),
        noise description dict (model, I0, sigmas, seed)).
    """
    import torch

    from medrecon.intensity import EFFECTIVE_ENERGY_KEV, MU_WATER_PER_MM, hu_to_mu
    from medrecon.operators.ct_geometry import default_geometry
    from medrecon.operators.ct_projector import make_projector

    data = np.asarray(volume.data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputError("The reference volume contains NaN or infinite values.")
    if str(volume.units).upper() != "HU" and str(volume.modality).upper() != "CT":
        raise InputError(f"CT simulation needs a volume in HU (modality CT), got modality "
                         f"{volume.modality!r} in {volume.units!r}.")
    geometry = default_geometry(volume.shape, volume.spacing, geometry_kind, views,
                                angular_range_deg)
    dev = torch.device(device)
    op = make_projector(geometry, volume.shape, volume.spacing, device=dev, dtype=torch.float32)
    mu = torch.as_tensor(hu_to_mu(data, MU_WATER_PER_MM), device=dev)
    with torch.no_grad():
        p = op.forward(mu).cpu()
    gen = torch.Generator().manual_seed(int(seed))
    noisy, noise = add_ct_noise(p, dose_i0, float(electronic_sigma), gen,
                                float(line_integral_sigma))
    noise["seed"] = int(seed)
    gdict = geometry.to_dict()
    gdict["mu_water_per_mm"] = MU_WATER_PER_MM
    gdict["effective_energy_kev"] = EFFECTIVE_ENERGY_KEV
    return noisy.numpy().astype(np.float32), gdict, noise
