"""``medrecon simulate``: a reference volume -> an undersampled MRI or CT measurement file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from medrecon.cli.common import check_output, note, note_modality, user_errors, warn

#: Config keys set by flags, and the flag names (for error sentences about flag values).
_FLAG_OF_KEY: dict[str, str] = {
    "modality": "--modality", "seed": "--seed", "mri.coils": "--coils",
    "mri.acceleration": "--acceleration", "mri.mask": "--mask",
    "mri.calibration": "--calibration", "mri.snr": "--snr", "mri.noise_sigma": "--noise-sigma",
    "mri.dims": "--dims", "mri.phase": "--phase", "ct.geometry": "--geometry",
    "ct.views": "--views", "ct.angular_range_deg": "--angular-range", "ct.dose_i0": "--dose",
    "ct.electronic_sigma": "--electronic-sigma",
}


def register(app: typer.Typer) -> None:
    app.command("simulate", short_help="Simulate an undersampled MRI or CT measurement (.h5).")(simulate)


def _flag_sentence(text: str, given: set[str]) -> str:
    """A config-validation sentence about a flag's value, worded with the flag.

    ``<defaults> (with overrides): key 'mri.coils' must be >= 1, got 0.`` becomes
    ``--coils must be >= 1, got 0.``; other sentences lose the ``<defaults>`` prefix.
    """
    import re

    m = re.match(r"^(?P<src>.*?) \(with overrides\): key '(?P<key>[\w.]+)' (?P<rest>.*)$", text,
                 re.S)
    if m and m["key"] in given:
        return f"{_FLAG_OF_KEY[m['key']]} {m['rest']}"
    prefix = "<defaults> (with overrides): "
    if text.startswith(prefix):
        text = text[len(prefix):]
        text = re.sub(r"^in '(mri|ct)': ", "", text)
        return text[:1].upper() + text[1:]
    return text


def _config_sets(path: Path | None, key: str) -> bool:
    """True when the YAML file at ``path`` sets the top-level ``key``."""
    if path is None or not path.is_file():
        return False
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return False  # load_config reports the problem with a proper sentence
    return isinstance(data, dict) and key in data


def _declare_hu(volume: Any, reference: Path) -> Any:
    """The reference as CT in HU, as ``--modality ct`` declares (NIfTI carries no modality)."""
    import dataclasses

    from medrecon.errors import InputError
    from medrecon.intensity import looks_like_hu

    if volume.modality.upper() == "CT" or volume.units.upper() == "HU":
        return volume
    if volume.modality.upper() == "MR":
        raise InputError(f"{reference} is an MR volume, but CT simulation needs a CT volume in "
                         f"HU; give a CT reference, or use --modality mri.")
    if not looks_like_hu(volume.data, need_bone=False):
        note(f"--modality ct reads the values of {reference.name} ({volume.data.min():.4g} to "
             f"{volume.data.max():.4g}) as HU: air -1000, water 0.")
    return dataclasses.replace(volume, modality="CT", units="HU")


@user_errors
def simulate(
    reference: Path = typer.Argument(..., metavar="REFERENCE",
                                     help="Reference volume: NIfTI file or DICOM folder."),
    out: Path = typer.Argument(..., metavar="OUT", help="Output measurement file (.h5)."),
    modality: str | None = typer.Option(
        None, help="mri or ct (default: from --config, else from the reference's modality); "
                   "ct reads a reference without modality (NIfTI) as HU."),
    coils: int | None = typer.Option(None, help="MRI: number of receive coils (default: 8)."),
    acceleration: float | None = typer.Option(
        None, help="MRI: target acceleration, total / acquired phase encodes (default: 8)."),
    mask: str | None = typer.Option(
        None, help="MRI: poisson|gaussian (3d) or random|equispaced (2d) (default: poisson / random)."),
    calibration: int | None = typer.Option(
        None, help="MRI: fully sampled centre, lines (2d) or box side (3d) (default: 24, or "
                   "less where the phase-encode matrix is small)."),
    snr: float | None = typer.Option(
        None, help="MRI: target SNR, RMS of the fully sampled noise-free k-space / noise std "
                   "(default: 30)."),
    noise_sigma: float | None = typer.Option(
        None, "--noise-sigma", help="MRI: complex noise std per k-space sample, in the "
                                    "reference's intensity units (instead of --snr)."),
    dims: str | None = typer.Option(None, help="MRI: 3d or 2d (multi-slice along axis 2) (default: 3d)."),
    phase: str | None = typer.Option(
        None, help="MRI: smooth (synthetic phase, pi peak to peak) or none (default: smooth)."),
    geometry: str | None = typer.Option(None, help="CT: parallel, fan or cone (default: parallel)."),
    views: int | None = typer.Option(None, help="CT: number of projection angles (default: 60)."),
    angular_range: float | None = typer.Option(
        None, "--angular-range", help="CT: angular range in degrees, up to 360 (default: 180 for "
                                      "parallel, 360 for fan and cone; less is limited-angle)."),
    dose: float | None = typer.Option(
        None, "--dose", min=0.0,
        help="CT: incident photons per ray I0 (Poisson noise) (default: 1e5; 0: noise-free)."),
    electronic_sigma: float | None = typer.Option(
        None, "--electronic-sigma", help="CT: electronic noise std in photon counts (default: 0)."),
    seed: int | None = typer.Option(None, help="Seed of mask, phase, coils and noise (default: 0)."),
    config: Path | None = typer.Option(
        None, "--config", help="YAML settings (configs/simulate/*.yaml); flags override it."),
    series: str | None = typer.Option(
        None, "--series", help="Series to read when the DICOM folder holds several: its "
                               "SeriesInstanceUID, a unique prefix of it, or its series number."),
    frame: int | None = typer.Option(None, "--frame", min=0,
                                     help="Frame of a 4D NIfTI reference (0-based)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace existing outputs (an input never)."),
) -> None:
    """Simulate an undersampled acquisition of REFERENCE and write it to OUT (.h5).

    The resolved settings are written next to OUT as <OUT stem>.simulate.yaml.
    """
    from medrecon.config import dump_config, load_config, to_dict
    from medrecon.errors import ConfigError, InputError
    from medrecon.io import load_volume
    from medrecon.io.measurement import write_measurement
    from medrecon.simulate import THIN_SLAB, SimulationConfig
    from medrecon.simulate import simulate as run_simulation

    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise InputError(f"The output must be an HDF5 file ending in .h5, got {out.name}.")
    if snr is not None and noise_sigma is not None:
        raise InputError("Give either --snr or --noise-sigma, not both.")
    if config is not None and config.is_dir():
        raise InputError(f"--config {config} is a folder; give a YAML file.")
    cfg_out = out.with_name(out.name.rsplit(".", 1)[0] + ".simulate.yaml")
    check_output(out, "file", inputs=[reference, config], overwrite=overwrite)
    check_output(cfg_out, "file", inputs=[reference, config], overwrite=overwrite)
    volume = load_volume(reference, series=series, frame=frame)
    note_modality(volume)
    if modality is not None and modality.lower() == "ct":
        volume = _declare_hu(volume, reference)

    overrides: dict[str, Any] = {}
    if modality is not None:
        overrides["modality"] = modality.lower()
    elif not _config_sets(config, "modality"):
        overrides["modality"] = "ct" if volume.modality.upper() == "CT" else "mri"
    flags = {"mri.coils": coils, "mri.acceleration": acceleration, "mri.mask": mask,
             "mri.calibration": calibration, "mri.dims": dims, "mri.phase": phase,
             "ct.geometry": geometry, "ct.views": views, "ct.angular_range_deg": angular_range,
             "ct.dose_i0": dose, "ct.electronic_sigma": electronic_sigma, "seed": seed}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if dose == 0:  # no photon noise: the settings' None
        overrides["ct.dose_i0"] = None
    if snr is not None:
        overrides.update({"mri.snr": snr, "mri.noise_sigma": None})
    if noise_sigma is not None:
        overrides.update({"mri.noise_sigma": noise_sigma, "mri.snr": None})
    if dims is not None and mask is None and not _config_sets(config, "mri"):
        # The default mask follows the acquisition type.
        overrides["mri.mask"] = "poisson" if dims.lower() == "3d" else "random"
    given = {k for k, v in flags.items() if v is not None}
    given |= {k for k in ("mri.snr", "mri.noise_sigma") if overrides.get(k) is not None}
    if modality is not None:
        given.add("modality")
    try:
        cfg = load_config(config, SimulationConfig, overrides=overrides)
    except ConfigError as exc:
        raise ConfigError(_flag_sentence(str(exc), given)) from None
    chosen = cfg.modality.value
    other = "ct" if chosen == "mri" else "mri"
    stray = [_FLAG_OF_KEY[k] for k in sorted(given) if k.startswith(f"{other}.")]
    if stray:
        source = ("--modality" if modality is not None else "the config file"
                  if _config_sets(config, "modality") else "the reference's modality")
        article = "an" if chosen == "mri" else "a"
        raise InputError(f"{stray[0]} applies to {other.upper()} simulation, but this is "
                         f"{article} {chosen.upper()} simulation (from {source}).")

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = run_simulation(volume, cfg, device=device)
    for w in caught:  # one line each on stderr, e.g. an MRI simulation of a CT volume
        warn(str(w.message))
    if chosen == "mri" and cfg.mri.dims.value == "3d" and 1 < volume.shape[2] < THIN_SLAB \
            and dims is None and not _config_sets(config, "mri"):
        note(f"{reference.name} is a thin slab of {volume.shape[2]} slices, simulated as a 3D "
             f"acquisition (both phase-encode axes undersampled); --dims 2d simulates the "
             f"multi-slice scan usual for so few slices.")
    if m.modality == "MR" and cfg.mri.calibration is None:
        # Record the calibration chosen from the matrix, so that the settings file reproduces it.
        cfg = dataclasses.replace(cfg, mri=dataclasses.replace(
            cfg.mri, calibration=int(m.acquisition["calibration"])))
    m.acquisition["config"] = to_dict(cfg)
    m.acquisition["reference_path"] = str(reference)
    from medrecon.io.atomic import output_group

    with output_group():  # the measurement and its settings: all or none
        path = write_measurement(m, out)
        cfg_path = dump_config(cfg, cfg_out)
    if m.modality == "MR":
        a = m.acquisition
        typer.echo(
            f"Wrote MR k-space {tuple(m.data.shape)} (coils, I, J, K) to {path}: "
            f"{a['dims']} {a['mask']} mask, acceleration {a['acceleration']:.2f} "
            f"(target {a['target_acceleration']:g}), noise sigma {m.noise['sigma']:.4g}"
            + (f" (SNR {a['snr']:g})" if a.get("snr") else "") + f"; settings in {cfg_path}")
    else:
        noise = (f"I0 {cfg.ct.dose_i0:.3g} photons per ray (Poisson noise)"
                 if cfg.ct.dose_i0 is not None else "noise-free")
        typer.echo(f"Wrote CT sinogram {tuple(m.data.shape)} (views, rows, columns) to {path}: "
                   f"{cfg.ct.geometry.value} beam, {cfg.ct.views} views, {noise}; settings in "
                   f"{cfg_path}")
