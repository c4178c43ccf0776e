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

__all__ = ["MAX_DEPTH", "jsonable", "parse_bounded"]

#: Deepest nesting accepted in a JSON or YAML document read from a user's file: real configs,
#: prior descriptions and safetensors headers are a few levels deep; 100,000 levels exhaust
#: Python's recursion limit in the parsers and in every recursive consumer.
MAX_DEPTH = 64


def _depth(value: Any) -> int:
    """Nesting depth of dicts and lists in ``value`` (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                break
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_bounded(parse: Any, text: Any, source: str, error: type[Exception] | None = None) -> Any:
    """``parse(text)`` (``json.loads``, ``yaml.safe_load``) refusing deep nesting.

    Raises:
        ``error`` (default :class:`medrecon.errors.InputError`): the document is nested more than :data:`MAX_DEPTH` levels
            (the parser's RecursionError, or a depth counted after parsing).
    """
    from medrecon.errors import InputError

    error = error or InputError
    message = (f"{source} is nested more than {MAX_DEPTH} levels deep; it is not a file "
               f"medrecon wrote or reads.")
    try:
        value = parse(text)
    except RecursionError:
        raise error(message) from None
    if _depth(value) > MAX_DEPTH:
        raise error(message)
    return value


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
