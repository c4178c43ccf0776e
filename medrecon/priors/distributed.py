"""Several processes, one per GPU (DDP under ``torchrun``): set-up, timeout and shared failures.

The training loop (:mod:`medrecon.priors.train`) runs unchanged on one process; these helpers
are no-ops there. Under ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the environment)
:func:`init_distributed` joins the process group (NCCL on CUDA, gloo on CPU) with a timeout of
``dist_timeout`` minutes, else ``$MEDRECON_DIST_TIMEOUT_MIN``, else 10 (PyTorch's default is
30), and :func:`on_every_rank` turns an error on any rank into the same error on every rank.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from medrecon.errors import InputError, MedreconError

#: Default DDP process-group timeout (minutes) and the environment variable that overrides it.
DIST_TIMEOUT_MIN = 10.0
DIST_TIMEOUT_ENV = "MEDRECON_DIST_TIMEOUT_MIN"


@dataclass
class DistInfo:
    """This process's place: ``rank`` of ``world`` processes, its GPU ``local_rank``, and
    whether :func:`init_distributed` started the process group (and :func:`leave` ends it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_timeout_minutes(minutes: float | None = None) -> float:
    """How long a DDP collective may wait for the other processes before it fails, in minutes:
    ``minutes``, else ``$MEDRECON_DIST_TIMEOUT_MIN``, else :data:`DIST_TIMEOUT_MIN`."""
    if minutes is None:
        text = os.environ.get(DIST_TIMEOUT_ENV, "").strip()
        if not text:
            return DIST_TIMEOUT_MIN
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{DIST_TIMEOUT_ENV} must be a positive number of minutes, "
                             f"not {text!r}.")
        return value
    if not (math.isfinite(minutes) and minutes > 0):
        raise InputError(f"The DDP timeout must be a positive number of minutes, not {minutes}.")
    return float(minutes)


def init_distributed(device: str, timeout_minutes: float | None = None) -> DistInfo:
    """Join the process group described by the torchrun environment (one process: nothing to
    join). ``device`` "cpu" uses gloo, otherwise NCCL on ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import datetime

    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(
            minutes=dist_timeout_minutes(timeout_minutes)))
        here = True
    return DistInfo(rank, world, local, here)


_S = TypeVar("_S")


def on_every_rank(fn: Callable[[], _S], dist_info: DistInfo, doing: str,
                   device: torch.device | str = "cpu") -> _S:
    """``fn()`` on this rank; if it raises on any rank, every rank raises.

    The ranks all-reduce a failure flag (one number on ``device``: cheap enough for every
    log, validation, preview and checkpoint interval) and, only when it is set, exchange the
    errors with ``all_gather_object``, so none is left waiting in a later collective for a
    rank that has failed. The first failing rank re-raises its own exception; the others raise
    the same :class:`MedreconError` subclass with the same sentence, or, when the failure is
    not a user error (a bug, which keeps its traceback on its own rank), a
    :class:`MedreconError` "Process R of N failed while ``doing`` (Error: message)."
    """
    try:
        out: _S | None = fn()
        err: Exception | None = None
    except Exception as exc:
        out, err = None, exc
    if dist_info.world > 1:
        import torch.distributed as dist

        import medrecon.errors

        flag = torch.tensor([0.0 if err is None else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            mine = None if err is None else (type(err).__name__,
                                             isinstance(err, MedreconError), str(err))
            notes: list[tuple[str, bool, str] | None] = [None] * dist_info.world
            dist.all_gather_object(notes, mine)
            rank, note = next((r, n) for r, n in enumerate(notes) if n is not None)
            if rank != dist_info.rank:
                kind, user_error, message = note
                if user_error:
                    cls = getattr(medrecon.errors, kind, None)
                    if not (isinstance(cls, type) and issubclass(cls, MedreconError)):
                        cls = InputError
                    raise cls(message) from err
                raise MedreconError(f"Process {rank} of {dist_info.world} failed while {doing} "
                                    f"({kind}: {message}).") from err
    if err is not None:
        raise err
    return out  # type: ignore[return-value]


def mean_over_ranks(value: float, dist_info: DistInfo, device: torch.device) -> float:
    """The mean of ``value`` over all ranks (``value`` itself on one process)."""
    if dist_info.world <= 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], device=device)
    dist.all_reduce(t)
    return float(t) / dist_info.world


def any_rank(flag: bool, dist_info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (``flag`` itself on one process)."""
    if dist_info.world <= 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def leave(dist_info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it.

    The caller must have dropped its DDP wrapper: it holds the group and is freed only by the
    cyclic garbage collector, which runs here first (left to interpreter exit, gloo's threads
    can abort the process).
    """
    if not dist_info.initialised_here:
        return
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
