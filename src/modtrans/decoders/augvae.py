"""AugVAE: L-Verse's feature-augmented VQ-VAE (seed 002), an image tokenizer for 64×64 images.

A taming-style ResNet encoder reads the image down to several grids (multi-level, ``ml``:
e.g. 16×16 and 8×8), all quantised with one shared EMA codebook (vector-quantize-pytorch:
k-means init, dead-code reset); the decoder works coarse to fine, each level's decoder
taking its quantised grid concatenated with the previous level's output. The single-level
variant (``sl``) keeps one grid, is fine-tuned from an ML model (:meth:`AugVAE.inherit`) and
feeds that grid through a 1×1 connector to the width the concatenation had. Loss: MSE
(+ optional L1) + the commitment loss; L-Verse's 0.1·LPIPS term is left out, since LPIPS's
pretrained VGG cannot be loaded offline.

Sizes by measurement on the default world (2,000–4,000 train images, 125–375 steps on one
CPU thread): 64-wide codes reconstruct far better than 16-wide ones (val PSNR 20.6 against
16.6 dB at equal steps); the 512 codes are all used (perplexity ≈ 400), so a larger codebook
was not needed at this length of training.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modtrans.artefacts import Artefact
from modtrans.config import Config
from modtrans.images import uint8_images, unit_pixels
from modtrans.training.fit import Recipe, fit, save_trained

logger = logging.getLogger(__name__)

VARIANTS = ("ml", "sl")
IMAGE_SIZE = 64


@dataclasses.dataclass
class AugVAEConfig(Config):
    """The tokenizer's architecture, codebook and recipe.

    Attributes:
        variant: ``ml`` (several grids, concatenations) or ``sl`` (one grid, 1×1 connector).
        levels: the quantised grids' sides, fine to coarse, each half the one before (``sl``:
            one side).
        channels: widths at 32, 16, 8, … px (one per halving down to the coarsest level an
            ``ml`` model has: ``sl`` keeps its ML parent's widths); multiples of 8.
        res_blocks: residual blocks per resolution, in the encoder and in the decoder.
        codebook_size, code_dim: the shared codebook's entries and their width.
        decay: the codebook's EMA decay (L-Verse's 0.99 lags the encoder in runs of a few
            hundred steps: 28 % of 512 codes used, perplexity 23, against 100 % and 398
            at 0.9).
        commitment: β, the weight of the commitment loss.
        dead_code: codes whose EMA usage falls below this are reset to encoder outputs.
        l1_weight: weight of an L1 pixel term added to the MSE (0: off).
        epochs, batch_size, lr, seed: the recipe.
    """

    variant: str = "ml"
    levels: tuple[int, ...] = (16, 8)
    channels: tuple[int, ...] = (32, 64, 128)
    res_blocks: int = 1
    codebook_size: int = 512
    code_dim: int = 64
    decay: float = 0.9
    commitment: float = 0.25
    dead_code: float = 2.0
    l1_weight: float = 1.0
    epochs: int = 4
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        self.levels, self.channels = tuple(self.levels), tuple(self.channels)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.variant == "ml" and len(self.levels) < 2:
            raise ValueError(f"an ml tokenizer quantises several grids, got levels "
                             f"{self.levels}; use variant sl for one")
        if self.variant == "sl" and len(self.levels) != 1:
            raise ValueError(f"an sl tokenizer keeps one grid, got levels {self.levels}")
        sides = [IMAGE_SIZE >> k for k in range(1, 7)]
        if self.levels[0] not in sides or any(
                b * 2 != a for a, b in zip(self.levels, self.levels[1:], strict=False)):
            raise ValueError(f"levels must be sides in {sides}, fine to coarse, each half the "
                             f"one before, got {self.levels}")
        if len(self.channels) < self.stages or any(c < 8 or c % 8 for c in self.channels):
            raise ValueError(f"channels needs {self.stages} widths (32 px down to "
                             f"{self.levels[-1]} px), multiples of 8, got {self.channels}")
        if self.codebook_size < 2 or self.code_dim < 1 or self.res_blocks < 1:
            raise ValueError("codebook_size must be ≥ 2, code_dim and res_blocks ≥ 1")
        if not 0 < self.decay < 1 or self.commitment < 0 or self.l1_weight < 0:
            raise ValueError("decay must be in (0, 1), commitment and l1_weight ≥ 0")

    def recipe(self) -> Recipe:
        """Adam on the reconstruction and commitment losses, cosine to 0."""
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, optimizer="adam",
                      lr=self.lr, schedule="cosine", seed=self.seed)

    @property
    def stages(self) -> int:
        """Encoder stages: halvings from 64 px to the coarsest grid."""
        return int(math.log2(IMAGE_SIZE // self.levels[-1]))

    @property
    def tokens(self) -> int:
        """Tokens per image: every grid's cells, coarse to fine."""
        return sum(side * side for side in self.levels)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8, channels)


class ResBlock(nn.Module):
    """Taming's residual block: (GroupNorm → SiLU → 3×3 conv) twice, plus a skip."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_norm(a), nn.SiLU(), nn.Conv2d(a, b, 3, padding=1),
                                  _norm(b), nn.SiLU(), nn.Conv2d(b, b, 3, padding=1))
        self.skip = nn.Identity() if a == b else nn.Conv2d(a, b, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


def _stage(first: nn.Module, width: int, blocks: int) -> nn.Sequential:
    """``first`` (a resampling or an input conv to ``width``), then residual blocks."""
    return nn.Sequential(first, *(ResBlock(width, width) for _ in range(blocks)))


def _level_decoder(config: AugVAEConfig, width: int, stage: int, until: int) -> nn.Sequential:
    """A level's decoder from ``width`` input channels at stage ``stage``'s resolution up to
    stage ``until``'s (−1: the 64-px image)."""
    ch, blocks = config.channels, config.res_blocks
    layers = [_stage(nn.Conv2d(width, ch[stage], 3, padding=1), ch[stage], blocks)]
    for s in range(stage - 1, max(until, 0) - 1, -1):
        layers.append(_stage(nn.Sequential(nn.Upsample(scale_factor=2),
                                           nn.Conv2d(ch[s + 1], ch[s], 3, padding=1)),
                             ch[s], blocks))
    if until < 0:
        layers += [nn.Upsample(scale_factor=2), _norm(ch[0]), nn.SiLU(),
                   nn.Conv2d(ch[0], 3, 3, padding=1)]
    return nn.Sequential(*layers)


class AugVAE(Artefact, nn.Module):
    """Images (uint8, N × 64 × 64 × 3) ↔ tokens (N × ``config.tokens``, coarse to fine)."""

    kind = "augvae"
    config_class = AugVAEConfig
    train_hint = "train one with `modtrans fit-tokenizer --data WORLD --out DIR`"

    def __init__(self, config: AugVAEConfig) -> None:
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.config = config
        ch, blocks = config.channels, config.res_blocks
        self.encoder = nn.ModuleList(  # stage s: 4×4 stride-2 conv to 64 / 2^(s+1) px
            _stage(nn.Conv2d(ch[s - 1] if s else 3, ch[s], 4, stride=2, padding=1), ch[s],
                   blocks) for s in range(config.stages))
        self.pre_quant = nn.ModuleDict({str(side): nn.Conv2d(ch[self._stage(side)],
                                                             config.code_dim, 1)
                                        for side in config.levels})
        self.quantizer = VectorQuantize(
            dim=config.code_dim, codebook_size=config.codebook_size, decay=config.decay,
            commitment_weight=config.commitment, kmeans_init=True,
            threshold_ema_dead_code=config.dead_code)
        # coarse to fine: level i's decoder ends at level i − 1's resolution, the finest at
        # the image; every level but the coarsest takes [its grid | the previous output]
        self.decoders = nn.ModuleDict()
        for i, side in enumerate(config.levels):
            s = self._stage(side)
            width = config.code_dim if i == len(config.levels) - 1 and config.variant == "ml" \
                else config.code_dim + ch[s]
            until = self._stage(config.levels[i - 1]) if i else -1
            self.decoders[str(side)] = _level_decoder(config, width, s, until)
        self.connector = (nn.Conv2d(config.code_dim, config.code_dim + ch[self._stage(
            config.levels[0])], 1) if config.variant == "sl" else None)

    def _stage(self, side: int) -> int:
        """The encoder stage whose output is ``side`` px."""
        return int(math.log2(IMAGE_SIZE // side)) - 1

    def _quantise(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor,
                                                       torch.Tensor]:
        """Pixels in [−1, 1] → quantised grids (coarse to fine, each N × code_dim × s × s),
        codes (N, tokens) and the commitment loss; all levels in one codebook call, so
        k-means init and the EMA update see every level."""
        features, x = {}, pixels
        for s, stage in enumerate(self.encoder):
            x = stage(x)
            features[IMAGE_SIZE >> (s + 1)] = x
        sides = self.config.levels[::-1]
        z = torch.cat([self.pre_quant[str(side)](features[side]).flatten(2)
                       for side in sides], dim=2).transpose(1, 2)  # (N, tokens, code_dim)
        quantised, codes, commitment = self.quantizer(z)
        return self._grids(quantised), codes, commitment.sum()

    def _grids(self, quantised: torch.Tensor) -> list[torch.Tensor]:
        """(N, tokens, code_dim) → the grids, coarse to fine."""
        sizes = [side * side for side in self.config.levels[::-1]]
        return [part.transpose(1, 2).unflatten(2, (side, side)) for part, side in
                zip(quantised.split(sizes, dim=1), self.config.levels[::-1], strict=True)]

    def _decode(self, grids: list[torch.Tensor]) -> torch.Tensor:
        """Quantised grids, coarse to fine → pixels in about [−1, 1] (N, 3, 64, 64)."""
        sides = self.config.levels[::-1]
        if self.connector is not None:
            return self.decoders[str(sides[0])](self.connector(grids[0]))
        x = self.decoders[str(sides[0])](grids[0])
        for side, grid in zip(sides[1:], grids[1:], strict=True):
            x = self.decoders[str(side)](torch.cat([grid, x], dim=1))
        return x

    def training_loss(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """MSE (+ L1) of the reconstructions and the commitment loss, for a batch of uint8
        images (N, 64, 64, 3)."""
        pixels = unit_pixels(batch[0]) * 2 - 1
        grids, _, commitment = self._quantise(pixels)
        out = self._decode(grids)
        mse = F.mse_loss(out, pixels)
        loss = mse + commitment
        if self.config.l1_weight:
            loss = loss + self.config.l1_weight * F.l1_loss(out, pixels)
        return {"loss": loss, "mse": mse, "commitment": commitment}

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 images (N, 64, 64, 3) → codes (N, tokens): each grid row-major, coarse to
        fine."""
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (64, 64, 3):
            raise ValueError(f"images must be uint8 (N, 64, 64, 3), got {images.dtype} "
                             f"{tuple(images.shape)}")
        device = next(self.parameters()).device
        return torch.cat([self._quantise(unit_pixels(chunk).to(device) * 2 - 1)[1]
                          for chunk in images.split(batch_size)]).cpu()

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Codes (N, tokens) in [0, codebook_size) → uint8 images (N, 64, 64, 3)."""
        if tokens.ndim != 2 or tokens.shape[1] != self.config.tokens:
            raise ValueError(f"tokens must be (N, {self.config.tokens}), got "
                             f"{tuple(tokens.shape)}")
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.config.codebook_size):
            raise ValueError(f"tokens must be codes in [0, {self.config.codebook_size})")
        device = next(self.parameters()).device
        out = [self._decode(self._grids(self.quantizer.get_output_from_indices(chunk.to(
            device)))) for chunk in tokens.split(batch_size)]
        return uint8_images((torch.cat(out) + 1) / 2).cpu()

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images → their decoded tokens, uint8 (N, 64, 64, 3)."""
        return self.decode(self.encode(images))

    def inherit(self, parent: AugVAE) -> list[str]:
        """Copy every weight of ``parent`` (an ML model) that this model has under the same
        name and shape: the encoder, its grid's projection, the codebook and the finest
        level's decoder. Returns the names copied."""
        own = self.state_dict()
        shared = {k: v for k, v in parent.state_dict().items()
                  if k in own and own[k].shape == v.shape}
        self.load_state_dict(shared, strict=False)
        return sorted(shared)


def reconstruction_metrics(model: AugVAE, images: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, mean over images) of the reconstructions of uint8 ``images``, and the
    codebook's usage (share of codes used) and perplexity over their tokens."""
    tokens = model.encode(images)
    rebuilt = model.decode(tokens)
    mse = (unit_pixels(rebuilt) - unit_pixels(images)).pow(2).flatten(1).mean(dim=1)
    counts = torch.bincount(tokens.flatten(), minlength=model.config.codebook_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"psnr": round(float((-10 * mse.clamp_min(1e-10).log10()).mean()), 3),
            "codebook_usage": round(float((counts > 0).float().mean()), 4),
            "perplexity": round(float(entropy.exp()), 1)}


def fit_augvae(images: torch.Tensor, val_images: torch.Tensor, out_dir: str | Path,
               config: AugVAEConfig | None = None, *, init: str | Path | None = None,
               accelerator: str = "auto", progress: bool = True,
               resume: bool = False) -> dict[str, Any]:
    """Train an AugVAE on uint8 ``images`` (N, 64, 64, 3), validating on ``val_images``; an
    ``sl`` model starts from the ML tokenizer saved in ``init`` (its grid and codebook are
    kept: ``levels`` and the codebook options come from there).

    Returns:
        A summary (images, seconds, losses; val PSNR, codebook usage and perplexity), also
        in ``summary.json``.
    """
    config = config or AugVAEConfig()
    parent = None
    if config.variant == "sl":
        if init is None:
            raise ValueError("an sl tokenizer is fine-tuned from an ml one: pass --init ML_DIR")
        parent = AugVAE.load(init)
        if parent.config.variant != "ml":
            raise ValueError(f"--init {init} is an {parent.config.variant} tokenizer; pass an "
                             "ml one")
        p = parent.config
        config = dataclasses.replace(
            config, levels=p.levels[:1], channels=p.channels, res_blocks=p.res_blocks,
            codebook_size=p.codebook_size, code_dim=p.code_dim)
    elif init is not None:
        raise ValueError("--init fine-tunes an sl tokenizer from an ml one: add --variant sl")
    recipe = dataclasses.replace(config.recipe(), accelerator=accelerator, progress=progress,
                                 resume=resume)
    L.seed_everything(config.seed, verbose=False)
    model = AugVAE(config)
    inherited = model.inherit(parent) if parent is not None else []
    result = fit(model, model.training_loss, recipe.loader(TensorDataset(images)),
                 DataLoader(TensorDataset(val_images), batch_size=256), recipe, out_dir)
    model.cpu().eval()
    summary = {"images": len(images), "variant": config.variant, "tokens": config.tokens,
               **({"init": str(init), "inherited_tensors": len(inherited)} if parent else {}),
               **result, "val": reconstruction_metrics(model, val_images)}
    return save_trained(model, out_dir, summary)
