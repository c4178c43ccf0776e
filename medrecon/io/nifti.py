"""NIfTI-1/2 reading and writing through nibabel, with the exact affine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medrecon.errors import InputError
from medrecon.intensity import looks_like_hu
from medrecon.io.atomic import atomic_file
from medrecon.io.parallel_zlib import gzip_bytes
from medrecon.io.volume import Volume, check_affine

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _reason(exc: BaseException) -> str:
    """nibabel's complaint as one clause: its first line, without the file name or full stop."""
    import re

    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = (lines[0] if lines else type(exc).__name__).rstrip(".")
    return re.sub(r"\.\s+(?=[A-Z])", "; ", text)


def read_nifti(path: str | Path, frame: int | None = None) -> Volume:
    """Read a 3D NIfTI file, or one frame of a 4D file when ``frame`` is given.

    The affine is the sform when its code is set, else the qform (nibabel's ``affine``). A 4D
    file with one frame reads as 3D. Modality and units come from a medrecon description
    ("medrecon:<modality>:<units>:<text>"); other files are "OT", except that values spanning
    air to bone (:func:`medrecon.intensity.looks_like_hu`) are read as CT in HU, with a
    one-line explanation in ``meta["modality_note"]``.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"Cannot read NIfTI file {path} ({_reason(exc)}); check that it is "
                         f"complete, or export it again.") from None
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biufc":
        # RGB(A) or other structured voxels: no single intensity per voxel.
        raise InputError(f"{path} holds {'colour (RGB)' if dtype.fields else str(dtype)} "
                         f"voxels; give a greyscale image.")
    check_affine(img.affine, str(path))
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"Cannot read NIfTI file {path} ({_reason(exc)}); check that it is "
                         f"complete, or export it again.") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]  # a 4D (or 5D) file of one frame is a 3D volume
    if data.ndim == 4:
        if frame is None:
            raise InputError(
                f"{path} is 4D with {data.shape[3]} frames; choose one with --frame N."
            )
        if not 0 <= frame < data.shape[3]:
            raise InputError(f"Frame {frame} is out of range: {path} has {data.shape[3]} frames.")
        data = data[..., frame]
    elif frame is not None and frame != 0:
        raise InputError(f"{path} holds one 3D volume; --frame applies only to 4D files "
                         f"with several frames.")
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise InputError(f"{path} has {data.ndim} dimensions; medrecon reads 3D volumes.")
    if np.iscomplexobj(data):
        raise InputError(f"{path} holds complex voxels; give a magnitude image.")
    header = img.header
    units = "a.u."
    descrip = ""
    try:
        # A C string: FSL and others leave bytes after the terminating NUL.
        descrip = header["descrip"].tobytes().split(b"\0", 1)[0].decode("ascii", "ignore")
    except Exception:
        pass
    modality = "OT"
    if descrip.startswith("medrecon:"):
        # Written by medrecon: "medrecon:<modality>:<units>:<description>"
        parts = descrip.split(":", 3)
        if len(parts) == 4:
            modality, units, descrip = parts[1] or "OT", parts[2] or "a.u.", parts[3]
    data = np.asarray(data, dtype=np.float32)
    meta: dict[str, str] = {"source": str(path), "format": "nifti"}
    if modality == "OT" and looks_like_hu(data):
        # NIfTI has no modality field; CT converted by other tools is recognised by its values.
        finite = data[np.isfinite(data)]
        modality, units = "CT", "HU"
        meta["modality_note"] = (
            f"{path.name} does not say its modality; its values span air to bone "
            f"({float(finite.min()):.0f} to {float(finite.max()):.0f}), so it is read as CT "
            f"in HU (medrecon convert --modality mr marks it as MR)")
    return Volume(
        data=data,
        affine=np.asarray(img.affine, dtype=np.float64),
        modality=modality,
        units=units,
        series_description=descrip,
        meta=meta,
    )


def nifti_frames(path: str | Path) -> int:
    """Number of frames of a NIfTI file: the length of its 4th axis, 1 for a 3D file.

    Reads the header only. Raises :class:`InputError` for an unreadable file.
    """
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as exc:
        raise InputError(f"Cannot read NIfTI file {path} ({_reason(exc)}); check that it is "
                         f"complete, or export it again.") from None
    return int(shape[3]) if len(shape) > 3 else 1


def write_nifti(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` as float32 NIfTI with sform and qform set to its affine (atomic)."""
    import nibabel as nib

    path = Path(path)
    if not is_nifti_path(path):
        raise InputError(f"NIfTI output must end in .nii or .nii.gz, got {path.name}.")
    img = nib.Nifti1Image(volume.data.astype(np.float32), volume.affine)
    img.set_sform(volume.affine, code=1)
    img.set_qform(volume.affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    text = f"medrecon:{volume.modality}:{volume.units}:{volume.series_description}"
    img.header["descrip"] = text.encode("ascii", "ignore")[:79]
    with atomic_file(path) as tmp:
        if str(path).lower().endswith(".gz"):  # deflated on all cores (nibabel: one core)
            tmp.write_bytes(gzip_bytes(img.to_bytes()))
        else:
            nib.save(img, str(tmp))
    return path
