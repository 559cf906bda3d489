"""Conditional denoising networks over vectors.

:class:`ConditionalMLP` is the seed's conditional MLP with skip connections (after the
``MLPSkipNet`` of Diffusion Autoencoders, Preechakul et al. 2022): the input ``x`` is
concatenated into every hidden layer's input, the timestep and the condition are embedded
by their own MLPs and injected into every layer by FiLM scale-and-shift, and hidden layers
after the first are residual. A learned null condition supports classifier-free guidance
(Ho & Salimans 2022).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtrans.config import Config

__all__ = ["ConditionalMLP", "DenoiserConfig", "flops_per_sample", "timestep_embedding"]


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclasses.dataclass
class DenoiserConfig(Config):
    """Shape of a :class:`ConditionalMLP`.

    Attributes:
        dim: D, size of the vectors being denoised.
        cond_dim: Dc, size of the condition vectors.
        width: hidden width of every layer (the seed used 2048).
        depth: number of hidden layers (the seed used 10).
        dropout: dropout probability after every hidden layer.
        time_dim: size of the sinusoidal timestep embedding (even).
        emb_dim: output size of the timestep MLP and of the condition MLP.
    """

    dim: int
    cond_dim: int
    width: int = 2048
    depth: int = 10
    dropout: float = 0.1
    time_dim: int = 128
    emb_dim: int = 512

    def __post_init__(self) -> None:
        for name in ("dim", "cond_dim", "width", "depth", "time_dim", "emb_dim"):
            value = getattr(self, name)
            if not _positive_int(value):
                raise ValueError(f"DenoiserConfig.{name} must be a positive int, got {value!r}")
        if self.time_dim % 2:
            raise ValueError(
                f"DenoiserConfig.time_dim must be even (cos and sin halves), got {self.time_dim}; "
                f"use {self.time_dim + 1}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"DenoiserConfig.dropout must lie in [0, 1), got {self.dropout}; use e.g. 0.1"
            )


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (integer or real) timesteps (Vaswani et al. 2017, §3.5).

    ``emb = [cos(t·ω_k), sin(t·ω_k)]_{k<dim/2}`` with ``ω_k = max_period^{-2k/dim}``.

    Args:
        t: timesteps ``(B,)``.
        dim: embedding size (even).
        max_period: the longest wavelength.

    Returns:
        ``(B, dim)`` float32 embedding.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )  # (dim/2,)
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _FiLMLayer(nn.Module):
    """``h = Dropout(SiLU(LayerNorm(W·inp)·(1 + scale) + shift))``, (scale, shift) from emb."""

    def __init__(self, in_dim: int, width: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, width)
        self.norm = nn.LayerNorm(width)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, inp: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)  # (B, width) each
        h = self.norm(self.linear(inp)) * (1 + scale) + shift
        return self.dropout(F.silu(h))


def _mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))


class ConditionalMLP(nn.Module):
    """Conditional MLP denoiser ``model(x_t, t, cond, cond_mask) -> (B, D)``.

    ``e = SiLU([MLP_t(sinusoid(t)), MLP_c(c)])`` ``(B, 2·emb_dim)``; layer 0 maps ``x``,
    layer ``i ≥ 1`` maps ``[h, x]`` and is added to ``h``; each layer is FiLM-modulated by
    ``e``. The output layer is zero-initialised, so an untrained model predicts 0.

    Args:
        config: the network's shape.
    """

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.time_mlp = _mlp(c.time_dim, c.emb_dim)
        self.cond_mlp = _mlp(c.cond_dim, c.emb_dim)
        self.null_cond = nn.Parameter(torch.randn(c.cond_dim))
        self.layers = nn.ModuleList(
            _FiLMLayer(c.dim if i == 0 else c.width + c.dim, c.width, 2 * c.emb_dim, c.dropout)
            for i in range(c.depth)
        )
        self.out = nn.Linear(c.width, c.dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor | None = None
    ) -> Tensor:
        """Predict the objective (ε, x_0 or v, as trained) for a noisy batch.

        Args:
            x: noisy vectors x_t ``(B, D)``.
            t: integer timesteps ``(B,)``.
            cond: conditions ``(B, Dc)``.
            cond_mask: bool ``(B,)``; ``False`` replaces that sample's condition by the
                learned null condition. ``None`` keeps every condition.

        Returns:
            ``(B, D)``.
        """
        if cond_mask is not None:
            if cond_mask.dtype != torch.bool or cond_mask.shape != cond.shape[:1]:
                raise ValueError(
                    f"cond_mask must be a bool tensor of shape {tuple(cond.shape[:1])}, got "
                    f"{cond_mask.dtype} {tuple(cond_mask.shape)}"
                )
            null = self.null_cond.to(cond.dtype).expand_as(cond)  # (B, Dc)
            cond = torch.where(cond_mask[:, None], cond, null)
        temb = self.time_mlp(timestep_embedding(t, self.config.time_dim).to(x.dtype))
        emb = F.silu(torch.cat([temb, self.cond_mlp(cond)], dim=-1))  # (B, 2·emb_dim)
        h = self.layers[0](x, emb)  # (B, width)
        for layer in self.layers[1:]:
            h = h + layer(torch.cat([h, x], dim=-1), emb)  # skip: x re-enters every layer
        return self.out(h)


def flops_per_sample(config: DenoiserConfig) -> int:
    """Matmul FLOPs of one :class:`ConditionalMLP` forward for one sample (2·in·out per Linear).

    Norms, activations and the sinusoidal embedding are left out; for a batch multiply by B,
    and by 3 for a training step (forward + backward).
    """
    c = config
    embed = c.time_dim * c.emb_dim + c.cond_dim * c.emb_dim + 2 * c.emb_dim * c.emb_dim
    hidden = c.dim * c.width + (c.depth - 1) * (c.width + c.dim) * c.width
    film = c.depth * (2 * c.emb_dim) * (2 * c.width)
    return 2 * (embed + hidden + film + c.width * c.dim)
