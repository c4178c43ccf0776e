"""Checkpoints and exported priors: safetensors for tensors, JSON for everything else.

Nothing here unpickles: tensors are read with :func:`safetensors.torch.load_file` and metadata
with :mod:`json`, so a downloaded checkpoint cannot run code.

Layouts
-------
Training checkpoint (``RUN_DIR/checkpoint/``, replaced atomically as a whole folder)::

    state.json          config, normalisation, step, world size, optimizer hyper-parameters,
                        the last logged losses
    state.safetensors   model/<param>, ema/<param>, optim/<index>/<exp_avg|exp_avg_sq|step>

All training randomness is derived from ``(seed, rank, step)`` (patches, sigmas, noise), so the
step number *is* the RNG state: nothing else has to be restored for an exact resume.

Exported prior (EMA weights only; what :func:`medrecon.priors.load_prior` reads)::

    NAME.json                         {"format": "medrecon-prior", "version": 2, "name", "weights":
                                       [shard file names], "network", "denoiser", "normalisation",
                                       "modalities", "patch_size", "spacing_mm", "training",
                                       optional "spacing_range_mm", ...}
    NAME.safetensors  or  NAME-00001-of-0000N.safetensors   (fp32 or bf16 tensors)

Format versions: 1 as above; 2 adds the voxel-size input (``network.spacing_embed``, unknown to
a version-1 reader, which therefore says "needs a newer medrecon") and ``spacing_range_mm``
([smallest, largest] voxel size per axis seen in training, mm). Version-1 files load as before.
Either version may hold ``std_calibration`` (the std-map scale fitted on held-out synthetic
heads, :mod:`medrecon.priors.calibration`, written by ``benchmarks/std_calibration.py``); a
prior without it loads as before and reports its std maps as uncalibrated, and an older
medrecon ignores it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medrecon.errors import InputError
from medrecon.io.atomic import atomic_dir, atomic_file
from medrecon.jsonutil import MAX_DEPTH, parse_bounded

PRIOR_FORMAT = "medrecon-prior"
PRIOR_VERSION = 2
CHECKPOINT_FORMAT = "medrecon-train-checkpoint"


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write ``tensors`` to ``path``; an I/O failure (a full disk, no permission) is raised as
    :class:`OSError`, as for any other file, not as safetensors' own error type."""
    from safetensors.torch import save_file

    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    except OSError:
        raise
    except Exception as exc:  # safetensors' SafetensorError: "... I/O error: TEXT (os error N)"
        found = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(exc))
        if found is None:
            raise
        raise OSError(int(found[2]), found[1], str(path)) from exc


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"{path} is not a readable safetensors file ({exc}).") from None


# --------------------------------------------------------------------------- training
def save_training_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    ema: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
) -> Path:
    """Write ``run_dir/checkpoint`` atomically (a crash never leaves a half checkpoint)."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model/{k}"] = v
    for k, v in ema.items():
        tensors[f"ema/{k}"] = v
    osd = optimizer.state_dict()
    for idx, st in osd["state"].items():
        for name, val in st.items():
            t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
            tensors[f"optim/{idx}/{name}"] = t
    state = dict(meta)
    state["format"] = CHECKPOINT_FORMAT
    state["optimizer_param_groups"] = osd["param_groups"]
    target = run_dir / "checkpoint"
    with atomic_dir(target) as tmp:
        _save_tensors(tensors, tmp / "state.safetensors")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    return target


def load_training_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor],
                                                 dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``state.json`` and ``state.safetensors`` of a checkpoint folder.

    Returns:
        (meta, model state dict, ema state dict, optimizer state dict for
        ``Optimizer.load_state_dict``).
    """
    js, st = path / "state.json", path / "state.safetensors"
    if not js.is_file() or not st.is_file():
        raise InputError(f"{path} holds no training checkpoint to resume from.")
    meta = json.loads(js.read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{js} is not a medrecon training checkpoint.")
    tensors = _load_tensors(st)
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}
    ostate: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, idx, name = k.split("/", 2)
            ostate.setdefault(int(idx), {})[name] = v
    optim = {"state": ostate, "param_groups": meta.pop("optimizer_param_groups")}
    return meta, model, ema, optim


# --------------------------------------------------------------------------- exported prior
def export_prior(
    directory: Path,
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    info: dict[str, Any],
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write ``directory/name.json`` and its safetensors shard(s); returns the JSON path.

    Args:
        state_dict: EMA weights of the :class:`EDMDenoiser` (keys ``network.*``).
        info: JSON-able description (network, denoiser, normalisation, modalities, ...).
        dtype: storage dtype of floating tensors (bf16 halves the size; loading casts to fp32).
        max_shard_bytes: split into shards no larger than this (None = one file).
    """
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state_dict.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        nbytes = v.numel() * v.element_size()
        if max_shard_bytes and size + nbytes > max_shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    if len(shards) == 1:
        names = [f"{name}.safetensors"]
    else:
        names = [f"{name}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for old in directory.glob(f"{name}*.safetensors"):
        if old.name not in names:
            old.unlink()
    for shard, fname in zip(shards, names, strict=True):
        with atomic_file(directory / fname) as tmp:
            _save_tensors(shard, tmp)
    doc = {"format": PRIOR_FORMAT, "version": PRIOR_VERSION, "name": name, "weights": names,
           "dtype": str(dtype).replace("torch.", ""), **info}
    js = directory / f"{name}.json"
    with atomic_file(js) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    return js


#: Fields every exported prior's JSON must hold (``load_prior`` and ``medrecon priors`` read them).
PRIOR_FIELDS = ("name", "weights", "network", "denoiser", "normalisation", "modalities",
                "patch_size", "spacing_mm", "uses_position")
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
_NOT_A_PRIOR = "give a prior's .json, its folder or a training run folder"


def read_prior_description(json_path: Path) -> dict[str, Any]:
    """Read and check an exported prior's ``NAME.json``; every problem is one sentence.

    Raises:
        InputError: a weights or other binary file, corrupt JSON (named as such), JSON that is
            not a medrecon prior, a newer format, or a missing field.
    """
    json_path = Path(json_path)
    if json_path.suffix.lower() in WEIGHTS_SUFFIXES:
        raise InputError(f"{json_path} is a weights file, not a prior description; give the "
                         f"prior's NAME.json or its folder.")
    try:
        raw = json_path.read_bytes()
    except IsADirectoryError:
        raise InputError(f"{json_path} is a folder; give the prior's NAME.json.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{json_path} is a binary file, not a medrecon prior description "
                         f"(NAME.json); {_NOT_A_PRIOR}.") from None
    try:
        doc = parse_bounded(json.loads, text, str(json_path))
    except json.JSONDecodeError as exc:
        if json_path.suffix.lower() == ".json":
            raise InputError(f"{json_path} is corrupt (invalid JSON at line {exc.lineno}, "
                             f"column {exc.colno}); restore it or export the prior "
                             f"again.") from None
        raise InputError(f"{json_path} is not a medrecon prior description (NAME.json); "
                         f"{_NOT_A_PRIOR}.") from None
    if not isinstance(doc, dict) or doc.get("format") != PRIOR_FORMAT:
        raise InputError(f"{json_path} is not a medrecon prior description (NAME.json); "
                         f"{_NOT_A_PRIOR}.")
    try:
        version = int(doc.get("version", 0))
    except (TypeError, ValueError):
        version = PRIOR_VERSION + 1
    if version > PRIOR_VERSION:
        raise InputError(f"{json_path} needs a newer medrecon (prior format "
                         f"{doc.get('version')!r}).")
    missing = [k for k in PRIOR_FIELDS if k not in doc]
    if missing:
        raise InputError(f"{json_path} lacks the prior field {missing[0]!r}; export the prior "
                         f"again.")
    weights = doc["weights"]
    if not (isinstance(weights, list) and weights and all(isinstance(w, str) for w in weights)):
        raise InputError(f"{json_path} has an invalid 'weights' list; export the prior again.")
    return doc


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (None when it looks complete).

    Reads only the header: 8 bytes of little-endian header length, the JSON header, and the
    data size it declares, which must match the file size exactly.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"truncated: {size} bytes"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"truncated or not a safetensors file, {size} bytes"
            header = parse_bounded(json.loads, f.read(n).decode("utf-8"), str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "not a safetensors file"
    except InputError:
        return f"its header is nested more than {MAX_DEPTH} levels deep"
    if not isinstance(header, dict):
        return "not a safetensors file"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return "not a safetensors file"
    expected = 8 + n + end
    if size < expected:
        return f"truncated: {size} of {expected} bytes"
    if size > expected:
        return f"{size - expected} bytes more than its header describes"
    return None


def check_prior_weights(json_path: Path, doc: dict[str, Any]) -> str:
    """``""`` when every weights shard of the prior exists and is complete, else
    ``"weights missing"`` or ``"weights unreadable"`` (from the file headers only: fast)."""
    problem = ""
    for fname in doc["weights"]:
        p = Path(json_path).parent / fname
        if not p.is_file():
            return "weights missing"
        if _safetensors_problem(p) is not None:
            problem = "weights unreadable"
    return problem


def read_prior_files(json_path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read an exported prior's JSON and all its shards (floating tensors cast to float32)."""
    doc = read_prior_description(json_path)
    tensors: dict[str, torch.Tensor] = {}
    for fname in doc["weights"]:
        p = json_path.parent / fname
        if not p.is_file():
            raise InputError(f"The weights file {p} of prior {json_path.name} is missing; copy "
                             f"it next to {json_path.name} or export the prior again.")
        problem = _safetensors_problem(p)
        if problem is not None:
            raise InputError(f"The weights file {p} of prior {json_path.name} is unreadable "
                             f"({problem}); copy it again or export the prior again.")
        tensors.update(_load_tensors(p))
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return doc, tensors


# --------------------------------------------------------------------------- warm start
#: State-dict prefix of the inputs a warm start may add (they start at zero).
NEW_INPUT_PREFIXES = ("network.class_embedding.spacing.",)


def warm_start_weights(source: str, config: Any) -> tuple[dict[str, torch.Tensor],
                                                           dict[str, Any]]:
    """The weights of the exported prior ``source`` (name, NAME.json or run folder) for a
    training run of ``config`` (a :class:`~medrecon.priors.config.TrainConfig`), and its
    lineage ``{"init_from": name, "init_steps": N}`` (N: the prior's total training steps).

    The prior's network must equal ``config.network`` except for inputs the config adds (a
    voxel-size embedding the prior lacks); its denoiser constants and normalisation must equal
    the config's, since the weights mean nothing under other ones. The returned state dict
    lacks only the new inputs' tensors (keys under :data:`NEW_INPUT_PREFIXES`), which keep
    their zero initialisation, so the warm-started denoiser computes what the prior computes.

    Raises:
        InputError: in one sentence, for an unreadable prior or one that does not fit.
    """
    import dataclasses

    from medrecon.priors import resolve_prior_path
    from medrecon.priors.network import NetworkConfig

    js = resolve_prior_path(source)
    doc, tensors = read_prior_files(js)
    theirs = NetworkConfig.from_dict(doc["network"])
    ours = config.network
    if (theirs.spacing_embed not in (0, ours.spacing_embed)
            or dataclasses.replace(theirs, spacing_embed=ours.spacing_embed) != ours):
        diff = sorted(k for k, v in ours.to_dict().items() if theirs.to_dict()[k] != v
                      and k != "spacing_embed") or ["spacing_embed"]
        raise InputError(f"init_from {source!r}: the prior's network differs from the config's "
                         f"in network.{diff[0]}; only new inputs (network.spacing_embed) may "
                         f"be added to a warm-started network.")
    cfg = config.to_dict()
    for section in ("denoiser", "normalisation"):
        if doc[section] != cfg[section]:
            raise InputError(f"init_from {source!r}: the prior's {section} settings differ from "
                             f"the config's; copy them from {js.name}.")
    training = doc.get("training", {})
    lineage = {"init_from": str(doc["name"]),
               "init_steps": int(training.get("total_steps", training.get("steps", 0)))}
    return tensors, lineage
