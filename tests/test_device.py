"""``medrecon.device``: the one meaning of --device."""

from __future__ import annotations

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
