"""The denoising network: a 3D MONAI ``DiffusionModelUNet`` built from a small config.

The network sees ``in_channels = 1 + (3 if position conditioning)`` channels: the
(preconditioned) noisy patch and, optionally, three constant maps holding the patch centre's
normalised position in the full volume (PaDIS-style patch-position conditioning). Modality is
a class label (``num_class_embeds``) added to the noise embedding, so one network serves MRI
and CT.

Voxel size (``spacing_embed > 0``): ``log2`` of the patch's voxel size (mm, per axis) goes
through a small MLP (Linear-SiLU-Linear) whose output is *added* to the noise embedding, next
to the modality embedding (:class:`ModalitySpacingEmbedding`, which replaces MONAI's class
embedding so that MONAI's own ``forward`` runs unchanged). The MLP's last layer starts at
zero, so a network warm-started from a prior without this input computes exactly what that
prior computed, for every voxel size, until training moves it. We chose this over MONAI
1.6.1's ``DiffusionModelUNetMaisi(include_spacing_input=True)``: MAISI *concatenates* a
spacing embedding to the time embedding, which widens the time-embedding projection of every
residual block (new weight shapes: no exact warm start from the shipped U-Net), feeds raw mm
rather than a log scale, and is a different class from the ``DiffusionModelUNet`` whose
weights we ship. An additive embedding is the same mechanism as the modality label, costs
~20 k parameters and keeps every shipped tensor.

Flash attention (``torch.nn.functional.scaled_dot_product_attention``) is requested on
CUDA; on CPU the same weights run with MONAI's plain attention, so checkpoints move freely
between devices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from medrecon.errors import ConfigError
from medrecon.monai_import import monai_import_context


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of the U-Net.

    Attributes:
        channels: feature channels per resolution level (each level halves the patch size).
        num_res_blocks: residual blocks per level (one int or one per level).
        attention_levels: self-attention on/off per level; attention on 64³ patches is only
            affordable at the coarsest level (8³ = 512 tokens).
        num_head_channels: channels per attention head.
        norm_num_groups: GroupNorm groups (must divide every entry of ``channels``).
        num_modalities: class labels for the modality condition (0 = MR, 1 = CT); 0 = none.
        position_channels: 3 to give the network the patch-centre position maps, 0 for none.
        spacing_embed: hidden width of the voxel-size MLP (0: no voxel-size input, as in
            priors before format 2).
    """

    channels: tuple[int, ...] = (32, 64, 96, 128)
    num_res_blocks: tuple[int, ...] = (1, 2, 2, 2)
    attention_levels: tuple[bool, ...] = (False, False, False, True)
    num_head_channels: int = 32
    norm_num_groups: int = 16
    num_modalities: int = 2
    position_channels: int = 3
    spacing_embed: int = 0

    def __post_init__(self) -> None:
        n = len(self.channels)
        if n < 1:
            raise ConfigError("network.channels must list at least one level.")
        if len(self.attention_levels) != n:
            raise ConfigError("network.attention_levels must have one entry per channels level.")
        if len(self.num_res_blocks) != n:
            raise ConfigError("network.num_res_blocks must have one entry per channels level.")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ConfigError("network.norm_num_groups must divide every entry of network.channels.")
        if self.position_channels not in (0, 3):
            raise ConfigError("network.position_channels must be 0 (off) or 3 (on).")
        if (n > 8 or min(self.channels) < 1 or min(self.num_res_blocks) < 0
                or max(self.num_res_blocks) > 16 or self.norm_num_groups < 1
                or self.num_head_channels < 1):
            raise ConfigError("network sizes must be positive, with at most 8 levels and 16 "
                              "residual blocks per level.")
        if self.spacing_embed < 0:
            raise ConfigError("network.spacing_embed must be 0 (off) or a positive width.")
        self._check_size()

    def _check_size(self) -> None:
        """Refuse a network too large to build on this machine, before building it.

        A 3x3x3 convolution from c to c channels holds 27 c^2 weights; each residual block has
        two, and the decoder mirrors the encoder with one more block per level, so about
        ``27 c^2 (4 b + 2)`` weights per level (an estimate within a small factor of MONAI's).
        """
        from medrecon.device import host_memory_bytes

        n_params = sum(27 * c * c * (4 * b + 2)
                       for c, b in zip(self.channels, self.num_res_blocks, strict=True))
        limit = host_memory_bytes() // 2
        if 4 * n_params > limit:
            raise ConfigError(
                f"network.channels {list(self.channels)} declare about {n_params:.2g} weights "
                f"({4 * n_params / 2**30:,.0f} GiB), more than half of this machine's memory "
                f"({limit / 2**30:,.1f} GiB).")

    @property
    def uses_position(self) -> bool:
        return self.position_channels > 0

    @property
    def uses_spacing(self) -> bool:
        return self.spacing_embed > 0

    @property
    def downsampling_factor(self) -> int:
        """Patch sizes must be multiples of this (2 per level below the first)."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"Unknown network option(s): {', '.join(sorted(unknown))}.")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if isinstance(kw.get("num_res_blocks"), int):
            kw["num_res_blocks"] = (kw["num_res_blocks"],) * len(kw.get("channels", cls.channels))
        return cls(**kw)


class ModalitySpacingEmbedding(torch.nn.Embedding):
    """Modality embedding plus an MLP of the log voxel size, added to the noise embedding.

    Called by MONAI's ``DiffusionModelUNet.forward`` as its ``class_embedding`` with the
    ``class_labels`` the denoiser passes: here a (B, 4) float tensor ``[label, s_i, s_j, s_k]``
    (modality label, voxel size in mm per patch axis). Returns (B, dim). A subclass of
    ``nn.Embedding`` so that the modality table keeps its state-dict key (``weight``) and a
    shipped prior's tensors load unchanged; the MLP is ``spacing.*``.
    """

    def __init__(self, num_modalities: int, dim: int, hidden: int) -> None:
        super().__init__(max(num_modalities, 1), dim)
        if num_modalities == 0:
            # a single-modality prior has no modality embedding: the one row adds nothing
            torch.nn.init.zeros_(self.weight)
        self.spacing = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.SiLU(),
                                           torch.nn.Linear(hidden, dim))
        # zero output at initialisation: a warm start equals the prior it starts from
        torch.nn.init.zeros_(self.spacing[2].weight)
        torch.nn.init.zeros_(self.spacing[2].bias)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        labels = cond[:, 0].round().long()
        log_spacing = torch.log2(cond[:, 1:4].float().clamp_min(1e-3))
        return super().forward(labels) + self.spacing(log_spacing.to(self.weight.dtype))


def build_network(config: NetworkConfig, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Instantiate the MONAI 3D ``DiffusionModelUNet`` described by ``config``.

    Input (B, 1 + position_channels, X, Y, Z), noise label (B,), class label (B,) long, or,
    with a voxel-size input, (B, 4) float ``[label, s_i, s_j, s_k]`` (mm; see
    :class:`ModalitySpacingEmbedding`); output (B, 1, X, Y, Z). Flash attention is enabled
    when ``device`` is CUDA.
    """
    with monai_import_context():
        from monai.networks.nets import DiffusionModelUNet

    device = torch.device(device)
    classes = config.num_modalities or (1 if config.uses_spacing else None)
    net = DiffusionModelUNet(
        spatial_dims=3,
        in_channels=1 + config.position_channels,
        out_channels=1,
        num_res_blocks=config.num_res_blocks,
        channels=config.channels,
        attention_levels=config.attention_levels,
        norm_num_groups=config.norm_num_groups,
        num_head_channels=config.num_head_channels,
        with_conditioning=False,
        num_class_embeds=classes,
        use_flash_attention=device.type == "cuda",
    )
    if config.uses_spacing:
        dim = net.class_embedding.embedding_dim
        net.class_embedding = ModalitySpacingEmbedding(config.num_modalities, dim,
                                                       config.spacing_embed)
    return net.to(device)


def set_flash_attention(module: torch.nn.Module, enabled: bool) -> None:
    """Switch MONAI attention blocks between flash (SDPA) and plain attention in place.

    Both paths compute the same softmax attention with the same weights; flash attention is
    only the faster kernel, so a model built on CPU can use it after moving to CUDA.
    """
    for m in module.modules():
        if hasattr(m, "use_flash_attention") and not getattr(m, "save_attn", False):
            m.use_flash_attention = enabled


def size_multiple(module: torch.nn.Module) -> int:
    """What every input size of ``module`` must be a multiple of: 2 per down-sampling layer.

    Counted on the built network (MONAI's ``DiffusionUnetDownsample`` layers of the U-Net
    encoder), so it holds for any prior, whatever its JSON says; the skip connections join
    encoder and decoder maps of equal size only at such sizes. Attention, GroupNorm, the
    position maps and the embeddings accept any size.
    """
    with monai_import_context():
        from monai.networks.nets.diffusion_model_unet import DiffusionUnetDownsample

    return 2 ** sum(isinstance(m, DiffusionUnetDownsample) for m in module.modules())


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
