"""Prior tests: keep torch on one CPU thread (tiny 3D convolutions get slower, not faster,
with more threads on a busy 2-core runner) and share the tiny config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "prior" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_config():  # type: ignore[no-untyped-def]
    from medrecon.priors.config import load_train_config

    return load_train_config(TINY_CONFIG)
