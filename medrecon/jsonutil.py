"""Turning nested Python/numpy values into strict JSON values.

One converter for every JSON the package writes (measurement-file attributes, evaluation
results, ``metrics.json`` of the demo), low in the layering so that ``io``, ``metrics`` and the
top-level modules can all import it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` with every part made strict-JSON friendly, recursively.

    Dicts get string keys, tuples become lists, numpy arrays lists, numpy scalars Python
    scalars, paths strings, complex numbers ``[real, imag]``; non-finite floats (NaN, inf: e.g.
    the PSNR of identical volumes) become ``None`` so that ``json.dumps(..., allow_nan=False)``
    succeeds and other tools can read the result. Anything else becomes ``str(value)``.
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int | str | bool) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, complex):
        return [jsonable(value.real), jsonable(value.imag)]
    return str(value)
