"""Voxels that CT data show to be empty: space carving from rays with no attenuation.

Attenuation is never negative, so a measured ray whose line integral ``p`` is (within noise)
zero crosses no attenuating voxel: every voxel on it is air. The union of such rays carves
the air around the object out of the grid (the object's visual hull, as in shape from
silhouettes); what remains holds the object. :func:`empty_voxels` computes it with one
backprojection of the indicator of those rays::

    empty = A^T [p < threshold] > 0,   then the object (the rest) dilated by ``margin`` voxels

with the threshold 3 mm of water (at most two voxels of it) plus 4 noise std of an air ray.

The dilation gives back the voxels that a ray passing just outside the object reaches through
the projector's interpolation (one voxel) and keeps a safety band around the skin.

Used by the diffusion sampler (:mod:`medrecon.sampling.api`): a prior trained on volumes the
head fills has never seen a patch of pure air and fills one with tissue-like mass (the default
prior: +0.2 model units, ~600 HU, at sigma 2; +0.07 at sigma 0.5), which 60 views do not
remove (benchmarks/RESULTS_ct.md, "Wide field of view"). The sampler puts air there instead of
the network's guess; the data term still acts everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medrecon.operators.base import LinearOperator

__all__ = ["EMPTY_MARGIN", "EMPTY_NOISE_K", "EMPTY_WATER_MM", "EMPTY_WATER_VOXELS",
           "empty_threshold", "empty_voxels"]

#: A ray attenuated less than this many mm of water (and less than :data:`EMPTY_WATER_VOXELS`
#: voxels of it; plus the noise margin) counts as crossing only air. Rays that touch a head
#: cross centimetres of tissue (a line through a voxel 1 mm under the skin of a head of 90 mm
#: radius: ~27 mm), so the margin to the object is wide; 3 mm keeps thin low-density sheets
#: (foam, blankets, the positive part of HU noise that a synthetic phantom carries in its air:
#: line integrals up to ~0.05 across 512 mm) out of the object without reaching an ear's
#: 4-5 mm. The carving only replaces the prior's estimate there; the data still decide the
#: values.
EMPTY_WATER_MM = 3.0
#: ... but at most this many of the finest voxels of water, so that on fine grids an object a
#: few voxels thin (a 1.5 mm insert at 0.25 mm) is not taken for air.
EMPTY_WATER_VOXELS = 2.0
#: Noise margin, in standard deviations of an air ray's line integral.
EMPTY_NOISE_K = 4.0
#: Voxels by which the carved object is dilated back (interpolation reach and a safety band).
EMPTY_MARGIN = 2


def empty_threshold(mu_water_per_mm: float, air_noise_std: float,
                    spacing_mm: Sequence[float]) -> float:
    """Line integral below which a ray crosses only air: ``min(`` :data:`EMPTY_WATER_MM`,
    :data:`EMPTY_WATER_VOXELS` ``x`` the finest of ``spacing_mm)`` of water (``mu_water_per_mm``
    in 1/mm) plus :data:`EMPTY_NOISE_K` times the noise std of a ray through air
    (dimensionless line-integral units)."""
    water_mm = min(EMPTY_WATER_MM, EMPTY_WATER_VOXELS * min(float(v) for v in spacing_mm))
    return water_mm * float(mu_water_per_mm) + EMPTY_NOISE_K * float(air_noise_std)


def empty_voxels(op: LinearOperator, p: torch.Tensor, threshold: float,
                 valid: torch.Tensor | None = None,
                 margin: int = EMPTY_MARGIN) -> torch.Tensor | None:
    """Boolean ``op.ishape`` mask of the voxels that a measured ray with ``p < threshold``
    crosses, less a band of ``margin`` voxels around the rest; None when there are none.

    Args:
        op: the (unweighted) projector, image (I, J, K) -> sinogram.
        p: measured line integrals, ``op.oshape`` (unweighted).
        threshold: see :func:`empty_threshold`.
        valid: optional boolean ``op.oshape`` mask of the rays that were measured (pixel
            weights > 0); other rays carve nothing.
        margin: dilation of the object (the voxels not carved), in voxels (Chebyshev).
    """
    air = p < threshold
    if valid is not None:
        air = air & valid
    if not bool(air.any()):
        return None
    with torch.no_grad():
        reach = op.adjoint(air.to(p.dtype))
    carved = reach > 1e-6 * float(reach.abs().max())
    if margin > 0:
        obj = (~carved).to(torch.float32)[None, None]
        obj = F.max_pool3d(obj, kernel_size=2 * margin + 1, stride=1, padding=margin)
        carved = obj[0, 0] == 0
    return carved if bool(carved.any()) else None
