"""``medrecon reconstruct``: a measurement file -> a reconstructed volume (NIfTI or DICOM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medrecon.cli.common import check_output, check_volume_output, user_errors, warn

# Options that `medrecon reconstruct-many` shares: one definition for both commands.
METHOD = typer.Option(
    ..., help="MR: zero-filled, cg-sense, l1-wavelet, tv; CT: fbp, fdk, sirt, cgls, tv; "
              "both: diffusion (learned prior + posterior sampling).")
LAM = typer.Option(
    "auto", help="cg-sense, l1-wavelet, tv: regularisation weight; auto (default): "
                 "l1-wavelet and tv choose it on held-out data, cg-sense uses its "
                 "rule; diffusion: prior weight against the data, < 1 trusts the data "
                 "more; auto: chosen on held-out data around MR 0.1, CT 1.")
ITERATIONS = typer.Option(
    None, min=1, help="Iterative methods: maximum solver iterations (default: the "
                      "method's own; diffusion: same as --steps).")
TOL = typer.Option(
    1e-4, min=0.0, help="Iterative methods: stop when the relative change (CG: relative "
                        "residual) falls below this; 0 runs every iteration.")
SETTINGS = typer.Option(
    [], "--set", metavar="KEY=VALUE",
    help="Method option, repeatable (e.g. wavelet=db2, tv_axes=[0,1], filter=hann for fbp, "
         "tiling=roll, eta=0.85, cg_iters=10, coil_energy=0.99 or zeta=1 for diffusion).")
PRIOR = typer.Option(
    None, help="diffusion: prior name (see `medrecon priors`), its .json file or its "
               "folder (default: default, the shipped prior).")
SAMPLER = typer.Option(None, help="diffusion: dds (default), dps, pc or diffpir.")
STEPS = typer.Option(None, min=1, help="diffusion: sampling steps (default 50).")
SAMPLES = typer.Option(
    None, min=1, help="diffusion: posterior samples; 2 or more also write a std volume.")
SEED = typer.Option(None, min=0, help="diffusion: random seed (default 0).")
GUARD = typer.Option(
    None, help="diffusion: on (default): compare with the self-tuned classical method "
               "(MR l1-wavelet, CT tv) on held-out data and fall back to it, or blend, "
               "where diffusion predicts them worse; off: diffusion as sampled.")


def register(app: typer.Typer) -> None:
    app.command("reconstruct", short_help="Reconstruct a measurement: classical methods or diffusion.")(reconstruct)


def _parse_settings(settings: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> dict, values parsed as YAML scalars / lists (``3``, ``db4``)."""
    import yaml

    from medrecon.errors import InputError

    out: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects KEY=VALUE, got {item!r}.")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError(f"--set {key.strip()}: cannot parse the value {value!r}.") from None
    return out


def method_extra(method: str, settings: list[str], flags: dict[str, Any]) -> dict[str, Any]:
    """The method's options (``ReconOptions.extra``) from ``--set KEY=VALUE`` and the
    diffusion flags (``--prior``, ``--steps``, ...: name -> value, None when not given); a
    diffusion flag given to another method is refused."""
    from medrecon.errors import InputError

    extra = _parse_settings(settings)
    given = [k for k, v in flags.items() if v is not None]
    if given and method != "diffusion":
        raise InputError(f"--{given[0]} applies to --method diffusion only.")
    extra.update({k: v for k, v in flags.items() if v is not None and k != "std-out"})
    return extra


def diffusion_flags(prior: str | None, sampler: str | None, steps: int | None,
                    samples: int | None, seed: int | None, guard: str | None) -> dict[str, Any]:
    """The diffusion flags of both commands for :func:`method_extra` (None: not given)."""
    return {"prior": prior, "sampler": sampler, "steps": steps, "samples": samples,
            "seed": seed, "guard": parse_switch(guard, "--guard")}


@user_errors
def reconstruct(
    measurement: Path = typer.Argument(..., metavar="MEASUREMENT",
                                       help="Measurement file (.h5, medrecon or fastMRI)."),
    out: Path = typer.Argument(..., metavar="OUT",
                               help="Output: .nii/.nii.gz file or a DICOM folder."),
    method: str = METHOD,
    lam: str = LAM,
    iterations: int | None = ITERATIONS,
    tol: float = TOL,
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    format: str = typer.Option(
        "auto", "--format", help="auto (NIfTI for .nii/.nii.gz, else DICOM), nifti or dicom."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    settings: list[str] = SETTINGS,
    prior: str | None = PRIOR,
    sampler: str | None = SAMPLER,
    steps: int | None = STEPS,
    samples: int | None = SAMPLES,
    seed: int | None = SEED,
    std_out: Path | None = typer.Option(
        None, "--std-out", help="diffusion: where to write the std volume (default: OUT_std)."),
    guard: str | None = GUARD,
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace existing outputs (an input never)."),
) -> None:
    """Reconstruct MEASUREMENT with a classical method or diffusion posterior sampling, and write
    it in the reference geometry (NIfTI, or a DICOM series derived from the reference).

    Prints the data-consistency residual ||M(Ax) - y|| / ||y||. With --method diffusion and
    --samples K >= 2 the mean is the reconstruction and the per-voxel std is written beside it.
    The resolved settings are written next to OUT as <OUT stem>.reconstruct.yaml.
    """
    import warnings

    from medrecon.config import dump_config
    from medrecon.errors import InputError
    from medrecon.io import save_volume
    from medrecon.io.atomic import output_group
    from medrecon.io.measurement import read_measurement
    from medrecon.reconstruct import ReconOptions, settings_path, std_path
    from medrecon.reconstruct import reconstruct as run_reconstruction

    name = method.strip().lower()
    fmt = check_volume_output(out, format, inputs=[measurement], overwrite=overwrite)
    cfg_out = settings_path(out)
    check_output(cfg_out, "file", inputs=[measurement], overwrite=overwrite)
    extra = method_extra(name, settings, {**diffusion_flags(prior, sampler, steps, samples,
                                                            seed, guard), "std-out": std_out})
    n_samples = extra.get("samples", 1)  # a non-integer is the library's error to report
    several = isinstance(n_samples, int) and n_samples >= 2
    if std_out is not None and not several:
        raise InputError("--std-out needs --samples 2 or more (one sample has no spread).")
    if name == "diffusion" and several:
        check_volume_output(std_out or std_path(out), fmt, inputs=[measurement, out],
                            overwrite=overwrite)
    m = read_measurement(measurement)
    ref_path = (m.acquisition or {}).get("reference_path")
    for target in [out] + ([std_out] if std_out is not None else []):
        if ref_path and target.exists() and Path(str(ref_path)).exists() \
                and Path(str(ref_path)).resolve() == target.resolve():
            raise InputError(f"{target} is the reference study this measurement was simulated "
                             f"from; write the reconstruction elsewhere.")
    options = ReconOptions(lam=parse_weight(lam), iterations=iterations, tol=tol, device=device,
                           progress=progress, extra=extra)
    with warnings.catch_warnings():  # library notices (voxel size) as they come, one line
        warnings.showwarning = lambda message, *_a, **_k: warn(f"{message}.")
        result = run_reconstruction(m, method, options)
    info = result.output.info
    with output_group():  # the volume, its std map and the settings: all or none
        path = save_volume(result.volume, out, format=fmt)
        if result.std_volume is not None:
            std_file = save_volume(result.std_volume, std_out or std_path(out), format=fmt)
        cfg_path = dump_config(result.settings, cfg_out)
    n_iter = result.output.iterations
    unit = "step" if name == "diffusion" else "iteration"
    details = [f"{n_iter} {unit}{'s' if n_iter != 1 else ''}"] if n_iter else []
    if "lam" in info:
        details.append(f"lam {info['lam']:.3g}")
    guard = info.get("guard")
    if isinstance(guard, dict) and guard.get("choice") == "classical":
        # the image is the classical method's, not diffusion's with these settings
        details.append(f"output: the guard's {guard['method']} at lam "
                       f"{guard['classical_lam']:.3g}")
    if info.get("autotune_line"):
        typer.echo(f"Self-tuned: {info['autotune_line']}")
    if info.get("guard_line"):
        typer.echo(f"Guard: {info['guard_line'].removeprefix('guard ')}")
    details.append(f"{result.seconds:.1f} s on {result.meta.get('device', options.device)}")
    typer.echo(f"Wrote {result.modality} {result.method} reconstruction {result.volume.shape} "
               f"({result.volume.units}) to {path} ({', '.join(details)}); settings in "
               f"{cfg_path}")
    if result.std_volume is not None:
        line = info.get("std_calibration_line")
        typer.echo(f"Wrote the per-voxel standard deviation to {std_file}"
                   + (f"; {line}" if line else ""))
    typer.echo(f"Data-consistency residual ||M(Ax) - y|| / ||y|| = {result.residual:.4g}")


def parse_switch(text: str | None, flag: str) -> bool | None:
    """An on/off flag (None when not given; an InputError sentence for anything else)."""
    from medrecon.errors import InputError

    if text is None:
        return None
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise InputError(f"{flag} must be on or off, got {text!r}.")


def parse_weight(text: str) -> float | str:
    """``--lam``: "auto" or a number (an InputError sentence otherwise)."""
    from medrecon.errors import InputError

    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--lam must be a number or auto, got {text!r}.") from None
