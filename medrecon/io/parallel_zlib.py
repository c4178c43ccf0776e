"""zlib on all cores: reading gzip-compressed HDF5 datasets, writing gzip streams.

A 256^3 8-coil measurement file holds 2 GB of k-space and coil maps, written by
:func:`~medrecon.io.measurement.write_measurement` with HDF5's gzip (deflate) and shuffle
filters. HDF5 inflates the chunks one after another on one core: 11.2 s to read that file on
the GPU machine (``benchmarks/startup_speed.py``, H100, 2026-12-06), 2.9 s with 16 threads;
gzipped NIfTI output of a 256^3 volume took 3.2-3.3 s on one core, 0.6 s threaded
(``benchmarks/RESULTS_sampling.md`` 3d). The chunks are independent deflate streams, and zlib releases
the GIL while it works, so :func:`read_dataset` reads each chunk's stored bytes straight from
the file (the chunk index from HDF5, the bytes by ``os.pread``) and inflates and unshuffles
them in a thread pool. Anything else (other filters, a file driver other than the default, a
HDF5 without chunk iteration, a chunk that does not decode to its size) is read by h5py as
before, so the result is always what ``dataset[()]`` returns.

:func:`write_dataset` is the writing side of the same format: the chunks are shuffled and
deflated in threads and handed to HDF5 already filtered. :func:`gzip_bytes` does the same for
gzipped NIfTI outputs: the data are cut into
blocks deflated independently in threads (each ending on a byte boundary, ``Z_SYNC_FLUSH``,
the last one final), which concatenate into one valid deflate stream inside one standard gzip
member (the scheme of pigz ``--independent``); any gzip reader reads it.
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["gzip_bytes", "read_dataset", "worker_count", "write_dataset"]

#: Datasets smaller than this are read by h5py directly (thread start-up would not pay).
MIN_PARALLEL_BYTES = 16 * 2**20
#: Uncompressed bytes per independently deflated block of :func:`gzip_bytes`.
GZIP_BLOCK = 2**20

_DEFLATE, _SHUFFLE = 1, 2  # HDF5 filter ids (H5Z_FILTER_DEFLATE, H5Z_FILTER_SHUFFLE)


def worker_count() -> int:
    """Threads for zlib work: the cores this process may use, at most 16."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores))


def _pipeline(ds: Any) -> list[int] | None:
    """The dataset's filter ids in write order, or None when a filter is not ours to undo."""
    plist = ds.id.get_create_plist()
    ids = [int(plist.get_filter(i)[0]) for i in range(plist.get_nfilters())]
    return ids if all(f in (_DEFLATE, _SHUFFLE) for f in ids) else None


def _decode(raw: bytes, pipeline: Sequence[int], skipped: int, itemsize: int) -> bytes:
    """Undo the filters of one chunk, last applied first; bit i of ``skipped`` marks filter i
    as not applied to this chunk (HDF5 skips an optional filter that does not pay)."""
    out = raw
    for i in reversed(range(len(pipeline))):
        if skipped >> i & 1:
            continue
        if pipeline[i] == _DEFLATE:
            out = zlib.decompress(out)
        elif itemsize > 1:  # shuffle: byte j of every element stored together
            n = len(out) // itemsize
            body = np.frombuffer(out, np.uint8, count=n * itemsize).reshape(itemsize, n)
            out = body.T.tobytes() + out[n * itemsize:]
    return out


def read_dataset(ds: Any, min_bytes: int = MIN_PARALLEL_BYTES,
                 threads: int | None = None) -> np.ndarray:
    """``ds[()]`` of an h5py dataset, inflating gzip/shuffle chunks on all cores.

    Args:
        ds: an ``h5py.Dataset``.
        min_bytes: datasets smaller than this are read by h5py directly.
        threads: worker threads (default :func:`worker_count`).
    """
    shape = tuple(int(s) for s in ds.shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * ds.dtype.itemsize
    pipeline = None if ds.chunks is None or nbytes < min_bytes else _pipeline(ds)
    if (pipeline is None or ds.file.driver != "sec2"
            or not hasattr(ds.id, "chunk_iter")):
        return ds[()]
    chunks: list[tuple[tuple[int, ...], int, int, int]] = []
    ds.id.chunk_iter(lambda c: chunks.append((tuple(c.chunk_offset), int(c.filter_mask),
                                              int(c.byte_offset), int(c.size))))
    cshape = tuple(int(c) for c in ds.chunks)
    dtype, itemsize = ds.dtype, ds.dtype.itemsize
    base = int(ds.file.userblock_size)
    out = np.empty(shape, dtype=dtype)
    if len(chunks) < int(np.prod([-(-s // c) for s, c in zip(shape, cshape, strict=True)])):
        out[...] = ds.fillvalue  # chunks never written hold the fill value
    chunk_bytes = int(np.prod(cshape)) * itemsize

    def work(part: list[tuple[tuple[int, ...], int, int, int]], fd: int) -> bool:
        for offset, skipped, addr, size in part:
            data = _decode(os.pread(fd, size, base + addr), pipeline, skipped, itemsize)
            if len(data) != chunk_bytes:
                return False
            block = np.frombuffer(data, dtype=dtype).reshape(cshape)
            region = tuple(slice(o, min(o + c, s))
                           for o, c, s in zip(offset, cshape, shape, strict=True))
            out[region] = block[tuple(slice(0, r.stop - r.start) for r in region)]
        return True

    workers = threads or worker_count()
    parts = [chunks[i::workers * 4] for i in range(workers * 4)]
    fd = os.open(ds.file.filename, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(workers) as pool:
            ok = all(pool.map(lambda p: work(p, fd), parts))
    except (zlib.error, OSError, ValueError):
        ok = False
    finally:
        os.close(fd)
    return out if ok else ds[()]


def write_dataset(group: Any, name: str, data: np.ndarray, level: int = 4,
                  threads: int | None = None) -> Any:
    """``group.create_dataset(name, data=data, chunks=True, compression="gzip",
    compression_opts=level, shuffle=True)``, with the chunks shuffled and deflated on all
    cores and handed to HDF5 already filtered (``write_direct_chunk``); the file is the one
    h5py would write, readable by any HDF5 reader. Small arrays are written by h5py itself."""
    data = np.ascontiguousarray(data)
    ds = group.create_dataset(name, shape=data.shape, dtype=data.dtype, chunks=True,
                              compression="gzip", compression_opts=level, shuffle=True)
    if data.nbytes < MIN_PARALLEL_BYTES or _pipeline(ds) != [_SHUFFLE, _DEFLATE]:
        ds[...] = data
        return ds
    cshape = tuple(int(c) for c in ds.chunks)
    itemsize = data.dtype.itemsize
    offsets = list(itertools.product(*(range(0, s, c)
                                       for s, c in zip(data.shape, cshape, strict=True))))

    def encode(offset: tuple[int, ...]) -> bytes:
        block = data[tuple(slice(o, o + c) for o, c in zip(offset, cshape, strict=True))]
        if block.shape != cshape:  # an edge chunk is stored at full size
            full = np.zeros(cshape, dtype=data.dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        raw = np.ascontiguousarray(block).view(np.uint8).reshape(-1, itemsize)
        return zlib.compress(raw.T.tobytes(), level)  # shuffle, then deflate (HDF5's order)

    with ThreadPoolExecutor(threads or worker_count()) as pool:
        for offset, chunk in zip(offsets, pool.map(encode, offsets), strict=True):
            ds.id.write_direct_chunk(offset, chunk, 0)
    return ds


def gzip_bytes(data: bytes | memoryview, level: int = 1, block: int = GZIP_BLOCK,
               threads: int | None = None) -> bytes:
    """One gzip member holding ``data``, deflated in independent blocks on all cores."""
    view = memoryview(data).cast("B")
    starts = list(range(0, len(view), block)) or [0]

    def deflate(i: int) -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        last = i == len(starts) - 1
        body = c.compress(view[starts[i]:starts[i] + block])
        return body + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    with ThreadPoolExecutor(threads or worker_count()) as pool:
        parts = pool.map(deflate, range(len(starts)))
        crc = zlib.crc32(view)
        body = b"".join(parts)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
    return header + body + struct.pack("<II", crc & 0xFFFFFFFF, len(view) & 0xFFFFFFFF)
