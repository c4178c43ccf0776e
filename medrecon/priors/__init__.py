"""Learned 3D diffusion priors: the EDM denoiser, its training, and the shipped default prior.

Python API::

    from medrecon.priors import load_prior, list_priors
    prior = load_prior("default", device="cuda")       # or a path to NAME.json / a run folder
    x = prior.normalisation.to_model(volume.data, "MR")  # physical units -> model space
    x0_hat = prior.denoiser(x_noisy, sigma, modality=..., position=..., spacing=...)
    prior.voxel_size_warning((0.5, 0.5, 5.0))          # None inside the trained range

Priors are found by name among the shipped ones (``medrecon/priors/weights``) and in the
folders listed in the ``MEDRECON_PRIORS`` environment variable (``os.pathsep``-separated), or
by path. Loading reads safetensors + JSON only and works offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medrecon.errors import ConfigError, InputError
from medrecon.priors.calibration import StdCalibration
from medrecon.priors.normalisation import MODALITY_IDS, Normalisation, modality_id

__all__ = ["Prior", "PriorInfo", "load_prior", "list_priors", "Normalisation", "modality_id",
           "MODALITY_IDS", "resolve_prior_path"]

PRIORS_ENV = "MEDRECON_PRIORS"
#: A prior whose JSON records no trained voxel-size range suits voxel sizes within this factor
#: of its own (the rule before spacing-conditioned priors: a >1.5x ratio was warned about).
SPACING_TOLERANCE = 1.5


def spacing_range(doc: dict[str, Any]) -> tuple[float, float]:
    """(smallest, largest) voxel size per axis, mm, that the prior described by ``doc`` (its
    JSON) suits: ``spacing_range_mm`` when recorded, else :data:`SPACING_TOLERANCE` around
    ``spacing_mm``."""
    rng = doc.get("spacing_range_mm")
    if rng is not None:
        return float(rng[0]), float(rng[1])
    sp = [float(v) for v in doc["spacing_mm"]]
    return min(sp) / SPACING_TOLERANCE, max(sp) * SPACING_TOLERANCE


@dataclass
class Prior:
    """A loaded prior, ready for sampling.

    Attributes:
        denoiser: :class:`~medrecon.priors.denoiser.EDMDenoiser` in eval mode with EMA weights.
        modalities: modalities it was trained on, e.g. ("MR", "CT"); pass
            ``modality_id(m)`` as the denoiser's ``modality`` argument.
        patch_size: training patch (X, Y, Z) in voxels; larger volumes are denoised in tiles.
        uses_position: whether the denoiser uses the patch-centre ``position`` argument.
        normalisation: physical units <-> model space maps (``to_model`` / ``from_model``).
        spacing_mm: voxel size the prior was trained at; for a prior conditioned on the voxel
            size, its reference voxel size (previews, callers that pass none).
        config: the full training config (dict).
        name: prior name.
        info: everything else from the prior's JSON (training steps, losses, validation PSNR).
        spacing_range_mm: (smallest, largest) voxel size per axis, mm, that the prior suits:
            the range seen in training when its JSON records one, else the prior's voxel
            size divided and multiplied by :data:`SPACING_TOLERANCE`.
        std_calibration: the std-map calibration of its JSON (``std_calibration``), None when
            it has none (std maps are then reported "uncalibrated"); see
            :mod:`medrecon.priors.calibration`.
    """

    denoiser: torch.nn.Module
    modalities: tuple[str, ...]
    patch_size: tuple[int, int, int]
    uses_position: bool
    normalisation: Normalisation
    spacing_mm: tuple[float, float, float]
    config: dict[str, Any]
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    spacing_range_mm: tuple[float, float] = (0.0, float("inf"))
    std_calibration: StdCalibration | None = None

    @property
    def uses_spacing(self) -> bool:
        """Whether the denoiser takes the voxel size (``spacing=`` argument)."""
        return bool(getattr(self.denoiser, "uses_spacing", False))

    def voxel_size_warning(self, spacing_mm: Sequence[float]) -> str | None:
        """None when every axis of ``spacing_mm`` lies in :attr:`spacing_range_mm`, else one
        sentence (without a final full stop, so callers may add advice) saying so."""
        lo, hi = self.spacing_range_mm
        sp = [float(v) for v in spacing_mm]
        if all(lo * (1 - 1e-6) <= v <= hi * (1 + 1e-6) for v in sp):
            return None
        size = " x ".join(f"{v:.3g}" for v in sp)
        return (f"voxel size {size} mm lies outside the {lo:.3g}-{hi:.3g} mm per axis that "
                f"prior {self.name!r} was trained for")

    @property
    def sigma_min(self) -> float:
        return float(self.denoiser.sigma_min)

    @property
    def sigma_max(self) -> float:
        return float(self.denoiser.sigma_max)

    @property
    def sigma_data(self) -> float:
        return float(self.denoiser.sigma_data)


@dataclass(frozen=True)
class PriorInfo:
    """What ``medrecon priors`` shows about one available prior.

    ``problem`` is empty for a usable prior, else what is wrong with it: ``"weights missing"``,
    ``"weights unreadable"`` (a truncated or corrupt shard), ``"description corrupt"`` (its
    NAME.json is not valid JSON) or ``"description invalid"`` (a field is missing or the format
    is newer); for the last two only ``name``, ``path`` and ``size_bytes`` are known.
    ``spacing_range_mm`` is the voxel-size range per axis the prior suits (see
    :func:`spacing_range`).
    """

    name: str
    path: Path
    modalities: tuple[str, ...]
    patch_size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    steps: int
    parameters: int
    size_bytes: int
    shipped: bool
    uses_position: bool
    problem: str = ""
    spacing_range_mm: tuple[float, float] = (0.0, 0.0)


def _shipped_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("medrecon.priors") / "weights"))


def _search_dirs() -> list[tuple[Path, bool]]:
    dirs = [(_shipped_dir(), True)]
    for d in os.environ.get(PRIORS_ENV, "").split(os.pathsep):
        if d.strip():
            dirs.append((Path(d).expanduser(), False))
    return dirs


def _weights_beside(js: Path) -> list[Path]:
    """Safetensors files named like the prior ``js`` (``NAME.safetensors`` or its shards)."""
    return sorted(p for p in js.parent.glob(f"{js.stem}*.safetensors")
                  if p.name == f"{js.stem}.safetensors" or p.name.startswith(f"{js.stem}-"))


def _scan(directory: Path) -> tuple[list[Path], list[tuple[Path, InputError]]]:
    """The prior JSONs of ``directory``, and its unreadable JSONs with the reason.

    A JSON that parses but is not a medrecon prior (a run's other files) is neither.
    """
    from medrecon.priors.checkpoint import PRIOR_FORMAT, read_prior_description

    found: list[Path] = []
    broken: list[tuple[Path, InputError]] = []
    for js in sorted(directory.glob("*.json")):
        try:
            doc = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            try:
                read_prior_description(js)
            except InputError as exc:
                broken.append((js, exc))
            except OSError:
                continue
            continue
        if isinstance(doc, dict) and doc.get("format") == PRIOR_FORMAT:
            found.append(js)
    return found, broken


def _prior_jsons(directory: Path) -> list[Path]:
    return _scan(directory)[0]


def _checked(js: Path) -> Path:
    from medrecon.priors.checkpoint import read_prior_description

    read_prior_description(js)
    return js


def resolve_prior_path(name_or_path: str | os.PathLike[str]) -> Path:
    """The ``NAME.json`` of a prior given by name, JSON path, prior folder or training run folder.

    The JSON is checked (:func:`~medrecon.priors.checkpoint.read_prior_description`): a binary
    file, corrupt JSON or a JSON that is not a prior raise :class:`InputError` in one sentence.
    """
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.is_file():
        return _checked(p)
    if p.is_dir():
        broken: list[tuple[Path, InputError]] = []
        for cand in (p, p / "prior"):
            if cand.is_dir():
                found, bad = _scan(cand)
                if len(found) == 1:
                    return _checked(found[0])
                if len(found) > 1:
                    raise InputError(f"{cand} holds several priors; name the .json file.")
                broken.extend(bad)
        if broken:
            # Prefer a JSON with weights beside it: that one was meant to be the prior.
            broken.sort(key=lambda b: not _weights_beside(b[0]))
            raise broken[0][1]
        raise InputError(f"{p} holds no medrecon prior (NAME.json + safetensors).")
    for d, _ in _search_dirs():
        cand = d / f"{s}.json"
        if cand.is_file():
            return _checked(cand)
    names = ", ".join(i.name for i in list_priors()) or "none"
    raise InputError(f"No prior named {s!r} and no such path; available priors: {names}.")


def load_prior(name_or_path: str | os.PathLike[str] = "default",
               device: torch.device | str = "cpu") -> Prior:
    """Load a prior (EMA weights, eval mode, float32) onto ``device``.

    Flash attention is switched on for CUDA and off for CPU; no gradients are tracked for the
    parameters (``requires_grad=False``), but gradients through the denoiser's input (DPS)
    still work.
    """
    from medrecon.priors.checkpoint import read_prior_files

    js = resolve_prior_path(name_or_path)
    doc, tensors = read_prior_files(js)
    calib = doc.get("std_calibration")
    std_calibration = None if calib is None else StdCalibration.from_dict(calib, str(js))
    device = torch.device(device)
    try:
        denoiser = build_denoiser_from_info(doc, device="cpu")
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{js} describes a network this medrecon cannot build "
                         f"({type(exc).__name__}: {exc}); export the prior again.") from None
    except ConfigError as exc:
        raise InputError(f"{js} describes a network this medrecon will not build: "
                         f"{str(exc)[0].lower()}{str(exc)[1:].rstrip('.')}.") from None
    missing, unexpected = denoiser.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise InputError(f"Prior {js.name} does not match its network description "
                         f"({len(missing)} missing, {len(unexpected)} unexpected tensors).")
    from medrecon.priors.network import set_flash_attention

    set_flash_attention(denoiser, device.type == "cuda")
    denoiser = denoiser.to(device).eval().requires_grad_(False)
    return Prior(
        denoiser=denoiser,
        modalities=tuple(doc["modalities"]),
        patch_size=tuple(int(v) for v in doc["patch_size"]),  # type: ignore[arg-type]
        uses_position=bool(doc["uses_position"]),
        normalisation=Normalisation.from_dict(doc["normalisation"]),
        spacing_mm=tuple(float(v) for v in doc["spacing_mm"]),  # type: ignore[arg-type]
        config=doc.get("config", {}),
        name=str(doc["name"]),
        info={k: v for k, v in doc.items() if k not in ("config", "std_calibration")},
        spacing_range_mm=spacing_range(doc),
        std_calibration=std_calibration,
    )


def build_denoiser_from_info(doc: dict[str, Any], device: torch.device | str = "cpu"
                             ) -> torch.nn.Module:
    """An untrained :class:`EDMDenoiser` with the architecture described by a prior's JSON."""
    from medrecon.priors.config import DenoiserConfig
    from medrecon.priors.denoiser import EDMDenoiser
    from medrecon.priors.network import NetworkConfig, build_network

    net_cfg = NetworkConfig.from_dict(doc["network"])
    den = DenoiserConfig(**doc["denoiser"])
    return EDMDenoiser(build_network(net_cfg, device), sigma_data=den.sigma_data,
                       sigma_min=den.sigma_min, sigma_max=den.sigma_max, p_mean=den.p_mean,
                       p_std=den.p_std, uses_position=net_cfg.uses_position,
                       num_modalities=net_cfg.num_modalities,
                       noise_embed_scale=den.noise_embed_scale,
                       uses_spacing=net_cfg.uses_spacing)


def list_priors(extra_paths: list[str | os.PathLike[str]] | None = None) -> list[PriorInfo]:
    """Shipped priors, priors in ``$MEDRECON_PRIORS`` folders and in ``extra_paths``
    (prior JSON files, prior folders or training run folders).

    A prior whose weights are missing or truncated is listed with ``problem`` set, and so is a
    search-folder ``NAME.json`` that is corrupt but has ``NAME.safetensors`` beside it. An
    ``extra_paths`` entry that is not a readable prior raises :class:`InputError`.
    """
    from medrecon.priors.checkpoint import check_prior_weights, read_prior_description

    entries: list[tuple[Path, bool]] = []
    broken: list[tuple[Path, bool, str]] = []
    for d, shipped in _search_dirs():
        if d.is_dir():
            found, bad = _scan(d)
            entries.extend((js, shipped) for js in found)
            broken.extend((js, shipped, "description corrupt") for js, _ in bad
                          if _weights_beside(js))
    for p in extra_paths or []:
        entries.append((resolve_prior_path(p), False))
    out: list[PriorInfo] = []
    seen: set[Path] = set()
    for js, shipped in entries:
        if js.resolve() in seen:
            continue
        seen.add(js.resolve())
        try:
            doc = read_prior_description(js)
        except InputError:
            broken.append((js, shipped, "description invalid"))
            continue
        size = sum((js.parent / w).stat().st_size for w in doc["weights"]
                   if (js.parent / w).is_file())
        out.append(PriorInfo(
            name=str(doc["name"]), path=js, modalities=tuple(doc["modalities"]),
            patch_size=tuple(doc["patch_size"]),  # type: ignore[arg-type]
            spacing_mm=tuple(doc["spacing_mm"]),  # type: ignore[arg-type]
            steps=int(doc.get("training", {}).get("steps", 0)),
            parameters=int(doc.get("parameters", 0)), size_bytes=size, shipped=shipped,
            uses_position=bool(doc["uses_position"]), problem=check_prior_weights(js, doc),
            spacing_range_mm=spacing_range(doc),
        ))
    for js, shipped, problem in broken:
        if js.resolve() in seen and problem == "description corrupt":
            continue
        seen.add(js.resolve())
        out.append(PriorInfo(
            name=js.stem, path=js, modalities=(), patch_size=(0, 0, 0),
            spacing_mm=(0.0, 0.0, 0.0), steps=0, parameters=0,
            size_bytes=sum(w.stat().st_size for w in _weights_beside(js)), shipped=shipped,
            uses_position=False, problem=problem))
    return out
