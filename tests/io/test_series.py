"""``--series``: a full SeriesInstanceUID, a unique prefix of it, or the series number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import write_series

from medrecon.errors import DicomError
from medrecon.io import load_volume
from medrecon.io.dicom_scan import SeriesInfo
from medrecon.io.series import select_series

INFOS = [
    SeriesInfo("1.2.840.5.1", "T1", "MR", 4, 4, Path("a"), series_number=3),
    SeriesInfo("1.2.840.5.22", "T2", "MR", 4, 4, Path("b"), series_number=1),
    SeriesInfo("1.2.840.6", "FLAIR", "MR", 4, 4, Path("c"), series_number=1),
    SeriesInfo("7.1", "CT", "CT", 4, 4, Path("d"), series_number=None),
]


def test_select_by_uid_prefix_or_number() -> None:
    assert select_series("s", INFOS, "1.2.840.5.1") == "1.2.840.5.1"  # exact wins over prefix
    assert select_series("s", INFOS, "1.2.840.5.2") == "1.2.840.5.22"
    assert select_series("s", INFOS, " 1.2.840.6 ") == "1.2.840.6"
    assert select_series("s", INFOS, "3") == "1.2.840.5.1"  # a number wins over a UID prefix
    assert select_series("s", INFOS, "7") == "7.1"  # no series 7: the prefix of one UID
    assert select_series("s", INFOS[:1], None) == "1.2.840.5.1"


@pytest.mark.parametrize(("series", "fragments"), [
    (None, ["holds 4 DICOM series; choose one with --series", "#3  1.2.840.5.1"]),
    ("1", ["Series number 1 is shared by 2 series", "1.2.840.5.22", "1.2.840.6"]),
    ("1.2.840.5", ["--series 1.2.840.5 is the start of 2 series UIDs", "give more of the UID"]),
    ("9.9", ["Series 9.9 is not in s; the series found are:", "7.1  CT"]),
    (" ", ["--series is empty"]),
])
def test_ambiguous_or_unknown_series_list_the_candidates(series: str | None,
                                                         fragments: list[str]) -> None:
    with pytest.raises(DicomError) as err:
        select_series("s", INFOS, series)
    for text in fragments:
        assert text in str(err.value), (text, str(err.value))


def test_series_number_and_prefix_read_a_folder(tmp_path: Path) -> None:
    data = np.arange(4 * 3 * 2, dtype=float).reshape(4, 3, 2)
    for uid, number, offset in (("1.2.3.41", 5, 0.0), ("1.2.3.52", 6, 100.0)):
        for path in write_series(tmp_path / uid, data + offset, np.eye(4), series_uid=uid):
            ds = pydicom.dcmread(path)
            ds.SeriesNumber = number
            ds.save_as(path)
    assert float(load_volume(tmp_path, series="6").data.min()) == 100.0
    assert float(load_volume(tmp_path, series="1.2.3.4").data.min()) == 0.0
