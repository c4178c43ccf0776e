"""``medrecon.device.resolve_device``: the one meaning of --device."""

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
