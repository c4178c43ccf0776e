"""Helpers every command uses: turning user errors into one sentence and exit code 2, checking
output paths before any work is done, and one-line warnings on stderr."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import typer

from medrecon.errors import InputError, MedreconError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2

# Suffixes of files that are never a DICOM output folder: a name ending in one of these was
# meant as a file, so "auto" format must not quietly create a folder of that name.
FILE_SUFFIXES = frozenset({
    ".h5", ".hdf5", ".txt", ".json", ".csv", ".yaml", ".yml", ".png", ".jpg", ".jpeg", ".tif",
    ".tiff", ".npy", ".npz", ".mat", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh", ".gz",
    ".zip", ".img", ".hdr", ".dcm", ".ima", ".pt", ".pth", ".safetensors",
})


def os_error_sentence(exc: OSError) -> str:
    """One sentence for a file-system error (permission, read-only disk, full disk, ...)."""
    name = exc.filename if exc.filename is not None else ""
    where = f" {name}" if name else ""
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return f"Permission denied for{where}; choose a path you can read and write."
    if code == errno.EROFS:
        return f"Cannot write{where}: the file system is read-only; choose another path."
    if code == errno.ENOSPC:
        return f"No space left on the device while writing{where}; free space or write elsewhere."
    if code in (errno.EEXIST, errno.ENOTDIR):
        return (f"Cannot use{where} as a folder: a file of that name is in the way; "
                f"choose another output path.")
    if code == errno.EISDIR:
        return f"{name or 'The path'} is a folder; give a file name."
    if code == errno.ENOENT:
        return f"{name or 'A file'} does not exist."
    reason = (exc.strerror or str(exc)).rstrip(".")
    return f"Cannot access{where} ({reason})."


def user_errors(func: F) -> F:
    """Run a command; a :class:`MedreconError` or a file-system error becomes
    ``Error: <sentence>`` on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MedreconError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except OSError as exc:
            # A permission, read-only, full-disk or path error: the user's environment, not a
            # bug; errors without an errno (library failures) keep their traceback.
            if exc.errno is None:
                raise
            typer.echo(f"Error: {os_error_sentence(exc)}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted; no partial output was kept.", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def warn(message: str) -> None:
    """Print ``Warning: <message>`` as one line on stderr."""
    typer.echo(f"Warning: {message}", err=True)


def note(message: str) -> None:
    """Print ``Note: <message>`` as one line on stderr (information, not a problem)."""
    typer.echo(f"Note: {message}", err=True)


def note_modality(volume: Any) -> None:
    """Print how an input's modality was decided, when the file did not say (one line)."""
    text = volume.meta.get("modality_note")
    if text:
        note(f"{text}.")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_output(path: Path, kind: str, flag: str = "", inputs: Iterable[Path | None] = (),
                 overwrite: bool | None = None) -> None:
    """Refuse an output path that cannot be written, before any work is done.

    Args:
        path: the output path.
        kind: "file" (any single file), "nifti", "dicom" (a folder) or "folder".
        flag: how the user gave it (e.g. "--json"), for the message; "" for an argument.
        inputs: input paths of the command; writing over one of them is refused, with or
            without ``--overwrite``.
        overwrite: the command's ``--overwrite``: False refuses an existing output (the one
            policy of convert, simulate, reconstruct and evaluate); None does not check.

    Raises:
        InputError: a file (not a folder) stands where a parent folder must be, the nearest
            existing parent cannot be written, the output is one of the inputs, or a folder
            stands where a file must go (and vice versa).
    """
    label = f"{flag} {path}" if flag else str(path)
    for inp in inputs:
        if inp is not None and _same_file(path, Path(inp)):
            raise InputError(f"{label} is also an input; write the output to another path.")
    if kind in ("file", "nifti") and path.is_dir():
        raise InputError(f"{label} is a folder; give a file name.")
    if overwrite is False and (path.is_file() or (path.is_dir() and any(path.iterdir()))):
        raise InputError(f"{label} already exists; use --overwrite to replace it.")
    if kind in ("dicom", "folder") and path.exists() and not path.is_dir():
        raise InputError(f"{label} is a file; give a folder name.")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"Cannot write {label}: {parent} is a file, not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"Cannot write {label}: no permission to write in {parent}.")


def check_volume_output(path: Path, fmt: str = "auto", inputs: Iterable[Path | None] = (),
                        overwrite: bool | None = None) -> str:
    """:func:`check_output` for a volume written by ``save_volume``; returns "nifti" or "dicom".

    With ``fmt`` "auto" a name ending in a file suffix other than .nii/.nii.gz (``out.h5``,
    ``out.png``) is refused instead of becoming a DICOM folder of that name.
    """
    from medrecon.io import is_nifti_path

    fmt = fmt.lower()
    if fmt not in ("auto", "nifti", "dicom"):
        raise InputError(f"Unknown output format {fmt!r}; use auto, nifti or dicom.")
    if fmt == "auto":
        if is_nifti_path(path):
            fmt = "nifti"
        elif path.suffix.lower() in FILE_SUFFIXES and not path.is_dir():
            raise InputError(f"Cannot write a volume to {path.name}: give a .nii or .nii.gz "
                             f"file, or a folder name for a DICOM series.")
        else:
            fmt = "dicom"
    check_output(path, fmt, inputs=inputs, overwrite=overwrite)
    return fmt
