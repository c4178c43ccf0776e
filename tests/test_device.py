"""``medrecon.device``: the one meaning of --device, and work run beside the caller's."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from medrecon.device import resolve_device
from medrecon.errors import InputError


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(InputError, match="Unknown device"):
        resolve_device("tpu:what")
    with pytest.raises(InputError, match="Unsupported device"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device(None) == torch.device("cpu")


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import builtins

    from medrecon import device

    real_open = builtins.open
    for flags, expected in (("fpu sse avx512f amx_bf16 amx_tile", True),
                            ("fpu sse avx512f avx512_bf16", True), ("fpu sse avx2 fma", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda p, *a, _i=info, **k: real_open(
            _i if p == "/proc/cpuinfo" else p, *a, **k))
        assert device.cpu_has_native_bf16() is expected
    monkeypatch.setattr(builtins, "open", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    assert device.cpu_has_native_bf16() is False  # no /proc: not Linux


def test_beside_runs_in_the_callers_thread_off_cuda() -> None:
    """On the CPU, start() does nothing and result() runs fn here, once."""
    import threading

    from medrecon.device import Beside

    seen: list[int] = []
    job = Beside(lambda: seen.append(threading.get_ident()) or 7, torch.device("cpu"))
    job.start()
    assert seen == []  # not started: no thread on the CPU
    assert job.result() == 7 and seen == [threading.get_ident()]
    with pytest.raises(RuntimeError, match="twice"):
        job.result()


def test_beside_raises_fns_error_from_result() -> None:
    from medrecon.device import Beside

    job: Beside[None] = Beside(lambda: (_ for _ in ()).throw(ValueError("bad input")),
                               torch.device("cpu"))
    with pytest.raises(ValueError, match="bad input"):
        job.result()


@pytest.fixture
def no_stream(monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """A CUDA device for Beside whose side stream is a no-op: the thread logic on the CPU."""
    import contextlib

    from medrecon import device

    monkeypatch.setattr(device, "_side_stream", lambda dev: contextlib.nullcontext)
    return torch.device("cuda")


def test_beside_runs_in_a_worker_under_the_callers_grad_mode(no_stream: torch.device) -> None:
    import threading

    from medrecon.device import Beside

    seen: list[tuple[int, bool]] = []
    job = Beside(lambda: seen.append((threading.get_ident(), torch.is_grad_enabled())) or 3,
                 no_stream)
    with torch.no_grad():
        job.start()
    assert job.result() == 3
    assert seen[0][0] != threading.get_ident() and seen[0][1] is False
    bad: Beside[None] = Beside(lambda: (_ for _ in ()).throw(ValueError("in the worker")),
                               no_stream)
    bad.start()
    with pytest.raises(ValueError, match="in the worker"):
        bad.result()


def test_beside_runs_fn_again_alone_when_the_gpu_ran_out_of_memory_beside(
        no_stream: torch.device) -> None:
    """Out of GPU memory beside the caller's work: fn again in the caller's thread, as
    without Beside; a second failure there is the caller's."""
    import threading

    from medrecon.device import Beside

    calls: list[int] = []

    def fn() -> int:
        calls.append(threading.get_ident())
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return len(calls)

    job = Beside(fn, no_stream)
    job.start()
    assert job.result() == 2
    assert calls[0] != threading.get_ident() and calls[1] == threading.get_ident()

    def always() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    again: Beside[None] = Beside(always, no_stream)
    again.start()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        again.result()


def test_beside_waits_for_the_caller_where_the_gpu_has_no_room_beside(
        no_stream: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    """Less free GPU memory than fn's estimate: no worker; fn runs in the caller's thread."""
    import threading

    from medrecon.device import Beside

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 2**34))
    for need, in_worker in ((2**31, False), (2**29, True)):
        seen: list[int] = []
        job = Beside(lambda s=seen: s.append(threading.get_ident()), no_stream, need_bytes=need)
        job.start()
        job.result()
        assert (seen[0] != threading.get_ident()) is in_worker, need


@pytest.mark.gpu
def test_beside_on_cuda_sees_queued_inputs_and_hands_back_ready_tensors() -> None:
    """The worker runs on its own stream in another thread; it waits for the caller's
    queued work on its inputs, inherits no_grad, and its output is ready in the caller."""
    import threading

    from medrecon.device import Beside

    dev = torch.device("cuda")
    x = torch.zeros(2**24, device=dev)
    for _ in range(20):  # queued on the caller's stream, unfinished when start() returns
        x.add_(1.0)
    w = torch.ones(3, device=dev, requires_grad=True)
    where: list[Any] = []

    def work() -> tuple[torch.Tensor, torch.Tensor]:
        where.append((threading.get_ident(), torch.cuda.current_stream(dev)))
        return x * 2.0, w * 2.0

    with torch.no_grad():
        job = Beside(work, dev)
        job.start()
    for _ in range(20):  # the caller's later work does not reach the worker's inputs
        torch.cuda._sleep(1000)
    doubled, grads = job.result()
    assert where[0][0] != threading.get_ident()
    assert where[0][1] != torch.cuda.default_stream(dev)
    assert torch.equal(doubled, torch.full_like(x, 40.0))
    assert not grads.requires_grad  # the caller's no_grad held in the worker
    with pytest.raises(ValueError, match="late"):
        fails: Beside[None] = Beside(lambda: (_ for _ in ()).throw(ValueError("late")), dev)
        fails.start()
        fails.result()
