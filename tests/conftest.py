"""Shared fixtures: seeded generators, the compute device, GPU skipping."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one CPU thread for the test: tiny convolutions and the thousands of tiny ops of
    the sampler loops get slower, not faster, with thread hand-offs on a busy 2-core runner."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
