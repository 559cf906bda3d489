"""Caption decoder: an embedding → prefix mapping network and a GPT-2 (ClipCap / CapDec).

The mapping network (an MLP, or ClipCap's small transformer) turns an L2-normalised
embedding into ``prefix_length`` token embeddings; a causal language model (transformers'
GPT-2: a small config trained from scratch on the captions with a word-level tokenizer, or a
real GPT-2 directory) continues the prefix with the caption.

Two training modes:

- ``clipcap`` — image embeddings with their captions (Mokady et al., 2021);
- ``capdec`` — text only: a text embedding plus Gaussian noise of variance
  ``noise_variance`` (Nukrai et al., 2022), so that at inference a *translated* text
  embedding, which lands near but not on real text embeddings, decodes well. The text
  embedding is each caption's own (``text_input: caption``, the paper's recipe) or the mean
  of the embeddings of all captions of its image (``set-mean``). The second is still
  text-only (it uses which captions belong together, never the image), and it is what a
  translator's ``mean`` mode estimates: E[text embedding | image]. A translated embedding lies
  much nearer its image's caption-set mean than any one of its captions
  (``docs/findings.md``, *End to end*).

Decoding: greedy or beam search through ``generate``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from modtrans.artefacts import Artefact, Layout, load_pretrained, load_state
from modtrans.config import Config
from modtrans.data.store import EmbeddingStore
from modtrans.io import save_weights
from modtrans.training.fit import Recipe, fit, save_trained

MODES = ("clipcap", "capdec")
MAPPINGS = ("mlp", "transformer")
TEXT_INPUTS = ("caption", "set-mean")
# CapDec's noise variance by text input: the paper's for single captions; for caption-set
# means, about the per-dimension squared distance of a translated embedding from its image's
# caption-set mean (0.0012 for the world's 128-d image2text ``ced`` on its train split). It is
# per dimension, so wider embeddings with the same cosine gap need less:
# ``matched_noise_variance`` (``fit-decoder caption --noise-from``) measures it.
DEFAULT_NOISE = {"caption": 0.016, "set-mean": 0.0013}
LM_DIR = "lm"  # the language model and its tokenizer, in transformers' format


def _check_text_input(text_input: str) -> None:
    if text_input not in TEXT_INPUTS:
        raise ValueError(f"text_input must be one of {TEXT_INPUTS}, got {text_input!r}")


@dataclasses.dataclass
class CaptionDecoderConfig(Config):
    """The caption decoder and its recipe.

    Attributes:
        mode: ``clipcap`` (image embeddings) or ``capdec`` (noisy text embeddings).
        noise_variance: CapDec's noise variance on the normalised text embedding (default:
            by ``text_input``, ``DEFAULT_NOISE``).
        text_input: what CapDec trains on: ``caption`` (each caption's own embedding) or
            ``set-mean`` (the mean of its image's normalised caption embeddings).
        embed_dim: width of the conditioning embedding (set from the store).
        prefix_length: prefix tokens the mapping network produces.
        mapping: ``mlp`` or ``transformer`` (ClipCap's two mapping networks).
        mapper_hidden: the MLP mapping's hidden width (None: halfway between the embedding
            and the prefix; ClipCap's published weights use half the prefix).
        mapper_layers, mapper_heads, mapper_ffn: the transformer mapping's depth, heads and
            feed-forward width (None: 4 × the language model's width).
        clip_length: tokens the transformer mapping makes of the embedding (None:
            ``prefix_length``).
        prefix_norm: the L2 norm the embedding is scaled to before the mapping (1: unit
            vectors; a published ClipCap reads raw CLIP embeddings, about 10 for ViT-B/32).
        stop_token: a token that also ends a caption (ClipCap and CapDec stop at ".").
        width, layers, heads: the GPT-2 trained from scratch (ignored with ``gpt2``).
        max_length: caption tokens kept in training and generated at most.
        gpt2: a directory holding a real GPT-2 and its tokenizer (optional).
        epochs, batch_size, lr, seed: the recipe.
        image_encoder, text_encoder: the store's encoder specs (checked at use).
    """

    mode: str = "clipcap"
    noise_variance: float | None = None
    text_input: str = "caption"
    embed_dim: int = 0
    prefix_length: int = 4
    mapping: str = "mlp"
    mapper_hidden: int | None = None
    mapper_layers: int = 2
    mapper_heads: int = 4
    mapper_ffn: int | None = None
    clip_length: int | None = None
    prefix_norm: float = 1.0
    stop_token: str | None = None
    width: int = 128
    layers: int = 2
    heads: int = 4
    max_length: int = 32
    gpt2: str | None = None
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    image_encoder: str = "unknown"
    text_encoder: str = "unknown"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        _check_text_input(self.text_input)
        if self.mode == "clipcap" and self.text_input != "caption":
            raise ValueError("text_input chooses what CapDec trains on; ClipCap trains on "
                             "image embeddings (use mode: capdec)")
        if self.mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {self.mapping!r}")
        if self.noise_variance is None:
            self.noise_variance = DEFAULT_NOISE[self.text_input]
        if self.noise_variance < 0 or self.prefix_length < 1 or self.max_length < 2:
            raise ValueError("noise_variance ≥ 0, prefix_length ≥ 1 and max_length ≥ 2 needed")
        if not self.prefix_norm > 0 or self.mapper_layers < 1 or self.mapper_heads < 1:
            raise ValueError("prefix_norm > 0, mapper_layers ≥ 1 and mapper_heads ≥ 1 needed")

    def recipe(self) -> Recipe:
        """AdamW (torch's default weight decay 0.01, as it was tuned) on the captions' loss."""
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                      weight_decay=0.01, seed=self.seed)

    @property
    def condition(self) -> str:
        """The modality of the embeddings it decodes."""
        return "image" if self.mode == "clipcap" else "text"


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapping: the embedding as ``clip_length`` tokens plus
    ``prefix_length`` learned constants, through a pre-norm transformer encoder; the
    constants' outputs are the prefix."""

    def __init__(self, embed_dim: int, width: int, prefix_length: int, layers: int = 2,
                 heads: int = 4, ffn: int | None = None, clip_length: int | None = None
                 ) -> None:
        super().__init__()
        self.clip_length, self.width = clip_length or prefix_length, width
        self.project = nn.Linear(embed_dim, self.clip_length * width)
        self.constants = nn.Parameter(torch.randn(prefix_length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, ffn or 4 * width, batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        x = self.project(e).view(len(e), self.clip_length, self.width)
        x = torch.cat([x, self.constants.expand(len(e), -1, -1)], dim=1)
        return self.transformer(x)[:, self.clip_length:]


def _mlp_mapper(embed_dim: int, width: int, prefix_length: int, hidden: int | None = None
                ) -> nn.Module:
    out = prefix_length * width
    hidden = hidden or (embed_dim + out) // 2
    return nn.Sequential(nn.Linear(embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, out))


class CaptionDecoder(Artefact, nn.Module):
    """Mapping network + causal LM; ``loss`` for training, ``generate`` for captions."""

    kind = "caption-decoder"
    config_class = CaptionDecoderConfig
    train_hint = "train one with `modtrans fit-decoder caption --data STORE --out DIR`"
    legacy = Layout("caption_decoder.json", "mapping.safetensors")

    def __init__(self, config: CaptionDecoderConfig, lm: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        if config.embed_dim < 1:
            raise ValueError("embed_dim must be set (the width of the conditioning embedding)")
        self.config, self.lm, self.tokenizer = config, lm, tokenizer
        width = lm.config.n_embd
        self.mapping = (
            _mlp_mapper(config.embed_dim, width, config.prefix_length, config.mapper_hidden)
            if config.mapping == "mlp"
            else TransformerMapper(config.embed_dim, width, config.prefix_length,
                                   config.mapper_layers, config.mapper_heads, config.mapper_ffn,
                                   config.clip_length)
        )
        self.stop_ids = [tokenizer.eos_token_id]
        if config.stop_token is not None:
            ids = tokenizer(config.stop_token, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(f"stop_token {config.stop_token!r} is {len(ids)} tokens of "
                                 "the tokenizer; it must be exactly one")
            self.stop_ids.append(ids[0])

    def prefix(self, e: torch.Tensor, noise: bool = False) -> torch.Tensor:
        """(N, D) embeddings → (N, prefix_length, width): L2-normalised, CapDec noise while
        training, scaled to ``prefix_norm``."""
        e = F.normalize(e.float(), dim=-1)
        if noise and self.config.noise_variance > 0:
            e = e + torch.randn_like(e) * self.config.noise_variance ** 0.5
        return self.mapping(e * self.config.prefix_norm).view(len(e), self.config.prefix_length,
                                                              -1)

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Token ids ending with the end-of-text token, padded, at most ``max_length``."""
        eos = self.tokenizer.eos_token_id
        rows = []
        for text in captions:
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            if not ids or ids[-1] != eos:
                ids = [*ids, eos]
            if len(ids) > self.config.max_length:
                ids = [*ids[: self.config.max_length - 1], eos]
            rows.append(ids)
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def training_loss(self, batch: tuple[torch.Tensor, list[str]]) -> dict[str, torch.Tensor]:
        """The loss of a batch of (embeddings, captions)."""
        e, captions = batch
        tokens = self.tokenize(list(captions))
        return {"loss": self.loss(e, tokens["input_ids"].to(e.device),
                                  tokens["attention_mask"].to(e.device))}

    def loss(self, e: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
             ) -> torch.Tensor:
        """Next-token cross-entropy of the captions after the prefix."""
        prefix = self.prefix(e, noise=self.config.mode == "capdec" and self.training)
        tokens = self.lm.get_input_embeddings()(input_ids)
        p = prefix.shape[1]
        ones = torch.ones(len(e), p, dtype=attention_mask.dtype, device=attention_mask.device)
        labels = torch.where(attention_mask.bool(), input_ids, -100)
        labels = torch.cat([torch.full_like(ones, -100), labels], dim=1)
        out = self.lm(inputs_embeds=torch.cat([prefix, tokens], dim=1),
                      attention_mask=torch.cat([ones, attention_mask], dim=1), labels=labels)
        return out.loss

    @torch.no_grad()
    def generate(self, e: torch.Tensor, *, num_beams: int = 1, batch_size: int = 256
                 ) -> list[str]:
        """One caption per embedding: greedy (``num_beams=1``) or beam search."""
        was_training = self.training
        self.eval()
        captions: list[str] = []
        for chunk in e.split(batch_size):
            prefix = self.prefix(chunk)
            out = self.lm.generate(
                inputs_embeds=prefix,
                attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
                max_new_tokens=self.config.max_length, num_beams=num_beams, do_sample=False,
                eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
            )  # fmt: skip
            captions += [t.strip() for t in
                         self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        self.train(was_training)
        return captions

    def save_payload(self, path: Path) -> None:
        """The language model and its tokenizer in transformers' format (``lm/``); the
        mapping network's weights as ``model.safetensors``."""
        self.lm.save_pretrained(path / LM_DIR)
        self.tokenizer.save_pretrained(path / LM_DIR)
        save_weights(path / self.layout.weights, self.mapping)

    @classmethod
    def build(cls, config: CaptionDecoderConfig, path: Path) -> CaptionDecoder:
        """The decoder around the language model saved in ``path/lm``."""
        from transformers import GPT2LMHeadModel

        lm, tokenizer = load_pretrained(GPT2LMHeadModel, path / LM_DIR, cls.train_hint)
        return cls(config, lm, tokenizer)

    def load_payload(self, path: Path, layout: Layout) -> None:
        load_state(self.mapping, path / layout.weights, path / layout.config, self.train_hint)


def build_caption_decoder(config: CaptionDecoderConfig, captions: list[str]) -> CaptionDecoder:
    """A fresh decoder: a real GPT-2 from ``config.gpt2``, or a small one from scratch with a
    word-level tokenizer over ``captions``."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from modtrans.encoders.tokenizer import build_tokenizer

    if config.gpt2:
        source = Path(config.gpt2)
        if not (source / "config.json").is_file():
            raise FileNotFoundError(f"--gpt2 {source} is not a saved GPT-2 directory")
        lm = GPT2LMHeadModel.from_pretrained(source, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return CaptionDecoder(config, lm, tokenizer)
    tokenizer = build_tokenizer(captions)
    lm = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.prefix_length + config.max_length + 8,
        n_embd=config.width, n_layer=config.layers, n_head=config.heads,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))  # fmt: skip
    return CaptionDecoder(config, lm, tokenizer)


def caption_pairs(store: EmbeddingStore, condition: str, max_images: int | None = None,
                  text_input: str = "caption") -> tuple[torch.Tensor, list[str]]:
    """(embeddings, captions), one row per caption, for the first ``max_images`` images: its
    image's embedding (``image``), or for ``text`` its own (``text_input="caption"``) or the
    mean of the normalised embeddings of its image's captions (``"set-mean"``)."""
    _check_text_input(text_input)
    owner = np.asarray(store.caption_image_index)
    n = store.n_images if max_images is None else min(max_images, store.n_images)
    rows = np.flatnonzero(owner < n)
    captions = store.text_metadata().column("caption").to_pylist()
    texts = [captions[i] for i in rows]
    if condition == "image":
        return torch.from_numpy(np.asarray(store.image_embeddings[owner[rows]],
                                           dtype=np.float32)), texts
    e = torch.from_numpy(np.asarray(store.text_embeddings[rows], dtype=np.float32))
    if text_input == "set-mean":
        group = torch.from_numpy(owner[rows])
        sums = torch.zeros(n, e.shape[1]).index_add_(0, group, F.normalize(e, dim=-1))
        e = sums[group] / torch.bincount(group, minlength=n)[group, None]
    return e, texts


def matched_noise_variance(translate: Callable[[torch.Tensor], torch.Tensor],
                           store: EmbeddingStore, text_input: str = "set-mean",
                           max_images: int = 2000) -> float:
    """CapDec's noise variance matched to a translator: the per-dimension mean squared
    distance between its normalised translations of the store's first ``max_images`` image
    embeddings and the normalised text embeddings CapDec trains on for them (``text_input``).

    ``translate`` maps (N, image dim) raw image embeddings to (N, text dim) text embeddings,
    e.g. ``lambda z: translator.translate(z, mode="mean")``. Use the train split: the
    decoder should expect the error the translator makes on data like its own.
    """
    targets, _ = caption_pairs(store, "text", max_images, text_input)
    owner = np.asarray(store.caption_image_index)
    n = min(max_images, store.n_images)
    images = torch.from_numpy(np.asarray(store.image_embeddings[:n], dtype=np.float32))
    translated = F.normalize(translate(images).float(), dim=-1)[owner[owner < n]]
    return float((translated - F.normalize(targets, dim=-1)).pow(2).mean())


class _Captions(Dataset):
    def __init__(self, e: torch.Tensor, captions: list[str]) -> None:
        self.e, self.captions = e, captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return self.e[i], self.captions[i]


def fit_caption_decoder(train: EmbeddingStore, val: EmbeddingStore, out_dir: str | Path,
                        config: CaptionDecoderConfig | None = None, *,
                        accelerator: str = "auto", max_val_images: int = 500,
                        progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Train a caption decoder on a store's captions; validate its loss on ``val``;
    ``resume`` continues from ``out_dir/lightning/last.ckpt``.

    Returns:
        A summary (pairs, seconds, final losses), also in ``summary.json``.
    """
    config = dataclasses.replace(config or CaptionDecoderConfig(),
                                 image_encoder=train.image_encoder,
                                 text_encoder=train.text_encoder)
    config.embed_dim = train.image_dim if config.condition == "image" else train.text_dim
    recipe = dataclasses.replace(config.recipe(), accelerator=accelerator, progress=progress,
                                 resume=resume)
    L.seed_everything(config.seed, verbose=False)
    e, captions = caption_pairs(train, config.condition, text_input=config.text_input)
    val_e, val_captions = caption_pairs(val, config.condition, max_val_images,
                                        config.text_input)
    model = build_caption_decoder(config, captions)
    result = fit(model, model.training_loss, recipe.loader(_Captions(e, captions),
                                                           drop_last=False),
                 DataLoader(_Captions(val_e, val_captions), batch_size=512), recipe, out_dir)
    return save_trained(model, out_dir, {"pairs": len(captions), "mode": config.mode,
                                         **result})
