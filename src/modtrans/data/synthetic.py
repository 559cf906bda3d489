"""Synthetic paired stores of any size, for scaling tests and benchmarks.

Image and caption embeddings share a low-dimensional latent (as real CLIP embeddings lie
near a low-dimensional subspace and gather around concepts) plus independent noise: u is
one of ``concepts`` centres μ_j ~ N(0, I_k) plus s·N(0, I_k), image = u·A + σ·ε,
text = u·B + σ·ε', each row L2-normalised. Without the concepts a row's nearest neighbours
would be nearly as far as any other row, which no real gallery is like. A, B and the centres
come from the seed; the rows of shard ``s`` from ``(seed, split, s)`` alone, so the splits
of one seed are draws of one distribution, and stores of different sizes share their first
rows.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from modtrans.data.store import StoreWriter

logger = logging.getLogger(__name__)


def paired_rows(n: int, dim: int, seed: int, split: str, shard: int, *, latent_dim: int = 64,
                concepts: int = 1000, spread: float = 0.5, noise: float = 0.3
                ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (image, text) float32 rows of shard number ``shard`` of ``split``."""
    mixing = np.random.default_rng([seed, 0])
    a = mixing.standard_normal((latent_dim, dim), dtype=np.float32) / np.sqrt(latent_dim)
    b = mixing.standard_normal((latent_dim, dim), dtype=np.float32) / np.sqrt(latent_dim)
    centres = mixing.standard_normal((concepts, latent_dim), dtype=np.float32)
    rng = np.random.default_rng([seed, 1, zlib.crc32(split.encode()), shard])
    u = centres[rng.integers(0, concepts, n)] + spread * rng.standard_normal(
        (n, latent_dim), dtype=np.float32)
    sides = []
    for m in (a, b):
        x = u @ m + noise * rng.standard_normal((n, dim), dtype=np.float32)
        sides.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return sides[0], sides[1]


def write_paired_store(root: str | Path, n: int, *, dim: int = 512, shard_size: int = 10_000,
                       seed: int = 0, split: str = "train", dtype: str = "float16",
                       progress: bool = False) -> Path:
    """Write a store of ``n`` images with one caption each (:func:`paired_rows`), resuming
    one left incomplete."""
    root = Path(root)
    with StoreWriter(root, split=split, image_encoder="synthetic", text_encoder="synthetic",
                     image_dim=dim, text_dim=dim, dtype=dtype, resume=root.exists(),
                     source={"synthetic": {"n": n, "seed": seed}}) as writer:
        first = writer.n_shards
        shards = range(first, -(-n // shard_size))
        for shard in tqdm(shards, desc=f"synthetic {split}", disable=not progress):
            start = shard * shard_size
            rows = min(shard_size, n - start)
            image, text = paired_rows(rows, dim, seed, split, shard)
            ids = np.arange(start, start + rows)
            writer.write_shard(
                image, text, pa.table({"image_id": ids, "image_path": ids.astype(str)}),
                pa.table({"image_index": np.arange(rows), "caption": ids.astype(str)}))
    return root
