"""Conditional denoising networks over vectors.

:class:`ConditionalMLP` is the seed's conditional MLP with skip connections (after the
``MLPSkipNet`` of Diffusion Autoencoders, Preechakul et al. 2022): the input ``x`` is
concatenated into every hidden layer's input, the timestep and the condition are embedded
by their own MLPs and injected into every layer by FiLM scale-and-shift, and hidden layers
after the first are residual. A learned null condition supports classifier-free guidance
(Ho & Salimans 2022).

:class:`SeedMLP` is the same network as the seed's code runs it: no residuals, the scale of
each layer from the timestep only and its shift from the condition only (through a
five-linear condition MLP per layer), LayerNorm after the modulation, Kaiming init and a
plain output layer; a dropped condition adds no shift.

:class:`ConditionalGridUNet` denoises vectors that are flattened ``C × g × g`` grids (an
image decoder's spatial latent) with a small two-level U-Net, conditioned the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtrans.config import Config

__all__ = ["DENOISERS", "ConditionalGridUNet", "ConditionalMLP", "DenoiserConfig", "SeedMLP",
           "flops_per_sample", "sampling_flops_per_sample", "timestep_embedding"]


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

    def forward(self, inp: Tensor, film: Tensor) -> Tensor:
        """``film`` = ``self.film(emb)`` = [scale, shift], ``(B or 1, 2·width)``, computed by
        the caller (once per sampling call for the condition's share, see
        :meth:`ConditionalMLP.with_condition`)."""
        scale, shift = film.chunk(2, dim=-1)  # (·, width) each
        h = self.norm(self.linear(inp)) * (1 + scale) + shift
        return self.dropout(F.silu(h))


def _check_mask(cond_mask: Tensor, cond: Tensor) -> None:
    if cond_mask.dtype != torch.bool or cond_mask.shape != cond.shape[:1]:
        raise ValueError(f"cond_mask must be a bool tensor of shape {tuple(cond.shape[:1])}, "
                         f"got {cond_mask.dtype} {tuple(cond_mask.shape)}")


def _mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))


class _Conditioned(nn.Module):
    """The timestep and condition embedding both denoisers share:
    ``SiLU([MLP_t(sinusoid(t)), MLP_c(c)])`` ``(B, 2·emb_dim)``, with a learned null
    condition where ``cond_mask`` is ``False``."""

    def _init_conditioning(self, cond_dim: int, time_dim: int, emb_dim: int) -> None:
        self.time_dim = time_dim
        self.time_mlp = _mlp(time_dim, emb_dim)
        self.cond_mlp = _mlp(cond_dim, emb_dim)
        self.null_cond = nn.Parameter(torch.randn(cond_dim))

    def _embedding(self, t: Tensor, cond: Tensor, cond_mask: Tensor | None, dtype: torch.dtype
                   ) -> Tensor:
        return torch.cat([self._time_embedding(t, dtype), self._cond_embedding(cond, cond_mask)],
                         dim=-1)  # SiLU acts per element, so this is SiLU of the concatenation

    def _time_embedding(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        """``SiLU(MLP_t(sinusoid(t)))`` ``(B, emb_dim)``: the first half of the embedding."""
        return F.silu(self.time_mlp(timestep_embedding(t, self.time_dim).to(dtype)))

    def _cond_embedding(self, cond: Tensor, cond_mask: Tensor | None) -> Tensor:
        """``SiLU(MLP_c(c))`` ``(B, emb_dim)``, the null condition where ``cond_mask`` is
        ``False``: the second half of the embedding."""
        if cond_mask is not None:
            _check_mask(cond_mask, cond)
            null = self.null_cond.to(cond.dtype).expand_as(cond)  # (B, Dc)
            cond = torch.where(cond_mask[:, None], cond, null)
        return F.silu(self.cond_mlp(cond))


class ConditionalMLP(_Conditioned):
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
        self._init_conditioning(c.cond_dim, c.time_dim, c.emb_dim)
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
        emb = self._embedding(t, cond, cond_mask, x.dtype)
        return self._layers(x, [layer.film(emb) for layer in self.layers])

    def with_condition(self, cond: Tensor, cond_mask: Tensor | None = None
                       ) -> Callable[[Tensor, int], Tensor]:
        """``f(x, t)``: this denoiser with ``cond`` fixed and one timestep ``t`` for every
        row, as samplers call it at each step; equal to the forward up to rounding.

        Every layer's FiLM is linear in the embedding [time, condition], so the condition's
        share is computed once here and the timestep's once per step for all rows. At the
        default sizes (emb_dim 256, width 512) that leaves a step about a third of a full
        forward's FLOPs (:func:`flops_per_sample`, :func:`sampling_flops_per_sample`).
        """
        split = self.config.emb_dim
        c = self._cond_embedding(cond, cond_mask)  # (B, emb_dim)
        cond_films = [F.linear(c, layer.film.weight[:, split:]) for layer in self.layers]

        def step(x: Tensor, t: int) -> Tensor:
            temb = self._time_embedding(torch.tensor([t], device=x.device), x.dtype)  # (1, ·)
            films = [f + F.linear(temb, layer.film.weight[:, :split], layer.film.bias)
                     for f, layer in zip(cond_films, self.layers, strict=True)]
            return self._layers(x, films)

        return step

    def _layers(self, x: Tensor, films: list[Tensor]) -> Tensor:
        h = self.layers[0](x, films[0])  # (B, width)
        for layer, film in zip(self.layers[1:], films[1:], strict=True):
            h = h + layer(torch.cat([h, x], dim=-1), film)  # x re-enters every layer
        return self.out(h)


class _SeedLayer(nn.Module):
    """One hidden layer of the seed's MLP: ``Dropout(SiLU(LN(W·inp·(1 + scale) + shift)))``,
    ``scale = W_t·SiLU(e_t)`` from the timestep embedding and ``shift`` from the condition
    through ``SiLU → Linear(Dc, E) → SiLU → (h + 3-linear MLP(h)) → SiLU → Linear(E, width)``.
    """

    def __init__(self, in_dim: int, width: int, time_width: int, cond_dim: int, emb_dim: int,
                 dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, width)
        self.time = nn.Linear(time_width, width)
        self.cond_in = nn.Linear(cond_dim, emb_dim)
        self.cond_mid = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.cond_out = nn.Linear(emb_dim, width)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        for module in self.modules():
            if isinstance(module, nn.Linear):  # the seed's init for SiLU layers
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def shift(self, cond: Tensor) -> Tensor:
        """The condition's shift ``(B, width)``."""
        h = F.silu(self.cond_in(F.silu(cond)))
        return self.cond_out(F.silu(h + self.cond_mid(h)))

    def forward(self, inp: Tensor, temb: Tensor, shift: Tensor) -> Tensor:
        h = self.linear(inp) * (1 + self.time(F.silu(temb))) + shift
        return self.dropout(F.silu(self.norm(h)))


class SeedMLP(nn.Module):
    """The seed's conditional MLP denoiser ``model(x_t, t, cond, cond_mask) -> (B, D)``.

    The timestep embedding is ``MLP_t(sinusoid(t))`` of width D; ``depth`` hidden layers
    (:class:`_SeedLayer`), every one after the first taking ``[h, x]``, then a plain linear
    output layer on ``[h, x]`` (the seed's ten layers are nine hidden and the output). A row
    whose ``cond_mask`` is ``False`` gets no shift, as the seed's ``c=None``.

    Args:
        config: the network's shape (``emb_dim`` is the condition MLP's width).
    """

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = c = config
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.dim), nn.SiLU(),
                                      nn.Linear(c.dim, c.dim))
        self.layers = nn.ModuleList(
            _SeedLayer(c.dim if i == 0 else c.width + c.dim, c.width, c.dim, c.cond_dim,
                       c.emb_dim, c.dropout)
            for i in range(c.depth)
        )
        self.out = nn.Linear(c.width + c.dim, c.dim)
        nn.init.kaiming_normal_(self.out.weight, nonlinearity="relu")

    def _temb(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        return self.time_mlp(timestep_embedding(t, self.config.time_dim).to(dtype))

    def _shifts(self, cond: Tensor, cond_mask: Tensor | None) -> list[Tensor]:
        shifts = [layer.shift(cond) for layer in self.layers]  # (B, width) each
        if cond_mask is None:
            return shifts
        _check_mask(cond_mask, cond)
        keep = cond_mask[:, None].to(cond.dtype)
        return [s * keep for s in shifts]

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor | None = None
    ) -> Tensor:
        """As :meth:`ConditionalMLP.forward`."""
        return self._layers(x, self._temb(t, x.dtype), self._shifts(cond, cond_mask))

    def with_condition(self, cond: Tensor, cond_mask: Tensor | None = None
                       ) -> Callable[[Tensor, int], Tensor]:
        """``f(x, t)`` with ``cond`` fixed: the condition MLPs run once per sampling call and
        the timestep embedding once per step for every row."""
        shifts = self._shifts(cond, cond_mask)

        def step(x: Tensor, t: int) -> Tensor:
            temb = self._temb(torch.tensor([t], device=x.device), x.dtype)  # (1, D)
            return self._layers(x, temb, shifts)

        return step

    def _layers(self, x: Tensor, temb: Tensor, shifts: list[Tensor]) -> Tensor:
        h = self.layers[0](x, temb, shifts[0])
        for layer, shift in zip(self.layers[1:], shifts[1:], strict=True):
            h = layer(torch.cat([h, x], dim=-1), temb, shift)
        return self.out(torch.cat([h, x], dim=-1))


#: The vector denoisers a translator's ``net`` option names.
DENOISERS: dict[str, type[nn.Module]] = {"film": ConditionalMLP, "seed": SeedMLP}


class _ResBlock(nn.Module):
    """``h + conv(SiLU(FiLM(GN(conv(SiLU(GN(h)))))))``, FiLM's (scale, shift) from emb."""

    def __init__(self, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, channels), nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * channels)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        x = self.conv1(F.silu(self.norm1(h)))
        return h + self.conv2(F.silu(self.norm2(x) * (1 + scale) + shift))


class ConditionalGridUNet(_Conditioned):
    """Conditional U-Net denoiser over flattened grids ``model(x_t, t, cond, cond_mask) ->
    (B, C·g·g)``.

    ``x`` is viewed as ``(B, C, g, g)``; ``blocks`` FiLM residual blocks of ``width``
    channels at g × g, a strided conv to ``2·width`` channels at g/2 × g/2 with ``2·blocks``
    blocks, then upsampling, a skip connection from the first level and ``blocks`` blocks
    at g × g. The condition enters every block as in :class:`ConditionalMLP`; the output
    conv is zero-initialised.

    Args:
        channels, grid: C and g of the grid (``C·g·g`` = the vectors' size; g even).
        cond_dim: Dc, size of the condition vectors.
        width: channels at full resolution (a multiple of 8, for GroupNorm).
        blocks: residual blocks per level.
        time_dim, emb_dim: sinusoidal timestep embedding size and the embedding MLPs' width.
    """

    def __init__(self, channels: int, grid: int, cond_dim: int, *, width: int = 64,
                 blocks: int = 1, time_dim: int = 128, emb_dim: int = 256) -> None:
        super().__init__()
        if min(channels, cond_dim, blocks, time_dim, emb_dim) < 1 or grid < 2 or grid % 2:
            raise ValueError(f"channels, cond_dim, blocks and embedding sizes must be ≥ 1 and "
                             f"the grid even, got channels={channels} grid={grid} "
                             f"cond_dim={cond_dim} blocks={blocks}")
        if width < 8 or width % 8:
            raise ValueError(f"width must be a multiple of 8 (GroupNorm), got {width}")
        self.channels, self.grid = channels, grid
        self._init_conditioning(cond_dim, time_dim, emb_dim)
        e = 2 * emb_dim
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.down_blocks = nn.ModuleList(_ResBlock(width, e) for _ in range(blocks))
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid_blocks = nn.ModuleList(_ResBlock(2 * width, e) for _ in range(2 * blocks))
        self.up = nn.Conv2d(2 * width, width, 3, padding=1)
        self.merge = nn.Conv2d(2 * width, width, 1)
        self.up_blocks = nn.ModuleList(_ResBlock(width, e) for _ in range(blocks))
        self.out_norm = nn.GroupNorm(8, width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor | None = None
    ) -> Tensor:
        """As :meth:`ConditionalMLP.forward`, for ``x`` ``(B, C·g·g)``."""
        emb = self._embedding(t, cond, cond_mask, x.dtype)
        h = self.inp(x.view(-1, self.channels, self.grid, self.grid))
        for block in self.down_blocks:
            h = block(h, emb)
        skip = h
        h = self.down(h)
        for block in self.mid_blocks:
            h = block(h, emb)
        h = self.up(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.merge(torch.cat([h, skip], dim=1))
        for block in self.up_blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h))).flatten(1)


def flops_per_sample(config: DenoiserConfig) -> int:
    """Matmul FLOPs of one :class:`ConditionalMLP` forward for one sample (2·in·out per Linear).

    Norms, activations and the sinusoidal embedding are left out; for a batch multiply by B,
    and by 3 for a training step (forward + backward).
    """
    c = config
    embed = c.time_dim * c.emb_dim + c.cond_dim * c.emb_dim + 2 * c.emb_dim * c.emb_dim
    film = c.depth * (2 * c.emb_dim) * (2 * c.width)
    return 2 * (embed + _layer_macs(c) + film)


def _layer_macs(c: DenoiserConfig) -> int:
    """Multiply-adds of the hidden layers (the input re-entering each) and the output layer."""
    return c.dim * c.width + (c.depth - 1) * (c.width + c.dim) * c.width + c.width * c.dim


def sampling_flops_per_sample(config: DenoiserConfig, steps: int) -> int:
    """Matmul FLOPs of one row drawn in ``steps`` steps through
    :meth:`ConditionalMLP.with_condition`: the hidden and output layers at every step, the
    condition MLP and the condition's share of every FiLM once. The timestep's share is
    computed once per step for the whole batch and is left out. With guidance a sample is
    two rows (conditional and null).
    """
    c = config
    once = c.cond_dim * c.emb_dim + c.emb_dim * c.emb_dim + c.depth * c.emb_dim * 2 * c.width
    return 2 * (once + steps * _layer_macs(c))
