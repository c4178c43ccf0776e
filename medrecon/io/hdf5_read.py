"""Checked reading of HDF5 files that may be damaged or hostile.

Measurement files and fastMRI files come from users, so what they declare is checked before it
is trusted: a numeric dataset's dtype and size before anything is allocated (HDF5 can declare
terabytes in a few bytes), attributes for their type, JSON attributes for their form and
depth. Every refusal is one :class:`~medrecon.errors.MeasurementError` sentence naming the
file. Used by :mod:`medrecon.io.measurement` and :mod:`medrecon.io.fastmri`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import MeasurementError
from medrecon.io.parallel_zlib import read_dataset
from medrecon.jsonutil import parse_bounded

__all__ = ["as_str", "int_attr", "json_attr", "read_numeric"]


def json_attr(attrs: Any, key: str, path: Path) -> dict[str, Any]:
    """A JSON-object attribute (``{}`` when absent); bad JSON, another JSON type or nesting
    deeper than :data:`medrecon.jsonutil.MAX_DEPTH` is one :class:`MeasurementError`
    sentence."""
    raw = attrs.get(key)
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        value = parse_bounded(json.loads, raw, f"{path} (attribute {key!r})",
                              MeasurementError)
    except json.JSONDecodeError:
        raise MeasurementError(f"{path}: attribute {key!r} is not valid JSON.") from None
    if not isinstance(value, dict):
        raise MeasurementError(f"{path}: attribute {key!r} must be a JSON object.")
    return value


def as_str(value: Any) -> str:
    """A string attribute or dataset value as ``str`` (h5py returns bytes for some)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def read_numeric(node: Any, name: str, path: Path) -> np.ndarray:
    """Read the numeric dataset ``node`` after checking its dtype and declared size.

    Shapes and dtypes come from the header, so a file declaring terabytes or holding strings
    is refused before anything is allocated (HDF5 can declare any size in a few bytes).
    """
    import h5py

    from medrecon.device import host_memory_bytes

    if not isinstance(node, h5py.Dataset):
        raise MeasurementError(f"{path}: {name!r} is not a dataset.")
    if node.dtype.kind not in "biufc":
        raise MeasurementError(f"{path}: dataset {name!r} holds {node.dtype} values, not numbers.")
    nbytes = int(np.prod([int(s) for s in node.shape], dtype=object)) * int(node.dtype.itemsize)
    limit = host_memory_bytes() // 2
    if nbytes > limit:
        raise MeasurementError(
            f"{path}: dataset {name!r} declares shape {tuple(node.shape)} "
            f"({nbytes / 2**30:,.1f} GiB), more than half of this machine's memory "
            f"({limit / 2**30:,.1f} GiB).")
    return read_dataset(node)


def int_attr(attrs: Any, key: str, default: int, path: Path) -> int:
    """An integer attribute; anything else (a string, a float, an array) is refused."""
    value = attrs.get(key, default)
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise MeasurementError(f"{path}: attribute {key!r} must be an integer, got {value!r}.")
    return int(value)
