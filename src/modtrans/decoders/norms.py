"""The norm of real image embeddings, measured on a store's images.

Decoders trained outside modtrans (Karlo, stable unCLIP, ClipCap) read the *raw* CLIP
projection, whose norm is far from 1, while a store (and so a translator trained on it) holds
L2-normalised embeddings. Their adapters rescale each embedding to the mean raw norm measured
here, from the images the store was embedded from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from modtrans.data.store import EmbeddingStore

logger = logging.getLogger(__name__)

#: Images measured by default: the mean norm of CLIP image embeddings is steady well before.
MAX_IMAGES = 256


def image_norms(store: EmbeddingStore, encode: Callable[[list[Image.Image]], torch.Tensor], *,
                max_images: int = MAX_IMAGES, batch_size: int = 32) -> dict[str, Any]:
    """Mean and standard deviation of the norms of ``encode``'s raw embeddings of the first
    ``max_images`` images of ``store``.

    Returns:
        ``{"mean", "std", "images"}`` (floats, and how many images were measured).
    """
    if max_images < 1:
        raise ValueError(f"max_images must be ≥ 1, got {max_images}")
    paths = [Path(p) for p in
             store.image_metadata().column("image_path").to_pylist()[:max_images]]
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise FileNotFoundError(
            f"measuring the norm of real image embeddings needs the images {store.root} was "
            f"embedded from; {len(missing)} of {len(paths)} are not on disk"
            + (f" (e.g. {missing[0]})" if missing else "")
        )
    norms = torch.cat([encode(_open(paths[i:i + batch_size])).float().norm(dim=-1)
                       for i in range(0, len(paths), batch_size)])
    stats = {"mean": float(norms.mean()), "std": float(norms.std()) if len(norms) > 1 else 0.0,
             "images": len(norms)}
    logger.info("norm of real image embeddings over %d images of %s: %.3f ± %.3f",
                stats["images"], store.root, stats["mean"], stats["std"])
    return stats


def _open(paths: Sequence[Path]) -> list[Image.Image]:
    opened = []
    for path in paths:
        with Image.open(path) as im:
            opened.append(im.convert("RGB"))
    return opened


def rescale(e: torch.Tensor, norm: float | None) -> torch.Tensor:
    """Each row of ``e`` scaled to L2 norm ``norm`` (``e`` unchanged when None)."""
    if norm is None:
        return e
    return torch.nn.functional.normalize(e.float(), dim=-1) * norm
