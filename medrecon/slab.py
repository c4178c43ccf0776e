"""Tune on a slab, reconstruct the whole: the exact sub-problem of a separable measurement.

Where the acquisition is separable along one image axis, a contiguous slab of that axis is
an exact sub-problem of the measurement, not an approximation:

- 3D Cartesian MR (mask ``(1, J, K)``: the readout, axis 0, fully sampled at every sampled
  phase-encode position): the inverse centred orthonormal FFT along axis 0 turns the k-space
  into one 2D k-space per image row, ``M F_jk (S_c x)[i]``; rows ``[i0, i1)`` kept and
  transformed back with ``n = i1 - i0`` points give the k-space of the slab under the slab's
  own SENSE operator (the coil maps' same rows, the same mask).
- 2D multi-slice MR (``fft_dims`` (0, 1), mask ``(1, J, 1)``): a range of slices along axis 2,
  nothing to transform.
- Parallel- and fan-beam CT (:mod:`medrecon.operators.ct_geometry`): detector row ``r`` is
  image slice ``k = r`` (one row per slice, the row pitch the slice spacing, no row offset),
  and every slice sees the same in-plane rays, so the operator is block diagonal over the
  slices with identical blocks. Slices ``[k0, k1)`` are measured by the sinogram's rows
  ``[k0, k1)`` alone (and so are a per-pixel weight mask's; a per-view mask stays), under
  the same geometry with ``k1 - k0`` detector rows. Cone beam is not separable (a ray
  crosses slices): no slab.

MR: both transforms are unitary per sampled phase-encode column, so white noise stays white
with the same sigma per sample; CT: the slab's rays are a subset of the measured rays, each
with its own Poisson noise from the same I0. The file's noise model, SURE and the held-out
statistics are those of the slab too. Regularisation weights are absolute (image units; the
data term sums over samples and the penalty over voxels, both in proportion to the slab's
share; CT TV's data term is normalised by ``||A||^2``, which the slab shares with the whole
volume, block diagonal with identical blocks), so a weight chosen on the slab carries over to
the whole volume unchanged, and so does the diffusion's data-consistency weight (prior
against likelihood, per sample). The slab is not the rows of the whole volume's
*regularised* solution (the penalty couples rows across the slab's ends): it is a smaller
problem of the same kind, which is all the self-tuning needs.

:func:`measurement_slab` picks the slab from the measurement alone (no reference): the
:data:`SLAB_ROWS` contiguous rows holding the most signal, so it sits on the anatomy, not in
air: MR the most energy of the coil-combined zero-filled image (Parseval: the energy of the
hybrid k-space rows, one 1D FFT), CT the largest summed line integrals of the slices'
detector rows (the most attenuating matter). It applies where the axis has more than
:func:`min_rows` (1.5 x the slab: 96 rows for 64), where it cuts the tuning's cost by a third
or more; on smaller volumes the slab would hold most of the volume anyway and every path runs
as before. 64 rows is the diffusion prior's patch depth, so the prior sees whole patches
along that axis.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medrecon.operators.functional.fft import fftc, ifftc

if TYPE_CHECKING:
    from medrecon.io.measurement import Measurement

__all__ = ["SLAB_ROWS", "Slab", "measurement_slab", "min_rows", "slab_axis"]

#: Rows of the tuning slab by default: the diffusion prior's patch depth.
SLAB_ROWS = 64


def min_rows(rows: int) -> int:
    """A slab of ``rows`` is used only where the axis has more than this (1.5 x ``rows``): the
    tuning then runs on at most two thirds of the volume."""
    return (3 * int(rows)) // 2


@dataclass(frozen=True)
class Slab:
    """Rows ``[start, stop)`` of image axis ``axis`` (0, 1 or 2) of a volume ``length`` long."""

    axis: int
    start: int
    stop: int
    length: int

    @property
    def text(self) -> str:
        """In words, e.g. "rows 96-159 of 256" (inclusive, as a viewer counts)."""
        what = "slices" if self.axis == 2 else "rows"
        return f"{what} {self.start}-{self.stop - 1} of {self.length}"

    def take(self, a: Any) -> Any:
        """``a``'s slab: an array or tensor whose last three axes are the image's (I, J, K)."""
        index = [slice(None)] * a.ndim
        index[a.ndim - 3 + self.axis] = slice(self.start, self.stop)
        return a[tuple(index)]

    def as_dict(self) -> dict[str, Any]:
        return {"axis": self.axis, "start": self.start, "stop": self.stop,
                "length": self.length, "text": self.text}


def slab_axis(m: Measurement) -> int | None:
    """The image axis along which ``m`` separates into slabs, or None: MR whose mask has
    extent 1 along it, axis 0 (the readout) for 3D data, axis 2 (the slices) for 2D
    multi-slice data; parallel- and fan-beam CT whose detector rows are the slices
    (:func:`_ct_rows_are_slices`), axis 2."""
    if m.modality == "CT":
        return 2 if _ct_rows_are_slices(m) else None
    if m.modality != "MR" or m.mask is None:
        return None
    axis = 0 if tuple(m.fft_dims) == (0, 1, 2) else 2
    return axis if np.asarray(m.mask).shape[axis] == 1 else None


def _ct_rows_are_slices(m: Measurement) -> bool:
    """Whether detector row ``r`` of ``m``'s sinogram sees image slice ``k = r`` alone: a
    parallel- or fan-beam geometry (:class:`~medrecon.operators.ct_geometry.CTGeometry`) with
    one row per slice, row pitch equal to the slice spacing (the operator's ``spacing_mm``, else
    the reference affine's) and no row offset, so the row centres are the slice centres."""
    from medrecon.errors import GeometryError
    from medrecon.operators.ct_geometry import CTGeometry
    from medrecon.problem import affine_spacing, ct_geometry_keys

    operator = dict(m.operator or {})
    try:
        g = CTGeometry.from_dict(ct_geometry_keys(operator))
    except GeometryError:
        return False  # the problem's own build says what is wrong
    shape = tuple(int(n) for n in operator.get("image_shape", m.image_shape))
    spacing_k = float(operator["spacing_mm"][2] if "spacing_mm" in operator
                      else affine_spacing(m)[2])
    return (g.is_2d and shape == tuple(m.image_shape) and g.detector_rows == shape[2]
            and np.asarray(m.data).shape[1] == shape[2] and g.offset_rows_mm == 0.0
            and bool(np.isclose(g.pixel_rows_mm, spacing_k, rtol=1e-6, atol=0.0)))


def _first_max_window(per_row: np.ndarray | torch.Tensor, rows: int) -> int:
    """Start of the ``rows`` contiguous entries of largest sum (the first on ties)."""
    values = torch.as_tensor(per_row).double().cpu()
    window = torch.cumsum(torch.cat([values.new_zeros(1), values]), 0)
    return int(torch.argmax(window[rows:] - window[:-rows]))


def _slab_reference(m: Measurement, slab: Slab) -> Any:
    """``m``'s reference geometry cut to ``slab``: its shape, the affine's origin moved to the
    slab's first row."""
    shape = list(m.image_shape)
    shape[slab.axis] = slab.stop - slab.start
    affine = np.array(m.reference.affine, dtype=np.float64)
    affine[:3, 3] = affine[:3, 3] + slab.start * affine[:3, slab.axis]
    return dataclasses.replace(m.reference, affine=affine, shape=tuple(shape))


def measurement_slab(m: Measurement, device: torch.device | str = "cpu",
                     rows: int = SLAB_ROWS,
                     maps: np.ndarray | torch.Tensor | None = None
                     ) -> tuple[Measurement, Slab] | None:
    """The slab measurement of ``m`` (module docstring) and its rows, or None where none
    applies (``rows`` 0, not separable, or the axis not longer than :func:`min_rows`).

    MR: the slab is the contiguous run of ``rows`` rows of largest ``sum |x_c|^2`` over coils
    and the other two axes, with ``x_c = F^H y_c`` the zero-filled coil images (the first on
    ties). Its k-space is computed on ``device`` (complex64) and returned on the host; its
    coil maps are ``maps`` (the full volume's, ``(C, I, J, K)`` or ``(M, C, I, J, K)``: e.g.
    estimated from all the data) or else the file's, sliced. CT (:func:`_ct_slab`): the
    slices whose detector rows hold the largest summed line integrals. The reference geometry
    is the slab's (shape, and the affine's origin moved to the slab's first row);
    ``acquisition["slab"]`` records the rows."""
    axis = slab_axis(m)
    length = int(m.image_shape[axis]) if axis is not None else 0
    if rows <= 0 or axis is None or length <= min_rows(rows):
        return None
    if m.modality == "CT":
        return _ct_slab(m, rows)
    dim = axis - 3  # of (C, I, J, K)
    y = torch.from_numpy(np.asarray(m.data, np.complex64)).to(device)
    y = y * (torch.as_tensor(np.asarray(m.mask)).to(device) > 0)
    hybrid = ifftc(y, (dim,)) if axis in m.fft_dims else y
    del y
    energy = (hybrid.abs() ** 2).sum(dim=[d for d in range(4) if d != axis + 1])
    start = _first_max_window(energy, rows)
    slab = Slab(axis, start, start + rows, length)
    part = slab.take(hybrid)
    data = fftc(part, (dim,)) if axis in m.fft_dims else part
    del hybrid, part
    full_maps = m.coil_maps if maps is None else maps
    sub_maps = None
    if full_maps is not None:
        sub = slab.take(full_maps)
        sub_maps = (sub.detach().cpu().numpy() if isinstance(sub, torch.Tensor)
                    else np.ascontiguousarray(sub))
    reference = _slab_reference(m, slab)
    operator = dict(m.operator)
    if "image_shape" in operator:
        operator["image_shape"] = list(reference.shape)
    if "kspace_shape" in operator:
        operator["kspace_shape"] = [m.n_coils, *reference.shape]
    sub_m = dataclasses.replace(
        m, data=data.cpu().numpy(), coil_maps=sub_maps, reference=reference,
        operator=operator, acquisition={**(m.acquisition or {}), "slab": slab.as_dict()})
    return sub_m, slab


def _ct_slab(m: Measurement, rows: int) -> tuple[Measurement, Slab]:
    """The CT slab of ``rows`` slices (module docstring; :func:`slab_axis` checked that rows
    are slices): the sinogram's rows (views, rows, cols) and a per-pixel weight mask's, of
    largest summed line integral over the views the mask keeps and all columns; the geometry
    with that many detector rows. Computed on the host (one pass over the sinogram)."""
    data = np.asarray(m.data, np.float32)
    mask = None if m.mask is None else np.asarray(m.mask)
    seen = data
    if mask is not None:  # rays weighted 0 (or views left out) measure nothing
        keep = (mask > 0) if mask.shape == data.shape else (mask > 0)[:, None, None]
        seen = np.where(keep, data, np.float32(0.0))
    start = _first_max_window(seen.sum(axis=(0, 2), dtype=np.float64), rows)
    slab = Slab(2, start, start + rows, int(data.shape[1]))
    sub_data = np.ascontiguousarray(data[:, start:start + rows])
    if mask is not None and mask.shape == data.shape:
        mask = np.ascontiguousarray(mask[:, start:start + rows])
    reference = _slab_reference(m, slab)
    operator = dict(m.operator)
    if isinstance(operator.get("geometry"), dict):
        operator["geometry"] = {**operator["geometry"], "detector_rows": rows}
    else:
        operator["detector_rows"] = rows
    if "image_shape" in operator:
        operator["image_shape"] = list(reference.shape)
    sub_m = dataclasses.replace(
        m, data=sub_data, mask=mask, reference=reference, operator=operator,
        acquisition={**(m.acquisition or {}), "slab": slab.as_dict()})
    return sub_m, slab
