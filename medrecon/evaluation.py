"""Evaluating a reconstruction :class:`~medrecon.io.Volume` against a reference Volume.

:func:`compare_volumes` does what a careful reader of real scans does before computing any
metric (:mod:`medrecon.metrics`):

* **One grid.** The two volumes must be the same voxels: the same shape and affine, or the same
  voxel centres with the axes in another order or direction, which a NIfTI -> DICOM -> NIfTI
  round trip can produce (slices sorted along the normal turn LAS into LAI). Such a volume is
  reordered onto the reference's grid (:meth:`~medrecon.io.Volume.reoriented_like`); any
  other difference is refused, never resampled.
* **No padding.** CT scanners store the pixels outside the reconstruction circle as padding,
  -2048 or -3024 HU or the series' PixelPaddingValue. They are not anatomy: with them in, an
  FBP of a real head reads about 14 dB, and the data range spans 4000 HU more than the image.
  By default, reference voxels of a CT (modality CT or units HU) at or below
  :data:`PADDING_BELOW_HU` (no tissue or air lies there; air is -1000) or within the
  PixelPaddingValue range are left out of the region and out of the data range.
* **A stated region.** The whole volume, a mask volume on the reference grid, or ``"auto"``
  (:func:`foreground_mask`), each without padding; the result says which.

Like :mod:`medrecon.report`, this module sits above :mod:`medrecon.io` (it reads Volumes) and
:mod:`medrecon.metrics` (array metrics, which know nothing of files).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from medrecon.errors import GeometryError, InputError
from medrecon.io.volume import Volume
from medrecon.metrics import EvaluationResult, data_range_of, evaluate_volumes, std_map_check

__all__ = [
    "CT_AIR_HU",
    "PADDING_BELOW_HU",
    "compare_volumes",
    "foreground_mask",
    "on_reference_grid",
    "padding_mask",
]

#: CT voxels at or below this are padding outside the scan circle (-2048, -3024 HU), not air.
PADDING_BELOW_HU = -1500.0

#: CT voxels above this level are never background ("not air": half-way between air at
#: -1000 HU and water at 0 HU, the usual body-outline level).
CT_AIR_HU = -500.0

#: A volume whose darkest voxels (0.5th percentile) exceed this fraction of its bright end
#: (99.5th percentile) has no dark background: every voxel is foreground.
NO_BACKGROUND_RATIO = 0.1


def _is_ct(modality: str | None) -> bool:
    return modality is not None and modality.strip().upper() in ("CT", "HU")


def foreground_mask(ref: Any, closing_radius: int = 2, median_size: int = 3,
                    modality: str | None = None) -> np.ndarray:
    """A boolean foreground (object) mask of a reference volume, for ``--mask auto``.

    Steps: (0) a ``median_size``-voxel cubic median filter, which removes background noise
    without moving edges; (1) a threshold on the filtered finite voxels: Otsu's
    (scikit-image), lowered to ``p0.5 + 0.1 (p99.5 - p0.5)`` (10% of the robust intensity
    range, like FSL BET's initial threshold) when that is lower; voxels above it are kept. Otsu
    alone can split a small bright class (skull, bone) from everything else, e.g. in the
    Shepp-Logan phantom whose soft tissue lies below Otsu's threshold, while the robust-range
    threshold still separates air or background (near p0.5) from tissue. Two rules keep a
    crop that holds no air or background (a cube inside the head) from losing its tissue:

    * CT (``modality`` "CT", or "HU" for the units): the threshold is at most
      :data:`CT_AIR_HU` (-500 HU), so every voxel that is not air is foreground, and a crop
      without air is foreground everywhere. Heads with air keep the threshold above, which
      lies near -700 HU there.
    * Any other modality (MR magnitude, unknown): when ``p0.5 > 0.1 p99.5`` with ``p0.5 > 0``
      (the darkest voxels are tissue, not the near-zero noise floor of a magnitude image),
      there is no background and every voxel is foreground.

    CT padding (values at or below :data:`PADDING_BELOW_HU`) counts as air (-1000 HU).
    (2) morphological closing with a ball of ``closing_radius`` voxels, on an edge-padded
    volume so that objects touching the border are not eroded, to bridge thin dark gaps;
    (3) hole filling in 3D and then slice by slice along each axis, so that dark interior
    regions (ventricles, lungs, air in the bowel) that open onto the volume's border count as
    foreground; (4) keeping the largest 26-connected component, which drops noise specks and
    the patient table.

    Args:
        ref: the reference (I, J, K), numpy array or CPU tensor, or a
            :class:`~medrecon.io.Volume` (whose modality and units are then used).
        modality: "CT" (values in HU), "MR" or None (unknown); overrides a Volume's.

    Returns:
        bool array of the input shape.

    Raises:
        InputError: the reference is constant (Otsu has nothing to separate).
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.morphology import ball

    if hasattr(ref, "affine") and hasattr(ref, "data"):  # a Volume
        if modality is None:
            units = str(getattr(ref, "units", ""))
            modality = "CT" if units.upper() == "HU" else getattr(ref, "modality", None)
        ref = ref.data
    r = np.asarray(ref.detach().cpu().numpy() if hasattr(ref, "detach") else ref,
                   dtype=np.float64)
    if _is_ct(modality):
        # Padding outside the scan circle (-2048, -3024 HU) is air to the eye; left in, it
        # would drag the robust threshold below air.
        r = np.where(r <= PADDING_BELOW_HU, -1000.0, r)
    finite = np.isfinite(r)
    if r.ndim != 3:
        raise InputError(f"foreground_mask needs a 3D volume, got shape {r.shape}.")
    values = r[finite]
    if values.size == 0 or values.max() <= values.min():
        raise InputError("The reference is constant, so --mask auto finds no foreground.")
    if median_size > 1:
        # Edge-preserving denoising first: background noise would otherwise cross the threshold
        # in speckles that the closing then merges into the mask.
        r = ndimage.median_filter(np.where(finite, r, values.min()), size=median_size,
                                  mode="nearest")
        values = r[finite]
    lo, hi = np.percentile(values, [0.5, 99.5])
    t = min(float(threshold_otsu(values)), float(lo + 0.1 * (hi - lo)))
    if _is_ct(modality):
        t = min(t, CT_AIR_HU)
    elif 0 < lo and lo > NO_BACKGROUND_RATIO * hi:
        t = -np.inf  # no background: the darkest voxels are tissue
    fg = finite & (r > t)
    if closing_radius > 0:
        p = closing_radius
        padded = np.pad(fg, p, mode="edge")
        padded = ndimage.binary_closing(padded, structure=ball(p).astype(bool))
        fg = padded[p:-p, p:-p, p:-p]
    fg = ndimage.binary_fill_holes(fg)
    for axis in range(3):
        fg = np.stack(
            [ndimage.binary_fill_holes(s) for s in np.moveaxis(fg, axis, 0)], axis=0
        )
        fg = np.moveaxis(fg, 0, axis)
    labels, n = ndimage.label(fg, structure=np.ones((3, 3, 3), dtype=bool))
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        fg = labels == int(np.argmax(sizes))
    return np.ascontiguousarray(fg, dtype=bool)


# --------------------------------------------------------------------------------------------
# Padding and grids
# --------------------------------------------------------------------------------------------


def _pixel_padding_range(header: Any) -> tuple[float, float] | None:
    """The rescaled PixelPaddingValue (to PixelPaddingRangeLimit) of a DICOM header, or None."""
    if header is None:
        return None
    try:
        value = header.get("PixelPaddingValue")
        if value is None or value == "":
            return None
        limit = header.get("PixelPaddingRangeLimit")
        slope = float(header.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
        ends = [float(value)] + ([] if limit in (None, "") else [float(limit)])
    except (TypeError, ValueError, AttributeError):
        return None  # an unusable tag: fall back on the HU threshold
    scaled = [slope * e + intercept for e in ends]
    return min(scaled), max(scaled)


def padding_mask(volume: Volume) -> np.ndarray | None:
    """Voxels of a CT ``volume`` that are padding outside the scan circle, or None if none.

    Padding: values at or below :data:`PADDING_BELOW_HU`, and values within the rescaled
    PixelPaddingValue (to PixelPaddingRangeLimit) of the volume's DICOM header. Volumes that are
    not CT (modality CT or units HU) have no padding: MR backgrounds are signal-free, not absent.

    Returns:
        bool array (I, J, K), True for padding; None when there is none.
    """
    if volume.modality.upper() != "CT" and volume.units.upper() != "HU":
        return None
    data = volume.data
    pad = data <= PADDING_BELOW_HU
    declared = _pixel_padding_range(volume.dicom_header)
    if declared is not None:
        lo, hi = declared
        pad |= (data >= lo - 0.5) & (data <= hi + 0.5)
    return pad if pad.any() else None


def on_reference_grid(volume: Volume, reference: Volume, what: str = "reconstruction",
                      atol_mm: float = 1e-3) -> Volume:
    """``volume`` on the reference's voxel grid, reordered if its axes differ in order or
    direction only; ``meta["reoriented"]`` then says from which orientation code.

    Raises:
        GeometryError: the grids are not the same voxels (``what`` names the volume).
    """
    if volume.shape == reference.shape and volume.same_geometry(reference, atol_mm=atol_mm):
        return volume
    moved = volume.reoriented_like(reference, atol_mm=atol_mm)
    if moved is not None:
        moved.meta["reoriented"] = f"{volume.orientation} -> {reference.orientation}"
        return moved
    if sorted(volume.shape) != sorted(reference.shape):
        raise GeometryError(
            f"The {what} has shape {volume.shape} but the reference has shape "
            f"{reference.shape}; resample one onto the other's grid first."
        )
    diff = (float(np.max(np.abs(volume.affine - reference.affine)))
            if volume.shape == reference.shape else None)
    how = f"affines differ by up to {diff:.4g} mm" if diff is not None else (
        f"shapes {volume.shape} and {reference.shape}, and the axes cannot be matched")
    raise GeometryError(
        f"The {what} and the reference lie on different grids ({how}); resample one onto the "
        f"other's grid first."
    )


def compare_volumes(
    recon: Volume,
    reference: Volume,
    mask: Volume | np.ndarray | str | None = None,
    data_range: float | None = None,
    slice_axis: int = 2,
    atol_mm: float = 1e-3,
    exclude_padding: bool = True,
    std: Volume | None = None,
) -> tuple[EvaluationResult, np.ndarray | None]:
    """PSNR, SSIM, NMSE and HFEN of ``recon`` against ``reference`` (see the module docstring).

    Args:
        recon, reference: volumes on the same voxel grid, possibly with the axes of ``recon``
            (and of a mask volume) in another order or direction.
        mask: None (whole volume), ``"auto"`` (:func:`foreground_mask` of the reference), a
            boolean array on the reference grid, or a Volume whose nonzero voxels form the region.
        data_range: L for PSNR and SSIM; default max - min of the reference outside padding.
        slice_axis: as in :func:`medrecon.metrics.evaluate_volumes` (reference voxel axes).
        exclude_padding: leave CT padding (:func:`padding_mask`) out of region and data range.
        std: the reconstruction's standard-deviation map (on its grid or the reference's):
            its coverage of the error over the same region goes into ``result.std_map``
            (:func:`~medrecon.metrics.std_map_check`).

    Returns:
        The result (``inputs["reoriented"]`` tells when ``recon`` was reordered) and the boolean
        region used (None for the whole volume).

    Raises:
        GeometryError: the grids differ. InputError: bad or empty mask, constant reference.
    """
    moved = on_reference_grid(recon, reference, "reconstruction", atol_mm)
    kind = ""
    mask_arr: np.ndarray | None = None
    if isinstance(mask, str):
        if mask != "auto":
            raise InputError(f"mask must be 'auto', an array or a volume, got {mask!r}.")
        mask_arr, kind = foreground_mask(reference), "auto foreground mask"
    elif mask is not None:
        if isinstance(mask, Volume):
            mask_arr = on_reference_grid(mask, reference, "mask", atol_mm).data != 0
        else:
            mask_arr = np.asarray(mask).astype(bool)
        if mask_arr.shape != reference.shape:
            raise GeometryError(
                f"The mask has shape {mask_arr.shape} but the reference has shape "
                f"{reference.shape}."
            )
        if not mask_arr.any():
            raise InputError("The mask is empty: it selects no voxel to evaluate.")
        kind = "mask"
    pad = padding_mask(reference) if exclude_padding else None
    source = None
    if pad is not None:
        if pad.all():
            raise InputError("The reference holds only CT padding (values at or below "
                             f"{PADDING_BELOW_HU:g} HU); there is nothing to evaluate.")
        mask_arr = ~pad if mask_arr is None else mask_arr & ~pad
        if not mask_arr.any():
            raise InputError("The mask selects only CT padding; there is nothing to evaluate.")
        if data_range is None:
            data_range = data_range_of(reference.data[~pad])
            source = "reference max - min outside padding"
    region: str | None = None
    if mask_arr is not None:
        n = int(mask_arr.sum())
        what = (kind or "whole volume") + (" outside CT padding" if pad is not None else "")
        left_out = f"; {int(pad.sum())} padding voxels left out" if pad is not None else ""
        region = (f"{what} ({n} of {mask_arr.size} voxels, {100.0 * n / mask_arr.size:.1f}%"
                  f"{left_out})")
    result = evaluate_volumes(moved.data, reference.data, mask=mask_arr, data_range=data_range,
                              slice_axis=slice_axis, region=region, data_range_source=source)
    if "reoriented" in moved.meta:
        result.inputs["reoriented"] = str(moved.meta["reoriented"])
    if std is not None:
        sd = on_reference_grid(std, reference, "std map", atol_mm).data
        result = dataclasses.replace(result, std_map=std_map_check(
            moved.data, sd, reference.data, mask_arr, slice_axis))
    return result, mask_arr
