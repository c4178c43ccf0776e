"""``medrecon evaluate``: PSNR, SSIM, NMSE and HFEN of a reconstruction against a reference.

The command reads both volumes (NIfTI or DICOM), checks that they share a voxel grid, picks the
region (whole volume, a mask file, or an automatic foreground mask) and the data range, prints a
table, and optionally writes JSON, CSV and an orthogonal-slice figure, each atomically. All the
work is done by :func:`medrecon.metrics.compare_volumes` and :mod:`medrecon.report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medrecon.cli.common import check_output, note_modality, user_errors

#: The figure's default CT grey window (HU): the soft-tissue window W400 / L40.
CT_WINDOW = (-160.0, 240.0)


def register(app: typer.Typer) -> None:
    app.command("evaluate", short_help="PSNR, SSIM, NMSE, HFEN of a reconstruction vs a reference.")(evaluate)


@user_errors
def evaluate(
    recon: Path = typer.Argument(..., metavar="RECON",
                                 help="Reconstruction: NIfTI file or DICOM file/folder."),
    reference: Path = typer.Argument(..., metavar="REFERENCE",
                                     help="Reference: NIfTI file or DICOM file/folder."),
    mask: str = typer.Option(
        None, "--mask",
        help="Region to evaluate: a mask volume (nonzero voxels count) on the reference grid, "
             "or 'auto' for a foreground mask of the reference. Default: the whole volume."),
    data_range: float = typer.Option(
        None, "--data-range",
        help="Data range L for PSNR and SSIM, in the reference's units (HU for CT). "
             "Default: reference max - min."),
    slice_axis: int = typer.Option(
        2, "--slice-axis", min=0, max=2,
        help="Voxel axis (0=i, 1=j, 2=k) along which per-slice metrics are reported."),
    json_out: Path = typer.Option(None, "--json", help="Write all metrics to this JSON file."),
    csv_out: Path = typer.Option(
        None, "--csv", help="Write one row per slice plus a 'volume' row to this CSV file."),
    figure: Path = typer.Option(
        None, "--figure", help="Write a PNG of orthogonal slices with the error map."),
    window: tuple[float, float] | None = typer.Option(
        None, "--window", metavar="LOW HIGH", show_default=False,
        help="Grey window of the figure, in the reference's units. Default: CT -160 to 240 HU "
             "(soft tissue, W400 L40); otherwise the reference's min to max."),
    series: str = typer.Option(
        None, "--series",
        help="Series to pick in DICOM inputs holding several: its SeriesInstanceUID, a unique "
             "prefix of it, or its series number."),
    recon_series: str = typer.Option(
        None, "--recon-series",
        help="Series of the reconstruction when it differs from --series "
             "(e.g. both series in one study folder)."),
    frame: int | None = typer.Option(
        None, "--frame", min=0, help="Frame (0-based) of the 4D NIfTI inputs; 3D inputs are "
                                     "read as they are."),
) -> None:
    """Compare a reconstruction with a reference: PSNR, SSIM (3D Gaussian window), NMSE, HFEN.

    Metrics are given for the whole region and per slice, with the data range and region stated.
    """
    from medrecon.errors import InputError
    from medrecon.io import is_nifti_path, load_volume
    from medrecon.io.nifti import nifti_frames
    from medrecon.metrics import compare_volumes
    from medrecon.report import format_table, write_metrics_csv, write_metrics_json

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
    inputs = [recon, reference] + ([Path(mask)] if mask and mask.lower() != "auto" else [])
    outputs = [(flag, p) for flag, p in (("--json", json_out), ("--csv", csv_out),
                                         ("--figure", figure)) if p is not None]
    for flag, p in outputs:
        check_output(p, "file", flag, inputs=inputs)
    for i, (flag, p) in enumerate(outputs):
        for flag2, p2 in outputs[i + 1:]:
            if p.resolve() == p2.resolve():
                raise InputError(f"{flag} and {flag2} name the same file {p}; give two names.")

    rec_vol = load(recon, recon_series or series)
    ref_vol = load(reference, series)
    if frame is not None and not framed:
        raise InputError("--frame picks a frame of a 4D NIfTI input, but neither input has "
                         "several frames.")
    for vol in (rec_vol, ref_vol):
        note_modality(vol)
    known = ("MR", "CT")
    if rec_vol.modality in known and ref_vol.modality in known \
            and rec_vol.modality != ref_vol.modality:
        raise InputError(f"The reconstruction is {rec_vol.modality} ({rec_vol.units}) but the "
                         f"reference is {ref_vol.modality} ({ref_vol.units}); compare volumes "
                         f"of the same modality.")
    mask_arg: object = None
    if mask is not None:
        if mask.strip().lower() == "auto":
            mask_arg = "auto"
        else:
            mask_path = Path(mask)
            if not mask_path.exists():
                raise InputError(f"Mask {mask_path} does not exist (give a file or 'auto').")
            mask_arg = load_volume(mask_path)
    result, mask_arr = compare_volumes(rec_vol, ref_vol, mask=mask_arg,  # type: ignore[arg-type]
                                       data_range=data_range, slice_axis=slice_axis)
    inputs = {"recon": str(recon), "reference": str(reference)}
    if mask is not None:
        inputs["mask"] = mask
    result.inputs.update(inputs)

    typer.echo(f"Reconstruction: {recon}")
    typer.echo(f"Reference:      {reference}  ({ref_vol.modality}, shape {ref_vol.shape}, "
               f"spacing {' x '.join(f'{s:.4g}' for s in ref_vol.spacing)} mm)")
    typer.echo(format_table(result, units=ref_vol.units))

    if json_out is not None:
        write_metrics_json(result, json_out, extra={"units": ref_vol.units})
        typer.echo(f"Wrote {json_out}")
    if csv_out is not None:
        write_metrics_csv(result, csv_out)
        typer.echo(f"Wrote {csv_out}")
    if figure is not None:
        from medrecon.report import orthogonal_slices_figure

        v = result.volume
        note = f"PSNR {v['psnr']:.2f} dB\nSSIM {v['ssim']:.4f}"
        unit = f" {ref_vol.units}" if ref_vol.units else ""
        grey = window
        if grey is None and ref_vol.units == "HU":
            grey = CT_WINDOW
        footnote = (f"Metrics over: {result.region}; data range L = "
                    f"{result.data_range:.4g}{unit} ({result.data_range_source}).")
        if grey is not None:
            footnote += f" Grey window {grey[0]:g} to {grey[1]:g}{unit}."
        orthogonal_slices_figure(
            {"Reference": ref_vol.data, "Reconstruction": rec_vol.data},
            figure,
            affine=ref_vol.affine,
            mask=mask_arr,
            window=grey,
            annotations={"Reconstruction": note},
            units=ref_vol.units,
            title=f"{Path(str(recon)).name} vs {Path(str(reference)).name}",
            footnote=footnote,
        )
        typer.echo(f"Wrote {figure}")
