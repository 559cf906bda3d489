"""Best of k: draw k images per request and keep the one an image encoder puts closest to a
target embedding (DALL·E's CLIP reranking).

The target of a text → image request is the prompt's own text embedding when the image and
text encoders share one space (a CLIP pair: the CLIP score), otherwise the embedding each
candidate was decoded from. What it buys on the world: ``docs/findings.md``, *End to end*.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def best_of(candidates: torch.Tensor, targets: torch.Tensor, encoder: Any, k: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the best of every k consecutive candidates.

    Args:
        candidates: uint8 images (N·k, H, W, 3); rows i·k … i·k + k − 1 answer request i.
        targets: (N·k, D) embeddings in the encoder's image space, one per candidate (the
            same row repeated k times for a per-request target).
        encoder: embeds the candidates (``encode_images``).
        k: candidates per request.

    Returns:
        The chosen images (N, H, W, 3) and their cosine to the target (N,).
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    if len(candidates) % k:
        raise ValueError(f"{len(candidates)} candidates do not split into groups of k={k}")
    if targets.ndim != 2 or len(targets) != len(candidates):
        raise ValueError(f"{len(candidates)} candidates need targets ({len(candidates)}, D), "
                         f"got {tuple(targets.shape)}")
    embedded = encoder.encode_images(candidates)
    if embedded.shape[1] != targets.shape[1]:
        raise ValueError(
            f"the image encoder embeds to {embedded.shape[1]} dims but the targets have "
            f"{targets.shape[1]}: rank against embeddings of the encoder's own image space"
        )
    scores = F.cosine_similarity(embedded, targets.to(embedded), dim=-1).view(-1, k)
    best, pick = scores.max(dim=1)
    return candidates[pick + torch.arange(len(pick)) * k], best
