"""Reports of reconstructions: orthogonal-slice figures (images, error and std maps) and tables.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas (no pyplot global
state, no display needed) and written atomically as PNG. matplotlib is imported inside the
functions so that importing this module stays cheap.

Display conventions (when an affine is given): volumes are reoriented to RAS+ and shown in the
radiological convention used by clinical viewers: axial and coronal views have the patient's
right on the image's left, axial views anterior up, coronal and sagittal views superior up,
sagittal views anterior on the left. Pixels are drawn with their true physical aspect ratio
from the voxel spacing. A view across fewer than :data:`MIN_VIEW_VOXELS` voxels (the coronal
and sagittal views of a single axial slice) is left out rather than drawn as a strip; on a
slab thinner than about half its width (2D multi-slice, a few thick slices) the coronal view is
drawn above the sagittal one, in one column beside the axial view.

Default windows are robust percentiles over the evaluation region (the ``mask``): the grey
window spans the reference's 0.5th to 99.5th percentile, the error and std windows run from 0
to the 99th percentile of all the error (or std) maps together, so that a few outliers, CT
padding or empty background do not wash out the maps and all rows share one scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import GeometryError, InputError
from medrecon.io.atomic import atomic_file
from medrecon.metrics import COVERAGE_LEVELS, METRICS, STD_COLUMNS, EvaluationResult

__all__ = [
    "METRIC_DEFINITIONS",
    "MIN_VIEW_VOXELS",
    "format_table",
    "orthogonal_slices_figure",
    "write_metrics_csv",
    "write_metrics_json",
]


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _fmt_metric(name: str, v: float) -> str:
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf"
    if name == "psnr":
        return f"{v:.2f}"
    if name == "ssim":
        return f"{v:.4f}"
    return f"{v:.4g}"


def format_table(result: EvaluationResult, units: str = "", axis_names: Sequence[str] = "ijk") -> str:
    """A plain-text table: the region, the data range, and each metric for the whole volume
    with its per-slice minimum, median and maximum.

    Args:
        result: the evaluation to show.
        units: intensity units of the data range (e.g. "HU"); "a.u." and "" are not shown.
        axis_names: names of the three voxel axes, for the per-slice heading.
    """
    axis_name = axis_names[result.slice_axis]
    unit = f" {units}" if units and units != "a.u." else ""
    n = len(result.slices)
    n_in = sum(1 for s in result.slices if s["voxels"])
    counted = f"{n} slices" if n_in == n else f"{n_in} of {n} slices in region"
    per_slice = f"per slice along {axis_name} ({counted})"
    lines = [
        f"Region:     {result.region}",
        f"Data range: {result.data_range:.6g}{unit} ({result.data_range_source})",
        "",
        f"{'Metric':<10} {'Volume':>10}   {per_slice:^36}",
        f"{'':<10} {'':>10}   {'min':>10} {'median':>12} {'max':>12}",
    ]
    summary = result.slice_summary()
    for name, label in METRICS.items():
        s = summary[name]
        lines.append(
            f"{label:<10} {_fmt_metric(name, result.volume[name]):>10}   "
            f"{_fmt_metric(name, s['min']):>10} {_fmt_metric(name, s['median']):>12} "
            f"{_fmt_metric(name, s['max']):>12}"
        )
    if result.std_map:
        v, want = result.std_map["volume"], result.std_map["expected"]
        cover = ", ".join(f"<= {k:g} std {100 * v[c]:.1f} %" for k, c in
                          zip(COVERAGE_LEVELS, STD_COLUMNS, strict=True))
        aim = " / ".join(f"{100 * want[c]:.1f}" for c in STD_COLUMNS)
        lines += ["", f"Std map:    |error| {cover} of the region's voxels",
                  f"            (a calibrated Gaussian map: {aim} %); map rms / error rms "
                  f"{v['std_rms_over_error_rms']:.3g}"]
    return "\n".join(lines)


#: How each metric is defined, written into JSON reports so that the numbers stand alone.
METRIC_DEFINITIONS: dict[str, str] = {
    "psnr": "10 log10(L^2 / MSE) in dB over the region (null when MSE is 0)",
    "ssim": "mean over the region of the 3D SSIM map (Gaussian window sigma 1.5 voxels, "
            "K1 0.01, K2 0.03, population covariances)",
    "nmse": "||x - ref||^2 / ||ref||^2 over the region",
    "hfen": "||LoG(x - ref)|| / ||LoG(ref)|| over the region (3D LoG, sigma 1.5 voxels)",
}
#: The std map check's (``std_map``), added where a result has one.
STD_MAP_DEFINITIONS: dict[str, str] = {
    "coverage_<k>std": "share of the region's voxels with |x - ref| <= k std (a calibrated "
                       "Gaussian map: erf(k / sqrt 2), 'expected')",
    "std_rms_over_error_rms": "sqrt(mean std^2 / mean (x - ref)^2) over the region",
}


def _as_list(result: EvaluationResult | Sequence[EvaluationResult]) -> list[EvaluationResult]:
    results = [result] if isinstance(result, EvaluationResult) else list(result)
    if not results:
        raise InputError("There are no metrics to write.")
    return results


def write_metrics_json(
    result: EvaluationResult | Sequence[EvaluationResult], path: str | Path,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``result.to_dict()`` (plus ``extra`` keys and metric definitions) as strict JSON.

    Several results (reconstructions against one reference) go into a ``"results"`` list, each
    naming its reconstruction in ``inputs``. Non-finite values (PSNR of identical volumes,
    slices outside the region) are ``null``. Written atomically.
    """
    import json

    results = _as_list(result)
    doc = results[0].to_dict() if len(results) == 1 else {
        "results": [r.to_dict() for r in results]}
    doc.update(dict(extra or {}))
    doc["metric_definitions"] = dict(METRIC_DEFINITIONS) | (
        STD_MAP_DEFINITIONS if any(r.std_map for r in results) else {})
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def write_metrics_csv(result: EvaluationResult | Sequence[EvaluationResult],
                      path: str | Path) -> Path:
    """Write one CSV row per slice (``slice, voxels, psnr, ssim, nmse, hfen``; with std maps
    also ``coverage_1std, coverage_2std``) and a final row with ``slice = volume`` for the
    whole region; undefined values are ``nan``. Several results get a first column ``recon``
    (their ``inputs["recon"]``). Atomic.
    """
    import csv

    results = _as_list(result)
    several = len(results) > 1
    columns = (["recon"] if several else []) + EvaluationResult.csv_columns(
        any(r.std_map for r in results))
    path = Path(path)
    with atomic_file(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for n, res in enumerate(results):
            for row in res.rows():
                if several:
                    row = {"recon": res.inputs.get("recon", str(n)), **row}
                writer.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v)
                                 for k, v in row.items()})
    return path


# --------------------------------------------------------------------------------------------
# Orthogonal-slice figures
# --------------------------------------------------------------------------------------------


def _to_ras(
    arrays: dict[str, np.ndarray], affine: np.ndarray | None, spacing: Sequence[float]
) -> tuple[dict[str, np.ndarray], tuple[float, float, float], list[tuple[int, bool]]]:
    """Reorient arrays to (closest) RAS+ voxel order.

    Returns the reoriented arrays, the spacing along the new axes, and for each new axis the
    original axis it came from and whether it was flipped.
    """
    if affine is None:
        sp = tuple(float(s) for s in spacing)
        return arrays, sp, [(0, False), (1, False), (2, False)]  # type: ignore[return-value]
    import nibabel as nib

    aff = np.asarray(affine, dtype=np.float64)
    ornt = nib.orientations.io_orientation(aff)
    vox = np.linalg.norm(aff[:3, :3], axis=0)
    new_sp = [0.0, 0.0, 0.0]
    origin: list[tuple[int, bool]] = [(0, False)] * 3
    for i, (j, flip) in enumerate(ornt):
        new_sp[int(j)] = float(vox[i])
        origin[int(j)] = (i, bool(flip < 0))
    out = {k: np.asarray(nib.orientations.apply_orientation(v, ornt)) for k, v in arrays.items()}
    return out, (new_sp[0], new_sp[1], new_sp[2]), origin


def _views(a: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a RAS-ordered array, ready for imshow (row 0 at top).

    axial (fixed z):    columns R->L (x descending), rows A->P (y descending)
    coronal (fixed y):  columns R->L,                rows S->I (z descending)
    sagittal (fixed x): columns A->P (y descending), rows S->I
    """
    x, y, z = centre
    return [
        a[::-1, ::-1, z].T,
        a[::-1, y, ::-1].T,
        a[x, ::-1, ::-1].T,
    ]


#: A view needs at least this many voxels along both of its axes to be drawn.
MIN_VIEW_VOXELS = 4
#: Percentiles of the default grey window and of the upper end of error and std windows.
GREY_PERCENTILES = (0.5, 99.5)
MAP_PERCENTILE = 99.0


def _region_values(arrays: list[np.ndarray], region: np.ndarray | None) -> np.ndarray:
    """Finite values of ``arrays`` inside ``region`` (all voxels without one), flattened."""
    flat = np.concatenate([(a if region is None else a[region]).ravel() for a in arrays])
    return flat[np.isfinite(flat)]


def _robust_max(arrays: list[np.ndarray], region: np.ndarray | None) -> float:
    """Upper end of an error or std window: the MAP_PERCENTILE of the values in the region."""
    flat = _region_values(arrays, region)
    if flat.size == 0:
        return 1.0
    hi = float(np.percentile(flat, MAP_PERCENTILE))
    if hi <= 0:
        hi = float(flat.max())
    return hi if hi > 0 else 1.0


def _robust_window(reference: np.ndarray, region: np.ndarray | None) -> tuple[float, float]:
    """Default grey window: GREY_PERCENTILES of the reference in the region."""
    flat = _region_values([reference], region)
    if flat.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(flat, GREY_PERCENTILES))
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def orthogonal_slices_figure(
    volumes: Mapping[str, Any],
    path: str | Path,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    affine: np.ndarray | None = None,
    reference: str | None = None,
    error_of: Sequence[str] | None = None,
    std: Mapping[str, Any] | None = None,
    mask: np.ndarray | None = None,
    blank: np.ndarray | None = None,
    centre: Sequence[int] | None = None,
    window: tuple[float, float] | None = None,
    error_max: float | None = None,
    std_max: float | None = None,
    annotations: Mapping[str, str] | None = None,
    units: str = "",
    title: str | None = None,
    footnote: str | None = None,
    dpi: int = 150,
) -> Path:
    """Draw three orthogonal central slices of several volumes, their errors and std maps.

    One row per panel, three columns (axial, coronal, sagittal; fewer for a single slice or a
    slab of fewer than :data:`MIN_VIEW_VOXELS` slices, two with the coronal above the sagittal
    view for a thin slab) plus a colour bar per row group:

    * images: every entry of ``volumes`` (reference first), sharing one grey window;
    * absolute errors ``|v - reference|`` of the volumes named in ``error_of``, sharing one
      window from 0 (``inferno``);
    * standard-deviation maps from ``std`` (e.g. over posterior samples), sharing one window
      from 0 (``viridis``).

    Args:
        volumes: name -> real array (I, J, K); insertion order is row order.
        path: output PNG path (written atomically).
        spacing: voxel size (mm) along (i, j, k); ignored when ``affine`` is given.
        affine: 4x4 voxel -> RAS+ mm matrix. With it, views are true axial/coronal/sagittal in
            radiological orientation with direction letters; without it, the array axes are
            taken as (x, y, z) and views are labelled by voxel axes.
        reference: the name in ``volumes`` errors are taken against (default: the first).
        error_of: names whose error maps to show (default: every volume but the reference;
            ``()`` for none).
        std: name -> std map (I, J, K), e.g. ``{"Posterior std": s}``.
        mask: optional boolean region (I, J, K); its outline is drawn on the reference row, and
            the default windows are taken over it.
        blank: optional boolean (I, J, K) of voxels that hold no image, e.g. CT padding outside
            the scan circle: their errors and std are not drawn (black).
        centre: voxel index (i, j, k) the slices pass through (default: the volume centre).
        window: grey window (low, high) of the images (default: the reference's 0.5th to 99.5th
            percentile in the region).
        error_max, std_max: upper ends of the error and std windows (default: 99th percentile
            in the region of all error, or std, maps together).
        annotations: name -> extra line under a row's label, e.g. "PSNR 31.2 dB".
        units: intensity units for the colour-bar labels (e.g. "HU", "a.u.").
        title: figure title.
        footnote: extra text at the bottom (e.g. the metrics' region and data range), after
            the line stating the display convention and the region outline.
        dpi: minimum resolution of the PNG; raised (up to 300) so that a panel has at least
            one pixel per voxel where possible.

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not volumes:
        raise InputError("orthogonal_slices_figure needs at least one volume.")
    names = list(volumes)
    ref_name = names[0] if reference is None else reference
    if ref_name not in volumes:
        raise InputError(f"The reference {ref_name!r} is not one of the volumes {names}.")
    err_names = [n for n in names if n != ref_name] if error_of is None else list(error_of)
    for n in err_names:
        if n not in volumes:
            raise InputError(f"Cannot show the error of {n!r}: it is not one of {names}.")

    arrays: dict[str, np.ndarray] = {}
    for n, v in volumes.items():
        arrays[f"img:{n}"] = _real3d(v, n)
    for n, v in (std or {}).items():
        arrays[f"std:{n}"] = _real3d(v, n)
    if mask is not None:
        arrays["mask"] = np.asarray(mask).astype(np.float32)
    if blank is not None:
        arrays["blank"] = np.asarray(blank).astype(np.float32)
    shape = arrays[f"img:{ref_name}"].shape
    for k, a in arrays.items():
        if a.shape != shape:
            raise GeometryError(
                f"{k.split(':', 1)[-1]!r} has shape {a.shape} but the reference has shape {shape}."
            )
    for n in err_names:
        arrays[f"err:{n}"] = np.abs(arrays[f"img:{n}"] - arrays[f"img:{ref_name}"])
    if blank is not None:
        hidden = arrays.pop("blank") > 0
        for k in arrays:
            if k.startswith(("err:", "std:")):
                arrays[k] = np.where(hidden, np.nan, arrays[k]).astype(np.float32)

    ras, sp, origin = _to_ras(arrays, affine, spacing)
    rshape = ras[f"img:{ref_name}"].shape
    if centre is None:
        c_ras = [n // 2 for n in rshape]
    else:
        c_ras = [0, 0, 0]
        for new_axis, (old_axis, flipped) in enumerate(origin):
            idx = int(centre[old_axis])
            if not 0 <= idx < shape[old_axis]:
                raise InputError(f"centre {tuple(centre)} is outside the volume {shape}.")
            c_ras[new_axis] = shape[old_axis] - 1 - idx if flipped else idx
    slices = {k: _views(a, c_ras) for k, a in ras.items()}

    # Physical extents (mm) of each view: (width, height).
    ext_x, ext_y, ext_z = (rshape[i] * sp[i] for i in range(3))
    extents = [(ext_x, ext_y), (ext_x, ext_z), (ext_y, ext_z)]
    # The views drawn: those across at least MIN_VIEW_VOXELS voxels each way (a single axial
    # slice gets its axial view only); at least the one that is widest in voxels.
    view_axes = [(0, 1), (0, 2), (1, 2)]  # RAS axes along each view's width and height
    view_ids = [v for v, (a, b) in enumerate(view_axes)
                if min(rshape[a], rshape[b]) >= MIN_VIEW_VOXELS]
    if not view_ids:
        view_ids = [max(range(3), key=lambda v: min(rshape[i] for i in view_axes[v]))]
    oriented = affine is not None
    if oriented:
        col_names = ["Axial", "Coronal", "Sagittal"]
        letters = [("R", "L", "A", "P"), ("R", "L", "S", "I"), ("A", "P", "S", "I")]
    else:
        col_names = ["i-j plane", "i-k plane", "j-k plane"]
        letters = [None, None, None]
    fixed_axis = [2, 1, 0]  # RAS axis held fixed in each view
    col_titles = []
    for v in range(3):
        old_axis, flipped = origin[fixed_axis[v]]
        idx = c_ras[fixed_axis[v]]
        old_idx = shape[old_axis] - 1 - idx if flipped else idx
        col_titles.append(f"{col_names[v]}  ({'ijk'[old_axis]} = {old_idx})")

    # Row groups: (kind, [names], cmap, vmin, vmax, label)
    unit = f" [{units}]" if units else ""
    groups: list[tuple[str, list[str], str, float, float, str]] = []
    region = None if mask is None else np.asarray(mask).astype(bool)
    if region is not None and not region.any():
        region = None
    if window is None:
        lo, hi = _robust_window(arrays[f"img:{ref_name}"], region)
    else:
        lo, hi = float(window[0]), float(window[1])
        if not hi > lo:
            raise InputError(f"The grey window must have low < high, got {window}.")
    groups.append(("img", names, "gray", lo, hi, f"Intensity{unit}"))
    if err_names:
        emax = error_max if error_max is not None else _robust_max(
            [arrays[f"err:{n}"] for n in err_names], region)
        groups.append(("err", err_names, "inferno", 0.0, float(emax), f"|Error|{unit}"))
    if std:
        smax = std_max if std_max is not None else _robust_max(
            [arrays[f"std:{n}"] for n in std], region)
        groups.append(("std", list(std), "viridis", 0.0, float(smax), f"Standard deviation{unit}"))

    notes: list[str] = []
    if oriented:
        notes.append("Radiological convention: patient's right on the image's left (letters "
                     "give the patient directions).")
    else:
        notes.append("No affine given: panels show voxel axes, without patient orientation.")
    has_outline = "mask" in slices and any(0 < slices["mask"][v].sum() < slices["mask"][v].size
                                           for v in view_ids)
    if has_outline:
        notes.append("Cyan outline on the reference: the evaluation region.")
    if footnote:
        notes.append(footnote)
    n_rows = sum(len(g[1]) for g in groups)
    row_h_mm = max(extents[v][1] for v in view_ids)
    panel_in = 2.3 / row_h_mm  # inches per mm, so that a row is about 2.3 in tall
    # A thin slab (2D multi-slice, a few thick slices): the coronal and sagittal views are
    # strips far shorter than the axial view; they go one above the other in one column
    # (a title's height apart) instead of each in a column as tall as the axial view.
    title_gap_mm = 0.24 / panel_in
    stacked = (view_ids == [0, 1, 2]
               and extents[1][1] + extents[2][1] + title_gap_mm <= extents[0][1])
    widths_mm = ([extents[0][0], max(extents[1][0], extents[2][0])] if stacked
                 else [extents[v][0] for v in view_ids])
    label_in, cbar_in, gap_in = 0.55, 0.9, 0.08
    fig_w = label_in + sum(w * panel_in for w in widths_mm) + len(widths_mm) * gap_in + cbar_in
    # Wrap the title and notes to the figure width (about 0.55 em per character), so that
    # long file names are neither cut off nor drawn over the column titles.
    import textwrap

    def wrap(text: str, fontsize: float) -> list[str]:
        width = max(20, int(0.97 * fig_w * 72 / (0.55 * fontsize)))
        return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False)

    title_lines = wrap(title, 11) if title else []
    note_lines = [ln for note in notes for ln in wrap(note, 7)]
    title_in = 0.3 + 0.2 * len(title_lines) if title_lines else 0.3
    row_in, gap_row_in = row_h_mm * panel_in, 0.12
    note_in = 0.12 + 0.14 * len(note_lines)
    fig_h = title_in + n_rows * row_in + (n_rows - 1) * gap_row_in + note_in
    # Enough pixels per panel to show every voxel (capped to keep files reasonable).
    voxels_per_inch = max(1.0 / (sp[i] * panel_in) for v in view_ids for i in view_axes[v])
    dpi = int(min(max(dpi, math.ceil(voxels_per_inch)), max(dpi, 300)))
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    n_cols = len(widths_mm)
    gs = fig.add_gridspec(
        n_rows, n_cols + 2,
        width_ratios=[label_in / panel_in, *widths_mm, (cbar_in / panel_in)],
        left=0.01, right=0.99, top=1.0 - title_in / fig_h, bottom=note_in / fig_h,
        wspace=0.06, hspace=gap_row_in / row_in,
    )
    if title_lines:
        fig.suptitle("\n".join(title_lines), fontsize=11, y=1.0 - 0.08 / fig_h, va="top")
    for n, line in enumerate(note_lines):
        fig.text(0.01, (0.06 + 0.14 * (len(note_lines) - 1 - n)) / fig_h, line, fontsize=7,
                 ha="left", va="bottom", color="#333333")

    from matplotlib import patheffects

    outline = [patheffects.withStroke(linewidth=1.5, foreground="black")]

    def panel_axes(row: int) -> list[tuple[int, Any]]:
        """(view, axes) of one row: a column per view, or the axial view beside the coronal
        above the sagittal (``stacked``)."""
        if not stacked:
            return [(v, fig.add_subplot(gs[row, col + 1])) for col, v in enumerate(view_ids)]
        rest = extents[0][1] - extents[1][1] - extents[2][1] - title_gap_mm
        cell = gs[row, 2].subgridspec(4, 1, hspace=0.0, height_ratios=[
            extents[1][1], title_gap_mm, extents[2][1], max(rest, 1e-6)])
        return [(0, fig.add_subplot(gs[row, 1])), (1, fig.add_subplot(cell[0, 0])),
                (2, fig.add_subplot(cell[2, 0]))]

    annotations = dict(annotations or {})
    row = 0
    kind_title = {"img": "", "err": "|error|", "std": ""}
    for kind, members, cmap, vmin, vmax, cbar_label in groups:
        first_row = row
        im = None
        for name in members:
            key = f"{kind}:{name}"
            label_ax = fig.add_subplot(gs[row, 0])
            label_ax.axis("off")
            text = name if not kind_title[kind] else f"{kind_title[kind]}\n{name}"
            if name in annotations and kind == "img":
                text += f"\n{annotations[name]}"
            label_ax.text(0.95, 0.5, text, rotation=90, ha="right", va="center",
                          fontsize=8.5, transform=label_ax.transAxes, multialignment="center")
            for v, ax in panel_axes(row):
                w, h = extents[v]
                im = ax.imshow(slices[key][v], cmap=cmap, vmin=vmin, vmax=vmax,
                               extent=(0, w, 0, h), origin="upper",
                               interpolation="antialiased")
                ax.set_xlim(0, w)
                ax.set_ylim(0, h)
                ax.set_aspect("equal")
                ax.set_anchor("N")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                ax.set_facecolor("black")
                if row == 0:
                    ax.set_title(col_titles[v], fontsize=9)
                if kind == "img" and name == ref_name and "mask" in slices:
                    m2 = slices["mask"][v]
                    if 0 < m2.sum() < m2.size and min(m2.shape) >= 2:
                        # Pixel centres in the same mm frame as imshow's extent (row 0 on top).
                        xs = (np.arange(m2.shape[1]) + 0.5) * w / m2.shape[1]
                        ys = h - (np.arange(m2.shape[0]) + 0.5) * h / m2.shape[0]
                        ax.contour(xs, ys, m2, levels=[0.5], colors=["#00e5ff"],
                                   linewidths=0.8)
                lt = letters[v]
                if lt is not None and row == 0:
                    style = dict(color="#ffd54f", fontsize=7, fontweight="bold",
                                 transform=ax.transAxes, path_effects=outline)
                    ax.text(0.02, 0.5, lt[0], ha="left", va="center", **style)
                    ax.text(0.98, 0.5, lt[1], ha="right", va="center", **style)
                    ax.text(0.5, 0.98, lt[2], ha="center", va="top", **style)
                    ax.text(0.5, 0.02, lt[3], ha="center", va="bottom", **style)
            row += 1
        cax_spec = gs[first_row:row, n_cols + 1].subgridspec(1, 3, width_ratios=[0.15, 0.22, 0.63])
        cax = fig.add_subplot(cax_spec[0, 1])
        assert im is not None
        if kind != "img":
            extend = "max"
        else:  # show arrows where the grey window clips the data
            shown = [slices[f"img:{n}"][v] for n in members for v in view_ids]
            below = any(float(np.nanmin(x)) < vmin for x in shown)
            above = any(float(np.nanmax(x)) > vmax for x in shown)
            extend = {(False, False): "neither", (True, False): "min",
                      (False, True): "max", (True, True): "both"}[(below, above)]
        cb = fig.colorbar(im, cax=cax, extend=extend)
        cb.ax.tick_params(labelsize=7)
        cb.set_label(cbar_label, fontsize=8)

    path = Path(path)
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    return path


def _real3d(v: Any, name: str) -> np.ndarray:
    if hasattr(v, "detach") and hasattr(v, "cpu"):
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if np.iscomplexobj(a):
        a = np.abs(a)
    if a.ndim != 3:
        raise InputError(f"{name!r} must be a 3D volume, got shape {a.shape}.")
    return a.astype(np.float32, copy=False)
