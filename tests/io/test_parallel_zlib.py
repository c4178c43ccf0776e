"""The threaded gzip reader and writer return exactly what h5py and gzip do."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from medrecon.io import parallel_zlib
from medrecon.io.parallel_zlib import gzip_bytes, read_dataset


def _data(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    x[rng.random(shape) < 0.6] = 0  # compressible, like masked k-space
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", ["complex64", ">f4", "int16", "uint8"])
@pytest.mark.parametrize("filters", [{"compression": "gzip", "shuffle": True},
                                     {"compression": "gzip"}, {"shuffle": True}])
def test_threaded_read_equals_h5py(tmp_path: Path, dtype: str, filters: dict) -> None:
    x = _data((3, 17, 10, 9), dtype)  # edge chunks along every axis
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=(2, 8, 4, 5), **filters)
    with h5py.File(path, "r") as f:
        got = read_dataset(f["x"], min_bytes=0, threads=3)
        np.testing.assert_array_equal(got, f["x"][()])
        assert got.dtype == f["x"].dtype


def test_threaded_read_decodes_the_chunks_itself(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The threaded path really inflates (a broken inflater changes the result's route)."""
    x = _data((4, 16, 16), "complex64")
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=(1, 8, 8), compression="gzip", shuffle=True)
    calls = []
    real = parallel_zlib._decode
    monkeypatch.setattr(parallel_zlib, "_decode",
                        lambda *a: calls.append(1) or real(*a))
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(read_dataset(f["x"], min_bytes=0), x)
    assert len(calls) == 16  # one per chunk


def test_unwritten_chunks_hold_the_fill_value(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(8, 8), dtype="f4", chunks=(4, 4), compression="gzip",
                              fillvalue=7.0)
        ds[:4, :4] = 1.0
    with h5py.File(path, "r") as f:
        got = read_dataset(f["x"], min_bytes=0)
    expect = np.full((8, 8), 7.0, np.float32)
    expect[:4, :4] = 1.0
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("kwargs", [{"compression": "lzf"}, {"fletcher32": True, "chunks": (4,)},
                                    {}])
def test_other_layouts_are_read_by_h5py(tmp_path: Path, kwargs: dict) -> None:
    x = _data((40,), "f4")
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, **kwargs)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(read_dataset(f["x"], min_bytes=0), x)


def test_a_corrupt_chunk_falls_back_to_h5py_and_its_error(tmp_path: Path) -> None:
    x = _data((64, 64), "f4")
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=(64, 64), compression="gzip")
        offset = f["x"].id.get_chunk_info(0).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 20:offset + 40] = b"\xff" * 20
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as f, pytest.raises(OSError):
        read_dataset(f["x"], min_bytes=0)


@pytest.mark.parametrize("size", [0, 1, 1000, 3 * 4096 + 17])
def test_gzip_bytes_is_one_standard_member(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 4, size, dtype=np.uint8).tobytes()
    packed = gzip_bytes(data, block=4096, threads=3)
    assert gzip.decompress(packed) == data
    member = zlib.decompressobj(31)  # one gzip member, nothing after it
    assert member.decompress(packed) == data and member.eof and not member.unused_data


def test_gzipped_nifti_holds_the_bytes_of_the_plain_one(tmp_path: Path) -> None:
    from medrecon.io.nifti import write_nifti
    from medrecon.io.volume import Volume

    vol = Volume(_data((9, 8, 7), "f4"), np.diag([0.5, 0.6, 2.0, 1.0]), modality="CT",
                 units="HU")
    write_nifti(vol, tmp_path / "a.nii")
    write_nifti(vol, tmp_path / "a.nii.gz")
    assert gzip.decompress((tmp_path / "a.nii.gz").read_bytes()) == (
        tmp_path / "a.nii").read_bytes()


@pytest.mark.parametrize("dtype", ["complex64", "float32", ">i2"])
def test_threaded_write_is_a_gzip_shuffle_dataset_any_reader_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    monkeypatch.setattr(parallel_zlib, "MIN_PARALLEL_BYTES", 0)  # the threaded path
    x = _data((3, 33, 20, 9), dtype)  # edge chunks along every axis
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        ds = parallel_zlib.write_dataset(f, "x", x, threads=3)
        assert ds.compression == "gzip" and ds.compression_opts == 4 and ds.shuffle
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["x"][()], x)  # HDF5's own filters decode it
        assert f["x"].dtype == x.dtype
        assert f["x"].id.get_num_chunks() == int(np.prod(
            [-(-s // c) for s, c in zip(x.shape, f["x"].chunks, strict=True)]))
