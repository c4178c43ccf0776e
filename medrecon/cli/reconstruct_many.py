"""``medrecon reconstruct-many``: many measurements -> one folder of reconstructions and a
summary table; sharded over GPUs when launched with ``torchrun``."""

from __future__ import annotations

from pathlib import Path

import typer

from medrecon.cli.common import EXIT_USER_ERROR, check_output, user_errors
from medrecon.cli.reconstruct import (
    GUARD,
    ITERATIONS,
    LAM,
    METHOD,
    PRIOR,
    SAMPLER,
    SAMPLES,
    SEED,
    SETTINGS,
    STEPS,
    TOL,
    diffusion_flags,
    method_extra,
    parse_weight,
)


def register(app: typer.Typer) -> None:
    app.command("reconstruct-many",
                short_help="Reconstruct many measurements (sharded over torchrun ranks).")(
        reconstruct_many)


@user_errors
def reconstruct_many(
    inputs: list[Path] = typer.Argument(
        ..., metavar="INPUT",
        help="Measurement files (.h5), folders of them, or CSV manifests with the columns "
             "measurement, reference (optional) and output (optional name)."),
    out_dir: Path = typer.Option(..., "--out-dir", help="Folder for the outputs and summary."),
    method: str = METHOD,
    lam: str = LAM,
    iterations: int | None = ITERATIONS,
    tol: float = TOL,
    device: str = typer.Option(
        "auto", help="auto, cpu, cuda or cuda:N; under torchrun auto and cuda mean each "
                     "rank's GPU cuda:LOCAL_RANK."),
    format: str = typer.Option("nifti", "--format",
                               help="nifti (<name>.nii.gz) or dicom (a folder <name>)."),
    progress: bool = typer.Option(False, "--progress/--no-progress",
                                  help="Show each reconstruction's progress bar."),
    settings: list[str] = SETTINGS,
    prior: str | None = PRIOR,
    sampler: str | None = SAMPLER,
    steps: int | None = STEPS,
    samples: int | None = SAMPLES,
    seed: int | None = SEED,
    guard: str | None = GUARD,
) -> None:
    """Reconstruct every INPUT with one method into --out-dir, as `medrecon reconstruct` would
    one by one (same outputs and settings files), loading the prior once.

    Launched with `torchrun --nproc_per_node N -m medrecon.cli.main reconstruct-many ...`,
    rank r takes inputs r, r+N, ... on GPU cuda:LOCAL_RANK. Complete outputs (volume and
    settings file present) are skipped; a failing input is reported and the others go on (exit
    code 2 at the end). Rank 0 writes summary.csv and summary.json into --out-dir.
    """
    from medrecon.batch import BatchRow, collect_items
    from medrecon.batch import reconstruct_many as run_many
    from medrecon.errors import InputError
    from medrecon.reconstruct import ReconOptions

    fmt = format.strip().lower()
    if fmt not in ("nifti", "dicom"):
        raise InputError(f"Unknown output format {format!r}; use nifti or dicom.")
    check_output(out_dir, "folder", flag="--out-dir", inputs=inputs)
    name = method.strip().lower()
    extra = method_extra(name, settings,
                         diffusion_flags(prior, sampler, steps, samples, seed, guard))
    items = collect_items(inputs)
    options = ReconOptions(lam=parse_weight(lam), iterations=iterations, tol=tol, device=device,
                           progress=progress, extra=extra)
    if items:
        # Check the method and its options once, before any rank starts work.
        from medrecon.io.measurement import read_measurement
        from medrecon.reconstruct import check_method

        try:
            modality = read_measurement(items[0].measurement).modality
        except Exception:  # an unreadable first input is that input's failure, reported below
            modality = None
        if modality is not None:
            check_method(modality, method, options)

    def report(row: BatchRow) -> None:
        if row.status == "failed":  # one line; the input's name once
            where = "" if row.input in row.error else f"{row.input}: "
            typer.echo(f"Failed: {where}{row.error}", err=True)

    rows = run_many(items, method, options, out_dir, fmt=fmt, report=report)
    import os

    if os.environ.get("RANK", "0") == "0":
        counts = {s: sum(r.status == s for r in rows) for s in ("ok", "skipped", "failed")}
        typer.echo(f"{len(rows)} inputs: {counts['ok']} reconstructed, {counts['skipped']} "
                   f"already complete, {counts['failed']} failed; summary in "
                   f"{out_dir / 'summary.csv'} and {out_dir / 'summary.json'}")
    if any(r.status == "failed" for r in rows):
        raise typer.Exit(EXIT_USER_ERROR)
