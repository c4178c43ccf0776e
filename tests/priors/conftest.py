"""Prior tests: keep torch on one CPU thread (tiny 3D convolutions get slower, not faster,
with more threads on a busy 2-core runner) and share the tiny config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "prior" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every prior test runs torch on one thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture
def tiny_config():  # type: ignore[no-untyped-def]
    from medrecon.priors.config import load_train_config

    return load_train_config(TINY_CONFIG)


# A test double of the renderer interface that ``medrecon.priors.synthetic`` provides
# (render_patches / sample_spacings): Gaussian blobs of fixed size in mm, so that a patch's
# content depends on its voxel size, as in real renders. Cheap at 16^3 on one CPU thread.
@dataclass
class FakePatches:
    image: torch.Tensor
    position: torch.Tensor
    spacing: torch.Tensor


def fake_sample_spacings(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3) mm: in-plane 0.4-4 log-uniform, the last axis up to 1.5x thicker."""
    u = torch.rand(n, 2, generator=generator)
    inplane = 0.4 * 10.0 ** u[:, 0]
    return torch.stack([inplane, inplane, inplane * (1 + 0.5 * u[:, 1])], dim=1)


def fake_render_patches(modality: str, n: int, spacing_mm: torch.Tensor,
                        patch_size: tuple[int, int, int] = (64, 64, 64),
                        generator: torch.Generator | None = None,
                        device: torch.device | str = "cpu", noise_prob: float = 0.5) -> FakePatches:
    spacing_mm = torch.as_tensor(spacing_mm, dtype=torch.float32).reshape(n, 3)
    axes = [torch.arange(p, dtype=torch.float32) - (p - 1) / 2 for p in patch_size]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, X, Y, Z) voxels
    mm = grid[None] * spacing_mm[:, :, None, None, None]  # (n, 3, X, Y, Z)
    centres = (torch.rand(n, 3, 3, generator=generator) - 0.5) * 30.0  # 3 blobs, +-15 mm
    img = torch.zeros(n, *patch_size)
    for c in range(3):
        d2 = ((mm - centres[:, c, :, None, None, None]) ** 2).sum(1)
        img += torch.exp(-d2 / (2 * 6.0**2))  # 6 mm blobs
    img = img / img.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    if modality == "CT":
        img = -1000.0 + 1400.0 * img  # air to dense tissue, HU
    position = torch.rand(n, 3, generator=generator) * 2 - 1
    return FakePatches(img.to(device), position.to(device), spacing_mm.to(device))


@pytest.fixture
def fake_renderer(monkeypatch: pytest.MonkeyPatch) -> None:
    """``medrecon.priors.synthetic`` renders with the test double above."""
    from medrecon.priors import synthetic

    monkeypatch.setattr(synthetic, "render_patches", fake_render_patches, raising=False)
    monkeypatch.setattr(synthetic, "sample_spacings", fake_sample_spacings, raising=False)
