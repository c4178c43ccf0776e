"""Prior tests: keep torch on one CPU thread (tiny 3D convolutions get slower, not faster,
with more threads on a busy 2-core runner) and share the tiny config."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "prior" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every prior test runs torch on one thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture
def tiny_config():  # type: ignore[no-untyped-def]
    from medrecon.priors.config import load_train_config

    return load_train_config(TINY_CONFIG)
