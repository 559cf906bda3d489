"""The joint image–caption VAE (seed 004): one latent that generates a 64×64 image and its
caption together, or either from the other.

Two unimodal encoders give Gaussian experts q(z | image) and q(z | caption): a conv tower of
NVAE-style residual cells (norm → SiLU → conv, twice, optionally squeeze-and-excitation) and
a small transformer over the caption's words. The cells normalise with GroupNorm by default:
NVAE's BatchNorm keeps running statistics, and the image decoder sees three latents a step
(one per subset below) whose activations differ, so its eval-mode statistics fit none of
them (measured: 3× the training error on the same images in eval mode). The shared latent
is fused over the subsets {image}, {caption} and {image, caption}, each a product of its
experts:

- ``mopoe`` (MoPoE-VAE): the joint posterior is the mixture of the subsets' products; the
  ELBO is their mean, every subset's latent reconstructing both modalities (so either
  modality alone must carry what the other needs);
- ``mvae`` (MVAE with sub-sampled ELBOs): the products include the prior expert; the joint
  ELBO reconstructs both modalities, each unimodal ELBO its own (without them cross-modal
  inference fails, pixyz #80).

The image decoder mirrors the encoder up from a 4×4 grid (a Gaussian of fixed
``pixel_sigma`` on pixels in [0, 1]); the caption decoder is a small GPT-2 that reads the
latent as ``prefix_length`` prefix vectors (ClipCap's conditioning). The two likelihoods are
summed in nats and scaled per modality (``image_weight``, ``text_weight``: a 12,288-pixel
image outweighs a ten-word caption by orders of magnitude, the wrong-scale failure of
mmvae #2); the KL term is annealed from 0 over ``kl_warmup`` steps; an optional SEJE-style
batch-hard triplet term (soft margin) pulls each image's posterior mean towards its caption's
and away from the hardest other caption in the batch; an optional JMVAE-kl term
KL(q(z | image, caption) ‖ q(z | m)) pulls each unimodal posterior over the joint one.

With ``spatial_latent`` > 0 the image side adds an image-private spatial latent z2
(``spatial_latent`` × 8 × 8) below z, top-down as in NVAE: a vector latent alone blurs the
image, a spatial one keeps its outlines (as the project's image VAE found). Its prior
p(z2 | z) is read from the decoder's 8×8 features of z, its posterior q(z2 | image, z) adds
a residual (mean and log-variance deltas) read from those and the encoder's 8×8 features,
and KL(q ‖ p) joins the KL term. Where the image is not observed (the subset {caption} in
training, as MMVAE+ draws its private latents; text → image; joint samples) z2 comes from
p(z2 | z), its mean outside training, so every image still goes through z.

Joint samples are drawn from N(0, I) or, with ``prior_components``, from a Gaussian mixture
fitted after training to the joint posterior means of the train pairs (ex-post density
estimation, Ghosh et al. 2020): where the aggregate posterior leaves parts of N(0, I) empty,
latents drawn there decode into images and captions that were never trained to agree.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modtrans.artefacts import TokenizerArtefact
from modtrans.config import Config
from modtrans.decoders.autoregressive import sample_tokens
from modtrans.images import uint8_images, unit_pixels
from modtrans.training.fit import Recipe, derived_seed, fit, save_trained

logger = logging.getLogger(__name__)

FUSIONS = ("mopoe", "mvae")
NORMS = ("group", "batch")
SUBSETS = (("image",), ("text",), ("image", "text"))
IMAGE_SIZE = 64


@dataclasses.dataclass
class JointVAEConfig(Config):
    """The two modalities' networks, the latent, the objective and the recipe.

    Attributes:
        latent_dim: width of the shared latent.
        channels: conv widths at 32, 16, 8 and 4 px (encoder; the decoder in reverse).
        se: squeeze-and-excitation in every residual cell.
        norm: ``group`` (GroupNorm of 8 groups) or ``batch`` (NVAE's BatchNorm) in the cells.
        text_vocab: words in the text tokenizer (set from it).
        max_text_length: caption tokens (words and [EOS]; cut and padded).
        text_width, text_layers, heads: the caption encoder's and GPT-2 decoder's sizes.
        prefix_length: prefix vectors the latent is read as by the GPT-2.
        fusion: ``mopoe`` or ``mvae`` (see the module's docstring).
        pixel_sigma: σ of the image likelihood (pixels in [0, 1]).
        image_weight, text_weight: scales of the two log-likelihoods.
        beta: weight of the KL term once annealed.
        kl_warmup: optimiser steps over which the KL weight rises linearly from 0 to beta.
        triplet_weight, triplet_margin: the alignment term between the unimodal posterior
            means (0: off) and its soft margin's scale.
        kl_align_weight: weight of JMVAE-kl's KL(q(z | image, caption) ‖ q(z | m)) for
            each modality m, which pulls each unimodal posterior over the joint one (0: off).
        spatial_latent: channels of the image-private 8×8 latent z2 below z (0: off; see
            the module's docstring).
        prior_components: components of the mixture fitted to the train pairs' joint
            posterior means that joint samples are drawn from (0: N(0, I)).
        epochs, batch_size, lr, seed: the recipe (each epoch pairs every image with one of
            its captions, drawn per epoch).
    """

    latent_dim: int = 32
    channels: tuple[int, ...] = (16, 32, 64, 128)
    se: bool = True
    norm: str = "group"
    text_vocab: int = 0
    max_text_length: int = 36
    text_width: int = 128
    text_layers: int = 2
    heads: int = 4
    prefix_length: int = 4
    fusion: str = "mopoe"
    pixel_sigma: float = 0.1
    image_weight: float = 1.0
    text_weight: float = 20.0
    beta: float = 1.0
    kl_warmup: int = 500
    triplet_weight: float = 0.0
    triplet_margin: float = 1.0
    kl_align_weight: float = 0.0
    spatial_latent: int = 0
    prior_components: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if len(self.channels) != 4 or any(c < 8 or c % 8 for c in self.channels):
            raise ValueError(f"channels needs 4 widths (32, 16, 8, 4 px), multiples of 8, got "
                             f"{self.channels}")
        if min(self.latent_dim, self.prefix_length, self.text_layers) < 1 \
                or self.max_text_length < 2 or self.text_width % self.heads:
            raise ValueError("latent_dim, prefix_length and text_layers must be ≥ 1, "
                             "max_text_length ≥ 2 and text_width a multiple of heads")
        if min(self.pixel_sigma, self.image_weight, self.text_weight) <= 0:
            raise ValueError("pixel_sigma, image_weight and text_weight must be > 0")
        if self.beta < 0 or self.kl_warmup < 0 or self.triplet_weight < 0 \
                or self.triplet_margin <= 0 or self.prior_components < 0 \
                or self.kl_align_weight < 0:
            raise ValueError("beta, kl_warmup, triplet_weight, kl_align_weight and "
                             "prior_components must be ≥ 0, triplet_margin > 0")
        if isinstance(self.spatial_latent, bool) or not isinstance(self.spatial_latent, int) \
                or self.spatial_latent < 0:
            raise ValueError(f"spatial_latent must be a whole number of channels ≥ 0 (0: no "
                             f"spatial latent), got {self.spatial_latent!r}")

    def recipe(self) -> Recipe:
        """Adam with cosine decay and gradient clipping (a KL that spikes early stays
        bounded)."""
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, optimizer="adam",
                      lr=self.lr, schedule="cosine", gradient_clip=5.0, seed=self.seed)


class SqueezeExcite(nn.Module):
    """Channel gates from the globally pooled features (Hu et al.; NVAE's cells end in one)."""

    def __init__(self, channels: int, ratio: int = 8) -> None:
        super().__init__()
        hidden = max(channels // ratio, 4)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(),
                                  nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]


def _norm(channels: int, norm: str) -> nn.Module:
    return nn.GroupNorm(8, channels) if norm == "group" else nn.BatchNorm2d(channels)


class Cell(nn.Module):
    """NVAE's residual cell: x + 0.1 · (norm → SiLU → 3×3 conv, twice, then SE)."""

    def __init__(self, channels: int, se: bool, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels, norm), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels, norm), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            SqueezeExcite(channels) if se else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.body(x)


class JointVAE(TokenizerArtefact, nn.Module):
    """Images (uint8, N × 64 × 64 × 3) and captions ↔ one latent: :meth:`sample_pairs`
    (z ~ prior), :meth:`generate_image` (z ~ q(z | caption)), :meth:`caption`
    (z = the mean of q(z | image))."""

    kind = "joint-vae"
    config_class = JointVAEConfig
    train_hint = "train one with `modtrans fit-joint --data WORLD --out DIR`"

    def __init__(self, config: JointVAEConfig, tokenizer: Any) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        if config.text_vocab != len(tokenizer):
            raise ValueError(f"text_vocab is {config.text_vocab} but the tokenizer has "
                             f"{len(tokenizer)} words")
        self.config, self.tokenizer = config, tokenizer
        ch, d, w = config.channels, config.latent_dim, config.text_width
        widths = (3, *ch)
        self.image_encoder = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1),
                          Cell(widths[i + 1], config.se, config.norm)) for i in range(4)),
            nn.Flatten())
        self.image_posterior = nn.Linear(ch[-1] * 16, 2 * d)
        self.image_latent = nn.Linear(d, ch[-1] * 16)
        self.image_decoder = nn.Sequential(*(
            nn.Sequential(Cell(widths[i + 1], config.se, config.norm),
                          nn.Upsample(scale_factor=2),
                          nn.Conv2d(widths[i + 1], widths[i] if i else ch[0], 3, padding=1))
            for i in range(3, -1, -1)),
            _norm(ch[0], config.norm), nn.SiLU(), nn.Conv2d(ch[0], 3, 3, padding=1))
        if config.spatial_latent:
            c = config.spatial_latent
            self.spatial_prior = nn.Sequential(_norm(ch[2], config.norm), nn.SiLU(),
                                               nn.Conv2d(ch[2], 2 * c, 3, padding=1))
            self.spatial_posterior = nn.Sequential(_norm(2 * ch[2], config.norm), nn.SiLU(),
                                                   nn.Conv2d(2 * ch[2], 2 * c, 3, padding=1))
            self.spatial_input = nn.Conv2d(c, ch[2], 1)
        self.text_embedding = nn.Embedding(config.text_vocab, w)
        self.text_position = nn.Embedding(config.max_text_length, w)
        self.text_encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(w, config.heads, 4 * w, dropout=0.0, batch_first=True,
                                       norm_first=True), config.text_layers,
            enable_nested_tensor=False)
        self.text_posterior = nn.Linear(w, 2 * d)
        self.prefix = nn.Linear(d, config.prefix_length * w)
        self.gpt = GPT2LMHeadModel(GPT2Config(
            vocab_size=config.text_vocab, n_positions=config.prefix_length
            + config.max_text_length, n_embd=w, n_layer=config.text_layers,
            n_head=config.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False))
        self.register_buffer("kl_step", torch.zeros((), dtype=torch.long))
        k = config.prior_components
        if k:
            self.register_buffer("prior_weight", torch.full((k,), 1 / k))
            self.register_buffer("prior_mean", torch.zeros(k, d))
            self.register_buffer("prior_std", torch.ones(k, d))

    @property
    def device(self) -> torch.device:
        return self.prefix.weight.device

    # -- captions as ids ------------------------------------------------------------------

    def text_ids(self, texts: list[str]) -> torch.Tensor:
        """Token ids (N, max_text_length): the words and [EOS] ([BOS] dropped: the prefix
        starts the caption), cut to fit and right-padded."""
        n, eos, pad = self.config.max_text_length, self.tokenizer.eos_token_id, \
            self.tokenizer.pad_token_id
        ids = torch.full((len(texts), n), pad, dtype=torch.long)
        for i, row in enumerate(self.tokenizer(list(texts))["input_ids"]):
            row = row[1:] if len(row) <= n + 1 else [*row[1:n], eos]
            ids[i, :len(row)] = torch.tensor(row)
        return ids

    def _decode_ids(self, tokens: torch.Tensor) -> list[str]:
        eos = self.tokenizer.eos_token_id
        rows = [row[:row.index(eos)] if eos in row else row for row in tokens.tolist()]
        return [t.strip() for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]

    # -- the experts and their fusion -----------------------------------------------------

    def image_expert(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels in [0, 1] (N, 3, 64, 64) → q(z | image)'s mean and log-variance."""
        return self._encode(pixels)[1]

    def _encode(self, pixels: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The encoder's 8×8 features (what q(z2 | image, z) reads) and q(z | image)."""
        features = self.image_encoder[:3](pixels * 2 - 1)
        return features, self.image_posterior(self.image_encoder[3:](features)).chunk(2, dim=1)

    def text_expert(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption ids (N, T) → q(z | caption)'s mean and log-variance (a masked mean of
        the transformer's states)."""
        keep = ids != self.tokenizer.pad_token_id
        positions = torch.arange(ids.shape[1], device=ids.device)
        states = self.text_encoder(self.text_embedding(ids) + self.text_position(positions),
                                   src_key_padding_mask=~keep)
        pooled = (states * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
        return self.text_posterior(pooled).chunk(2, dim=1)

    def fuse(self, experts: list[tuple[torch.Tensor, torch.Tensor]]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The product of Gaussian experts (with the prior's under ``mvae``): precisions add,
        the mean is the precision-weighted mean."""
        mus = [mu for mu, _ in experts]
        precisions = [(-logvar.clamp(-10, 10)).exp() for _, logvar in experts]
        if self.config.fusion == "mvae":
            mus.append(torch.zeros_like(mus[0]))
            precisions.append(torch.ones_like(mus[0]))
        precision = sum(precisions)
        mu = sum(m * p for m, p in zip(mus, precisions, strict=True)) / precision
        return mu, -precision.log()

    # -- decoders -------------------------------------------------------------------------

    def decode_pixels(self, z: torch.Tensor, features: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (N, latent_dim) → the image likelihood's mean (pixels in [0, 1]) and
        KL(q(z2 | image, z) ‖ p(z2 | z)) averaged over rows; z2 comes from the posterior
        given the encoder's 8×8 ``features``, else from the prior (the KL is then 0, as it is
        without a spatial latent)."""
        grid = self.image_latent(z).view(len(z), self.config.channels[-1], 4, 4)
        top = self.image_decoder[:1](grid)
        kl = top.new_zeros(())
        if self.config.spatial_latent:
            mu, logvar = self.spatial_prior(top).chunk(2, dim=1)
            if features is not None:
                delta_mu, delta_logvar = self.spatial_posterior(
                    torch.cat([top, features], dim=1)).chunk(2, dim=1)
                kl = gaussian_kl(mu + delta_mu, logvar + delta_logvar, mu, logvar)
                mu, logvar = mu + delta_mu, logvar + delta_logvar
            z2 = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
            top = top + self.spatial_input(z2)
        return torch.sigmoid(self.image_decoder[1:](top)), kl

    def _prefix(self, z: torch.Tensor) -> torch.Tensor:
        return self.prefix(z).view(len(z), self.config.prefix_length, self.config.text_width)

    def text_nll(self, z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """−log p(caption | z) per row (N,), summed over its tokens."""
        p = self.config.prefix_length
        inputs = torch.cat([self._prefix(z), self.gpt.get_input_embeddings()(ids)], dim=1)
        logits = self.gpt(inputs_embeds=inputs).logits[:, p - 1:-1]
        labels = ids.masked_fill(ids == self.tokenizer.pad_token_id, -100)
        return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").sum(1)

    def image_nll(self, z: torch.Tensor, pixels: torch.Tensor,
                  features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """−log p(image | z, z2) per row (N,) up to a constant (squared error / 2σ², summed)
        and z2's KL (see :meth:`decode_pixels`)."""
        decoded, kl = self.decode_pixels(z, features)
        error = (decoded - pixels).pow(2).flatten(1).sum(1)
        return error / (2 * self.config.pixel_sigma ** 2), kl

    # -- the objective --------------------------------------------------------------------

    def kl_weight(self) -> float:
        """β, rising linearly from 0 over the first ``kl_warmup`` training steps."""
        warmup = self.config.kl_warmup
        return self.config.beta * (min(1.0, int(self.kl_step) / warmup) if warmup else 1.0)

    def training_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean over subsets of their ELBOs (negated, per pair) plus the triplet term, for
        a batch of (uint8 images, caption ids)."""
        images, ids = batch
        pixels = unit_pixels(images)
        features, image_expert = self._encode(pixels)
        experts = {"image": image_expert, "text": self.text_expert(ids)}
        beta = self.kl_weight()
        if self.training:
            self.kl_step += 1
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=pixels.device)
        for subset in SUBSETS:
            mu, logvar = self.fuse([experts[m] for m in subset])
            if len(subset) == 2 and self.config.kl_align_weight:
                parts["kl_align"] = sum(gaussian_kl(mu, logvar, *self.fuse([experts[m]]))
                                        for m in subset)
                total = total + len(SUBSETS) * self.config.kl_align_weight * parts["kl_align"]
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
            decoded = subset if self.config.fusion == "mvae" and len(subset) == 1 \
                else ("image", "text")
            image = text = spatial_kl = torch.zeros((), device=pixels.device)
            if "image" in decoded:
                nll, spatial_kl = self.image_nll(z, pixels,
                                                 features if "image" in subset else None)
                image = nll.mean()
            if "text" in decoded:
                text = self.text_nll(z, ids).mean()
            total = total + self.config.image_weight * image + self.config.text_weight * text \
                + beta * (kl + spatial_kl)
            name = "+".join(subset)
            parts.update({f"{name}_kl": kl, f"{name}_image_nll": image,
                          f"{name}_text_nll": text})
            if self.config.spatial_latent and "image" in subset:
                parts[f"{name}_spatial_kl"] = spatial_kl
        loss = total / len(SUBSETS)
        if self.config.triplet_weight:
            parts["triplet"] = batch_hard_triplet(experts["image"][0], experts["text"][0],
                                                  self.config.triplet_margin)
            loss = loss + self.config.triplet_weight * parts["triplet"]
        return {"loss": loss, **parts}

    # -- the three generations ------------------------------------------------------------

    @torch.no_grad()
    def caption_latents(self, z: torch.Tensor, *, temperature: float = 0.0,
                        generator: torch.Generator | None = None) -> list[str]:
        """One caption per latent (N, latent_dim), greedy at ``temperature`` 0."""
        prefix = self._prefix(z.to(self.device))
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=self.device)
        tokens = sample_tokens(self.gpt, prefix, mask, self.gpt.get_input_embeddings(),
                               self.config.max_text_length, temperature=temperature,
                               generator=generator)
        return self._decode_ids(tokens)

    @torch.no_grad()
    def image_latents(self, z: torch.Tensor) -> torch.Tensor:
        """One image per latent: the likelihood's mean as uint8 (N, 64, 64, 3)."""
        return uint8_images(self.decode_pixels(z.to(self.device))[0]).cpu()

    def _draw(self, mu: torch.Tensor, logvar: torch.Tensor, sample: bool,
              generator: torch.Generator | None) -> torch.Tensor:
        if not sample:
            return mu
        noise = torch.randn(mu.shape, generator=generator).to(mu.device)
        return mu + noise * (0.5 * logvar).exp()

    @torch.no_grad()
    def posterior_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | image) of uint8 images (N, 64, 64, 3): mean and log-variance (fused as the
        subset {image})."""
        check_images(images)
        self.eval()
        return self.fuse([self.image_expert(unit_pixels(images).to(self.device))])

    @torch.no_grad()
    def posterior_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | caption) of captions: mean and log-variance (fused as the subset {text})."""
        self.eval()
        return self.fuse([self.text_expert(self.text_ids(texts).to(self.device))])

    def generate_image(self, texts: list[str], *, sample: bool = True,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Text → image: one image per text from z ~ q(z | caption) (its mean without
        ``sample``), uint8 (N, 64, 64, 3)."""
        return self.image_latents(self._draw(*self.posterior_texts(texts), sample, generator))

    def caption(self, images: torch.Tensor, *, sample: bool = False, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> list[str]:
        """Image → text: one caption per uint8 image (N, 64, 64, 3) from the mean of
        q(z | image) (a draw with ``sample``), greedy unless ``temperature`` > 0."""
        z = self._draw(*self.posterior_images(images), sample, generator)
        return self.caption_latents(z, temperature=temperature, generator=generator)

    def sample_pairs(self, n: int, *, prior: str | None = None, temperature: float = 0.0,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[str]]:
        """Joint generation: ``n`` latents from the prior, each decoded into an image (uint8,
        N × 64 × 64 × 3) and a caption. ``prior``: ``standard`` (N(0, I)) or ``fitted`` (the
        mixture of ``prior_components``); default the fitted one when there is one."""
        if n < 1:
            raise ValueError(f"n must be ≥ 1, got {n}")
        fitted = self.config.prior_components > 0
        prior = prior or ("fitted" if fitted else "standard")
        if prior not in ("standard", "fitted") or (prior == "fitted" and not fitted):
            raise ValueError(f"prior must be standard or fitted (a model trained with "
                             f"prior_components > 0), got {prior!r}")
        self.eval()
        z = torch.randn((n, self.config.latent_dim), generator=generator)
        if prior == "fitted":
            pick = torch.multinomial(self.prior_weight.cpu(), n, replacement=True,
                                     generator=generator)
            z = self.prior_mean.cpu()[pick] + z * self.prior_std.cpu()[pick]
        return self.image_latents(z), self.caption_latents(z, temperature=temperature,
                                                           generator=generator)

    @torch.no_grad()
    def fit_prior(self, images: torch.Tensor, captions: list[str]) -> None:
        """Fit the ``prior_components`` mixture (diagonal Gaussians, scikit-learn) to the
        means of q(z | image, caption) of uint8 ``images`` and one caption each."""
        from sklearn.mixture import GaussianMixture

        if not self.config.prior_components:
            raise ValueError("this joint VAE has no fitted prior (prior_components is 0)")
        check_images(images)
        self.eval()
        means = torch.cat([self.fuse([
            self.image_expert(unit_pixels(images[i:i + 256]).to(self.device)),
            self.text_expert(self.text_ids(captions[i:i + 256]).to(self.device))])[0].cpu()
            for i in range(0, len(images), 256)])
        mixture = GaussianMixture(self.config.prior_components, covariance_type="diag",
                                  random_state=self.config.seed).fit(means.double().numpy())
        self.prior_weight.copy_(torch.from_numpy(mixture.weights_))
        self.prior_mean.copy_(torch.from_numpy(mixture.means_))
        self.prior_std.copy_(torch.from_numpy(mixture.covariances_).sqrt())


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, mu_q: torch.Tensor,
                logvar_q: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, e^logvar) ‖ N(mu_q, e^logvar_q)) of diagonal Gaussians, summed over the
    latent (every dimension but the first), averaged over rows."""
    return 0.5 * (logvar_q - logvar + (logvar.exp() + (mu - mu_q).pow(2)) / logvar_q.exp()
                  - 1).flatten(1).sum(1).mean()


def check_images(images: torch.Tensor) -> None:
    """Raise unless ``images`` are uint8 (N, 64, 64, 3)."""
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"images must be uint8 (N, 64, 64, 3), got {images.dtype} "
                         f"{tuple(images.shape)}")


def batch_hard_triplet(a: torch.Tensor, b: torch.Tensor, margin: float) -> torch.Tensor:
    """SEJE's batch-hard triplet loss with a soft margin, both ways, on L2-normalised
    (N, D) rows where row i of ``a`` and of ``b`` are a pair: softplus((d(a_i, b_i) −
    min_j≠i d(a_i, b_j)) / margin), averaged over the anchors of both sides."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    distance = torch.cdist(a, b)
    positive = distance.diagonal()
    others = distance + torch.eye(len(a), device=a.device) * 1e4
    hardest = torch.minimum(others.min(dim=1).values, others.min(dim=0).values)
    return F.softplus((positive - hardest) / margin).mean() if len(a) > 1 \
        else distance.new_zeros(())


class _Pairs(Dataset):
    """Every image with one of its captions, drawn afresh each epoch (seeded)."""

    def __init__(self, images: torch.Tensor, ids: torch.Tensor, owner: torch.Tensor,
                 seed: int) -> None:
        self.images, self.ids, self.seed = images, ids, seed
        self.starts = torch.searchsorted(owner, torch.arange(len(images)))
        self.counts = torch.bincount(owner, minlength=len(images))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
        pick = (torch.rand(len(self.images), generator=generator) * self.counts).long()
        self.chosen = self.starts + pick

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.ids[self.chosen[i]]


def pairs_dataset(model: JointVAE, images: torch.Tensor, captions: list[list[str]],
                  seed: int) -> _Pairs:
    """The (image, caption ids) pairs of uint8 ``images`` and their captions (a list each)."""
    check_images(images)
    if len(captions) != len(images) or not all(captions):
        raise ValueError(f"every image needs at least one caption: {len(images)} images, "
                         f"{len(captions)} caption lists, {sum(not c for c in captions)} empty")
    owner = torch.tensor([i for i, texts in enumerate(captions) for _ in texts])
    ids = model.text_ids([t for texts in captions for t in texts])
    return _Pairs(images, ids, owner, seed)


def fit_joint_vae(images: torch.Tensor, captions: list[list[str]], val_images: torch.Tensor,
                  val_captions: list[list[str]], out_dir: str | Path,
                  config: JointVAEConfig | None = None, *, accelerator: str = "auto",
                  progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Train the joint VAE on uint8 ``images`` (N, 64, 64, 3) and their ``captions`` (a list
    per image); validate its loss on the val pairs.

    Returns:
        A summary (images, seconds, losses by subset), also in ``summary.json``.
    """
    from modtrans.encoders.tokenizer import build_tokenizer

    tokenizer = build_tokenizer([t for texts in captions for t in texts])
    config = dataclasses.replace(config or JointVAEConfig(), text_vocab=len(tokenizer))
    recipe = dataclasses.replace(config.recipe(), accelerator=accelerator, progress=progress,
                                 resume=resume)
    L.seed_everything(config.seed, verbose=False)
    model = JointVAE(config, tokenizer)
    train = pairs_dataset(model, images, captions, config.seed)
    val = pairs_dataset(model, val_images, val_captions, config.seed)
    result = fit(model, model.training_loss, recipe.loader(train),
                 DataLoader(val, batch_size=128), recipe, out_dir)
    if config.prior_components:
        model.cpu().fit_prior(images, [texts[0] for texts in captions])
    return save_trained(model, out_dir, {"images": len(images), "fusion": config.fusion,
                                         **result})


def refit_joint_prior(model_dir: str | Path, images: torch.Tensor, captions: list[list[str]],
                      components: int) -> dict[str, Any]:
    """Keep the joint VAE in ``model_dir`` and (re)fit its prior mixture of ``components``
    to the train pairs (uint8 ``images``, the first of each image's ``captions``); saved in
    place. Returns the updated summary."""
    from modtrans.artefacts import read_summary

    if components < 1:
        raise ValueError(f"a fitted prior needs components ≥ 1, got {components}")
    trained = JointVAE.load(model_dir)
    model = JointVAE(dataclasses.replace(trained.config, prior_components=components),
                     trained.tokenizer)
    model.load_state_dict({k: v for k, v in trained.state_dict().items()
                           if not k.startswith("prior_")}, strict=False)
    start = time.perf_counter()
    model.fit_prior(images, [texts[0] for texts in captions])
    summary = {**read_summary(model_dir), "prior_components": components,
               "prior_seconds": round(time.perf_counter() - start, 2)}
    return save_trained(model, model_dir, summary)
