"""Posterior sampling for MRI and CT measurements: the public Python API.

::

    from medrecon.io.measurement import read_measurement
    from medrecon.priors import load_prior
    from medrecon.sampling import posterior_sample

    m = read_measurement("t1_R8.h5")
    prior = load_prior("default", device="cuda")
    res = posterior_sample(m, prior, sampler="dds", steps=50, samples=4, seed=0)
    res.mean, res.std      # (I, J, K) numpy, reference units (MR magnitude, CT HU)
    res.residual, res.nfe, res.timings

The measurement's physics (operator, data, noise, unit maps into the prior's model range) comes
from :func:`medrecon.problem.measurement_problem`; the prior is used where it is, or copied to
``device``, never moved. Lower level, for any operator and any denoiser (the analytic tests use
this)::

    problem = LinearProblem(op, y, noise_std=..., scale=..., offset=...)
    out = sample_problem(denoiser, problem, (I, J, K), sampler="dds", steps=50, samples=8)
    x = problem.to_physical(out.samples, out.phase)     # keep_samples=True

Default hyper-parameters (``SamplerOptions``): the operator and data are divided by ||A|| (a
power iteration) so that ``A^H A`` has unit norm and step sizes transfer between MRI, CT and
geometries. :func:`posterior_sample` starts from the per-modality DDS defaults of
:data:`MODALITY_DEFAULTS` (MR: lam 0.1, 10 CG steps, 2 before sigma > 5; CT: lam 1, 5),
measured on held-out heads.

========  ==========================================================================  =========
sampler   step                                                                        defaults
========  ==========================================================================  =========
dds       x0 = D(x_t); 5 CG steps on ||Ax-y||^2/(2 s_y^2) + lam ||x-x0||^2/(2 c_out^2);  eta 0.85,
          DDIM re-noising (default)                                                   lam 1
diffpir   x0 = D(x_t); proximal step with rho = lam s_y^2 / sigma^2 (20 CG steps);    lam 1,
          re-noise with zeta                                                          zeta 0.3
pc        reverse-SDE predictor + 1 Langevin corrector (snr 0.16), each followed by   snr 0.16
          a CG projection onto the noised measurement (Song et al. 2022)
dps       ancestral step minus zeta grad ||y - A D(x_t)|| (autograd, checkpointed),   zeta 1.0
          zeta rescaled to the volume size and steps (:func:`dps_step`)
========  ==========================================================================  =========

Uncertainty: ``samples = K`` runs K independent chains (batched: all chains share each network
call); the mean is the reconstruction and the per-voxel standard deviation (``ddof = 1``) the
uncertainty map. :func:`posterior_sample` multiplies that std by the prior's fitted
calibration factor (:func:`medrecon.priors.calibration.calibrate_std`; ``info["std_calibration"]``
says which, or "uncalibrated"); :func:`sample_problem` returns the raw std. :func:`calibration`
gives the fraction of voxels whose error lies within ``k`` standard deviations. Where the
operator does not reach (MR: outside the support of the coil maps, e.g. ESPIRiT's cropped
background; CT: voxels no measured ray passes), every sample holds the minimum-norm value
(MR 0, CT x = 0) instead of what the prior would invent, and the std map holds the prior's
own spread ``sigma_data`` in output units there (not calibrated: it marks the region as
unmeasured; ``info["unsupported_fraction"]`` says how much of the grid it is).

CT air that the data carve out (voxels crossed by a measured ray attenuated less than 3 mm of
water, :mod:`medrecon.operators.empty_space`; ``info["empty_fraction"]``): the denoiser's
estimate there is air, not the network's (a prior trained on grids the head fills puts
tissue-like mass into patches of pure air; benchmarks/RESULTS_ct.md, "Wide field of view"),
and the ``fit`` tiling skips tiles wholly inside it. The data term still acts there.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.priors.calibration import calibrate_std
from medrecon.problem import measurement_problem
from medrecon.sampling import samplers as S
from medrecon.sampling.consistency import (
    LinearProblem,
    ProximalDenoiser,
    calibrated_variance,
    diffpir_variance,
    noisy_steps_above,
)
from medrecon.sampling.denoiser import prior_denoiser, prior_on_device
from medrecon.sampling.tiling import TiledDenoiser
from medrecon.solvers import power_iteration

if TYPE_CHECKING:
    from medrecon.io.measurement import Measurement
    from medrecon.priors import Prior
    from medrecon.problem import UnitMap

__all__ = [
    "MODALITY_DEFAULTS",
    "SAMPLERS",
    "PosteriorResult",
    "SamplerOptions",
    "calibration",
    "dps_step",
    "posterior_sample",
    "sample_problem",
]

SAMPLERS: tuple[str, ...] = ("dds", "dps", "pc", "diffpir")

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerOptions:
    """Hyper-parameters of the samplers (see the module table for what each one does).

    Attributes:
        eta: DDS/DDIM re-noising stochasticity in [0, 1].
        cg_iters: CG iterations of the DDS proximal step (DiffPIR uses ``4 * cg_iters``).
        cg_iters_high, cg_sigma: DDS: ``cg_iters_high`` iterations instead at the steps whose
            next noise level exceeds ``cg_sigma`` (model units; the estimate is re-noised
            above its detail there); None: ``cg_iters`` everywhere.
        lam: prior weight relative to the data term: the proximal prior variance is
            ``v / lam``, so ``lam < 1`` trusts the data more (1 is exact for a Gaussian prior).
        zeta_diffpir: DiffPIR's share of fresh noise in [0, 1].
        zeta_dps: DPS guidance step size, in the units of Chung et al. (a 256x256x3 image,
            1000 steps); rescaled to the volume size and number of steps (see :func:`dps_step`).
        snr, corrector_steps, pc_cg_iters: predictor-corrector settings.
        pc_mode: "projection" (Song et al. 2022: unconditional score, then a CG projection
            onto the measurement noised to the current level) or "score" (the score of the
            proximal conditional denoiser, as DDS uses; exact for Gaussian priors, see
            benchmarks/RESULTS_sampling.md), with a final projection for noiseless data.
        sigma_max, sigma_min, rho: EDM schedule (None: the prior's range).
        normalise_operator: divide A and y by ||A|| first.
        coil_energy: MR, :func:`posterior_sample`: compress the coils onto the fewest virtual
            coils that keep this fraction of the signal energy
            (:mod:`medrecon.operators.coil_compression`); None or 1: all coils.
    """

    eta: float = 0.85
    cg_iters: int = 5
    cg_iters_high: int | None = None
    cg_sigma: float = 5.0
    lam: float = 1.0
    zeta_diffpir: float = 0.3
    zeta_dps: float = 1.0
    snr: float = 0.16
    corrector_steps: int = 1
    pc_cg_iters: int = 10
    pc_mode: str = "projection"
    sigma_max: float | None = None
    sigma_min: float | None = None
    rho: float = 7.0
    normalise_operator: bool = True
    coil_energy: float | None = None

    @classmethod
    def defaults(cls, modality: str | None = None, sampler: str = "dds",
                 **overrides: Any) -> SamplerOptions:
        """The documented defaults for ``sampler`` on ``modality`` (:data:`MODALITY_DEFAULTS`),
        then ``overrides``; without a modality, the modality-free defaults above."""
        base = dict(MODALITY_DEFAULTS.get(((modality or "").upper(), sampler.lower()), {}))
        base.update(overrides)
        return cls(**base)


#: Per-modality defaults of the DDS sampler, tuned on one held-out synthetic head per modality
#: (benchmarks/RESULTS_sampling.md, NVIDIA H200, 2026-11-26). For MRI the learned prior is less
#: certain than the isotropic-Gaussian variance ``c_out^2`` assumes, and trusting the data more
#: pays: at R = 8, +1.73 dB over tuned TV with lam 1 and 5 CG steps, +3.93 dB with lam 0.1 and
#: 10. For CT, lam 0.3 adds only ~0.3 dB PSNR but lets the Poisson noise into the soft tissue
#: (SSIM 0.974 -> 0.962 at 60 views), so CT keeps the exact-Gaussian weight lam = 1. MR runs
#: 2 CG iterations instead of 10 at the steps followed by sigma > 5 (40 % of 50 steps): about
#: 30 % less data consistency for <= 0.01 dB on two synthetic heads at R = 4 and 8
#: (benchmarks/RESULTS_coil_compression.md). 30 iterations instead of 10 gain 0.65 / 1.28 dB on
#: the real brain at R = 4 / 8 with the weight self-tuned, but lose 0.8-1.0 dB on the
#: fastMRI-format brain (under CG-SENSE at R = 8) and on a synthetic head at R = 4, and 1.2 dB
#: on the CPU demo (benchmarks/RESULTS_autotune.md): MR keeps 10 (the prior's std calibration
#: has entries for both).
#:
#: MR weights are twice those of results before 2026-12-06: the data term's weight goes as
#: ``lam * noise_std^2``, and until then a simulated file's noise_std was its RMS complex sigma,
#: sqrt(2) times the per-part std it means. The MR weights of every sampler whose weight
#: multiplies that term (dds, diffpir, pc's "score" mode) were doubled when it was fixed, so
#: simulated files sample as before; pc's "projection" mode has no such weight (its noised
#: projection now uses the right noise level).
MODALITY_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("MR", "dds"): {"lam": 0.1, "cg_iters": 10, "cg_iters_high": 2},
    ("MR", "diffpir"): {"lam": 2.0},
    ("MR", "pc"): {"lam": 2.0},
    ("CT", "dds"): {"lam": 1.0, "cg_iters": 5},
}

#: Size and length of Chung et al.'s DPS runs (256 x 256 RGB, 1000 steps), where zeta ~ 1.
_DPS_REF_VALUES, _DPS_REF_STEPS = 256 * 256 * 3, 1000


def dps_step(zeta: float, values: int, steps: int) -> float:
    """DPS step for ``values`` unknowns per sample and ``steps`` steps, equivalent to ``zeta``
    in Chung et al.'s setting.

    The guidance ``grad ||y - A x0_hat||`` has norm ~1 whatever the size (||A|| = 1 after
    normalisation), so the paper's step moves each of its 196,608 values by ~zeta / 443 per
    step and ~2.3 zeta in total. Keeping that per-value total for a 3D volume of ``values``
    voxels in ``steps`` steps needs ``zeta sqrt(values / 196608) (1000 / steps)``: for a
    96 x 112 x 112 volume in 50 steps that is 50x the paper's step; unscaled, DPS barely moves
    (measured: 11 dB, residual 0.8 at MR R = 8).
    """
    return zeta * (values / _DPS_REF_VALUES) ** 0.5 * (_DPS_REF_STEPS / max(steps, 1))


@dataclass
class PosteriorResult:
    """What posterior sampling returns.

    Attributes:
        mean: (I, J, K) posterior mean in output units (MR: magnitude in the reference's
            scale; CT: HU); float32 numpy for :func:`posterior_sample`, a tensor for
            :func:`sample_problem`.
        std: (I, J, K) per-voxel standard deviation over the samples (None for 1 sample).
        samples: (K, I, J, K) the samples themselves when ``keep_samples``.
        residual: mean over samples of ``||A x_k - y|| / ||y||``.
        phase: :func:`sample_problem` of a complex-image (MR) problem: the (K, *S) phase along
            which the model-space samples lie at the end (``problem.to_physical(z, phase)``);
            None otherwise.
        image: :func:`posterior_sample`: the (I, J, K) mean in the units the operator acts on
            (MR: complex image, CT: mu in 1/mm), a tensor on the sampling device, from which
            the guard predicts held-out data; None for :func:`sample_problem`.
        nfe: full-volume denoiser evaluations per chain.
        timings: seconds: ``total``, ``network`` (denoiser calls, tiling included),
            ``other`` (data consistency, bookkeeping), ``network_fraction``; for a tiled
            denoiser also ``tiling`` (cutting and joining patches, inside ``network``) and
            ``network_only`` (the patch network itself).
        info: settings used (sampler, steps, noise level, scale, ...).
    """

    mean: Any
    std: Any
    samples: Any
    residual: float
    nfe: int
    timings: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    phase: Any = None
    image: Any = None


class _Timed:
    """Wrap a denoiser: count calls and accumulate their wall time (synchronising CUDA)."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        out = self.denoiser(x, sigma)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def calibration(mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor,
                truth: np.ndarray | torch.Tensor, k: float = 2.0,
                mask: np.ndarray | torch.Tensor | None = None) -> float:
    """Fraction of voxels with ``|mean - truth| <= k * std`` (inside ``mask`` if given).

    For a calibrated Gaussian posterior and k = 2 this is about 0.95; lower means the
    uncertainty map is over-confident, higher that it is too cautious.
    """
    m, s, t = (np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, np.float64)
               for v in (mean, std, truth))
    ok = np.abs(m - t) <= k * s
    if mask is not None:
        mk = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, bool)
        ok = ok[mk]
    return float(ok.mean()) if ok.size else float("nan")


# ---------------------------------------------------------------------------------------------
# Generic sampling on a LinearProblem
# ---------------------------------------------------------------------------------------------
def _check_common(sampler: str, steps: int, samples: int) -> str:
    name = sampler.strip().lower()
    if name not in SAMPLERS:
        raise InputError(f"Unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}.")
    if steps < 1:
        raise InputError(f"The number of steps must be at least 1, got {steps}.")
    if samples < 1:
        raise InputError(f"The number of samples must be at least 1, got {samples}.")
    return name


def check_sample_memory(measurement: Measurement, samples: int, device: torch.device) -> None:
    """Refuse ``samples`` chains that cannot fit in ``device``'s memory, before any work.

    Each chain holds about eight image-sized float32 tensors (state, denoised estimate,
    gradients and consistency steps) and four copies of the measured data (forward
    projections, residuals, MR coil images); the estimate is deliberately coarse, for one
    sentence instead of an allocator error half-way through sampling.

    Raises:
        InputError: the estimate exceeds the device's memory (GPU: its total memory; CPU:
            half of the machine's physical memory).
    """
    from medrecon.device import host_memory_bytes

    voxels = int(np.prod(measurement.reference.shape))
    per_sample = 8 * 4 * voxels + 4 * int(np.asarray(measurement.data).nbytes)
    if device.type == "cuda":
        available = int(torch.cuda.get_device_properties(device).total_memory)
    else:
        available = host_memory_bytes() // 2
    if samples * per_sample > available:
        most = max(available // per_sample, 0)
        raise InputError(
            f"{samples} posterior samples need about {samples * per_sample / 2**30:,.1f} GiB "
            f"({per_sample / 2**30:,.2f} GiB each), more than the {available / 2**30:,.1f} GiB "
            f"available on {device.type}; use at most {most} samples.")


def sample_problem(denoiser: Denoiser, problem: LinearProblem, shape: tuple[int, ...], *,
                   sampler: str = "dds", steps: int = 50, samples: int = 1, seed: int = 0,
                   sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   options: SamplerOptions | None = None, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu", keep_samples: bool = False,
                   progress: bool = False,
                   callback: Callable[[int, float, torch.Tensor, torch.Tensor], None] | None = None
                   ) -> PosteriorResult:
    """Draw ``samples`` posterior samples for ``problem`` with a model-space ``denoiser``.

    Args:
        denoiser: D(x (B, *shape), sigma (B,)) -> x0_hat, model space.
        problem: the measurement, its noise level and the model <-> physical map. With
            ``options.normalise_operator`` the sampler works on a copy with A, y and the
            noise divided by ||A|| (the caller's problem is not changed).
        shape: the image shape S (= ``problem.op.ishape``).
        sampler: "dds", "dps", "pc" or "diffpir".
        seed: seeds the torch generator on ``device``: same seed, same device -> same result.
    Returns:
        :class:`PosteriorResult` with model-space ``mean``/``std``/``samples`` tensors (the
        caller maps them to its units) and the physical residual.
    """
    name = _check_common(sampler, steps, samples)
    opt = options or SamplerOptions()
    device = torch.device(device)
    t_start = time.perf_counter()
    if opt.normalise_operator:
        # A real start (cast to complex for MR): the seeded norm estimate of earlier releases.
        start = torch.randn(problem.op.ishape, device=device,
                            dtype=problem.y.real.dtype if problem.complex_image else dtype,
                            generator=torch.Generator(device).manual_seed(seed))
        if problem.complex_image:
            start = start.to(problem.y.dtype)
        norm = math.sqrt(power_iteration(problem.op.normal, start, iters=15).gain)
        if norm > 0:
            problem = problem.normalised(norm)  # a new problem: the caller's stays as it was
    gen = torch.Generator(device).manual_seed(int(seed))
    s_max = opt.sigma_max if opt.sigma_max is not None else sigma_max
    s_min = opt.sigma_min if opt.sigma_min is not None else sigma_min
    sig = S.edm_sigmas(steps, s_min, s_max, opt.rho, device=device).to(dtype)
    timed = _Timed(denoiser)
    net0 = getattr(denoiser, "network_seconds", None)  # a tiled denoiser's running total
    x = S.initial_state((samples, *shape), s_max, gen, dtype=dtype, device=device)
    # The MR phase estimate: sampler state, changed only by the hard projections at the end.
    phase = problem.init_phase(samples)

    bar = None
    if progress:
        from medrecon.progress import progress_bar

        bar = progress_bar(steps, f"diffusion ({name})", unit="step")

    def cb(i: int, sigma: float, xi: torch.Tensor, x0: torch.Tensor) -> None:
        if bar is not None:
            bar.update(1)
            if i % 10 == 0 or i == steps - 1:
                with torch.no_grad():
                    r = problem.residual_norm(x0, phase) / torch.linalg.vector_norm(problem.y)
                bar.set_postfix(sigma=f"{sigma:.3g}", residual=f"{float(r.mean()):.3g}")
        if callback is not None:
            callback(i, sigma, xi, x0)

    ctx = torch.no_grad() if name != "dps" else torch.enable_grad()
    with ctx:
        if name == "dds":
            d_y = ProximalDenoiser(timed, problem, calibrated_variance(sigma_data, opt.lam),
                                   cg_iters=opt.cg_iters, tol=1e-6, phase=phase,
                                   cg_iters_high=opt.cg_iters_high,
                                   cg_sigma=noisy_steps_above(sig, opt.cg_sigma))
            out = S.ddim(d_y, x, sig, gen, eta=opt.eta, callback=cb)
        elif name == "diffpir":
            d_y = ProximalDenoiser(timed, problem, diffpir_variance(opt.lam),
                                   cg_iters=4 * opt.cg_iters, tol=1e-6, phase=phase)
            out = S.diffpir(d_y, x, sig, gen, zeta=opt.zeta_diffpir, callback=cb)
        elif name == "pc":
            if opt.pc_mode not in ("projection", "score"):
                raise InputError(f"pc_mode must be projection or score, got {opt.pc_mode!r}.")
            score_model: Denoiser = timed
            if opt.pc_mode == "score":
                score_model = ProximalDenoiser(timed, problem,
                                               calibrated_variance(sigma_data, opt.lam),
                                               cg_iters=opt.cg_iters, tol=1e-6, phase=phase)

            def dc(z: torch.Tensor, sigma: torch.Tensor, g: torch.Generator) -> torch.Tensor:
                nonlocal phase
                if opt.pc_mode == "score" and not bool(torch.all(sigma == 0)):
                    return z  # consistency is in the score; only the clean end is projected
                z, phase = problem.noised_projection(z, sigma, g, phase, iters=opt.pc_cg_iters)
                return z

            out = S.predictor_corrector(score_model, x, sig, gen, dc=dc,
                                        corrector_steps=opt.corrector_steps, snr=opt.snr,
                                        callback=cb)
        else:
            tiled = isinstance(denoiser, TiledDenoiser)
            unit = abs(float(problem.scale)) or 1.0

            def model_residual(z: torch.Tensor) -> torch.Tensor:
                # In model units (||A|| = 1 after normalisation): the guidance step zeta then
                # means the same for MR and CT, as for the [-1, 1] images of Chung et al.
                return problem.residual_norm(z, phase) / unit

            zeta = dps_step(opt.zeta_dps, math.prod(shape), steps)
            out = S.dps(timed, x, sig, gen, model_residual, zeta=zeta,
                        checkpoint=not tiled, callback=cb)
    if bar is not None:
        bar.close()
    out = problem.restrict(out.detach())  # every sampler: nothing drawn where A cannot see
    if problem.noise_std == 0 and name != "pc":
        # Noiseless data: end exactly on A x = y (pc's last consistency step already does).
        with torch.no_grad():
            out, phase = problem.project(out, phase, iters=max(opt.pc_cg_iters, 20), tol=1e-7)
    with torch.no_grad():
        ynorm = torch.linalg.vector_norm(problem.y).clamp_min(1e-30)
        residual = float((problem.residual_norm(out, phase) / ynorm).mean())
    total = time.perf_counter() - t_start
    timings = {"total": total, "network": timed.seconds, "other": total - timed.seconds,
               "network_fraction": timed.seconds / max(total, 1e-12)}
    if net0 is not None:
        net_only = denoiser.network_seconds - net0  # type: ignore[attr-defined]
        timings.update(network_only=net_only, tiling=max(timed.seconds - net_only, 0.0))
    mean = out.mean(dim=0)
    std = out.std(dim=0) if samples > 1 else None
    return PosteriorResult(
        mean=mean, std=std, samples=out if keep_samples else None, residual=residual,
        phase=phase, nfe=timed.calls, timings=timings,
        info={"sampler": name, "steps": steps, "samples": samples, "seed": seed,
              **({"lam": opt.lam, "eta": opt.eta, "cg_iters": opt.cg_iters,
                  "cg_iters_high": opt.cg_iters_high, "cg_sigma": opt.cg_sigma}
                 if name == "dds" else {}),
              "noise_std": problem.noise_std, "sigma_max": s_max, "sigma_min": s_min})


# ---------------------------------------------------------------------------------------------
# Measurements + a learned prior
# ---------------------------------------------------------------------------------------------
def _unconstrained_std(units: UnitMap, sigma_data: float) -> float:
    """The std map's value where the operator does not reach (reference units).

    The mean there is the minimum-norm value (:meth:`LinearProblem.restrict`), identical in
    every chain, so the spread of the samples would read 0 -- certainty where the data say
    nothing. The posterior of an unconstrained voxel is the prior itself, whose spread the
    denoiser's preconditioning takes as ``sigma_data`` in model space: that, mapped to
    reference units, marks the region as unmeasured in the std map (finite, so DICOM and
    NIfTI viewers keep their windowing).
    """
    z = torch.tensor([0.0, float(sigma_data)])
    ref = units.model_to_reference(z).double()
    return float((ref[1] - ref[0]).abs())


def posterior_sample(measurement: Measurement, prior: Prior, *, sampler: str = "dds",
                     steps: int = 50, samples: int = 1, seed: int = 0,
                     device: torch.device | str = "auto", options: SamplerOptions | None = None,
                     tiling: str = "fit", memory_budget_gb: float | None = None,
                     noise_std: float | None = None, keep_samples: bool = False,
                     progress: bool = False, precision: str = "auto",
                     voxel_size_warning: bool = True) -> PosteriorResult:
    """Reconstruct an MR or CT measurement by posterior sampling with a learned prior.

    Args:
        measurement: from :func:`medrecon.io.measurement.read_measurement` or ``simulate``.
        prior: from :func:`medrecon.priors.load_prior`, on any device: used as it is when on
            ``device``, else a copy is moved there (the caller's prior is never changed).
        sampler: "dds" (default), "dps", "pc" or "diffpir".
        steps: diffusion steps (network evaluations per chain: 1 per step; pc: 2).
        samples: posterior samples K; with K >= 2 ``std`` is the per-voxel uncertainty.
        seed: same seed and device -> same result.
        device: "auto", "cpu", "cuda" or "cuda:N".
        options: sampler settings; default ``SamplerOptions.defaults(modality, sampler)``.
        tiling: "fit", "shift", "roll" or "blend" (see :mod:`medrecon.sampling.tiling`).
        memory_budget_gb: bound on network activation memory (patch batch size).
        noise_std: override the measurement noise std (per real component, data units).
        precision: the network's precision, see :func:`prior_denoiser`.
        voxel_size_warning: warn when the measurement's voxel size is far from the prior's
            (False: a caller's later runs on the same data, which warned once already; the
            notice is ``info["warning"]`` either way).
    Returns:
        :class:`PosteriorResult` with float32 numpy ``mean``/``std`` in reference units (MR:
        magnitude, CT: HU), on the reference grid; ``std`` is calibrated by the prior's
        ``std_calibration`` where an entry matches the run (``info["std_calibration"]``,
        ``info["std_calibration_line"]``), else the raw spread of the samples.
    """
    from medrecon.device import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    _check_common(sampler, steps, samples)
    check_sample_memory(measurement, samples, dev)
    prior = prior_on_device(prior, dev)
    opt = options or SamplerOptions.defaults(measurement.modality, sampler)
    physics = measurement_problem(measurement, dev, model=prior.normalisation,
                                  noise_std=noise_std, coil_energy=opt.coil_energy,
                                  empty_space=True)
    problem = LinearProblem.from_problem(physics)
    units = physics.units
    pinfo: dict[str, Any] = {**physics.info, "scale": units.scale, "offset": units.offset}
    if units.mu_water is not None:
        pinfo["mu_water"] = units.mu_water
    spacing = tuple(float(s) for s in
                    np.linalg.norm(np.asarray(measurement.reference.affine)[:3, :3], axis=0))
    # Said before sampling, not after minutes of it: the user may stop and resample.
    warning = prior.voxel_size_warning(spacing)
    if warning and voxel_size_warning:
        warnings.warn(warning, UserWarning, stacklevel=2)
    # CT air that the data carve out (rays without attenuation): the prior, trained on volumes
    # the head fills, has never seen a patch of pure air and would fill it with tissue-like
    # mass; there its estimate is air, the model value of x = 0 (the data term still acts).
    den = prior_denoiser(prior, measurement.modality, tiling=tiling,
                         memory_budget_gb=memory_budget_gb, seed=seed, device=dev,
                         spacing_mm=spacing, precision=precision, empty=physics.empty,
                         empty_value=-units.offset / units.scale)
    res = sample_problem(den, problem, tuple(problem.op.ishape), sampler=sampler, steps=steps,
                         samples=samples, seed=seed, sigma_data=prior.sigma_data,
                         sigma_min=prior.sigma_min, sigma_max=prior.sigma_max, options=opt,
                         device=dev, keep_samples=True, progress=progress)
    z = res.samples  # (K, I, J, K) model space
    with torch.no_grad():  # the mean in the operator's units, for held-out checks (guard)
        res.image = sum(units.to_physical(z[k], None if res.phase is None else res.phase[k])
                        for k in range(samples)) / samples
    with torch.no_grad():  # MR magnitude in the reference's scale, CT HU
        phys = units.model_to_reference(z, res.phase).float()
    res.phase = None
    res.mean = phys.mean(dim=0).cpu().numpy()
    res.std = None
    if samples > 1:
        # The chains' raw spread is over-confident; the prior's fitted scale makes 2 std
        # cover about 95 % of the errors (medrecon.priors.calibration).
        res.std, note = calibrate_std(
            phys.std(dim=0).cpu().numpy(), prior.std_calibration,
            modality=measurement.modality, sampler=res.info["sampler"], steps=steps,
            samples=samples, options=dataclasses.asdict(opt), prior_name=prior.name)
        res.info.update(std_calibration=note.to_dict(), std_calibration_line=note.line,
                        std_factor=note.factor)
    if res.std is not None and physics.support is not None:
        res.std[~physics.support.cpu().numpy()] = _unconstrained_std(units, prior.sigma_data)
    res.samples = phys.cpu().numpy() if keep_samples else None
    res.info.update(pinfo, modality=measurement.modality, prior=prior.name, tiling=tiling,
                    patch_size=list(prior.patch_size), patches=den.patches,
                    network_calls=den.calls, spacing_mm=list(spacing), device=str(dev))
    if warning:
        res.info["warning"] = warning
    return res
