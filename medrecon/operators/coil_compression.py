"""Coil compression: multi-coil k-space and coil maps mapped onto fewer *virtual* coils.

Huang et al. (MRI 2008) and Buehrer et al. (MRM 2007): the coil signals of an array are highly
correlated, so an orthonormal mix of the C physical coils, chosen by an SVD over the coil axis,
concentrates the signal in the first few virtual coils. Keeping the first V of them shrinks the
SENSE operator (and every CG iteration of data consistency) by a factor C / V.

The maths. With X the (C, N) matrix of measured samples (every sampled k-space location, the
coil axis first), the coil Gram matrix is ``G = X X^H = U diag(lambda) U^H``. The compression
matrix is ``P = U[:, :V]^H`` (V, C) with orthonormal rows (``P P^H = I_V``), applied along the
coil axis of the data, ``y_v = P y``, and of the maps, ``S_v = P S``. Because the mask and the
FFT act on every coil alike, ``P (M F S x) = M F (P S) x``: the compressed problem is again a
SENSE problem, with the maps ``S_v`` (:class:`~medrecon.operators.mri.SenseOperator` as it is),
and its data term ``||P (A x - y)||^2`` is the full one's projection onto the V dominant coil
directions. V = C (no coil dropped) is a unitary change of coil basis and reproduces the
uncompressed problem exactly.

Noise. For white noise of std ``sigma`` per real component (covariance ``2 sigma^2 I`` over the
coils) ``P n`` has covariance ``2 sigma^2 P P^H = 2 sigma^2 I_V``: it stays white with the same
sigma, so the noise level and every weight that depends on it carry over unchanged. The noise
adds ``2 N sigma^2`` to every eigenvalue of G in expectation; the rule below counts signal
energy ``lambda_i - 2 N sigma^2`` (clipped at 0), so noisy data do not inflate V. Correlated
noise (covariance Psi across coils) stays correlated after compression, ``P Psi P^H``; it must be
whitened first (``L^-1`` applied to data and maps, ``Psi = L L^H``, from a noise scan) for the
energy ordering to mean signal-to-noise and for the package's white-noise data term to hold. The
package's measurement files carry a scalar noise sigma (white noise); its per-part std
(:attr:`~medrecon.io.measurement.Measurement.noise_std`, the simulator's RMS complex sigma /
sqrt 2) is what :func:`~medrecon.problem.measurement_problem` passes here. On simulated heads
the floor hardly matters (it is spread over all coils while the signal energy sits in the
calibration centre): with it, without it or at twice it, the same V (64^3 and 96^3, 8 coils,
R = 4 and 8, SNR 10-100, keep 0.9-0.999).

The number of virtual coils. V is the fewest coils whose signal energy reaches a fraction
``keep`` of the total (:func:`virtual_coil_count`), chosen from the measurement itself. The
samples used are all measured ones; their energy is dominated by the fully sampled centre, so
this is the calibration region's spectrum (measured on a 64^3 synthetic head, 8 birdcage coils:
the fractions of the calibration box and of all samples agree within 0.002) without having to
locate a box, and it works for masks without one. Why energy: the discarded virtual coils hold
at most ``1 - keep`` of the signal, the standard criterion of Huang et al. It is not a quality
guarantee, since what a coil is worth for unfolding depends on the acceleration: with 8 coils
at R = 8 every virtual coil dropped costs 0.3 dB or more (benchmarks/RESULTS_coil_compression.md),
which is why the samplers leave compression off unless asked (``coil_energy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medrecon.errors import InputError

__all__ = ["CoilCompression", "apply_compression", "coil_energy_spectrum", "compress_coils",
           "virtual_coil_count"]


@dataclass(frozen=True)
class CoilCompression:
    """Compressed k-space and coil maps.

    Attributes:
        kspace: (V, I, J, K) virtual-coil k-space (zeros off the mask, as the input).
        maps: (V, I, J, K) virtual-coil sensitivities ``P S``.
        matrix: (V, C) compression matrix P with orthonormal rows.
        energy: (C,) signal-energy fraction of every virtual coil of the full basis, in
            decreasing order (sums to 1; noise floor removed).
    """

    kspace: torch.Tensor
    maps: torch.Tensor
    matrix: torch.Tensor
    energy: torch.Tensor

    @property
    def n_virtual(self) -> int:
        """V, the number of virtual coils kept."""
        return int(self.matrix.shape[0])

    @property
    def kept(self) -> float:
        """Signal-energy fraction of the V coils kept."""
        return float(self.energy[: self.n_virtual].sum())


def coil_energy_spectrum(kspace: torch.Tensor, mask: torch.Tensor | np.ndarray,
                         noise_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Virtual-coil basis and signal energy of multi-coil ``kspace`` (module docstring).

    Args:
        kspace: (C, I, J, K) complex k-space.
        mask: sampling mask broadcastable to (I, J, K); the samples where it is non-zero are
            used.
        noise_std: noise std per real component, units of ``kspace``; its expected energy
            ``2 N sigma^2`` is taken off every eigenvalue.
    Returns:
        (U, fractions): (C, C) complex128 unitary whose columns are the virtual coils in
        decreasing order of energy, and the (C,) float64 signal-energy fractions (sum 1; all
        equal when nothing is above the noise floor).
    """
    c = int(kspace.shape[0])
    where = torch.as_tensor(mask, device=kspace.device).expand(kspace.shape[1:]) != 0
    x = kspace[:, where]  # (C, N)
    n = int(x.shape[1])
    if n == 0:
        raise InputError("The sampling mask selects no k-space samples to compress coils on.")
    x = x.to(torch.complex128)
    gram = x @ x.conj().T
    lam, u = torch.linalg.eigh(gram)  # ascending
    lam, u = lam.flip(0), u.flip(1)
    signal = (lam - 2.0 * n * float(noise_std) ** 2).clamp_min(0.0)
    total = float(signal.sum())
    frac = signal / total if total > 0 else torch.full_like(signal, 1.0 / c)
    return u, frac


def virtual_coil_count(fractions: torch.Tensor | Sequence[float], keep: float) -> int:
    """The fewest virtual coils whose energy fractions (decreasing) sum to at least ``keep``.

    ``keep`` = 1 keeps every coil. A relative tolerance of 1e-9 absorbs round-off, so that a
    spectrum reaching ``keep`` exactly counts as reaching it.
    """
    if not 0.0 < keep <= 1.0:
        raise InputError(f"The coil energy to keep must lie in (0, 1], got {keep:g}.")
    f = torch.as_tensor(fractions, dtype=torch.float64)
    if keep >= 1.0:
        return int(f.numel())
    cum = torch.cumsum(f, 0)
    reached = torch.nonzero(cum >= keep - 1e-9)
    return int(reached[0, 0]) + 1 if reached.numel() else int(f.numel())


def apply_compression(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``P x`` along the coil axis: (..., C, I, J, K) -> (..., V, I, J, K) for ``matrix`` P (V, C)."""
    p = matrix.to(device=x.device, dtype=x.dtype if x.is_complex() else torch.complex64)
    return torch.einsum("vc,...cijk->...vijk", p, x)


def compress_coils(kspace: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor | np.ndarray,
                   keep: float = 0.99, noise_std: float = 0.0,
                   n_virtual: int | None = None) -> CoilCompression:
    """Compress ``kspace`` and ``maps`` onto the virtual coils that hold ``keep`` of the signal.

    Args:
        kspace: (C, I, J, K) complex k-space, zeros off the mask.
        maps: (C, I, J, K) complex coil sensitivities.
        mask: sampling mask broadcastable to (I, J, K).
        keep: signal-energy fraction to keep (:func:`virtual_coil_count`); ignored when
            ``n_virtual`` is given.
        noise_std: noise std per real component of ``kspace`` (its floor is not counted as
            signal).
        n_virtual: keep exactly this many virtual coils instead.
    Returns:
        :class:`CoilCompression` in the dtypes and on the device of the inputs.
    """
    c = int(kspace.shape[0])
    if maps.shape != kspace.shape:
        raise InputError(f"Coil maps of shape {tuple(maps.shape)} do not match the k-space "
                         f"{tuple(kspace.shape)}.")
    u, frac = coil_energy_spectrum(kspace, mask, noise_std)
    v = virtual_coil_count(frac, keep) if n_virtual is None else int(n_virtual)
    if not 1 <= v <= c:
        raise InputError(f"The number of virtual coils must lie in 1..{c}, got {v}.")
    matrix = u[:, :v].conj().T.contiguous()  # (V, C), orthonormal rows
    return CoilCompression(kspace=apply_compression(kspace, matrix),
                           maps=apply_compression(maps, matrix),
                           matrix=matrix.to(kspace.dtype), energy=frac)
