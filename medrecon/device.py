"""Device resolution: turn the user's ``--device`` text into a :class:`torch.device`; and
:class:`Beside`, independent GPU work run beside the caller's on a second stream.

Every command and API entry point that accepts ``device="auto"`` resolves it here, so "auto",
"cpu", "cuda" and "cuda:N" mean the same everywhere and an unavailable GPU is one clear
:class:`~medrecon.errors.InputError` sentence.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from medrecon.errors import InputError

T = TypeVar("T")

if TYPE_CHECKING:  # torch is imported inside the function: this module stays light
    import torch

__all__ = ["Beside", "cpu_has_native_bf16", "host_memory_bytes", "resolve_device"]


def resolve_device(device: str | None = "auto") -> torch.device:
    """Turn "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N" into a device."""
    import torch

    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"Unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA GPU is available; use --device cpu.")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"Unsupported device {device!r}; use auto, cpu, cuda or cuda:N.")
    return dev


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (Intel AMX or AVX512-BF16, read from Linux's
    /proc/cpuinfo): there bf16 convolutions run about a third faster than float32; elsewhere
    they are emulated and slower, so False (also off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def host_memory_bytes() -> int:
    """Physical memory of this machine in bytes (a bound on any single allocation).

    Read from ``sysconf``; where that is unavailable 64 GiB is assumed, so that a file
    declaring terabytes is still refused before anything is allocated.
    """
    import os

    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


class Beside(Generic[T]):
    """``fn()`` run beside the caller's GPU work: on CUDA, from :meth:`start` on, in a worker
    thread on its own stream, so that its kernels fill what the caller's leave of the GPU;
    elsewhere (or never started) in the caller's thread when :meth:`result` asks for it.

    The worker's stream first waits for everything queued on the caller's stream when
    :meth:`start` ran (its inputs), and the worker runs under the caller's grad mode (thread
    local in torch). :meth:`result` returns once the worker's stream is drained, so its
    tensors are ready on any stream; an exception in ``fn`` is raised there, except running
    out of GPU memory beside the caller's work: then ``fn`` runs again in the caller's thread,
    as it would have without this class. The thread is a daemon: an interrupted caller does
    not wait for it at exit (a caller that raises leaves it to finish on its own).
    ``need_bytes``: the GPU memory ``fn`` is estimated to need; where less is free when
    :meth:`start` runs, it does not start (the caller's own work keeps its room), and ``fn``
    runs in the caller's thread from :meth:`result`.
    """

    def __init__(self, fn: Callable[[], T], device: torch.device, need_bytes: int = 0) -> None:
        self._fn: Callable[[], T] | None = fn
        self._device = device
        self._need = need_bytes
        self._thread: threading.Thread | None = None
        self._out: list[T] = []
        self._error: list[BaseException] = []

    def start(self) -> None:
        import torch

        if self._thread is not None or self._fn is None or self._device.type != "cuda":
            return
        fn = self._fn
        if self._need and torch.cuda.mem_get_info(self._device)[0] < self._need:
            return
        on_side_stream = _side_stream(self._device)
        grad = torch.is_grad_enabled()

        def work() -> None:
            try:
                with on_side_stream(), torch.set_grad_enabled(grad):
                    self._out.append(fn())
            except BaseException as exc:  # handed to result()
                self._error.append(exc)

        self._thread = threading.Thread(target=work, name="medrecon-beside", daemon=True)
        self._thread.start()

    def result(self) -> T:
        """``fn()``'s value (once: ``fn`` and the value are not kept, so what they hold can
        be freed)."""
        import torch

        fn, self._fn = self._fn, None
        if self._thread is None:
            if fn is None:
                raise RuntimeError("Beside.result() was called twice.")
            return fn()
        self._thread.join()
        if self._error:
            error = self._error.pop()
            if not isinstance(error, torch.cuda.OutOfMemoryError):
                raise error
            del error  # its traceback holds the worker's tensors
            torch.cuda.empty_cache()  # the side stream's cached blocks, for the caller's stream
            assert fn is not None
            return fn()  # alone on the GPU now, as without Beside
        return self._out.pop()


def _side_stream(device: torch.device) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """For a worker thread: a context that makes a new stream of ``device`` current (and the
    device), after everything queued now on the caller's stream, and drains it at the end.
    (The CUDA streams' caching allocator keeps a freed block for the stream it was made on.)"""
    import torch

    # the caller's current device where the device names none (thread local too)
    index = torch.cuda.current_device() if device.index is None else device.index
    inputs_ready = torch.cuda.current_stream(index).record_event()

    @contextlib.contextmanager
    def enter() -> Iterator[None]:
        torch.cuda.set_device(index)
        stream = torch.cuda.Stream(index)
        stream.wait_event(inputs_ready)
        try:
            with torch.cuda.stream(stream):
                yield
        finally:  # also after an error: nothing of the worker's left in flight
            stream.synchronize()

    return enter
