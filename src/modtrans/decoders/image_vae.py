"""Image decoder: a VAE conditioned on an embedding (seed 003, done properly), with a
diffusion prior over its latent.

The encoder's convolutional features (64 → 8 px) are joined with a projection of the
conditioning embedding and mapped to the mean and log-variance of a *spatial* latent, a
``latent_channels × 8 × 8`` grid (``grid: 16``: 16 × 16); the decoder takes that grid
joined with another projection of the embedding and draws a 64×64 image. Loss: BCE or MSE
reconstruction (+ optional SSIM term) + β·KL. New images are drawn by sampling the latent
from a conditional diffusion prior p(z | e) (:mod:`modtrans.decoders.latent_prior`)
trained on the encoder's posteriors after the VAE.

A spatial latent with a learned prior rather than seed 003's vector latent and N(0, I)
prior, which drew shapeless blobs on the world; a real validation split, embeddings
z-normalised with train statistics, and noise drawn per image (a sample does not depend on
its batch). Measurements: ``docs/findings.md``, *Image decoder*.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modtrans.artefacts import Artefact, Layout, read_summary
from modtrans.config import Config
from modtrans.data.store import EmbeddingStore
from modtrans.decoders.latent_prior import LatentPrior, LatentPriorConfig
from modtrans.images import load_images, uint8_images, unit_pixels
from modtrans.training.fit import Recipe, fit, save_trained, stage_metrics
from modtrans.translators.base import Normalizer

CONDITIONS = ("image", "text")
GRIDS = (8, 16)  # the latent's side: 64 px / 2³ or / 2²


@dataclasses.dataclass
class ImageDecoderConfig(Config):
    """The conditional VAE, its latent prior and their recipe.

    Attributes:
        condition: which embeddings it is trained on: ``image`` (with the translator) or
            ``text`` (the direct route).
        embed_dim: width of the conditioning embedding (set from the store).
        latent_channels: channels of the latent grid (latent size: grid² × this).
        grid: the latent grid's side, 8 (8 px a cell) or 16 (4 px a cell: the encoder's
            last downsampling and the decoder's first upsampling are left out).
        channels: conv widths at 32, 16 and grid px (mirrored by the decoder); multiples of 8
            (GroupNorm in groups of 8).
        loss: ``bce`` or ``mse`` reconstruction, summed over pixels.
        ssim_weight: weight of a (1 − SSIM)·pixels term (0: off).
        beta: weight of the KL term.
        epochs, batch_size, lr, seed: the VAE's recipe.
        prior: :class:`LatentPriorConfig` options of the diffusion prior p(z | e).
        image_encoder, text_encoder: the store's encoder specs (checked at use).
    """

    condition: str = "image"
    embed_dim: int = 0
    latent_channels: int = 4
    grid: int = 8
    channels: tuple[int, ...] = (32, 64, 128)
    loss: str = "bce"
    ssim_weight: float = 0.0
    beta: float = 0.1
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    prior: LatentPriorConfig = dataclasses.field(default_factory=LatentPriorConfig)
    seed: int = 0
    image_encoder: str = "unknown"
    text_encoder: str = "unknown"

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {self.condition!r}")
        if self.loss not in ("bce", "mse"):
            raise ValueError(f"loss must be 'bce' or 'mse', got {self.loss!r}")
        if len(self.channels) != 3 or any(c < 8 or c % 8 for c in self.channels):
            raise ValueError(f"channels needs 3 widths, multiples of 8 (64 → 8 px), got "
                             f"{self.channels}")
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid}")
        if self.latent_channels < 1 or self.beta < 0 or self.ssim_weight < 0:
            raise ValueError("latent_channels must be ≥ 1, beta and ssim_weight ≥ 0")
        # a mapping (a config file) becomes the typed options: unknown or bad options fail
        # here, not after the VAE has trained
        if isinstance(self.prior, dict):
            self.prior = LatentPriorConfig.from_dict(self.prior)
        if not isinstance(self.prior, LatentPriorConfig):
            raise ValueError(f"prior must be a mapping of LatentPriorConfig options, got "
                             f"{self.prior!r}")

    def recipe(self) -> Recipe:
        """The VAE stage's recipe: Adam on the ELBO."""
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, optimizer="adam",
                      lr=self.lr, seed=self.seed)

    @property
    def latent_size(self) -> int:
        return self.latent_channels * self.grid * self.grid


def _block(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.GroupNorm(8, b), nn.SiLU())


class ConditionalVAE(Artefact, nn.Module):
    """q(z | x, e), p(x | z, e) over 64×64 RGB images in [0, 1], and the prior p(z | e)."""

    kind = "image-decoder"
    config_class = ImageDecoderConfig
    train_hint = "train one with `modtrans fit-decoder image --data STORE --out DIR`"
    legacy = Layout("decoder_config.json", "decoder.safetensors")

    def __init__(self, config: ImageDecoderConfig) -> None:
        super().__init__()
        if config.embed_dim < 1:
            raise ValueError("embed_dim must be set (the width of the conditioning embedding)")
        self.config = config
        c1, c2, c3 = config.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c1, 4, stride=2, padding=1), nn.SiLU(), _block(c1, c1),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.SiLU(), _block(c2, c2),
            (nn.Conv2d(c2, c3, 4, stride=2, padding=1) if config.grid == 8
             else nn.Conv2d(c2, c3, 3, padding=1)), nn.SiLU(), _block(c3, c3),
        )  # fmt: skip
        self.enc_cond = nn.Linear(config.embed_dim, c3)
        self.to_stats = nn.Conv2d(c3, 2 * config.latent_channels, 1)
        self.dec_cond = nn.Linear(config.embed_dim, c3)
        self.from_latent = nn.Conv2d(config.latent_channels, c3, 3, padding=1)
        up = nn.Upsample(scale_factor=2)
        self.decoder = nn.Sequential(
            nn.SiLU(), _block(c3, c3),
            up if config.grid == 8 else nn.Identity(), _block(c3, c2), _block(c2, c2),
            up, _block(c2, c1), _block(c1, c1),
            up, _block(c1, c1), nn.Conv2d(c1, 3, 3, padding=1),
        )  # fmt: skip
        self.embed_norm = Normalizer(config.embed_dim)
        self.prior = LatentPrior(config.prior,
                                 (config.latent_channels, config.grid, config.grid),
                                 config.embed_dim)

    def encode(self, images: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 64, 64) in [0, 1] and normalised embeddings → latent mean and log-variance,
        each (N, latent_channels, grid, grid)."""
        features = self.encoder(images * 2 - 1) + self.enc_cond(e)[:, :, None, None]
        return self.to_stats(features).chunk(2, dim=1)

    def decode_logits(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Latents (N, latent_channels, grid, grid) and normalised embeddings → pixel logits
        (N, 3, 64, 64)."""
        return self.decoder(self.from_latent(z) + self.dec_cond(e)[:, :, None, None])

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
        kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).flatten(1).sum(dim=1).mean()
        return {"loss": rec + self.config.beta * kl, "rec": rec, "kl": kl}

    @torch.no_grad()
    def posterior(self, images: torch.Tensor, e_raw: torch.Tensor, batch_size: int = 512
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation, flattened (N, latent_size), of uint8
        images (N, 64, 64, 3) with their raw embeddings."""
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (64, 64, 3):
            raise ValueError(f"images must be uint8 (N, 64, 64, 3), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if len(images) != len(e_raw):
            raise ValueError(f"{len(images)} images but {len(e_raw)} embeddings")
        was_training = self.training
        self.eval()
        device = self.embed_norm.mean.device
        means, stds = [], []
        for i in range(0, len(images), batch_size):
            pixels = unit_pixels(images[i:i + batch_size]).to(device)
            e = self.embed_norm(e_raw[i:i + batch_size].to(device, torch.float32))
            mean, logvar = self.encode(pixels, e)
            means.append(mean.flatten(1))
            stds.append((0.5 * logvar).exp().flatten(1))
        self.train(was_training)
        return torch.cat(means), torch.cat(stds)

    def generate(self, e_raw: torch.Tensor, *, generator: torch.Generator | None = None,
                 steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
        """One image per embedding row, its latent drawn from the diffusion prior: uint8
        (N, 64, 64, 3). ``steps`` and ``guidance`` override the prior's sampler settings.

        The noise of row i is drawn from ``generator`` in row order before any batching and
        the sampler is deterministic given it, so an image depends on the seed and its row,
        never on how many were drawn with it.
        """
        return self._draw(e_raw, generator, steps=steps, guidance=guidance)

    def reconstruct(self, images: torch.Tensor, e_raw: torch.Tensor, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Redraw uint8 images (N, 64, 64, 3) from latents drawn from the posterior.

        The latent comes from q(z | image, embedding), so it has seen the image: this is what
        the decoder can draw at all, an upper bound for :meth:`generate`. Noise is drawn per
        row, as there. Images are checked by :meth:`posterior`.
        """
        return self._draw(e_raw, generator, images=images)

    @torch.no_grad()
    def _draw(self, e_raw: torch.Tensor, generator: torch.Generator | None, *,
              steps: int | None = None, guidance: float | None = None,
              images: torch.Tensor | None = None) -> torch.Tensor:
        """Decode latents drawn per row from the prior or, given ``images``, from the
        posterior; in eval mode, the caller's mode restored."""
        was_training = self.training
        self.eval()
        device = self.embed_norm.mean.device
        noise = torch.randn(len(e_raw), self.config.latent_size, generator=generator).to(device)
        e = self.embed_norm(e_raw.to(device, torch.float32))
        if images is None:
            z = self.prior.sample(e, noise, steps=steps, guidance=guidance)
        else:
            mean, std = self.posterior(images, e_raw)
            z = mean + noise * std
        grid = self.config.grid
        out = torch.sigmoid(self.decode_logits(z.view(-1, self.config.latent_channels, grid,
                                                      grid), e))
        self.train(was_training)
        return uint8_images(out).cpu()

    @classmethod
    def migrate(cls, options: dict[str, Any], version: int, path: Path) -> dict[str, Any]:
        """Format 0 (``decoder_config.json``): a vector latent cannot be read; a prior saved
        before the U-Net became the default was an MLP."""
        if version == 0 and "latent_dim" in options:
            raise ValueError(
                f"{path} is an image decoder of an older modtrans (a vector latent); "
                "retrain it with `modtrans fit-decoder image` (in a demo folder: delete "
                f"{path} and rerun `modtrans e2e`, which retrains what is missing)"
            )
        prior = options.get("prior")
        if version == 0 and isinstance(prior, dict):
            options = {**options, "prior": {"denoiser": "mlp", **prior}}
        return options


def decoder_pairs(store: EmbeddingStore, condition: str, max_images: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 64, 64, 3), embeddings (N, D)) of a store: one row per image for
    ``image`` conditions, one per caption (its image repeated) for ``text``."""
    images, e, owner = decoder_rows(store, condition, max_images)
    return images[owner], e


def decoder_rows(store: EmbeddingStore, condition: str, max_images: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``max_images`` images of a store (uint8 (n, 64, 64, 3); None: all), the
    conditioning embeddings (N, D) of :func:`decoder_pairs` and the image of each (N,)."""
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
        return (images, torch.from_numpy(store.image_embeddings[:n].astype(np.float32)),
                torch.arange(n))
    owner = np.asarray(store.caption_image_index)
    rows = np.flatnonzero(owner < n)
    texts = torch.from_numpy(store.text_embeddings[rows].astype(np.float32))
    return images, texts, torch.from_numpy(owner[rows])


def fit_image_decoder(train: EmbeddingStore, val: EmbeddingStore, out_dir: str | Path,
                      config: ImageDecoderConfig | None = None, *, accelerator: str = "auto",
                      max_images: int | None = None, max_val_images: int = 1000,
                      progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Train the conditional VAE on a store's images and embeddings (the first
    ``max_images`` images and their captions; None: all), then its latent prior on the trained
    encoder's posteriors; validate both on ``val``. ``resume`` continues each stage from its
    checkpoint in ``out_dir/lightning``.

    Returns:
        A summary (pairs, seconds and steps of each stage, final train and val losses), also
        in ``summary.json``; the stages' CSV logs are ``logs/`` (VAE) and ``prior_logs/``.
    """
    config = dataclasses.replace(config or ImageDecoderConfig(),
                                 image_encoder=train.image_encoder,
                                 text_encoder=train.text_encoder)
    config.embed_dim = train.image_dim if config.condition == "image" else train.text_dim
    run = {"accelerator": accelerator, "progress": progress, "resume": resume}
    recipe = dataclasses.replace(config.recipe(), **run)
    L.seed_everything(config.seed, verbose=False)
    images, e = decoder_pairs(train, config.condition, max_images)
    val_images, val_e = decoder_pairs(val, config.condition, max_val_images)
    model = ConditionalVAE(config)
    model.embed_norm.fit(e)
    vae = fit(model, lambda batch: model.loss(unit_pixels(batch[0]), batch[1]),
              recipe.loader(TensorDataset(images, e)),
              DataLoader(TensorDataset(val_images, val_e), batch_size=512), recipe, out_dir)
    model.cpu()
    prior = _fit_prior(model, (images, e), (val_images, val_e), out_dir, run)
    return save_trained(model, out_dir, {
        "pairs": len(e), "condition": config.condition, **stage_metrics(vae, "vae"),
        **stage_metrics(prior, "prior")})


def _fit_prior(model: ConditionalVAE, train: tuple[torch.Tensor, torch.Tensor],
               val: tuple[torch.Tensor, torch.Tensor], out_dir: str | Path,
               run: dict[str, Any]) -> dict[str, Any]:
    """The second stage: the latent prior, on posterior draws of the trained encoder for
    (images, raw embeddings) pairs. Returns its :func:`fit` result."""
    (images, e), (val_images, val_e) = train, val
    mean, std = model.posterior(images, e)
    model.prior.scale.fill_(float(mean.std()))
    val_mean, val_std = model.posterior(val_images, val_e)
    batches = max(1, len(e) // model.prior.config.batch_size)
    recipe = dataclasses.replace(model.prior.config.recipe(batches), **run)
    return fit(model.prior, model.prior.training_loss,
               recipe.loader(TensorDataset(mean, std, model.embed_norm(e))),
               DataLoader(TensorDataset(val_mean, val_std, model.embed_norm(val_e)),
                          batch_size=2048),
               recipe, out_dir, stage="prior", log_prefix="prior_")


def refit_latent_prior(train: EmbeddingStore, val: EmbeddingStore, decoder_dir: str | Path,
                       prior: dict[str, Any] | None = None, *, accelerator: str = "auto",
                       max_val_images: int = 1000, progress: bool = True,
                       resume: bool = False) -> dict[str, Any]:
    """Retrain only the latent prior of the image decoder in ``decoder_dir``, its VAE kept,
    and rewrite the decoder there.

    Args:
        train, val: the store the decoder was trained on (its encoders are checked).
        decoder_dir: a decoder saved by :func:`fit_image_decoder`.
        prior: :class:`LatentPriorConfig` options replacing the saved ones. A new
            ``denoiser`` starts from its own default width and depth.
        accelerator, max_val_images, progress, resume: as for :func:`fit_image_decoder`.

    Returns:
        The updated summary (the VAE's figures kept, the prior's replaced), also in
        ``summary.json``.
    """
    decoder_dir = Path(decoder_dir)
    old = ConditionalVAE.load(decoder_dir)
    encoders = (train.image_encoder, train.text_encoder)
    if encoders != (old.config.image_encoder, old.config.text_encoder):
        raise ValueError(
            f"decoder {decoder_dir} was trained on {old.config.image_encoder}/"
            f"{old.config.text_encoder} embeddings, the store holds {encoders[0]}/"
            f"{encoders[1]}; refit it on the store it was trained on"
        )
    if prior is not None and not isinstance(prior, dict):
        raise ValueError(f"prior must be a mapping of LatentPriorConfig options, got {prior!r}")
    options = dict(prior or {})
    base = old.config.prior.to_dict()
    if options.get("denoiser", base["denoiser"]) != base["denoiser"]:
        base.pop("width"), base.pop("depth")
    config = dataclasses.replace(old.config, prior={**base, **options})
    model = ConditionalVAE(config)
    kept = {k: v for k, v in old.state_dict().items() if not k.startswith("prior.")}
    model.load_state_dict({**model.state_dict(), **kept})
    L.seed_everything(config.seed, verbose=False)
    fitted = _fit_prior(model, decoder_pairs(train, config.condition),
                        decoder_pairs(val, config.condition, max_val_images), decoder_dir,
                        {"accelerator": accelerator, "progress": progress, "resume": resume})
    summary = read_summary(decoder_dir)
    summary.update(prior_refit=True, **stage_metrics(fitted, "prior"))
    return save_trained(model, decoder_dir, summary)
