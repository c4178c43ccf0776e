"""Memory budget of the CT sparse system matrix: free device memory and the nonzeros it allows.

A 2D-geometry projector (:mod:`medrecon.operators.ct_projector`) stores its system matrix A and
A^T only when they fit: at most :data:`SPARSE_MAX_NNZ` nonzeros and at most
:data:`SPARSE_MEMORY_FRACTION` of the memory free on the device (:func:`available_memory`: CUDA's
free plus cached-but-unused blocks, or the host's MemAvailable capped by a cgroup v2 limit).
Otherwise it falls back to the ray-driven kernels.
"""

from __future__ import annotations

import os

import torch

__all__ = [
    "SPARSE_MAX_NNZ",
    "SPARSE_MEMORY_FRACTION",
    "available_host_memory",
    "available_memory",
    "sparse_nnz_budget",
]

#: Default bound on the nonzeros of a 2D system matrix (A and A^T are each stored).
SPARSE_MAX_NNZ = 200_000_000
#: Default share of the device's free memory that A and A^T (and their build) may use.
SPARSE_MEMORY_FRACTION = 0.25


def available_memory(device: torch.device) -> int | None:
    """Free memory (bytes) where a sparse matrix would live, or None when unknown."""
    try:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            # Blocks PyTorch's caching allocator holds but does not use are free to us too.
            unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            return int(free + unused)
        if device.type == "cpu":
            return available_host_memory()
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None
    return None


def available_host_memory() -> int | None:
    """Linux MemAvailable (free + reclaimable cache), capped by a cgroup v2 memory limit."""
    avail: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                used = int(f.read().strip())
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def sparse_nnz_budget(max_nnz: int, memory_fraction: float, n_rows: int,
                      device: torch.device, dtype: torch.dtype) -> int:
    """Most nonzeros a sparse A with ``n_rows`` rows may hold on ``device`` in ``dtype``.

    ``min(max_nnz, memory_fraction x free memory / bytes per nonzero)``, counting A and A^T
    (values and indices) plus the transpose's sort buffers while building; ``max_nnz`` alone
    when the free memory is unknown.
    """
    index_bytes = 4 if max(max_nnz, n_rows) < 2**31 - 1 else 8
    value_bytes = torch.empty(0, dtype=dtype).element_size()
    # A and A^T, plus the transpose's sort buffers while building.
    per_nnz = 2 * (value_bytes + index_bytes) + 24
    budget = max_nnz
    free = available_memory(device)
    if free is not None:
        budget = min(budget, int(memory_fraction * free / per_nnz))
    return budget
