"""``medrecon train``: train a 3D diffusion prior on NIfTI/DICOM studies or synthetic heads.

Runs on one device as is, and with DDP under ``torchrun --nproc-per-node N medrecon train ...``
(or ``torchrun -m medrecon.cli.main train ...``): one process per GPU, rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medrecon.cli.common import check_output, user_errors


def register(app: typer.Typer) -> None:
    app.command("train", short_help="Train a 3D diffusion prior on your studies or synthetic heads.")(train)


@user_errors
def train(
    data: list[Path] = typer.Option(
        None, "--data", metavar="PATH", help="NIfTI file, DICOM series folder, folder tree, or manifest "
        "(.txt one path per line; .csv with path[,modality]); repeatable."),
    config: Path = typer.Option(None, "--config", "-c",
                                help="Prior config YAML (see configs/prior/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder for logs, checkpoints and "
                             "the exported prior."),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from OUT/checkpoint."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Train on procedural synthetic "
                                   "heads (MR and CT) instead of files."),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a config value, e.g. "
                                   "--set optim.steps=2000; repeatable."),
    steps: int = typer.Option(None, "--steps", min=1, help="Shortcut for --set optim.steps=N."),
    max_minutes: float = typer.Option(None, "--max-minutes", min=0.0,
                                      help="Stop (with a checkpoint) after this many minutes "
                                           "of wall-clock time."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    workers: int = typer.Option(0, min=0, help="Processes for loading training volumes."),
    dist_timeout: float = typer.Option(
        None, "--dist-timeout", min=0.1,
        help="Several processes (torchrun): minutes a collective waits for the others before "
             "the run fails (default: $MEDRECON_DIST_TIMEOUT_MIN, else 10)."),
) -> None:
    """Train a prior; `medrecon priors OUT` then lists it and `--prior OUT` uses it."""
    from medrecon.errors import InputError
    from medrecon.priors.config import load_train_config

    overrides = list(set_ or [])
    if steps is not None:
        overrides.append(f"optim.steps={steps}")
    if synthetic:
        if data:
            raise InputError("Give either --data or --synthetic, not both.")
        overrides.append("data.source=synthetic")
    if resume and config is None and (out / "config.yaml").is_file():
        config = out / "config.yaml"
    if config is not None and config.is_dir():
        raise InputError(f"--config {config} is a folder; give a YAML file.")
    cfg = load_train_config(config, overrides)
    if cfg.data.source == "files" and not data:
        raise InputError("Give training data with --data PATH, or use --synthetic.")
    if data and cfg.data.source != "files":
        raise InputError(f"--data would be ignored: the config trains on data.source "
                         f"{cfg.data.source!r}; drop --data or add --set data.source=files.")
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, not {device!r}.")
    check_output(out, "folder", "--out")

    import os
    import shutil

    from medrecon.priors.train import train as run_training

    # A run that fails before its first checkpoint leaves nothing behind (only a folder that
    # this call created is removed, and only on rank 0).
    fresh = not out.exists() and not resume and int(os.environ.get("RANK", "0")) == 0
    try:
        result = run_training(cfg, out, data_paths=list(data or []), resume=resume,
                              device=device, max_minutes=max_minutes, workers=workers,
                              dist_timeout=dist_timeout)
    except BaseException:
        if fresh and out.is_dir() and not (out / "checkpoint").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise

    if int(os.environ.get("RANK", "0")) == 0:
        last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
        typer.echo(f"Trained {cfg.name} to step {result.step} (last loss {last}); "
                   f"prior written to {result.prior_json}")
