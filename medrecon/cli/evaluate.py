"""``medrecon evaluate``: PSNR, SSIM, NMSE and HFEN of a reconstruction against a reference.

The command reads the reconstructions and the reference (NIfTI or DICOM), checks that they share
a voxel grid (reordering axes that differ only in order or direction), picks the region (whole
volume, a mask file, or an automatic foreground mask; CT padding left out) and the data range,
prints a table per reconstruction (with its std map: the share of voxels whose error lies
within 1 and 2 std, the map's calibration), and optionally writes JSON, CSV and one
orthogonal-slice figure of all reconstructions and std maps, each atomically. The work is done by
:func:`medrecon.evaluation.compare_volumes` and :mod:`medrecon.report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medrecon.cli.common import check_output, note, note_modality, user_errors

#: The figure's default CT grey window (HU): the soft-tissue window W400 / L40.
CT_WINDOW = (-160.0, 240.0)


def register(app: typer.Typer) -> None:
    app.command("evaluate", short_help="PSNR, SSIM, NMSE, HFEN of a reconstruction vs a reference.")(evaluate)


@user_errors
def evaluate(
    paths: list[Path] = typer.Argument(
        ..., metavar="RECON... REFERENCE", show_default=False,
        help="One or more reconstructions, then the reference: NIfTI files or DICOM "
             "files/folders."),
    mask: str = typer.Option(
        None, "--mask",
        help="Region to evaluate: a mask volume (nonzero voxels count) on the reference grid, "
             "or 'auto' for a foreground mask of the reference. Default: the whole volume."),
    data_range: float = typer.Option(
        None, "--data-range",
        help="Data range L for PSNR and SSIM, in the reference's units (HU for CT). "
             "Default: reference max - min (outside CT padding)."),
    include_padding: bool = typer.Option(
        False, "--include-padding",
        help="Keep CT padding (at or below -1500 HU, or the PixelPaddingValue) in the region "
             "and the data range; by default it is left out."),
    slice_axis: int = typer.Option(
        2, "--slice-axis", min=0, max=2,
        help="Voxel axis (0=i, 1=j, 2=k) along which per-slice metrics are reported."),
    json_out: Path = typer.Option(None, "--json", help="Write all metrics to this JSON file."),
    csv_out: Path = typer.Option(
        None, "--csv", help="Write one row per slice plus a 'volume' row to this CSV file."),
    figure: Path = typer.Option(
        None, "--figure", help="Write a PNG of orthogonal slices (one view for a single slice) "
                               "with the error maps on one shared scale."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace existing outputs (an input never)."),
    std: list[Path] = typer.Option(
        None, "--std", help="A standard-deviation volume (reconstruct --std-out, or the _std "
                            "file beside its output), one per reconstruction in their order: "
                            "the share of voxels whose error "
                            "lies within 1 and 2 std is reported (a calibrated map: 68 / 95 "
                            "%), and the map is shown in the figure."),
    window: tuple[float, float] | None = typer.Option(
        None, "--window", metavar="LOW HIGH", show_default=False,
        help="Grey window of the figure, in the reference's units. Default: CT -160 to 240 HU "
             "(soft tissue, W400 L40); otherwise the reference's 0.5th to 99.5th percentile in "
             "the region."),
    series: str = typer.Option(
        None, "--series",
        help="Series to pick in DICOM inputs holding several: its SeriesInstanceUID, a unique "
             "prefix of it, or its series number."),
    recon_series: str = typer.Option(
        None, "--recon-series",
        help="Series of the reconstructions when it differs from --series "
             "(e.g. both series in one study folder)."),
    frame: int | None = typer.Option(
        None, "--frame", min=0, help="Frame (0-based) of the 4D NIfTI inputs; 3D inputs are "
                                     "read as they are."),
) -> None:
    """Compare reconstructions with a reference: PSNR, SSIM (3D Gaussian window), NMSE, HFEN.

    Metrics are given for the whole region and per slice, with the data range and region stated.
    A reconstruction whose voxel axes are those of the reference in another order or direction
    (e.g. after a DICOM round trip) is reordered onto the reference's grid.
    """
    import dataclasses

    from medrecon.errors import InputError
    from medrecon.evaluation import compare_volumes, on_reference_grid, padding_mask
    from medrecon.io import is_nifti_path, load_volume
    from medrecon.io.nifti import nifti_frames
    from medrecon.report import format_table, write_metrics_csv, write_metrics_json

    if len(paths) < 2:
        raise InputError("Give at least one reconstruction and then the reference.")
    recons, reference = paths[:-1], paths[-1]
    std = list(std or [])
    framed: list[Path] = []

    def load(path: Path, uid: str | None) -> Any:
        # --series only concerns DICOM input; a NIfTI file next to a DICOM folder is fine.
        # --frame only concerns 4D NIfTI input: the reference may be 4D, the recon 3D.
        if not is_nifti_path(path):
            return load_volume(path, series=uid)
        use_frame = frame is not None and path.is_file() and nifti_frames(path) > 1
        if use_frame:
            framed.append(path)
        return load_volume(path, frame=frame if use_frame else None)

    if figure is not None and figure.suffix.lower() != ".png":
        raise InputError(f"--figure must end in .png, got {figure.name}.")
    if window is not None and not window[0] < window[1]:
        raise InputError(f"--window needs LOW < HIGH, got {window[0]:g} {window[1]:g}.")
    if window is not None and figure is None:
        raise InputError("--window sets the figure's grey window; add --figure FILE.png.")
    paired = bool(std) and len(std) == len(recons)  # each reconstruction's own std map
    if std and not paired and figure is None:
        raise InputError(f"Give one --std per reconstruction, in their order, to check the std "
                         f"maps against the reference (got {len(recons)} reconstructions and "
                         f"{len(std)} std maps), or add --figure FILE.png to show them.")
    inputs = [*paths, *std] + ([Path(mask)] if mask and mask.lower() != "auto" else [])
    outputs = [(flag, p) for flag, p in (("--json", json_out), ("--csv", csv_out),
                                         ("--figure", figure)) if p is not None]
    for flag, p in outputs:
        check_output(p, "file", flag, inputs=inputs, overwrite=overwrite)
    for i, (flag, p) in enumerate(outputs):
        for flag2, p2 in outputs[i + 1:]:
            if p.resolve() == p2.resolve():
                raise InputError(f"{flag} and {flag2} name the same file {p}; give two names.")

    ref_vol = load(reference, series)
    rec_vols = [load(p, recon_series or series) for p in recons]
    std_vols = [load(p, recon_series or series) for p in std]
    if frame is not None and not framed:
        raise InputError("--frame picks a frame of a 4D NIfTI input, but no input has "
                         "several frames.")
    for vol in (ref_vol, *rec_vols):
        note_modality(vol)
    known = ("MR", "CT")
    for path, rec_vol in zip(recons, rec_vols, strict=True):
        if rec_vol.modality in known and ref_vol.modality in known \
                and rec_vol.modality != ref_vol.modality:
            what = "The reconstruction" if len(recons) == 1 else f"The reconstruction {path}"
            raise InputError(f"{what} is {rec_vol.modality} ({rec_vol.units}) but the "
                             f"reference is {ref_vol.modality} ({ref_vol.units}); compare "
                             f"volumes of the same modality.")
    if ref_vol.modality not in known and rec_vols[0].modality == "CT":
        # A NIfTI reference says nothing; the reconstruction knows (simulate --modality ct),
        # and HU decide the figure's window and what is padding.
        ref_vol = dataclasses.replace(ref_vol, modality=rec_vols[0].modality,
                                      units=rec_vols[0].units)
        note(f"{reference.name} does not say its modality; it is evaluated as "
             f"{ref_vol.modality} ({ref_vol.units}), like the reconstruction.")
    mask_arg: object = None
    if mask is not None:
        if mask.strip().lower() == "auto":
            mask_arg = "auto"
        else:
            mask_path = Path(mask)
            if not mask_path.exists():
                raise InputError(f"Mask {mask_path} does not exist (give a file or 'auto').")
            mask_arg = load_volume(mask_path)

    typer.echo(f"Reference:      {reference}  ({ref_vol.modality}, shape {ref_vol.shape}, "
               f"spacing {' x '.join(f'{s:.4g}' for s in ref_vol.spacing)} mm)")
    results = []
    mask_arr = None
    if std and not paired:
        note(f"The {len(std)} std map(s) are shown in the figure only: their coverage of the "
             f"error needs one --std per reconstruction, in the same order.")
    for i, (path, rec_vol) in enumerate(zip(recons, rec_vols, strict=True)):
        result, mask_arr = compare_volumes(  # type: ignore[arg-type]
            rec_vol, ref_vol, mask=mask_arg, data_range=data_range, slice_axis=slice_axis,
            exclude_padding=not include_padding, std=std_vols[i] if paired else None)
        result.inputs.update({"recon": str(path), "reference": str(reference)})
        if paired:
            result.inputs["std"] = str(std[i])
        if mask is not None:
            result.inputs["mask"] = mask
        results.append(result)
        typer.echo(f"Reconstruction: {path}")
        if "reoriented" in result.inputs:
            note(f"{path.name} has the reference's voxels in another axis order or direction "
                 f"({result.inputs['reoriented']}); it was reordered onto the reference's grid.")
        typer.echo(format_table(result, units=ref_vol.units))

    from medrecon.io.atomic import output_group

    with output_group():  # the JSON, CSV and figure: all or none
        if json_out is not None:
            write_metrics_json(results, json_out, extra={"units": ref_vol.units})
        if csv_out is not None:
            write_metrics_csv(results, csv_out)
        if figure is not None:
            from medrecon.report import orthogonal_slices_figure

            labels = _labels(recons)
            volumes = {"Reference": ref_vol.data}
            annotations = {}
            for label, path, rec_vol, result in zip(labels, recons, rec_vols, results, strict=True):
                volumes[label] = on_reference_grid(rec_vol, ref_vol, str(path)).data
                v = result.volume
                annotations[label] = f"PSNR {v['psnr']:.2f} dB\nSSIM {v['ssim']:.4f}"
            std_maps = {f"Std ({label})" if len(std) > 1 else "Std":
                        on_reference_grid(vol, ref_vol, f"std map {path}").data
                        for label, path, vol in zip(_labels(std), std, std_vols, strict=True)}
            unit = f" {ref_vol.units}" if ref_vol.units else ""
            grey = window
            if grey is None and ref_vol.units == "HU":
                grey = CT_WINDOW
            first = results[0]
            footnote = (f"Metrics over: {first.region}; data range L = "
                        f"{first.data_range:.4g}{unit} ({first.data_range_source}).")
            footnote += (f" Grey window {grey[0]:g} to {grey[1]:g}{unit}." if grey is not None
                         else " Grey window: 0.5th to 99.5th percentile of the reference in the "
                              "region.")
            footnote += " Error and std maps: 0 to their 99th percentile in the region, one scale."
            names = ", ".join(p.name for p in recons)
            orthogonal_slices_figure(
                volumes,
                figure,
                affine=ref_vol.affine,
                mask=mask_arr,
                blank=None if include_padding else padding_mask(ref_vol),
                std=std_maps or None,
                window=grey,
                annotations=annotations,
                units=ref_vol.units,
                title=f"{names} vs {reference.name}",
                footnote=footnote,
            )
    for _, written in outputs:
        typer.echo(f"Wrote {written}")


def _labels(paths: list[Path]) -> list[str]:
    """Figure row labels: "Reconstruction" for one, else file names (whole paths if shared)."""
    if len(paths) == 1:
        return ["Reconstruction"]
    names = [p.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]
