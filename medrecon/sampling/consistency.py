"""Data consistency: pulling a denoised estimate back towards the measurement ``y = A x + n``.

The samplers never branch on the modality or the operator. They receive either a
*conditional denoiser* (:class:`ProximalDenoiser`: the prior's ``x0_hat`` followed by a
proximal step on the data term) or a *step-level correction* (:meth:`LinearProblem.project`,
:meth:`LinearProblem.noised_projection`, :meth:`LinearProblem.residual_norm` for DPS), all of
which are built from one immutable :class:`LinearProblem` (for a measurement:
:meth:`LinearProblem.from_problem` of :func:`medrecon.problem.measurement_problem`).

Units. The sampler state ``z`` lives in the prior's model space (roughly [-1, 1]); the operator
acts on the physical image ``x = scale * z + offset`` (attenuation in 1/mm for CT, the
k-space-consistent complex image for MRI). All data consistency is done in physical units and
mapped back, so the noise level of the measurement ``noise_std`` is in the units of ``y``.

Complex MRI with a real magnitude prior. With ``complex_image=True`` the physical image is
``x = (scale * z + offset) * phase`` with a fixed, smooth phase estimate (|phase| = 1): the
phase of a low-pass filtered least-squares image (:meth:`LinearProblem.init_phase`). The prior
denoises the magnitude; each data-consistency step solves for a complex image and keeps its
component along that phase, ``z = (Re(x conj(phase)) - offset) / scale``. This is the
phase-constrained (real-valued) reconstruction of partial-Fourier MRI: the prior stays in the
domain it was trained on (magnitude images, not real and imaginary parts as in DiffusionMBIR),
and the quadrature component, where undersampling aliasing lands but a smooth-phase object has
no signal, is discarded at every step. Letting the phase follow each step's solution instead
lets aliasing hide in the phase and the magnitude (measured on synthetic heads: 18 dB at
R = 8 against 30 dB). The final clean estimate of noiseless data is projected onto
``A x = y`` with the phase set free (:meth:`LinearProblem.project`), so hard consistency
still holds exactly. The phase is sampler state: :meth:`LinearProblem.init_phase` returns it,
the methods take it, and the hard projections return the updated one; the problem itself
never changes.

The conjugate gradients are the package's one batched CG
(:func:`medrecon.solvers.conjugate_gradient`): every chain gets its own step sizes.

The maths of the proximal step (for a per-sample prior variance ``v`` of x0 in model space):

    x_dc = argmin_x ||A x - y||^2 / (2 sigma_y^2) + ||x - x0||^2 / (2 scale^2 v)
         = solution of (A^H A + gamma I) x = A^H y + gamma x0,  gamma = sigma_y^2 / (scale^2 v),

solved by conjugate gradients started at ``x0``. With ``sigma_y = 0`` (noiseless data) CG on
``A^H A x = A^H y`` started at ``x0`` stays in ``x0 + range(A^H)`` and converges to the
orthogonal projection of ``x0`` onto ``{x : A x = y}``; stopped early it is the Krylov
regularisation of DDS (Chung et al., ICLR 2024).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from medrecon.operators.base import LinearOperator
from medrecon.solvers import conjugate_gradient, inner

if TYPE_CHECKING:
    from medrecon.problem import Problem

__all__ = [
    "LinearProblem",
    "ProximalDenoiser",
    "calibrated_variance",
    "diffpir_variance",
    "noisy_steps_above",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor to broadcast against ``like`` (B, ...)."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def calibrated_variance(sigma_data: float, lam: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Prior variance of ``x0`` given ``x_t`` as the data term sees it: ``v = c_out(sigma)^2 / lam``.

    ``c_out^2 = sigma^2 sigma_data^2 / (sigma^2 + sigma_data^2)`` is exactly the posterior
    variance of ``x0`` for an isotropic Gaussian prior of variance ``sigma_data^2`` (Karras et
    al.'s EDM preconditioner is built on it), so with ``lam = 1`` the proximal step is the exact
    conditional mean ``E[x0 | x_t, y]`` for such a prior, at every noise level. It tends to
    ``sigma^2`` at low noise (DiffPIR's rule) and to ``sigma_data^2`` at high noise, where
    ``sigma^2`` would let the data term dominate too early.
    """

    def variance(sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma**2
        return s2 * sigma_data**2 / (s2 + sigma_data**2) / lam

    return variance


def diffpir_variance(lam: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """DiffPIR's rule (Zhu et al. 2023): ``rho_t = lam sigma_y^2 / sigma_t^2``, i.e. ``v = sigma^2 / lam``."""

    def variance(sigma: torch.Tensor) -> torch.Tensor:
        return sigma**2 / lam

    return variance


def noisy_steps_above(sigmas: torch.Tensor | list[float], level: float) -> float:
    """The noise level above which a step of the schedule ``sigmas`` (decreasing, ending in 0)
    is followed by a level above ``level``: the steps ``i`` with ``sigmas[i + 1] > level`` are
    exactly those with ``sigmas[i] >`` the returned value (``sigmas[0]``: no such step).

    A step's estimate is re-noised to the next level, so it is the next level that decides
    whether the estimate's fine detail survives (:class:`ProximalDenoiser` ``cg_sigma``).
    """
    s = [float(v) for v in sigmas]
    k = next((i for i in range(len(s) - 1) if s[i + 1] <= level), len(s) - 1)
    return s[k]


@dataclass(frozen=True)
class LinearProblem:
    """A measurement ``y = A x + n`` and the map between model space and physical units.

    Immutable: the MR phase estimate is sampler state, passed to the methods that need it and
    returned by those that update it (the hard projections), never stored here.

    Attributes:
        op: the forward operator A; ``op.ishape`` is the image shape S.
        y: measured data, shape ``op.oshape`` (shared by every sample).
        noise_std: standard deviation of each real component of ``n`` (real and imaginary part
            separately for complex data), in the units of ``y``; 0 for noiseless data.
        scale, offset: physical image = ``scale * z + offset`` for a model-space state ``z``.
        complex_image: the physical image is complex (MRI) and the prior models its magnitude;
            see the module docstring. Every method that maps between model space and the image
            then takes the (1 or B, *S) unit-modulus ``phase`` (from :meth:`init_phase`).
        support: boolean ``S`` mask of the voxels the operator reaches, or None (all of them);
            see :meth:`restrict`.
    """

    op: LinearOperator
    y: torch.Tensor
    noise_std: float = 0.0
    scale: float = 1.0
    offset: float = 0.0
    complex_image: bool = False
    support: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.noise_std < 0:
            raise ValueError("noise_std must be >= 0")
        if self.scale == 0:
            raise ValueError("scale must be non-zero")

    @classmethod
    def from_problem(cls, problem: Problem) -> LinearProblem:
        """The sampler's view of a physics :class:`~medrecon.problem.Problem`: its operator,
        data, noise and unit map (``x = scale * z + offset``); MR images are complex with a
        magnitude prior."""
        return cls(problem.op, problem.y, noise_std=problem.noise_std, scale=problem.units.scale,
                   offset=problem.units.offset, complex_image=problem.modality == "MR",
                   support=problem.support)

    # -- model space <-> physical units ---------------------------------------------------
    @property
    def ishape(self) -> tuple[int, ...]:
        return self.op.ishape

    @property
    def _data_complex(self) -> bool:
        return self.y.is_complex()

    def normalised(self, norm: float) -> LinearProblem:
        """The same problem with A, y and the noise divided by ``norm`` (e.g. ||A||, so that
        step sizes transfer between operators); the solution set is unchanged."""
        return dataclasses.replace(self, op=(1.0 / norm) * self.op, y=self.y / norm,
                                   noise_std=self.noise_std / norm)

    def init_phase(self, batch: int, iters: int = 10,
                   lowpass: float = 0.08) -> torch.Tensor | None:
        """Smooth phase estimate (B, *S) for ``batch`` chains, None for real images: the phase
        of a least-squares image (``iters`` CG steps on ``A^H A x = A^H y``) low-pass filtered
        by a Gaussian of standard deviation ``lowpass`` times the k-space extent per axis
        (aliasing and noise average out, a smooth phase survives)."""
        if not self.complex_image:
            return None
        rhs = self.op.adjoint(self.y).unsqueeze(0)
        x = conjugate_gradient(self.op.normal, rhs, max_iter=iters, tol=0.0, batched=True).x[0]
        if lowpass > 0:
            # Gaussian blur of spatial std 1 / (2 pi lowpass) voxels, done by FFT on a copy
            # zero-padded by 3 std per side: without the padding the blur wraps around, and
            # an object that reaches the field of view's faces (a crop through a head) gets
            # the phase of the opposite face there (measured: a 64^3 crop's phase-constrained
            # residual floor 0.060 with wrap-around against the 0.017 noise level).
            pad = int(math.ceil(3.0 / (2.0 * math.pi * lowpass)))
            dims = tuple(range(x.ndim))
            xp = torch.nn.functional.pad(x[None, None], [pad, pad] * x.ndim)[0, 0]
            k = torch.fft.fftn(xp, dim=dims)
            for d, n in enumerate(xp.shape):
                f = torch.fft.fftfreq(n, device=x.device, dtype=x.real.dtype)
                w = torch.exp(-0.5 * (f / lowpass) ** 2)
                k = k * w.reshape([-1 if i == d else 1 for i in range(x.ndim)])
            xp = torch.fft.ifftn(k, dim=dims)
            x = xp[tuple(slice(pad, pad + n) for n in x.shape)]
        return self._unit(x[None], None).expand(batch, *self.ishape).clone()

    @staticmethod
    def _unit(x: torch.Tensor, fallback: torch.Tensor | None) -> torch.Tensor:
        mag = x.abs()
        eps = torch.finfo(mag.dtype).eps * mag.amax().clamp_min(1.0)
        unit = x / mag.clamp_min(eps)
        if fallback is None:
            return torch.where(mag > eps, unit, torch.ones_like(unit))
        return torch.where(mag > eps, unit, fallback)

    def _phase(self, phase: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        if phase is None:
            raise ValueError("a complex-image problem needs the phase from init_phase()")
        if phase.shape[0] not in (1, z.shape[0]):
            raise ValueError(f"phase has batch {phase.shape[0]}, state {z.shape[0]}")
        return phase

    def to_physical(self, z: torch.Tensor, phase: torch.Tensor | None = None) -> torch.Tensor:
        """(B, *S) model-space state -> (B, *S) physical image (complex when ``complex_image``,
        along ``phase``)."""
        x = self.scale * z + self.offset
        if self.complex_image:
            return x * self._phase(phase, z)
        return x

    def to_model(self, x: torch.Tensor, phase: torch.Tensor | None = None) -> torch.Tensor:
        """Physical image -> model space: ``(Re x - offset) / scale`` for a real image, and
        ``(Re(x conj(phase)) - offset) / scale`` for a complex one, i.e. the signed component
        along ``phase`` (equal to ``|x|`` when the phase was taken from ``x``; signed so that
        the noise of a noisy state is not rectified)."""
        if self.complex_image:
            return ((x * torch.conj(self._phase(phase, x))).real - self.offset) / self.scale
        return ((x.real if x.is_complex() else x) - self.offset) / self.scale

    def restrict(self, z: torch.Tensor) -> torch.Tensor:
        """(B, *S) clean model-space state with the voxels outside ``support`` set to the model
        value of x = 0.

        There ``A x`` does not depend on x: a data-consistency step leaves whatever the prior
        drew (measured on fastMRI-format brain k-space with ESPIRiT maps: a skull ring in the
        cropped background), so every clean estimate is pulled back to the minimum-norm,
        data-consistent value instead -- what CG-SENSE gives there -- and the prior never
        conditions on its own invention. Noisy states are not touched.
        """
        if self.support is None:
            return z
        return torch.where(self.support, z, -self.offset / self.scale)

    # -- the data term ------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._data_complex and not x.is_complex():
            x = x.to(self.y.dtype)
        return self.op.forward(x)

    def _adjoint(self, r: torch.Tensor) -> torch.Tensor:
        out = self.op.adjoint(r)
        if not self.complex_image and out.is_complex():
            return out.real  # a real unknown sees Re(A^H r)
        return out

    def _normal(self, x: torch.Tensor) -> torch.Tensor:
        if self._data_complex and not x.is_complex():
            return self.op.normal(x.to(self.y.dtype)).real
        return self.op.normal(x)

    def residual(self, z: torch.Tensor, phase: torch.Tensor | None = None) -> torch.Tensor:
        """(B, *oshape) residual ``A x(z) - y`` in the units of ``y``."""
        return self._forward(self.to_physical(z, phase)) - self.y

    def residual_norm(self, z: torch.Tensor, phase: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) data-consistency residual ``||A x(z) - y||_2`` (differentiable in ``z``)."""
        r = self.residual(z, phase)
        return torch.sqrt(inner(r, r, batched=True))

    @functools.cached_property
    def _adjoint_y(self) -> torch.Tensor:
        """``A^H y`` of the measured data, computed once: every proximal step of a run needs
        it (an MR adjoint costs about one SENSE normal operator, 1 of the 11 applications of
        a 10-iteration step and 1 of 3 of a 2-iteration one)."""
        return self._adjoint(self.y)

    def _solve(self, x0: torch.Tensor, gamma: torch.Tensor, y: torch.Tensor,
               iters: int, tol: float) -> torch.Tensor:
        g = _bview(gamma.to(device=x0.device, dtype=x0.real.dtype), x0)
        aty = self._adjoint_y if y is self.y else self._adjoint(y)
        rhs = aty + g * x0  # y (*oshape) broadcasts over the batch

        def apply(v: torch.Tensor) -> torch.Tensor:
            return self._normal(v) + g * v

        return conjugate_gradient(apply, rhs, x0, max_iter=iters, tol=tol, batched=True).x

    def _finish(self, x: torch.Tensor, phase: torch.Tensor | None, update_phase: bool,
                clean: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model-space state of the solution ``x`` (:meth:`restrict` ed when it is a ``clean``
        estimate) and the phase to go on with: the phase of ``x`` itself after a hard
        projection (``update_phase``), else the given one."""
        if self.complex_image and update_phase:
            phase = self._unit(x, phase)
        z = self.to_model(x, phase)
        return (self.restrict(z) if clean else z), phase

    def prox(self, z0: torch.Tensor, variance: torch.Tensor, phase: torch.Tensor | None = None,
             iters: int = 10, tol: float = 1e-6) -> torch.Tensor:
        """The proximal data-consistency step around a denoised estimate (module docstring).

        Args:
            z0: (B, *S) denoised estimate in model space.
            variance: (B,) variance ``v`` of the prior around ``z0``, in model-space units.
            phase: the current phase (``complex_image`` only); the step keeps it.
            iters: CG iterations.
        Returns:
            (B, *S) model-space solution (for ``complex_image``, its component along the phase).
        """
        gamma = self.noise_std**2 / (self.scale**2 * variance)
        x = self._solve(self.to_physical(z0, phase), gamma, self.y, iters, tol)
        return self._finish(x, phase, update_phase=False)[0]

    def project(self, z: torch.Tensor, phase: torch.Tensor | None = None, iters: int = 50,
                tol: float = 1e-10, y: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hard data consistency: the orthogonal projection of x(z) onto ``{x : A x = y}``.

        CG on ``A^H A x = A^H y`` from x(z). For an operator with orthonormal rows
        (``A A^H = I``, e.g. a masked orthonormal FFT) a single step is exact and equals the
        k-space replacement ``F^-1(M y + (1 - M) F x)``; use :meth:`replace` for that.

        Returns:
            (model-space projection, the phase of the projected image): the phase is set free.
        """
        data = self.y if y is None else y
        x = self._solve(self.to_physical(z, phase), torch.zeros(z.shape[0], device=z.device),
                        data, iters, tol)
        return self._finish(x, phase, update_phase=True)

    def replace(self, z: torch.Tensor, phase: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Exact projection ``x + A^H (y - A x)`` for operators with ``A A^H = I`` (one step).

        For single-coil Cartesian MRI, ``A = M F`` with an orthonormal FFT, this is the k-space
        replacement ``F^-1(M y + (1 - M) F x)`` of score-MRI (Chung & Ye 2022); the result
        satisfies ``M (A x - y) = 0`` to rounding error. Returns (state, updated phase).
        """
        data = self.y if y is None else y
        x = self.to_physical(z, phase)
        x = x + self._adjoint(data - self._forward(x))
        return self._finish(x, phase, update_phase=True)

    def noised_projection(self, z: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator,
                          phase: torch.Tensor | None = None, lam: float = 1.0, iters: int = 20
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Song et al. (ICLR 2022) consistency for a *noisy* state ``z_t``.

        The measurement is noised to the state's level, ``y_t = y + A(scale sigma eps)``, and
        ``z_t`` moves a fraction ``lam`` towards ``argmin ||A x - y_t||^2 / (2 sigma_y^2) +
        ||x - x_t||^2 / (2 scale^2 sigma^2)`` (the hard projection onto ``A x = y_t`` when the
        data are noiseless). At sigma = 0 noiseless data give the exact projection onto
        ``A x = y``; noisy data leave the clean sample unchanged.

        Args:
            z: (B, *S) noisy model-space state.
            sigma: (B,) its noise level.
            phase: the current phase (``complex_image`` only).
        Returns:
            (new state, phase): the phase is updated only from clean (sigma = 0) states.
        """
        if self.noise_std > 0 and bool(torch.any(sigma == 0)):
            # A clean sample of noisy data is not pulled onto y: its fit is the posterior's.
            return z, phase
        eps = torch.randn(z.shape, generator=generator, dtype=z.dtype,
                          device=generator.device).to(z.device)
        noise = self.scale * _bview(sigma, z) * eps
        if self.complex_image:
            noise = noise * self._phase(phase, z)
        y_t = self.y + self._forward(noise)
        gamma = (torch.zeros_like(sigma) if self.noise_std == 0
                 else self.noise_std**2 / (self.scale**2 * sigma**2))
        x = self._solve(self.to_physical(z, phase), gamma, y_t, iters, 1e-8)
        # The phase of a noisy state is mostly noise: update it only from clean (sigma = 0) ones.
        clean = bool(torch.all(sigma == 0))
        z_new, phase = self._finish(x, phase, update_phase=clean, clean=clean)
        return (z + lam * (z_new - z) if lam != 1.0 else z_new), phase


class ProximalDenoiser:
    """A conditional denoiser: the prior's ``x0_hat`` followed by :meth:`LinearProblem.prox`.

    ``D_y(x_t, sigma) = prox(D(x_t, sigma), v(sigma))``; for a Gaussian prior whose covariance
    matches ``v`` this is exactly ``E[x0 | x_t, y]``, so any unconditional sampler run with it
    samples the posterior. ``phase`` is the MR phase estimate the proximal steps keep (None for
    real images).

    CG iterations: ``cg_iters`` per step, or ``cg_iters_high`` at the noisy steps (sigma above
    ``cg_sigma``, model units; the DDS sampler passes :func:`noisy_steps_above` of its schedule,
    so that these are the steps whose estimate is re-noised far above its own detail at the
    next step), where fewer iterations cost nothing measurable (MR, CPU:
    benchmarks/RESULTS_coil_compression.md). The CG starts from the denoised estimate itself:
    that start *is* the regularisation when the data term dominates (early-stopped CG on
    ``A^H A x = A^H y``, DDS's Krylov regularisation), so a warm start from the previous step's
    correction, which carries the iterations over from step to step, fits the noise (measured:
    -1.4 dB at R = 8, -2.9 dB at R = 4 with 5 iterations).
    """

    def __init__(self, denoiser: Denoiser, problem: LinearProblem,
                 variance: Callable[[torch.Tensor], torch.Tensor], cg_iters: int = 5,
                 tol: float = 1e-6, phase: torch.Tensor | None = None,
                 cg_iters_high: int | None = None, cg_sigma: float = 5.0) -> None:
        self.denoiser, self.problem, self.variance = denoiser, problem, variance
        self.cg_iters, self.tol, self.phase = cg_iters, tol, phase
        self.cg_iters_high, self.cg_sigma = cg_iters_high, cg_sigma

    def iterations(self, sigma: torch.Tensor) -> int:
        """CG iterations of the step at noise level ``sigma`` (B,): ``cg_iters_high`` above
        ``cg_sigma`` (when set), else ``cg_iters``."""
        if self.cg_iters_high is not None and float(sigma.max()) > self.cg_sigma:
            return self.cg_iters_high
        return self.cg_iters

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x0 = self.denoiser(x, sigma)
        return self.problem.prox(x0, self.variance(sigma), self.phase, self.iterations(sigma),
                                 self.tol)
