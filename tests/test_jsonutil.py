"""The one JSON converter: numpy, paths, complex and non-finite floats to strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from medrecon.jsonutil import jsonable


def test_jsonable_makes_strict_json() -> None:
    value = {
        1: np.float32(0.5),
        "arr": np.arange(3, dtype=np.int16),
        "nested": ({"nan": math.nan, "inf": np.float64(np.inf)}, [np.bool_(True), None]),
        "path": Path("a") / "b.h5",
        "complex": np.complex64(1 - 2j),
        "other": np.dtype("float32"),
    }
    out = jsonable(value)
    assert out == {
        "1": 0.5,
        "arr": [0, 1, 2],
        "nested": [{"nan": None, "inf": None}, [True, None]],
        "path": str(Path("a") / "b.h5"),
        "complex": [1.0, -2.0],
        "other": "float32",
    }
    assert type(out["arr"][0]) is int and type(out["nested"][1][0]) is bool
    json.dumps(out, allow_nan=False)  # strict JSON: raises on NaN, numpy types or paths
