"""Image decoder: a VAE conditioned on an embedding (seed 003, done properly).

The encoder's convolutional features are joined with a projection of the conditioning
embedding and mapped to the latent's mean and log-variance; the decoder takes the latent
joined with another projection of the embedding and draws a 64×64 image. Loss: BCE or MSE
reconstruction (+ optional SSIM term) + β·KL. Differences from the seed: a real validation
split (the seed validated on its training data), embeddings z-normalised with train
statistics, CLIP embeddings as they are stored, and sampling noise drawn per image from a
generator, so a sample does not depend on the batch it was drawn in.
"""

from __future__ import annotations

import dataclasses
from itertools import pairwise
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modtrans.config import Config
from modtrans.data.store import EmbeddingStore
from modtrans.encoders.world_clip import load_images
from modtrans.io import load_weights, save_weights
from modtrans.training.fit import fit_and_save
from modtrans.translators.base import Normalizer

WEIGHTS, CONFIG = "decoder.safetensors", "decoder_config.json"
CONDITIONS = ("image", "text")


@dataclasses.dataclass
class ImageDecoderConfig(Config):
    """The conditional VAE and its recipe.

    Attributes:
        condition: which embeddings it is trained on: ``image`` (with the translator) or
            ``text`` (the direct route).
        embed_dim: width of the conditioning embedding (set from the store).
        latent_dim: size of the VAE latent.
        channels: conv widths, 64×64 → 4×4 in four stride-2 steps (mirrored by the decoder).
        cond_proj: width of each projection of the embedding.
        loss: ``bce`` or ``mse`` reconstruction, summed over pixels.
        ssim_weight: weight of a (1 − SSIM)·pixels term (0: off).
        beta: weight of the KL term.
        epochs, batch_size, lr, seed: the recipe.
        image_encoder, text_encoder: the store's encoder specs (checked at use).
    """

    condition: str = "image"
    embed_dim: int = 0
    latent_dim: int = 32
    channels: tuple[int, ...] = (32, 64, 128, 256)
    cond_proj: int = 128
    loss: str = "bce"
    ssim_weight: float = 0.0
    beta: float = 1.0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    image_encoder: str = "unknown"
    text_encoder: str = "unknown"

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {self.condition!r}")
        if self.loss not in ("bce", "mse"):
            raise ValueError(f"loss must be 'bce' or 'mse', got {self.loss!r}")
        if len(self.channels) != 4:
            raise ValueError(f"channels needs 4 widths (64 → 4 px), got {self.channels}")
        if self.latent_dim < 1 or self.beta < 0 or self.ssim_weight < 0:
            raise ValueError("latent_dim must be ≥ 1, beta and ssim_weight ≥ 0")


class ConditionalVAE(nn.Module):
    """q(z | x, e) and p(x | z, e) over 64×64 RGB images in [0, 1]."""

    def __init__(self, config: ImageDecoderConfig) -> None:
        super().__init__()
        if config.embed_dim < 1:
            raise ValueError("embed_dim must be set (the width of the conditioning embedding)")
        self.config = config
        c = config.channels
        widths = [3, *c]
        self.encoder = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(a, b, 4, stride=2, padding=1), nn.BatchNorm2d(b),
                          nn.LeakyReLU(0.2))
            for a, b in pairwise(widths)
        ))  # fmt: skip
        flat = c[-1] * 4 * 4
        self.enc_cond = nn.Sequential(nn.Linear(config.embed_dim, config.cond_proj), nn.SiLU())
        self.to_stats = nn.Linear(flat + config.cond_proj, 2 * config.latent_dim)
        self.dec_cond = nn.Sequential(nn.Linear(config.embed_dim, config.cond_proj), nn.SiLU())
        self.from_latent = nn.Sequential(
            nn.Linear(config.latent_dim + config.cond_proj, flat), nn.SiLU()
        )
        self.decoder = nn.Sequential(*(
            nn.Sequential(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.BatchNorm2d(b),
                          nn.SiLU())
            for a, b in pairwise(c[::-1])
        ), nn.ConvTranspose2d(c[0], 3, 4, stride=2, padding=1))  # fmt: skip
        self.embed_norm = Normalizer(config.embed_dim)

    def encode(self, images: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 64, 64) in [0, 1] and normalised embeddings → latent mean and log-variance."""
        features = self.encoder(images * 2 - 1).flatten(1)
        stats = self.to_stats(torch.cat([features, self.enc_cond(e)], dim=1))
        return stats.chunk(2, dim=1)

    def decode_logits(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Latents and normalised embeddings → pixel logits (N, 3, 64, 64)."""
        h = self.from_latent(torch.cat([z, self.dec_cond(e)], dim=1))
        return self.decoder(h.view(len(z), self.config.channels[-1], 4, 4))

    def loss(self, images: torch.Tensor, e_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image negative ELBO terms for images in [0, 1] and raw embeddings."""
        e = self.embed_norm(e_raw)
        mean, logvar = self.encode(images, e)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        logits = self.decode_logits(z, e)
        pixels = images[0].numel()
        if self.config.loss == "bce":
            rec = F.binary_cross_entropy_with_logits(logits, images, reduction="sum")
        else:
            rec = F.mse_loss(torch.sigmoid(logits), images, reduction="sum")
        rec = rec / len(images)
        if self.config.ssim_weight:
            from torchmetrics.functional.image import structural_similarity_index_measure

            ssim = structural_similarity_index_measure(torch.sigmoid(logits), images,
                                                       data_range=1.0)
            rec = rec + self.config.ssim_weight * (1 - ssim) * pixels
        kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(dim=1).mean()
        return {"loss": rec + self.config.beta * kl, "rec": rec, "kl": kl}

    def generate(self, e_raw: torch.Tensor, *, generator: torch.Generator | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
        """One image per embedding row: uint8 (N, 64, 64, 3).

        The latent of row i is drawn from ``generator`` in row order before any batching, so
        an image depends on the seed and its row, never on how many were drawn with it.
        """
        return self._draw(e_raw, generator, temperature=temperature)

    def reconstruct(self, images: torch.Tensor, e_raw: torch.Tensor, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Redraw uint8 images (N, 64, 64, 3) from latents drawn from the posterior.

        The latent comes from q(z | image, embedding), so it has seen the image: this is what
        the decoder can draw at all, an upper bound for :meth:`generate`. Noise is drawn per
        row, as there.
        """
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (64, 64, 3):
            raise ValueError(f"images must be uint8 (N, 64, 64, 3), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if len(images) != len(e_raw):
            raise ValueError(f"{len(images)} images but {len(e_raw)} embeddings")
        return self._draw(e_raw, generator, images=images)

    @torch.no_grad()
    def _draw(self, e_raw: torch.Tensor, generator: torch.Generator | None, *,
              temperature: float = 1.0, images: torch.Tensor | None = None) -> torch.Tensor:
        """Decode latents drawn per row from the prior (scaled by ``temperature``) or, given
        ``images``, from the posterior; in eval mode, the caller's mode restored."""
        was_training = self.training
        self.eval()
        device = self.embed_norm.mean.device
        noise = torch.randn(len(e_raw), self.config.latent_dim, generator=generator).to(device)
        e = self.embed_norm(e_raw.to(device, torch.float32))
        if images is None:
            z = noise * temperature
        else:
            pixels = images.permute(0, 3, 1, 2).to(device, torch.float32) / 255
            mean, logvar = self.encode(pixels, e)
            z = mean + noise * (0.5 * logvar).exp()
        out = torch.sigmoid(self.decode_logits(z, e))
        self.train(was_training)
        return (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

    def save(self, out_dir: str | Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_weights(out_dir / WEIGHTS, self)
        self.config.save(out_dir / CONFIG)
        return out_dir

    @classmethod
    def load(cls, path: str | Path) -> ConditionalVAE:
        path = Path(path)
        if not (path / WEIGHTS).is_file():
            raise FileNotFoundError(
                f"{path} holds no image decoder ({WEIGHTS}); train one with "
                "`modtrans fit-decoder image --data STORE --out DIR`"
            )
        model = cls(ImageDecoderConfig.load(path / CONFIG))
        load_weights(model, path / WEIGHTS)
        return model.eval()


def image_grid(images: torch.Tensor, rows: int, pad: int = 2) -> Image.Image:
    """uint8 images (rows·cols, H, W, 3), row-major, as one picture with ``pad`` px gutters."""
    n, h, w, _ = images.shape
    if rows < 1 or n % rows:
        raise ValueError(f"{n} images do not fill {rows} rows")
    cols = n // rows
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, array in enumerate(images.numpy()):
        r, c = divmod(i, cols)
        grid.paste(Image.fromarray(array), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def decoder_pairs(store: EmbeddingStore, condition: str, max_images: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 64, 64, 3), embeddings (N, D)) of a store: one row per image for
    ``image`` conditions, one per caption (its image repeated) for ``text``."""
    n = store.n_images if max_images is None else min(max_images, store.n_images)
    paths = [Path(p) for p in store.image_metadata().column("image_path").to_pylist()[:n]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) of {store.root} are not on disk (e.g. {missing[0]}); the "
            "decoder trains on the images the store was embedded from"
        )
    images = load_images(paths, 64)
    if condition == "image":
        return images, torch.from_numpy(store.image_embeddings[:n].astype(np.float32))
    owner = np.asarray(store.caption_image_index)
    rows = np.flatnonzero(owner < n)
    texts = torch.from_numpy(store.text_embeddings[rows].astype(np.float32))
    return images[torch.from_numpy(owner[rows])], texts


class _VAEModule(L.LightningModule):
    def __init__(self, model: ConditionalVAE) -> None:
        super().__init__()
        self.model = model

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, e = batch
        terms = self.model.loss(images.permute(0, 3, 1, 2).float() / 255, e)
        for key, value in terms.items():
            self.log(f"{stage}/{key}", value, prog_bar=key == "loss", batch_size=len(images))
        return terms["loss"]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.model.config.lr)


def fit_image_decoder(train: EmbeddingStore, val: EmbeddingStore, out_dir: str | Path,
                      config: ImageDecoderConfig | None = None, *, accelerator: str = "auto",
                      max_val_images: int = 1000, progress: bool = True) -> dict[str, Any]:
    """Train the conditional VAE on a store's images and embeddings; validate on ``val``.

    Returns:
        A summary (pairs, seconds, final train and val losses), also in ``summary.json``.
    """
    config = dataclasses.replace(config or ImageDecoderConfig(),
                                 image_encoder=train.image_encoder,
                                 text_encoder=train.text_encoder)
    config.embed_dim = train.image_dim if config.condition == "image" else train.text_dim
    L.seed_everything(config.seed, verbose=False)
    images, e = decoder_pairs(train, config.condition)
    val_images, val_e = decoder_pairs(val, config.condition, max_val_images)
    model = ConditionalVAE(config)
    model.embed_norm.fit(e)
    loader = DataLoader(TensorDataset(images, e), batch_size=config.batch_size, shuffle=True,
                        drop_last=len(e) > config.batch_size)
    val_loader = DataLoader(TensorDataset(val_images, val_e), batch_size=512)
    return fit_and_save(model, _VAEModule(model), loader, val_loader, out_dir,
                        epochs=config.epochs, accelerator=accelerator, progress=progress,
                        info={"pairs": len(e), "condition": config.condition})
