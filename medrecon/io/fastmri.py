"""fastMRI import: raw fastMRI HDF5 files read as 2D multi-slice MR measurements.

fastMRI (Zbontar et al., 2018) stores k-space as ``kspace`` [slices, coils, kx, ky] with an
optional ``mask`` over ky and the ISMRMRD header; :func:`read_fastmri` turns such a file into
a :class:`~medrecon.io.measurement.Measurement` (voxel size from the header's encoded space,
no coil maps), and :func:`medrecon.io.measurement.read_measurement` hands it any HDF5 file
with ``kspace`` and no medrecon format tag. A file format, no physics, as the rest of
:mod:`medrecon.io`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medrecon import __version__
from medrecon.errors import MeasurementError
from medrecon.io.hdf5_read import read_numeric
from medrecon.io.measurement import Measurement, ReferenceGeometry
from medrecon.io.operator_schema import mri_operator_description
from medrecon.jsonutil import jsonable as _jsonable

__all__ = ["is_fastmri_file", "read_fastmri"]


def is_fastmri_file(path: str | Path) -> bool:
    """True for an HDF5 file with a fastMRI ``kspace`` dataset and no medrecon format tag."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "kspace" in f and f.attrs.get("format") is None
    except OSError:
        return False



def _ismrmrd_geometry(header: str | None) -> tuple[tuple[float, float, float] | None, str]:
    """Voxel size (mm) along (kx, ky, slice) from the ISMRMRD header's encoded space."""
    if not header:
        return None, "the file has no ismrmrd_header"
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(header)
    except ET.ParseError:
        return None, "its ismrmrd_header is not valid XML"

    def find(node: Any, *names: str) -> Any:
        for name in names:
            nxt = None
            for child in node:
                if child.tag.split("}")[-1] == name:
                    nxt = child
                    break
            if nxt is None:
                return None
            node = nxt
        return node

    enc = find(root, "encoding", "encodedSpace")
    if enc is None:
        return None, "its ismrmrd_header has no encoding/encodedSpace"
    try:
        fov = [float(find(enc, "fieldOfView_mm", a).text) for a in ("x", "y", "z")]
        mat = [int(find(enc, "matrixSize", a).text) for a in ("x", "y", "z")]
    except (AttributeError, TypeError, ValueError):
        return None, "its ismrmrd_header lacks the encoded field of view or matrix size"
    if any(v <= 0 for v in fov) or any(v <= 0 for v in mat):
        return None, "its ismrmrd_header gives a non-positive field of view or matrix size"
    return (fov[0] / mat[0], fov[1] / mat[1], fov[2] / mat[2]), ""


def read_fastmri(path: str | Path) -> Measurement:
    """Read a raw fastMRI HDF5 file as a 2D multi-slice MR measurement.

    fastMRI stores ``kspace`` as [slices, coils, kx, ky] (multi-coil) or [slices, kx, ky]
    (single-coil) with the same centred orthonormal FFT convention as medrecon. Axes map onto
    ours as C = coils, I = kx (readout, fully sampled), J = ky (phase encode), K = slices, i.e.
    ``data[c, i, j, k] = kspace[k, c, i, j]``, operator ``fft_dims = (0, 1)``.

    The mask is the file's ``mask`` dataset (over ky, as in fastMRI's test sets) when present,
    else the ky lines holding non-zero samples. Voxel sizes come from the ISMRMRD header's
    encoded field of view divided by the encoded matrix (readout oversampling included, since
    the image grid is the encoded one); without them 1 mm is used and a warning says so. The
    image is centred on the scanner origin: fastMRI files carry no patient position.

    Coil maps are not in fastMRI files, so ``coil_maps`` is None; building the reconstruction
    problem estimates them (ESPIRiT from the fully sampled centre) when it needs them.
    """
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        if "kspace" not in f:
            raise MeasurementError(f"{path} has no 'kspace' dataset; it is not a fastMRI file.")
        ks = read_numeric(f["kspace"], "kspace", path)
        mask_1d = read_numeric(f["mask"], "mask", path) if "mask" in f else None
        header = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
        attrs = {k: _jsonable(v.decode() if isinstance(v, bytes) else v)
                 for k, v in f.attrs.items()}
    if not np.iscomplexobj(ks):
        raise MeasurementError(f"{path}: fastMRI k-space must be complex, got {ks.dtype}.")
    if ks.ndim == 3:
        ks = ks[:, None]
    if ks.ndim != 4:
        raise MeasurementError(
            f"{path}: fastMRI k-space must be [slices, coils, kx, ky] or [slices, kx, ky], "
            f"got shape {ks.shape}.")
    if not np.all(np.isfinite(ks)):
        raise MeasurementError(f"{path}: the k-space holds NaN or infinite values.")
    n_slices, n_coils, nx, ny = ks.shape
    data = np.ascontiguousarray(np.transpose(ks, (1, 2, 3, 0))).astype(np.complex64)
    if mask_1d is not None:
        mask_1d = np.asarray(mask_1d).reshape(-1)
        if mask_1d.shape[0] != ny:
            raise MeasurementError(
                f"{path}: the mask has {mask_1d.shape[0]} entries but k-space has {ny} ky lines.")
        sampled = mask_1d.astype(bool)
    else:
        sampled = np.any(np.abs(data) > 0, axis=(0, 1, 3))
    mask = sampled.astype(np.uint8).reshape(1, ny, 1)
    data = data * mask  # zeros where not sampled, as our files store them

    if isinstance(header, bytes | np.bytes_):
        header = header.decode("utf-8", "replace")
    spacing, why = _ismrmrd_geometry(None if header is None else str(header))
    if spacing is None:
        warnings.warn(f"{path.name}: no voxel size available ({why}); using 1 mm.",
                      stacklevel=2)
        spacing = (1.0, 1.0, 1.0)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.array([nx, ny, n_slices]) - 1) / 2.0)
    reference = ReferenceGeometry(affine, (nx, ny, n_slices), modality="MR", units="a.u.",
                                  series_description=f"fastMRI {path.stem}",
                                  meta={"source": str(path), "fastmri_attrs": attrs})
    n_acq = int(sampled.sum())
    acquisition = {"source": "fastmri", "acceleration": float(ny / max(n_acq, 1)),
                   "acquired_lines": n_acq, "version": __version__}
    if "acceleration" in attrs:
        acquisition["nominal_acceleration"] = attrs["acceleration"]
    operator = mri_operator_description((nx, ny, n_slices), n_coils, "2d")
    return Measurement("MR", data, mask, reference, noise={"model": "unknown"},
                       operator=operator, acquisition=acquisition)
