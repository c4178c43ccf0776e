"""EDM preconditioning maths, schedules, and the MONAI network factory."""

from __future__ import annotations

import math

import pytest
import torch

from medrecon.priors.denoiser import EDMDenoiser
from medrecon.priors.network import NetworkConfig, build_network, set_flash_attention
from medrecon.priors.schedules import edm_sigmas, sample_training_sigmas


class _Probe(torch.nn.Module):
    """A fake network that records its inputs and returns a constant field."""

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(value))
        self.seen: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels=None):  # type: ignore[no-untyped-def]
        self.seen = {"x": x, "t": t, "labels": class_labels}
        return torch.zeros_like(x[:, :1]) + self.w


def test_preconditioning_coefficients_match_karras_2022() -> None:
    d = EDMDenoiser(_Probe(), sigma_data=0.5)
    s = torch.tensor([0.002, 0.1, 0.5, 2.0, 80.0])
    sd = 0.5
    assert torch.allclose(d.c_skip(s), sd**2 / (s**2 + sd**2))
    assert torch.allclose(d.c_out(s), s * sd / torch.sqrt(s**2 + sd**2))
    assert torch.allclose(d.c_in(s), 1 / torch.sqrt(s**2 + sd**2))
    assert torch.allclose(d.c_noise(s), torch.log(s) / 4)
    assert torch.allclose(d.loss_weight(s), (s**2 + sd**2) / (s * sd) ** 2)
    # unit-variance input, and lambda * c_out^2 = 1 (EDM's effective unit training weight)
    assert torch.allclose(d.c_in(s) ** 2 * (s**2 + sd**2), torch.ones_like(s))
    assert torch.allclose(d.loss_weight(s) * d.c_out(s) ** 2, torch.ones_like(s))


def test_forward_combines_skip_and_network_output() -> None:
    net = _Probe(0.3)
    d = EDMDenoiser(net, sigma_data=0.5, uses_position=True, num_modalities=2,
                    noise_embed_scale=250.0)
    x = torch.randn(2, 1, 4, 5, 6)
    sigma = torch.tensor([0.1, 3.0])
    pos = torch.tensor([[0.5, -0.25, 1.0], [0.0, 0.0, 0.0]])
    y = d(x, sigma, modality=torch.tensor([0, 1]), position=pos)
    s = sigma.view(2, 1, 1, 1, 1)
    expect = d.c_skip(s) * x + d.c_out(s) * 0.3
    assert torch.allclose(y, expect, atol=1e-6)
    seen = net.seen
    assert seen["x"].shape == (2, 4, 4, 5, 6)  # 1 image + 3 position channels
    assert torch.allclose(seen["x"][:, :1], d.c_in(s) * x)
    assert torch.allclose(seen["x"][0, 1:, 2, 3, 4], pos[0])
    assert torch.allclose(seen["t"], 250.0 * torch.log(sigma) / 4)
    assert seen["labels"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="modality"):
        d(x, sigma)  # a modality-conditioned prior needs the label


def test_scalar_sigma_broadcasts_and_small_sigma_is_identity() -> None:
    d = EDMDenoiser(_Probe(5.0), sigma_data=0.5)
    x = torch.randn(3, 1, 4, 4, 4)
    y = d(x, 1e-6)
    assert torch.allclose(y, x, atol=1e-4)  # c_skip -> 1, c_out -> 0 as sigma -> 0


def test_edm_sigmas_schedule() -> None:
    s = edm_sigmas(10, 0.002, 80.0, 7.0)
    assert s.shape == (11,) and s[-1] == 0
    assert math.isclose(float(s[0]), 80.0, rel_tol=1e-6)
    assert math.isclose(float(s[-2]), 0.002, rel_tol=1e-5)
    assert torch.all(s[:-1] > s[1:])
    # rho = 1 is a linear ramp
    lin = edm_sigmas(5, 1.0, 5.0, rho=1.0, append_zero=False)
    assert torch.allclose(lin, torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]))


def test_training_sigmas_are_lognormal_and_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    s = sample_training_sigmas(20000, -1.2, 1.2, g)
    ln = torch.log(s)
    assert abs(float(ln.mean()) + 1.2) < 0.05 and abs(float(ln.std()) - 1.2) < 0.05
    a = sample_training_sigmas(5, generator=torch.Generator().manual_seed(3))
    b = sample_training_sigmas(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_monai_network_shapes_and_flash_attention_equivalence() -> None:
    cfg = NetworkConfig(channels=(8, 16), num_res_blocks=(1, 1), attention_levels=(False, True),
                        num_head_channels=8, norm_num_groups=4)
    torch.manual_seed(0)
    net = build_network(cfg)
    d = EDMDenoiser(net, uses_position=True, num_modalities=2)
    x = torch.randn(2, 1, 8, 8, 8)
    mod = torch.tensor([0, 1])
    with torch.no_grad():
        y_plain = d(x, 0.5, modality=mod)
        set_flash_attention(d, True)  # SDPA kernel: same maths, same weights
        y_flash = d(x, 0.5, modality=mod)
    assert y_plain.shape == x.shape
    assert torch.allclose(y_plain, y_flash, atol=1e-5)
    assert net.conv_in.conv.in_channels == 4


def test_network_config_validation() -> None:
    from medrecon.errors import ConfigError

    with pytest.raises(ConfigError):
        NetworkConfig(channels=(8, 16), num_res_blocks=(1,), attention_levels=(False, True))
    with pytest.raises(ConfigError):
        NetworkConfig(channels=(8, 12), num_res_blocks=(1, 1), attention_levels=(False, True),
                      norm_num_groups=8)
