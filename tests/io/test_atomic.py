"""Atomic writes give ordinary permissions (umask), not tempfile's private 0600 / 0700."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from medrecon.io.atomic import atomic_dir, atomic_file, current_umask


@pytest.fixture
def umask_027() -> Iterator[int]:
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_current_umask_reads_without_changing(umask_027: int) -> None:
    assert current_umask() == umask_027
    assert current_umask() == umask_027  # unchanged by the first read


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_file_and_dir_follow_the_umask(tmp_path: Path, umask_027: int) -> None:
    with atomic_file(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    assert _mode(tmp_path / "a.txt") == 0o666 & ~umask_027 == 0o640
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f.txt").write_text("y")
    assert _mode(tmp_path / "d") == 0o777 & ~umask_027 == 0o750
    # An overwritten file keeps its own mode, as open(..., "w") would.
    os.chmod(tmp_path / "a.txt", 0o664)
    with atomic_file(tmp_path / "a.txt") as tmp:
        tmp.write_text("z")
    assert _mode(tmp_path / "a.txt") == 0o664 and (tmp_path / "a.txt").read_text() == "z"
