"""BiART: L-Verse's bidirectional auto-regressive transformer (seed 002) over text and image
tokens, one model for text → image and image → text.

A sequence is ``[condition | target]``: world-caption words (the word-level tokenizer) and
AugVAE image codes, in one vocabulary: the words take ids ``0 .. V − 1``, image code ``c``
is ``V + c`` and ``V + K`` is the null condition of classifier-free guidance. One table and
one head (GPT-2's, untied so the weights save as plain safetensors) keep the logits of both
modalities in one softmax; at sampling the logits outside the target's modality are masked.
The input of GPT-2 (transformers' ``GPT2LMHeadModel``) is ``inputs_embeds`` = token
embedding + segment embedding (``nn.Embedding(2, width)``: 0 condition, 1 target), to which
GPT-2 adds its learned position embedding (GPT-2's ``token_type_ids`` would reuse the word
table, so they are not a segment embedding). Every training pair is used in both directions,
the loss on target tokens only; texts as condition are left-padded so that the target always
starts at the same position. A condition is replaced by nulls for a ``cond_dropout`` share of
the rows in training, so sampling can guide the logits (classifier-free guidance).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modtrans.artefacts import TokenizerArtefact
from modtrans.config import Config
from modtrans.decoders.augvae import AugVAE, AugVAEConfig
from modtrans.decoders.autoregressive import (
    check_transformer_options,
    sample_tokens,
    transformer_recipe,
)
from modtrans.training.fit import Recipe, fit, save_trained

logger = logging.getLogger(__name__)

DIRECTIONS = ("text2image", "image2text")
CONDITION, TARGET = 0, 1


@dataclasses.dataclass
class BiARTConfig(Config):
    """The transformer, its vocabulary and recipe.

    Attributes:
        augvae: the image tokenizer's :class:`AugVAEConfig` options (set from it).
        text_vocab: words in the text tokenizer (set from it).
        max_text_length: text tokens per sequence ([BOS] words [EOS], cut and padded).
        width, layers, heads, dropout: the GPT-2.
        cond_dropout: share of training rows whose condition is replaced by nulls (0: no
            classifier-free guidance).
        epochs, batch_size, lr, seed: the recipe (``batch_size`` pairs, each used in both
            directions).
    """

    augvae: AugVAEConfig = dataclasses.field(default_factory=AugVAEConfig)
    text_vocab: int = 0
    max_text_length: int = 40
    width: int = 128
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0
    cond_dropout: float = 0.1
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        self.augvae = check_transformer_options(self)
        if self.max_text_length < 3 or self.width % self.heads:
            raise ValueError("max_text_length must be ≥ 3 and width a multiple of heads")

    def recipe(self) -> Recipe:
        """AdamW with warm-up and cosine decay (:func:`transformer_recipe`)."""
        return transformer_recipe(self)

    @property
    def image_tokens(self) -> int:
        return self.augvae.tokens

    @property
    def length(self) -> int:
        """Tokens in a sequence, either direction."""
        return self.max_text_length + self.image_tokens


class BiART(TokenizerArtefact, nn.Module):
    """GPT-2 + segment embedding over ``[condition | target]``, with its AugVAE and text
    tokenizer: :meth:`generate_image` (text → image) and :meth:`caption` (image → text)."""

    kind = "biart"
    config_class = BiARTConfig
    train_hint = "train one with `modtrans fit-biart --data WORLD --tokenizer AUGVAE --out DIR`"

    def __init__(self, config: BiARTConfig, tokenizer: Any, augvae: AugVAE | None = None
                 ) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        if config.text_vocab != len(tokenizer):
            raise ValueError(f"text_vocab is {config.text_vocab} but the tokenizer has "
                             f"{len(tokenizer)} words")
        self.config, self.tokenizer = config, tokenizer
        self.augvae = augvae if augvae is not None else AugVAE(config.augvae)
        self.augvae.requires_grad_(False)
        self.null = config.text_vocab + config.augvae.codebook_size
        self.gpt = GPT2LMHeadModel(GPT2Config(
            vocab_size=self.null + 1, n_positions=config.length, n_embd=config.width,
            n_layer=config.layers, n_head=config.heads, resid_pdrop=config.dropout,
            embd_pdrop=config.dropout, attn_pdrop=config.dropout,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False))
        self.segment = nn.Embedding(2, config.width)

    def train(self, mode: bool = True) -> BiART:
        """Train mode for the transformer; the AugVAE stays frozen in eval mode."""
        super().train(mode)
        self.augvae.eval()
        return self

    # -- sequences ------------------------------------------------------------------------

    def text_ids(self, texts: list[str], *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (N, max_text_length) of ``texts`` ([BOS] words [EOS], cut to fit) and
        their mask; padded on the left (as a condition) or the right (as a target)."""
        n = self.config.max_text_length
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        ids = torch.full((len(texts), n), pad, dtype=torch.long)
        for i, row in enumerate(self.tokenizer(list(texts))["input_ids"]):
            row = row if len(row) <= n else [*row[:n - 1], eos]
            if left:
                ids[i, n - len(row):] = torch.tensor(row)
            else:
                ids[i, :len(row)] = torch.tensor(row)
        return ids, (ids != pad).long()

    def _embed(self, ids: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """(N, T) ids and segments → token + segment embeddings (N, T, width); GPT-2 adds
        the position embedding."""
        return self.gpt.get_input_embeddings()(ids) + self.segment(segments)

    def _sequences(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor,
                   direction: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, segments, attention mask), each (N, length), of one direction: text ids
        left-padded as a condition, right-padded as a target; image codes offset by V."""
        image = image + self.config.text_vocab
        ones = torch.ones_like(image)
        if direction == "text2image":
            parts = (text, image), (torch.zeros_like(text), ones), (text_mask, ones)
        else:
            parts = (image, text), (torch.zeros_like(image), torch.ones_like(text)), \
                (ones, text_mask)
        return tuple(torch.cat(p, dim=1) for p in parts)  # type: ignore[return-value]

    @staticmethod
    def target_labels(ids: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor
                      ) -> torch.Tensor:
        """The labels scored: target tokens (segment 1, not padding); −100 elsewhere."""
        return torch.where((segments == TARGET) & mask.bool(), ids, -100)

    def loss(self, ids: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor
             ) -> torch.Tensor:
        """Next-token cross-entropy over :meth:`target_labels` (GPT-2 shifts them)."""
        out = self.gpt(inputs_embeds=self._embed(ids, segments), attention_mask=mask,
                       position_ids=self._positions(ids),
                       labels=self.target_labels(ids, segments, mask))
        return out.loss

    @staticmethod
    def _positions(ids: torch.Tensor) -> torch.Tensor:
        return torch.arange(ids.shape[1], device=ids.device).expand_as(ids)

    def training_loss(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
        """Both directions of a batch of (left-padded text ids, right-padded text ids,
        image codes); a ``cond_dropout`` share of rows gets a null condition."""
        left, right, image = batch
        pad = self.tokenizer.pad_token_id
        losses = {}
        for direction in DIRECTIONS:
            text = left if direction == "text2image" else right
            ids, segments, mask = self._sequences(text, (text != pad).long(), image, direction)
            if self.training and self.config.cond_dropout:
                drop = torch.rand(len(ids), 1, device=ids.device) < self.config.cond_dropout
                dropped = drop & (segments == CONDITION)
                ids = torch.where(dropped, self.null, ids)
                mask = torch.where(dropped, 1, mask)
            losses[direction] = self.loss(ids, segments, mask)
        return {"loss": sum(losses.values()) / 2, **losses}

    # -- sampling -------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, condition: torch.Tensor, condition_mask: torch.Tensor, direction: str, *,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               guidance: float = 1.0, use_cache: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Target tokens (N, target length) after ``condition`` (N, C) ids, drawn token by
        token: greedy with ``temperature=0``; guided by ``guidance`` (1: off) as
        null + guidance · (conditional − null) logits; with the KV cache unless
        ``use_cache`` is off (the reference the cache is tested against)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        was_training = self.training
        self.eval()
        to_image = direction == "text2image"
        steps = self.config.image_tokens if to_image else self.config.max_text_length
        allowed = torch.zeros(self.null + 1, dtype=torch.bool, device=condition.device)
        allowed[self.config.text_vocab:self.null] = to_image
        allowed[:self.config.text_vocab] = not to_image
        segments = torch.zeros_like(condition)
        null = (self._embed(torch.full_like(condition, self.null), segments),
                torch.ones_like(condition_mask))
        tokens = sample_tokens(
            self.gpt, self._embed(condition, segments), condition_mask,
            lambda ids: self._embed(ids, torch.ones_like(ids)), steps, null=null,
            guidance=guidance, allowed=allowed, temperature=temperature, top_k=top_k,
            top_p=top_p, use_cache=use_cache, generator=generator)
        self.train(was_training)
        return tokens - self.config.text_vocab if to_image else tokens

    def generate_image(self, texts: list[str], *, generator: torch.Generator | None = None,
                       **sampling: Any) -> torch.Tensor:
        """One image per text, uint8 (N, 64, 64, 3); ``sampling``: :meth:`sample`'s options
        (temperature, top_k, top_p, guidance, use_cache)."""
        device = self.segment.weight.device
        ids, mask = self.text_ids(texts, left=True)
        codes = self.sample(ids.to(device), mask.to(device), "text2image",
                            generator=generator, **sampling)
        return self.augvae.decode(codes)

    def caption(self, images: torch.Tensor, *, generator: torch.Generator | None = None,
                **sampling: Any) -> list[str]:
        """One caption per uint8 image (N, 64, 64, 3); greedy unless ``sampling`` says
        otherwise (:meth:`sample`'s options)."""
        device = self.segment.weight.device
        codes = self.augvae.encode(images).to(device) + self.config.text_vocab
        tokens = self.sample(codes, torch.ones_like(codes), "image2text", generator=generator,
                             **{"temperature": 0.0, **sampling})
        eos = self.tokenizer.eos_token_id
        rows = [row[:row.index(eos)] if eos in row else row for row in tokens.tolist()]
        return [t.strip() for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]


class _Pairs(Dataset):
    def __init__(self, left: torch.Tensor, right: torch.Tensor, codes: torch.Tensor,
                 owner: torch.Tensor) -> None:
        self.left, self.right, self.codes, self.owner = left, right, codes, owner

    def __len__(self) -> int:
        return len(self.owner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.left[i], self.right[i], self.codes[self.owner[i]]


def caption_pairs_dataset(model: BiART, images: torch.Tensor, captions: list[list[str]]
                          ) -> _Pairs:
    """(left-padded text, right-padded text, image codes) for every caption of every image,
    the images tokenized once."""
    owner = torch.tensor([i for i, texts in enumerate(captions) for _ in texts])
    flat = [t for texts in captions for t in texts]
    left, _ = model.text_ids(flat, left=True)
    right, _ = model.text_ids(flat, left=False)
    return _Pairs(left, right, model.augvae.encode(images), owner)


def fit_biart(images: torch.Tensor, captions: list[list[str]], val_images: torch.Tensor,
              val_captions: list[list[str]], augvae_dir: str | Path, out_dir: str | Path,
              config: BiARTConfig | None = None, *, accelerator: str = "auto",
              progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Train BiART on uint8 ``images`` (N, 64, 64, 3) and their ``captions`` (a list per
    image) with the AugVAE saved in ``augvae_dir``; validate its loss on the val pairs.

    Returns:
        A summary (pairs, seconds, losses per direction), also in ``summary.json``.
    """
    from modtrans.encoders.tokenizer import build_tokenizer

    augvae = AugVAE.load(augvae_dir)
    tokenizer = build_tokenizer([t for texts in captions for t in texts])
    config = dataclasses.replace(config or BiARTConfig(), augvae=augvae.config,
                                 text_vocab=len(tokenizer))
    recipe = dataclasses.replace(config.recipe(), accelerator=accelerator, progress=progress,
                                 resume=resume)
    L.seed_everything(config.seed, verbose=False)
    model = BiART(config, tokenizer, augvae)
    start = time.perf_counter()
    train = caption_pairs_dataset(model, images, captions)
    val = caption_pairs_dataset(model, val_images, val_captions)
    tokenize_seconds = time.perf_counter() - start
    result = fit(model, model.training_loss, recipe.loader(train),
                 DataLoader(val, batch_size=64), recipe, out_dir)
    return save_trained(model, out_dir, {"pairs": len(train), "images": len(images),
                                         "tokenize_seconds": round(tokenize_seconds, 2),
                                         "augvae": str(augvae_dir), **result})
