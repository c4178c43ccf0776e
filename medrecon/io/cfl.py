"""BART's ``.cfl`` / ``.hdr`` array format (read and write), for interoperability and peer checks.

A BART array ``name`` is two files: ``name.hdr``, a text header ``# Dimensions`` followed by one
line of (at least 16) dimension sizes, and ``name.cfl``, the complex64 samples in column-major
(Fortran) order with the first dimension fastest. BART's conventional MRI dimensions are
``(x, y, z, coil, map, ...)``, so medrecon's k-space ``(C, I, J, K)`` corresponds to the BART
array ``(I, J, K, C)`` (use ``np.moveaxis(k, 0, -1)``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medrecon.errors import InputError

__all__ = ["read_cfl", "write_cfl"]

#: BART arrays have at least this many dimensions (trailing ones are 1).
BART_DIMS = 16


def _base(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".cfl", ".hdr") else p


def write_cfl(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` (any shape, cast to complex64) as ``path.hdr`` + ``path.cfl``."""
    base = _base(path)
    arr = np.asarray(array, dtype=np.complex64)
    dims = list(arr.shape) + [1] * max(BART_DIMS - arr.ndim, 0)
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(map(str, dims)) + "\n")
    arr.ravel(order="F").tofile(base.with_suffix(".cfl"))


def read_cfl(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Read ``path.hdr`` + ``path.cfl`` as a complex64 array.

    Trailing singleton dimensions beyond ``ndim`` (default: the last non-singleton one) are
    dropped.
    """
    base = _base(path)
    try:
        lines = base.with_suffix(".hdr").read_text().splitlines()
    except OSError as exc:
        raise InputError(f"Cannot read the BART header {base.with_suffix('.hdr')}: {exc}.") from exc
    try:
        at = next(i for i, line in enumerate(lines) if line.strip() == "# Dimensions")
        dims = [int(v) for v in lines[at + 1].split()]
    except (StopIteration, IndexError, ValueError):
        raise InputError(f"{base.with_suffix('.hdr')} is not a BART header.") from None
    data = np.fromfile(base.with_suffix(".cfl"), dtype=np.complex64)
    if data.size != int(np.prod(dims)):
        raise InputError(
            f"{base.with_suffix('.cfl')} holds {data.size} samples, the header says "
            f"{int(np.prod(dims))}."
        )
    if ndim is None:
        ndim = max((i + 1 for i, d in enumerate(dims) if d != 1), default=1)
    if any(d != 1 for d in dims[ndim:]):
        raise InputError(f"The BART array has more than {ndim} dimensions: {dims}.")
    return data.reshape(dims, order="F").reshape(dims[:ndim], order="F")
