"""The preconditioned denoiser D(x, sigma) of Karras et al. 2022 (EDM) around the U-Net.

With sigma_data the data standard deviation, the network F is wrapped as

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma), cond)

    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out   = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

so that the network's input and its training target have unit variance at every noise level.
Training minimises  E[ lambda(sigma) |D(x + sigma n; sigma) - x|^2 ]  with
ln(sigma) ~ N(P_mean, P_std^2) and lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

Every sampler in :mod:`medrecon.sampling` speaks this interface: x0_hat = D(x, sigma).
"""

from __future__ import annotations

import torch

from medrecon.priors.schedules import sample_training_sigmas


class EDMDenoiser(torch.nn.Module):
    """x0_hat = D(x, sigma, modality, position, spacing) for patches in model space.

    Args:
        network: a module called as ``network(x_in, noise_label, class_labels=...)`` returning
            (B, 1, X, Y, Z); MONAI's DiffusionModelUNet in practice.
        sigma_data: standard deviation of the training data in model space.
        sigma_min, sigma_max: the noise range the prior was trained for (sampler defaults).
        p_mean, p_std: log-normal training-sigma distribution.
        uses_position: whether ``network`` takes 3 extra position channels.
        num_modalities: number of modality class labels the network embeds (0 = none).
        uses_spacing: whether ``network`` embeds the voxel size (a
            :class:`~medrecon.priors.network.ModalitySpacingEmbedding`).
        noise_embed_scale: the network's sinusoidal noise embedding receives
            ``noise_embed_scale * c_noise`` (DDPM-like range of a few hundred), so that nearby
            sigmas map to clearly different embeddings; c_noise itself is as in EDM.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        uses_position: bool = False,
        num_modalities: int = 0,
        noise_embed_scale: float = 250.0,
        uses_spacing: bool = False,
    ) -> None:
        super().__init__()
        self.network = network
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.p_mean = float(p_mean)
        self.p_std = float(p_std)
        self.uses_position = bool(uses_position)
        self.num_modalities = int(num_modalities)
        self.noise_embed_scale = float(noise_embed_scale)
        self.uses_spacing = bool(uses_spacing)

    # -- preconditioning coefficients (sigma: any shape, returned with the same shape) -------
    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.sigma_data / torch.sqrt(sigma**2 + self.sigma_data**2)

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1.0 / torch.sqrt(sigma**2 + self.sigma_data**2)

    @staticmethod
    def c_noise(sigma: torch.Tensor) -> torch.Tensor:
        return torch.log(sigma) / 4.0

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        modality: torch.Tensor | None = None,
        position: torch.Tensor | None = None,
        spacing: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoise.

        Args:
            x: noisy patches (B, 1, X, Y, Z), float32, model space.
            sigma: noise standard deviation, a float or a (B,) tensor, > 0.
            modality: (B,) long class labels (0 = MR, 1 = CT); required when the prior has a
                modality condition, ignored otherwise.
            position: (B, 3) patch-centre coordinates in [-1, 1] of the full volume, per voxel
                axis; zeros (the volume centre) when omitted; ignored when unused.
            spacing: voxel size in mm along the patch axes (X, Y, Z), (B, 3) or (3,);
                required when the prior is conditioned on it, ignored otherwise.

        Returns:
            x0_hat (B, 1, X, Y, Z), float32.
        """
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected x of shape (B, 1, X, Y, Z), got {tuple(x.shape)}")
        b = x.shape[0]
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        sigma_t = sigma_t.reshape(-1).expand(b) if sigma_t.numel() == 1 else sigma_t.reshape(b)
        s = sigma_t.reshape(b, 1, 1, 1, 1)
        x32 = x.to(torch.float32)
        net_in = self.c_in(s) * x32
        if self.uses_position:
            pos = (torch.zeros(b, 3, device=x.device) if position is None
                   else position.to(device=x.device, dtype=torch.float32).reshape(b, 3))
            pos_maps = pos.reshape(b, 3, 1, 1, 1).expand(b, 3, *x.shape[2:])
            net_in = torch.cat([net_in, pos_maps], dim=1)
        kwargs = {}
        labels = None
        if self.num_modalities:
            if modality is None:
                raise ValueError("this prior is conditioned on modality: pass modality=(B,) long")
            labels = torch.as_tensor(modality, device=x.device).reshape(-1).expand(b).long()
            kwargs["class_labels"] = labels
        if self.uses_spacing:
            if spacing is None:
                raise ValueError("this prior is conditioned on the voxel size: pass "
                                 "spacing=(B, 3) mm")
            sp = torch.as_tensor(spacing, dtype=torch.float32, device=x.device)
            sp = sp.reshape(-1, 3).expand(b, 3)
            lab = torch.zeros(b, device=x.device) if labels is None else labels.float()
            kwargs["class_labels"] = torch.cat([lab[:, None], sp], dim=1)
        # The network's own precision (a bf16 copy runs bf16 end to end, see
        # medrecon.sampling.denoiser.prior_denoiser); the preconditioning stays float32.
        dtype = next(self.network.parameters()).dtype
        f = self.network(net_in.to(dtype), self.noise_embed_scale * self.c_noise(sigma_t),
                         **kwargs)
        return self.c_skip(s) * x32 + self.c_out(s) * f.to(torch.float32)

    def training_loss(
        self,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        modality: torch.Tensor | None = None,
        position: torch.Tensor | None = None,
        sigma: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        spacing: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EDM loss on clean patches ``x0`` (B, 1, X, Y, Z).

        sigma ~ logN(P_mean, P_std^2) and noise ~ N(0, I) are drawn from ``generator`` (on CPU,
        then moved, for device-independent reproducibility) unless given.

        Returns:
            (mean loss scalar, per-sample weighted loss (B,), sigma (B,)).
        """
        b = x0.shape[0]
        if sigma is None:
            sigma = sample_training_sigmas(b, self.p_mean, self.p_std, generator, x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
        s = sigma.reshape(b, 1, 1, 1, 1)
        d = self(x0 + s * noise, sigma, modality=modality, position=position, spacing=spacing)
        per = (self.loss_weight(sigma) * ((d - x0) ** 2).flatten(1).mean(1))
        return per.mean(), per.detach(), sigma
