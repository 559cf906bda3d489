"""Token-by-token sampling from a GPT-2 after a prefix of input embeddings, with transformers'
KV cache and classifier-free guidance, and the config checks and recipe of such a model;
shared by BiART and the token decoder.

The prefix is whatever the model conditions on (BiART: the condition's token and segment
embeddings; the token decoder: the embedding projected into prefix vectors). Positions are
counted from the first prefix slot whatever the attention mask says, as both models train.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from modtrans.decoders.augvae import AugVAEConfig
from modtrans.training.fit import Recipe


def check_transformer_options(config: Any) -> AugVAEConfig:
    """Raise unless ``config``'s ``dropout`` and ``cond_dropout`` are in [0, 1); returns its
    ``augvae`` options as an :class:`AugVAEConfig` (a mapping from a config file is read)."""
    augvae = config.augvae
    if isinstance(augvae, dict):
        augvae = AugVAEConfig.from_dict(augvae)
    if not isinstance(augvae, AugVAEConfig):
        raise ValueError(f"augvae must be a mapping of AugVAEConfig options, got {augvae!r}")
    if not 0 <= config.cond_dropout < 1 or not 0 <= config.dropout < 1:
        raise ValueError("cond_dropout and dropout must be in [0, 1)")
    return augvae


def transformer_recipe(config: Any) -> Recipe:
    """AdamW with warm-up and cosine decay, no decay on biases, norms and embeddings, over
    ``config``'s epochs, batch size, learning rate and seed."""
    return Recipe(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                  weight_decay=0.01, decay_filter=True, schedule="warmup-cosine",
                  warmup_fraction=0.05, seed=config.seed)


@torch.no_grad()
def sample_tokens(gpt: torch.nn.Module, prefix: torch.Tensor, mask: torch.Tensor,
                  embed: Callable[[torch.Tensor], torch.Tensor], steps: int, *,
                  null: tuple[torch.Tensor, torch.Tensor] | None = None, guidance: float = 1.0,
                  allowed: torch.Tensor | None = None, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, use_cache: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``steps`` tokens (N, steps) drawn one at a time after ``prefix``.

    Args:
        gpt: a transformers causal LM taking ``inputs_embeds`` (GPT-2).
        prefix, mask: (N, C, width) input embeddings and their (N, C) attention mask.
        embed: drawn tokens (M, t) → their input embeddings (M, t, width).
        steps: tokens to draw.
        null: the null condition's (prefix, mask), needed when ``guidance`` ≠ 1: the logits
            are then null + guidance · (conditional − null).
        allowed: a (vocabulary,) boolean mask of the tokens that may be drawn (None: all).
        temperature, top_k, top_p: see :func:`draw`; ``temperature=0`` is greedy.
        use_cache: reuse the keys and values of earlier positions (off: every step re-reads
            the whole sequence; the reference the cache is tested against).
        generator: seeds the draws.
    """
    guided = guidance != 1.0
    if guided:
        if null is None:
            raise ValueError("guidance needs the null condition (null=(prefix, mask))")
        prefix, mask = torch.cat([prefix, null[0]]), torch.cat([mask, null[1]])
    out: list[torch.Tensor] = []
    inputs, start, past = prefix, 0, None
    for _ in range(steps):
        positions = torch.arange(start, start + inputs.shape[1], device=inputs.device)
        result = gpt(inputs_embeds=inputs, attention_mask=mask,
                     position_ids=positions.expand(inputs.shape[:2]), cache=past,
                     use_cache=use_cache, logits_to_keep=1)
        logits = result.logits[:, -1].float()
        if guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + guidance * (cond - uncond)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        out.append(draw(logits, temperature, top_k, top_p, generator))
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
        if use_cache:
            past, start = result.cache, mask.shape[1] - 1
            inputs = embed(out[-1].repeat(2 if guided else 1)[:, None])
        else:
            drawn = torch.stack(out, dim=1)
            inputs = torch.cat([prefix, embed(drawn.repeat(2, 1) if guided else drawn)], dim=1)
    return torch.stack(out, dim=1)


def draw(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
         generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of (N, V) logits: argmax at temperature 0, else a draw from the
    softmax at ``temperature`` kept to the ``top_k`` most likely and the smallest set
    holding ``top_p`` of the probability (nucleus)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        before = ordered.softmax(dim=-1).cumsum(dim=-1) - ordered.softmax(dim=-1)
        ordered = ordered.masked_fill(before > top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).flatten().to(logits.device)
