"""Atomic output: write into a temporary sibling, then rename over the target.

A crash or a user error half-way through never leaves a half-written file or folder behind.
A command with several outputs (a volume, its std map, the settings file) wraps their writing
in :func:`output_group`: every file and folder is then renamed into place only when all are
complete, and a failure at any rename removes the ones already moved (restoring what they
replaced), so the command writes all of its outputs or none.

The result gets the permissions an ordinary ``open``/``mkdir`` would give (``0o666`` / ``0o777``
less the umask; an overwritten file keeps its mode), not the private ``0o600`` / ``0o700`` of :mod:`tempfile`, so that colleagues
in a research group can read each other's outputs.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


class _Group:
    """Finished temporaries waiting for their rename: ``(temporary, target)`` pairs."""

    def __init__(self) -> None:
        self.items: list[tuple[Path, Path]] = []

    def commit(self) -> None:
        """Move every temporary onto its target; on any failure undo the moves already made."""
        done: list[tuple[Path, Path | None]] = []
        try:
            for tmp, target in self.items:
                backup = None
                if target.exists() or target.is_symlink():
                    backup = target.with_name(f".{target.name}.old")
                    _remove(backup)
                    _rename(target, backup, target)
                try:
                    _rename(tmp, target, target)
                except BaseException:
                    if backup is not None:
                        os.replace(backup, target)
                    raise
                done.append((target, backup))
        except BaseException:
            for target, backup in reversed(done):
                _remove(target)
                if backup is not None:
                    os.replace(backup, target)
            for tmp, _ in self.items:
                _remove(tmp)
            raise
        for _, backup in done:
            if backup is not None:
                _remove(backup)


_GROUP: contextvars.ContextVar[_Group | None] = contextvars.ContextVar("_GROUP", default=None)


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _rename(src: Path, dst: Path, target: Path) -> None:
    """``os.replace(src, dst)``; a failure names ``target`` (what the user asked for), not the
    hidden temporary or backup name."""
    try:
        os.replace(src, dst)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(target)) from None


@contextlib.contextmanager
def output_group() -> Iterator[None]:
    """Write several outputs all or none: :func:`atomic_file` and :func:`atomic_dir` inside
    the block only prepare their temporaries, which are renamed together when the block ends
    without an error (and removed when it fails). Groups do not nest: an inner one joins the
    outer one."""
    if _GROUP.get() is not None:
        yield
        return
    group = _Group()
    token = _GROUP.set(group)
    try:
        yield
    except BaseException:
        _GROUP.reset(token)
        for tmp, _ in group.items:
            _remove(tmp)
        raise
    _GROUP.reset(token)
    group.commit()


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status`` where available)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no read-only query exists elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _default_mode(path: Path, target: Path) -> None:
    """Give the temporary ``path`` the mode ``open``/``mkdir`` would have given ``target``:
    an existing file's own mode when it is overwritten, else ``0o666`` (files) or ``0o777``
    (folders) less the umask."""
    if path.is_file() and target.is_file():
        os.chmod(path, stat.S_IMODE(target.stat().st_mode))
        return
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    ``suffix`` defaults to the target's full suffix (``.nii.gz`` stays ``.nii.gz``) so that
    libraries choosing a format from the file name see the right one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}",
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            _default_mode(tmp, target)
        group = _GROUP.get()
        if group is not None:
            group.items.append((tmp, target))
            return
        _rename(tmp, target, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; move it to ``path`` on success.

    An existing folder at ``path`` is replaced only when ``overwrite`` is true, and only
    after the new one is complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _default_mode(tmp, target)
        group = _GROUP.get()
        if target.exists() and not overwrite:
            raise FileExistsError(target)
        if group is not None:
            group.items.append((tmp, target))
            return
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
