"""Token decoder: an image decoder that draws the codes of an AugVAE tokenizer one at a time
with a GPT-2 conditioned on an embedding (the route of DALL·E, Parti and L-Verse).

The conditioning embedding (z-normalised with train statistics) is projected into ``prefix``
input vectors; the GPT-2 reads ``[prefix | codes]`` and predicts every code from the prefix
and the codes before it (next-token cross-entropy on the codes only). A ``cond_dropout`` share
of training rows gets a learned null prefix instead, so that sampling can use
classifier-free guidance. Sampling draws the codes with transformers' KV cache
(:mod:`modtrans.decoders.autoregressive`, shared with BiART) and the tokenizer's decoder draws
the image. Trained on image embeddings (what a text2image translator hands it) or on caption
embeddings (the direct route), like the VAE of :mod:`modtrans.decoders.image_vae`, whose
``generate`` it mirrors so that every pipeline takes either. Measurements:
``docs/findings.md``, *Token decoder*.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modtrans.artefacts import Artefact
from modtrans.config import Config
from modtrans.data.store import EmbeddingStore
from modtrans.decoders.augvae import AugVAE, AugVAEConfig
from modtrans.decoders.autoregressive import (
    check_transformer_options,
    sample_tokens,
    transformer_recipe,
)
from modtrans.decoders.image_vae import CONDITIONS, decoder_rows
from modtrans.training.fit import Recipe, fit, save_trained
from modtrans.translators.base import Normalizer, check_embeddings


@dataclasses.dataclass
class TokenDecoderConfig(Config):
    """The transformer, its conditioning, sampler and recipe.

    Attributes:
        condition: which embeddings it is trained on: ``image`` (with a translator) or
            ``text`` (the direct route).
        embed_dim: width of the conditioning embedding (set from the store).
        augvae: the tokenizer's :class:`AugVAEConfig` options (set from it).
        prefix: input vectors the embedding is projected into.
        width, layers, heads, dropout: the GPT-2.
        cond_dropout: share of training rows on the null prefix (0: no guidance).
        guidance, temperature, top_k, top_p: the sampler's defaults (guidance 1: none).
        epochs, batch_size, lr, seed: the recipe.
        image_encoder, text_encoder: the store's encoder specs (checked at use).
    """

    condition: str = "image"
    embed_dim: int = 0
    augvae: AugVAEConfig = dataclasses.field(default_factory=AugVAEConfig)
    prefix: int = 4
    width: int = 192
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0
    cond_dropout: float = 0.1
    guidance: float = 3.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    image_encoder: str = "unknown"
    text_encoder: str = "unknown"

    def __post_init__(self) -> None:
        self.augvae = check_transformer_options(self)
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {self.condition!r}")
        if self.prefix < 1 or self.layers < 1 or self.width % self.heads:
            raise ValueError("prefix and layers must be ≥ 1 and width a multiple of heads")
        if self.guidance != 1.0 and not self.cond_dropout:
            raise ValueError("guidance needs a null condition learnt in training: set "
                             "cond_dropout > 0 or guidance 1")

    def recipe(self) -> Recipe:
        """AdamW with warm-up and cosine decay (:func:`transformer_recipe`)."""
        return transformer_recipe(self)

    @property
    def tokens(self) -> int:
        """Codes per image."""
        return self.augvae.tokens


class TokenDecoder(Artefact, nn.Module):
    """Embeddings (N, embed_dim) → uint8 images (N, 64, 64, 3) through drawn AugVAE codes."""

    kind = "token-decoder"
    config_class = TokenDecoderConfig
    train_hint = ("train one with `modtrans fit-decoder image --kind tokens --tokenizer AUGVAE "
                  "--data STORE --out DIR`")

    def __init__(self, config: TokenDecoderConfig, augvae: AugVAE | None = None) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        if config.embed_dim < 1:
            raise ValueError("embed_dim must be set (the width of the conditioning embedding)")
        self.config = config
        self.augvae = augvae if augvae is not None else AugVAE(config.augvae)
        self.augvae.requires_grad_(False)
        self.embed_norm = Normalizer(config.embed_dim)
        self.to_prefix = nn.Sequential(nn.Linear(config.embed_dim, config.width), nn.GELU(),
                                       nn.Linear(config.width, config.prefix * config.width))
        self.null = nn.Parameter(torch.randn(config.prefix, config.width) * 0.02)
        self.gpt = GPT2LMHeadModel(GPT2Config(
            vocab_size=config.augvae.codebook_size, n_positions=config.prefix + config.tokens,
            n_embd=config.width, n_layer=config.layers, n_head=config.heads,
            resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
            bos_token_id=None, eos_token_id=None, tie_word_embeddings=False))

    def train(self, mode: bool = True) -> TokenDecoder:
        """Train mode for the transformer; the tokenizer stays frozen in eval mode."""
        super().train(mode)
        self.augvae.eval()
        return self

    def _prefix(self, e: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings (N, D) → prefix vectors (N, prefix, width)."""
        return self.to_prefix(e).view(len(e), self.config.prefix, self.config.width)

    def _codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (N, t) → input embeddings (N, t, width); GPT-2 adds the positions."""
        return self.gpt.get_input_embeddings()(codes)

    def loss(self, codes: torch.Tensor, e: torch.Tensor, drop: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Cross-entropy of every code (N, tokens) given normalised embeddings (N, D), the
        rows where ``drop`` is set on the null prefix."""
        prefix = self._prefix(e)
        if drop is not None:
            prefix = torch.where(drop[:, None, None], self.null.expand_as(prefix), prefix)
        inputs = torch.cat([prefix, self._codes(codes[:, :-1])], dim=1)
        logits = self.gpt(inputs_embeds=inputs).logits[:, self.config.prefix - 1:]
        return F.cross_entropy(logits.flatten(0, 1).float(), codes.flatten())

    def training_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss of a batch of (codes, normalised embeddings); a ``cond_dropout`` share of
        rows on the null prefix in training."""
        codes, e = batch
        drop = None
        if self.training and self.config.cond_dropout:
            drop = torch.rand(len(codes), device=codes.device) < self.config.cond_dropout
        return {"loss": self.loss(codes, e, drop)}

    @torch.no_grad()
    def sample_codes(self, e_raw: torch.Tensor, *, generator: torch.Generator | None = None,
                     guidance: float | None = None, temperature: float | None = None,
                     top_k: int | None = None, top_p: float | None = None,
                     use_cache: bool = True, batch_size: int = 64) -> torch.Tensor:
        """Codes (N, tokens) drawn for raw embeddings (N, embed_dim), ``batch_size`` rows at a
        time; the sampler options default to the config's."""
        cfg = self.config
        check_embeddings(e_raw, cfg.embed_dim, "the conditioning embeddings")
        guidance = cfg.guidance if guidance is None else guidance
        if guidance != 1.0 and not cfg.cond_dropout:
            raise ValueError("this token decoder was trained without a null condition "
                             "(cond_dropout 0): sample with guidance 1")
        was_training = self.training
        self.eval()
        device = self.null.device
        out = []
        for chunk in e_raw.split(batch_size):
            prefix = self._prefix(self.embed_norm(chunk.to(device, torch.float32)))
            mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=device)
            out.append(sample_tokens(
                self.gpt, prefix, mask, self._codes, cfg.tokens,
                null=(self.null.expand_as(prefix), mask), guidance=guidance,
                temperature=cfg.temperature if temperature is None else temperature,
                top_k=cfg.top_k if top_k is None else top_k,
                top_p=cfg.top_p if top_p is None else top_p, use_cache=use_cache,
                generator=generator).cpu())
        self.train(was_training)
        return torch.cat(out)

    def generate(self, e_raw: torch.Tensor, *, generator: torch.Generator | None = None,
                 steps: int | None = None, guidance: float | None = None,
                 **sampling: Any) -> torch.Tensor:
        """One image per embedding row, uint8 (N, 64, 64, 3): codes drawn by
        :meth:`sample_codes` (``guidance`` and ``sampling`` override its defaults), decoded by
        the tokenizer. The draws of a row depend on the seed and on the rows drawn with it.
        ``steps`` belongs to the VAE's latent prior: a token decoder draws every code."""
        if steps is not None:
            raise ValueError("a token decoder draws every code: --steps applies to the VAE's "
                             "latent prior, leave it out")
        codes = self.sample_codes(e_raw, generator=generator, guidance=guidance, **sampling)
        return self.augvae.decode(codes.to(self.null.device))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """The tokenizer's own redrawing of uint8 images: what this decoder can draw at all."""
        return self.augvae.reconstruct(images)


def fit_token_decoder(train: EmbeddingStore, val: EmbeddingStore, out_dir: str | Path,
                      config: TokenDecoderConfig | None = None, *, tokenizer_dir: str | Path,
                      max_images: int | None = None, max_val_images: int = 500,
                      accelerator: str = "auto", progress: bool = True,
                      resume: bool = False) -> dict[str, Any]:
    """Train a token decoder over the codes of the AugVAE saved in ``tokenizer_dir`` on a
    store's images and embeddings (the first ``max_images`` images and their captions; None:
    all), validating its loss on ``val``.

    Returns:
        A summary (pairs, seconds to tokenize and train, losses), also in ``summary.json``.
    """
    augvae = AugVAE.load(tokenizer_dir)
    config = dataclasses.replace(config or TokenDecoderConfig(), augvae=augvae.config,
                                 image_encoder=train.image_encoder,
                                 text_encoder=train.text_encoder)
    config.embed_dim = train.image_dim if config.condition == "image" else train.text_dim
    recipe = dataclasses.replace(config.recipe(), accelerator=accelerator, progress=progress,
                                 resume=resume)
    L.seed_everything(config.seed, verbose=False)
    model = TokenDecoder(config, augvae)
    start = time.perf_counter()
    (codes, e), (val_codes, val_e) = (
        _coded_rows(augvae, *decoder_rows(store, config.condition, n))
        for store, n in ((train, max_images), (val, max_val_images)))
    tokenize_seconds = time.perf_counter() - start
    model.embed_norm.fit(e)
    result = fit(model, model.training_loss,
                 recipe.loader(TensorDataset(codes, model.embed_norm(e))),
                 DataLoader(TensorDataset(val_codes, model.embed_norm(val_e)), batch_size=128),
                 recipe, out_dir)
    return save_trained(model, out_dir, {
        "pairs": len(e), "condition": config.condition, "tokens": config.tokens,
        "tokenizer": str(tokenizer_dir), "tokenize_seconds": round(tokenize_seconds, 2),
        **result})


def _coded_rows(augvae: AugVAE, images: torch.Tensor, e: torch.Tensor, owner: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, embeddings) of :func:`decoder_rows`' rows, each image tokenized once."""
    return augvae.encode(images)[owner], e
