"""Image-quality metrics for 3D reconstructions: PSNR, SSIM, NMSE, HFEN, data-consistency residual.

Every metric compares a reconstruction ``x`` with a reference ``ref`` of the same shape (I, J, K),
over a *region* (the whole volume, or the voxels where a boolean ``mask`` is true), with an
explicit *data range* ``L`` where the metric needs one. The data range defaults to the
reference's ``max - min`` over the whole volume (not just the region), so that masked and
unmasked numbers use the same scale; pass ``data_range`` to fix it (e.g. ``1.0`` for images
normalised to [0, 1], or fastMRI's convention ``ref.max()``). Always report it with the numbers.

Definitions (sums over the region R, |R| voxels)::

    MSE   = 1/|R| sum (x - ref)^2
    PSNR  = 10 log10(L^2 / MSE)                                  [dB]; +inf when MSE = 0
    NMSE  = sum (x - ref)^2 / sum ref^2
    SSIM  = 1/|R| sum SSIM_map                                   (Wang et al. 2004)
    HFEN  = ||LoG(x) - LoG(ref)||_R / ||LoG(ref)||_R              (Ravishankar & Bresler 2011)

SSIM uses a 3D Gaussian window (sigma 1.5 voxels, truncated at 3.5 sigma: the 11-tap window of
Wang et al.), ``K1 = 0.01``, ``K2 = 0.03``, population (not sample) covariances and reflective
padding, i.e. scikit-image's ``structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False)``; the SSIM map is identical to scikit-image's ``full=True`` map.
Unlike scikit-image, the mean is taken over the whole region *without* cropping a 5-voxel border:
volumes are often only a few slices thick along one axis, and masks select the voxels that
matter. (scikit-image's cropped mean equals our map's mean over the interior; see the tests.)

HFEN filters both volumes with a 3D Laplacian-of-Gaussian (sigma 1.5 voxels, 15-tap kernel as
in Ravishankar & Bresler's 15x15 filter, zero-sum like MATLAB's ``fspecial('log')``) over the
whole volume before restricting the norms to the region. Sigmas are in voxels, not millimetres.

Per-slice values take the same voxel-wise quantities (squared error, SSIM map, filtered
difference) restricted to one slice along ``slice_axis`` (default 2, the k axis), so the SSIM of
a slice is the 3D-window SSIM averaged over that slice, and the volume value is the
voxel-weighted mean of the slice values for MSE and SSIM. Slices with no voxel in the region, and
NMSE/HFEN of slices whose reference energy is zero, are NaN.

Arrays may be numpy arrays or CPU torch tensors; inputs are converted to float64 numpy. Only
numpy is imported at module level (scipy loads when first needed). Evaluating two
:class:`~medrecon.io.Volume` objects (matching their grids, choosing the region, leaving out CT
padding) is :mod:`medrecon.evaluation`'s job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medrecon.errors import GeometryError, InputError
from medrecon.jsonutil import jsonable

__all__ = [
    "COVERAGE_LEVELS",
    "METRICS",
    "STD_COLUMNS",
    "EvaluationResult",
    "data_range_of",
    "evaluate_volumes",
    "hfen",
    "log_filter",
    "nmse",
    "psnr",
    "relative_residual",
    "ssim",
    "ssim_map",
    "std_map_check",
]

#: Metric names in report order, with their display labels.
METRICS: dict[str, str] = {"psnr": "PSNR [dB]", "ssim": "SSIM", "nmse": "NMSE", "hfen": "HFEN"}

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # 11-tap window at sigma 1.5, as Wang et al. and scikit-image
SSIM_K1 = 0.01
SSIM_K2 = 0.03
HFEN_SIGMA = 1.5
HFEN_RADIUS = 7  # 15-tap LoG kernel, as Ravishankar & Bresler's 15x15 filter
#: A std map's coverage levels k: the share of voxels with ``|recon - ref| <= k std``, which a
#: calibrated Gaussian map meets at ``erf(k / sqrt 2)`` (68.3 % and 95.4 %).
COVERAGE_LEVELS = (1.0, 2.0)


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _as_array(a: Any, name: str) -> np.ndarray:
    """float64 numpy copy of a real array or CPU torch tensor."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch tensor, without importing torch
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if np.iscomplexobj(arr):
        raise InputError(f"The {name} is complex; compare magnitude images (take abs first).")
    return arr.astype(np.float64, copy=False)


def _prepare(
    x: Any, ref: Any, mask: Any | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    xa = _as_array(x, "reconstruction")
    ra = _as_array(ref, "reference")
    if xa.shape != ra.shape:
        raise GeometryError(
            f"The reconstruction has shape {xa.shape} but the reference has shape {ra.shape}."
        )
    m = None
    if mask is not None:
        if hasattr(mask, "detach") and hasattr(mask, "cpu"):
            mask = mask.detach().cpu().numpy()
        m = np.asarray(mask)
        if m.shape != ra.shape:
            raise GeometryError(
                f"The mask has shape {m.shape} but the images have shape {ra.shape}."
            )
        m = m.astype(bool, copy=False)
        if not m.any():
            raise InputError("The mask is empty: it selects no voxel to evaluate.")
    return xa, ra, m


def data_range_of(ref: Any, data_range: float | None = None) -> float:
    """The data range ``L`` used by PSNR and SSIM: ``data_range`` if given, else max - min of ``ref``.

    Raises:
        InputError: ``data_range`` is not a positive finite number, or the reference is constant
            (or not finite) and no data range was given.
    """
    if data_range is not None:
        value = float(data_range)
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"The data range must be a positive number, got {data_range}.")
        return value
    r = _as_array(ref, "reference")
    if r.size == 0 or not np.isfinite(r).all():
        raise InputError("The reference holds no finite voxels; its data range is undefined.")
    value = float(r.max() - r.min())
    if value <= 0:
        raise InputError(
            f"The reference is constant ({float(r.max()):g}); give an explicit data range."
        )
    return value


# --------------------------------------------------------------------------------------------
# Voxel-wise building blocks
# --------------------------------------------------------------------------------------------


def ssim_map(
    x: Any,
    ref: Any,
    data_range: float | None = None,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> np.ndarray:
    """Voxel-wise SSIM of ``x`` against ``ref`` with an n-D Gaussian window.

    ``S = (2 mu_x mu_r + C1)(2 cov_xr + C2) / ((mu_x^2 + mu_r^2 + C1)(var_x + var_r + C2))`` with
    local (Gaussian-weighted) means, variances and covariance, ``C1 = (k1 L)^2``,
    ``C2 = (k2 L)^2``. Equals scikit-image's ``structural_similarity(x, ref, data_range=L,
    gaussian_weights=True, use_sample_covariance=False, full=True)[1]`` for float64 input.

    Returns:
        float64 array of the input shape, values in [-1, 1].
    """
    from scipy.ndimage import gaussian_filter

    xa, ra, _ = _prepare(x, ref, None)
    L = data_range_of(ra, data_range)

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    c1 = (k1 * L) ** 2
    c2 = (k2 * L) ** 2
    mu_x = blur(xa)
    mu_r = blur(ra)
    # Local second moments minus squared means: population (co)variances. Written to keep
    # few full-size temporaries alive: large CT volumes hold ~10^8 voxels.
    cov = blur(xa * ra)
    cov -= mu_x * mu_r
    var_sum = blur(xa * xa)
    var_sum += blur(ra * ra)
    mu_xr = mu_x * mu_r
    mu_sq = np.square(mu_x, out=mu_x)
    mu_sq += np.square(mu_r, out=mu_r)
    var_sum -= mu_sq
    num = 2.0 * mu_xr
    num += c1
    cov *= 2.0
    cov += c2
    num *= cov
    del cov, mu_xr
    mu_sq += c1
    var_sum += c2
    mu_sq *= var_sum
    num /= mu_sq
    return num


def _log_kernels(sigma: float, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """1D Gaussian (sum 1) and zero-sum second-derivative-of-Gaussian kernels."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    g2 = g * (t * t - sigma * sigma) / sigma**4
    # Zero sum, as MATLAB's fspecial('log') used by Ravishankar & Bresler: a constant image
    # (or a constant offset) has no high-frequency content.
    g2 -= g2.mean()
    return g, g2


def log_filter(a: Any, sigma: float = HFEN_SIGMA, radius: int = HFEN_RADIUS) -> np.ndarray:
    """n-D Laplacian-of-Gaussian of ``a``: ``sum_d (G'' along d) * (G along the other axes)``.

    Separable, with a ``2 radius + 1``-tap kernel (15 taps at the default sigma 1.5 voxels, as
    the 15x15 filter of Ravishankar & Bresler) whose second-derivative part sums to zero, and
    reflective padding at the borders.
    """
    from scipy.ndimage import correlate1d

    arr = _as_array(a, "image")
    g, g2 = _log_kernels(sigma, radius)
    out = np.zeros_like(arr)
    for d in range(arr.ndim):
        term = arr
        for e in range(arr.ndim):
            term = correlate1d(term, g2 if e == d else g, axis=e, mode="reflect")
        out += term
    return out


# --------------------------------------------------------------------------------------------
# Scalar metrics over a region
# --------------------------------------------------------------------------------------------


def _psnr_from_mse(mse: float, data_range: float) -> float:
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return math.nan if num == 0 else math.inf
    return num / den


def psnr(x: Any, ref: Any, data_range: float | None = None, mask: Any | None = None) -> float:
    """Peak signal-to-noise ratio ``10 log10(L^2 / MSE)`` in dB over the region (+inf if equal)."""
    xa, ra, m = _prepare(x, ref, mask)
    L = data_range_of(ra, data_range)
    d = (xa - ra) if m is None else (xa - ra)[m]
    return _psnr_from_mse(float(np.mean(d * d)), L)


def ssim(
    x: Any,
    ref: Any,
    data_range: float | None = None,
    mask: Any | None = None,
    sigma: float = SSIM_SIGMA,
) -> float:
    """Structural similarity: the mean of :func:`ssim_map` over the region (no border crop)."""
    xa, ra, m = _prepare(x, ref, mask)
    smap = ssim_map(xa, ra, data_range, sigma=sigma)
    return float(smap.mean() if m is None else smap[m].mean())


def nmse(x: Any, ref: Any, mask: Any | None = None) -> float:
    """Normalised mean squared error ``||x - ref||^2 / ||ref||^2`` over the region."""
    xa, ra, m = _prepare(x, ref, mask)
    if m is not None:
        xa, ra = xa[m], ra[m]
    d = xa - ra
    return _ratio(float(np.sum(d * d)), float(np.sum(ra * ra)))


def hfen(x: Any, ref: Any, mask: Any | None = None, sigma: float = HFEN_SIGMA) -> float:
    """High-frequency error norm ``||LoG(x - ref)||_2 / ||LoG(ref)||_2`` over the region.

    The LoG filter is linear, so ``LoG(x) - LoG(ref) = LoG(x - ref)``; filtering happens over
    the whole volume, then the norms are taken over the region.
    """
    xa, ra, m = _prepare(x, ref, mask)
    ld = log_filter(xa - ra, sigma)
    lr = log_filter(ra, sigma)
    if m is not None:
        ld, lr = ld[m], lr[m]
    return math.sqrt(_ratio(float(np.sum(ld * ld)), float(np.sum(lr * lr))))


def relative_residual(ax: Any, y: Any, mask: Any | None = None) -> float:
    """Relative data-consistency residual ``||M (A x - y)||_2 / ||M y||_2``.

    Works on numpy arrays and torch tensors (any device, real or complex) without moving data:
    a torch input is reduced with torch. ``mask`` (boolean or weights, broadcastable to ``y``)
    selects the measured samples, e.g. the k-space sampling mask; without it all samples count.

    Returns:
        A float; 0 for exact consistency, NaN when ``M y`` is zero and so is the residual.
    """
    if hasattr(ax, "detach") or hasattr(y, "detach"):
        import torch

        ax_t = torch.as_tensor(ax)
        y_t = torch.as_tensor(y, device=ax_t.device)
        if ax_t.shape != y_t.shape:
            raise GeometryError(
                f"A x has shape {tuple(ax_t.shape)} but y has shape {tuple(y_t.shape)}."
            )
        r = ax_t - y_t
        ym = y_t
        if mask is not None:
            m = torch.as_tensor(mask, device=ax_t.device)
            r, ym = r * m, ym * m
        num = float(torch.linalg.vector_norm(r).item())
        den = float(torch.linalg.vector_norm(ym).item())
        return _ratio(num, den)
    ax_a, y_a = np.asarray(ax), np.asarray(y)
    if ax_a.shape != y_a.shape:
        raise GeometryError(f"A x has shape {ax_a.shape} but y has shape {y_a.shape}.")
    r = ax_a - y_a
    ym = y_a
    if mask is not None:
        m = np.asarray(mask)
        r, ym = r * m, ym * m
    return _ratio(float(np.linalg.norm(r.ravel())), float(np.linalg.norm(ym.ravel())))


# --------------------------------------------------------------------------------------------
# Whole evaluation: volume + per-slice
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics of one reconstruction against one reference.

    Attributes:
        volume: metric name -> value over the whole region (keys of :data:`METRICS`).
        slices: one dict per slice along ``slice_axis``: ``slice`` (index), ``voxels`` (region
            voxels in the slice) and the metrics (NaN where undefined).
        data_range: the data range L used by PSNR and SSIM.
        data_range_source: how L was chosen, e.g. "reference max - min" or "user".
        region: human-readable description of the evaluated region.
        region_voxels: number of voxels in the region.
        shape: the volume shape (I, J, K).
        slice_axis: the axis the per-slice values run along.
        inputs: free-form provenance, e.g. {"recon": path, "reference": path}.
        std_map: the check of the reconstruction's std map (:func:`std_map_check`: ``volume``
            and ``slices``), or empty: none was given.
    """

    volume: dict[str, float]
    slices: list[dict[str, float | int]]
    data_range: float
    data_range_source: str
    region: str
    region_voxels: int
    shape: tuple[int, ...]
    slice_axis: int
    inputs: dict[str, str] = field(default_factory=dict)
    std_map: dict[str, Any] = field(default_factory=dict)

    def slice_summary(self) -> dict[str, dict[str, float]]:
        """metric -> {"min", "median", "max"} over slices where it is defined (finite or inf)."""
        out: dict[str, dict[str, float]] = {}
        for name in METRICS:
            vals = np.array([s[name] for s in self.slices], dtype=np.float64)
            vals = vals[~np.isnan(vals)]
            if vals.size == 0:
                out[name] = {"min": math.nan, "median": math.nan, "max": math.nan}
            else:
                out[name] = {
                    "min": float(vals.min()),
                    "median": float(np.median(vals)),
                    "max": float(vals.max()),
                }
        return out

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-ready dict (non-finite values as None)."""
        return jsonable(
            {
                "inputs": dict(self.inputs),
                "shape": list(self.shape),
                "data_range": self.data_range,
                "data_range_source": self.data_range_source,
                "region": self.region,
                "region_voxels": self.region_voxels,
                "slice_axis": self.slice_axis,
                "volume": dict(self.volume),
                "slice_summary": self.slice_summary(),
                "slices": [dict(s) for s in self.slices],
                **({"std_map": self.std_map} if self.std_map else {}),
            }
        )

    def rows(self) -> list[dict[str, Any]]:
        """CSV rows: one per slice, then one with ``slice = "volume"`` for the whole region
        (with a std map, its coverages too: :meth:`csv_columns`)."""
        extra = self.std_map.get("slices") or [{} for _ in self.slices]
        rows: list[dict[str, Any]] = [{**s, **e} for s, e in zip(self.slices, extra, strict=True)]
        volume = {k: v for k, v in self.std_map.get("volume", {}).items() if k in STD_COLUMNS}
        rows.append({"slice": "volume", "voxels": self.region_voxels, **self.volume, **volume})
        return rows

    @staticmethod
    def csv_columns(std_map: bool = False) -> list[str]:
        return ["slice", "voxels", *METRICS, *(STD_COLUMNS if std_map else ())]


#: The std map check's per-slice (and CSV) values.
STD_COLUMNS = tuple(f"coverage_{k:g}std" for k in COVERAGE_LEVELS)


def std_map_check(recon: Any, std: Any, ref: Any, mask: Any | None = None,
                  slice_axis: int = 2) -> dict[str, Any]:
    """How well a per-voxel standard-deviation map describes the error of ``recon``.

    * ``coverage_<k>std``: the share of region voxels with ``|recon - ref| <= k std`` for
      each k of :data:`COVERAGE_LEVELS` (a calibrated Gaussian map: ``erf(k / sqrt 2)``,
      68.3 % and 95.4 %; below, the map is over-confident, above, too cautious);
    * ``std_rms_over_error_rms``: the map's root mean square over the error's, in the region:
      a map can cover by being wide everywhere (1: as wide as the error on average).

    Args:
        recon, std, ref: arrays of one shape (std >= 0, finite).
        mask: optional boolean region; default the whole volume.
        slice_axis: the per-slice coverages run along this axis (NaN where no region voxel).

    Returns:
        ``{"volume": {...}, "slices": [{"coverage_<k>std": ...}, ...], "expected": {...}}``.
    """
    x, r, m = _prepare(recon, ref, mask)
    sd = _as_array(std, "std map")
    if sd.shape != r.shape:
        raise GeometryError(f"The std map has shape {sd.shape} but the reference has shape "
                            f"{r.shape}.")
    if not np.isfinite(sd).all() or (sd < 0).any():
        raise InputError("The std map holds negative, NaN or infinite voxels; a standard "
                         "deviation is finite and not negative.")
    axis = slice_axis % 3
    region = np.ones(r.shape, dtype=bool) if m is None else m
    other = tuple(i for i in range(3) if i != axis)
    counts = region.sum(axis=other)
    err = np.abs(x - r)
    volume: dict[str, float] = {}
    slices: list[dict[str, float]] = [{} for _ in range(r.shape[axis])]
    for k, name in zip(COVERAGE_LEVELS, STD_COLUMNS, strict=True):
        inside = (err <= k * sd) & region
        per_slice = inside.sum(axis=other)
        volume[name] = float(per_slice.sum()) / float(region.sum())
        for i, row in enumerate(slices):
            row[name] = float(per_slice[i]) / float(counts[i]) if counts[i] else math.nan
    e2, s2 = float(np.mean(err[region] ** 2)), float(np.mean(sd[region] ** 2))
    volume["std_rms_over_error_rms"] = math.sqrt(s2 / e2) if e2 > 0 else math.inf
    expected = {name: math.erf(k / math.sqrt(2.0))
                for k, name in zip(COVERAGE_LEVELS, STD_COLUMNS, strict=True)}
    return {"volume": volume, "slices": slices, "expected": expected}


def evaluate_volumes(
    recon: Any,
    ref: Any,
    mask: Any | None = None,
    data_range: float | None = None,
    slice_axis: int = 2,
    region: str | None = None,
    data_range_source: str | None = None,
) -> EvaluationResult:
    """PSNR, SSIM, NMSE and HFEN of ``recon`` against ``ref``, per volume and per slice.

    Args:
        recon: reconstruction, real array of shape (I, J, K).
        ref: reference, same shape.
        mask: optional boolean region of the same shape (voxels to evaluate); must not be empty.
        data_range: L for PSNR/SSIM; default max - min of the whole reference.
        slice_axis: axis (0, 1 or 2; negative allowed) along which per-slice values are given.
        region: description of the region for reports; default describes the mask or volume.
        data_range_source: how a given ``data_range`` was chosen, for reports (default "user").

    Returns:
        An :class:`EvaluationResult`.
    """
    x, r, m = _prepare(recon, ref, mask)
    if r.ndim != 3:
        raise InputError(f"evaluate_volumes needs 3D volumes, got shape {r.shape}.")
    if not (np.isfinite(x).all() and np.isfinite(r).all()):
        which = "reconstruction" if not np.isfinite(x).all() else "reference"
        raise InputError(f"The {which} contains NaN or infinite voxels.")
    if not -3 <= slice_axis < 3:
        raise InputError(f"slice_axis must be 0, 1 or 2, got {slice_axis}.")
    axis = slice_axis % 3
    L = data_range_of(r, data_range)
    source = (data_range_source or "user") if data_range is not None else "reference max - min"
    region_mask = np.ones(r.shape, dtype=bool) if m is None else m
    n_region = int(region_mask.sum())
    if region is None:
        if m is None:
            region = f"whole volume ({n_region} voxels)"
        else:
            region = f"mask ({n_region} of {r.size} voxels, {100.0 * n_region / r.size:.1f}%)"

    other = tuple(i for i in range(3) if i != axis)

    def region_sums(a: np.ndarray) -> tuple[float, np.ndarray]:
        # Total and per-slice totals over the region. Each voxel-wise quantity is reduced as
        # soon as it exists and then dropped, so that peak memory stays at a few volumes.
        if m is not None:
            a = np.where(m, a, 0.0)
        per_slice = a.sum(axis=other)
        return float(per_slice.sum()), per_slice

    counts = region_mask.sum(axis=other)
    d = x - r
    sq_t, sq_s = region_sums(d * d)
    ld_t, ld_s = region_sums(np.square(log_filter(d)))
    del d
    lr_t, lr_s = region_sums(np.square(log_filter(r)))
    r2_t, r2_s = region_sums(r * r)
    ss_t, ss_s = region_sums(ssim_map(x, r, L))

    volume = {
        "psnr": _psnr_from_mse(sq_t / n_region, L),
        "ssim": ss_t / n_region,
        "nmse": _ratio(sq_t, r2_t),
        "hfen": math.sqrt(_ratio(ld_t, lr_t)),
    }
    slices: list[dict[str, float | int]] = []
    for k in range(r.shape[axis]):
        c = int(counts[k])
        if c == 0:
            vals = dict.fromkeys(METRICS, math.nan)
        else:
            vals = {
                "psnr": _psnr_from_mse(float(sq_s[k]) / c, L),
                "ssim": float(ss_s[k]) / c,
                "nmse": _ratio(float(sq_s[k]), float(r2_s[k])),
                "hfen": math.sqrt(_ratio(float(ld_s[k]), float(lr_s[k]))),
            }
        slices.append({"slice": k, "voxels": c, **vals})
    return EvaluationResult(
        volume=volume,
        slices=slices,
        data_range=L,
        data_range_source=source,
        region=region,
        region_voxels=n_region,
        shape=tuple(int(s) for s in r.shape),
        slice_axis=axis,
    )
