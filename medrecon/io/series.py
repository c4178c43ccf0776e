"""Choosing one DICOM series among those found under a path.

``--series`` accepts what a user sees in a viewer or in ``medrecon info``: the full
SeriesInstanceUID, a unique prefix of it (UIDs are long), or the SeriesNumber. The choice is
made on the :class:`~medrecon.io.dicom_scan.SeriesInfo` list of a scan, before any pixel is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from medrecon.errors import DicomError

if TYPE_CHECKING:  # only for type hints: the DICOM reader imports this module
    from medrecon.io.dicom_scan import SeriesInfo

__all__ = ["format_series_list", "select_series"]


def format_series_list(infos: Sequence[SeriesInfo]) -> str:
    """One indented line per series: number, UID, modality, description and slice count."""
    lines = []
    for s in infos:
        number = f"#{s.series_number}  " if s.series_number is not None else ""
        desc = s.description or "no description"
        lines.append(f"  {number}{s.uid or '(no SeriesInstanceUID)'}  {s.modality}  "
                     f"{desc!r}  {s.n_slices} slice{'s' if s.n_slices != 1 else ''}")
    return "\n".join(lines)


def select_series(path: str | Path, infos: Sequence[SeriesInfo], series: str | None) -> str:
    """The SeriesInstanceUID that ``series`` names among ``infos`` (the series under ``path``).

    Args:
        path: where the series were found (for messages).
        infos: the series found, at least one.
        series: None (there must be exactly one series), a full SeriesInstanceUID, a series
            number (digits only; it wins over a UID prefix), or a prefix of exactly one UID.

    Raises:
        DicomError: no ``series`` among several, a number shared by several series, a prefix of
            several UIDs, or no match; the message lists the series found.
    """
    listing = format_series_list(infos)
    if series is None:
        if len(infos) > 1:
            raise DicomError(f"{path} holds {len(infos)} DICOM series; choose one with --series "
                             f"UID (or its series number, or the start of its UID):\n{listing}")
        return infos[0].uid
    key = series.strip()
    if not key:
        raise DicomError("--series is empty; give a SeriesInstanceUID, the start of one, or a "
                         "series number.")
    if any(s.uid == key for s in infos):
        return key
    if key.isdigit():
        numbered = [s for s in infos if s.series_number == int(key)]
        if len(numbered) == 1:
            return numbered[0].uid
        if numbered:
            raise DicomError(f"Series number {key} is shared by {len(numbered)} series in "
                             f"{path}; give the SeriesInstanceUID:\n"
                             f"{format_series_list(numbered)}")
    matches = [s for s in infos if s.uid.startswith(key)]
    if len(matches) == 1:
        return matches[0].uid
    if matches:
        raise DicomError(f"--series {key} is the start of {len(matches)} series UIDs in {path}; "
                         f"give more of the UID:\n{format_series_list(matches)}")
    raise DicomError(f"Series {key} is not in {path}; the series found are:\n{listing}")
