"""A store's pairs read from its memory-mapped shards, for splits larger than memory.

Training reads batches in a shuffled, sharded order: an epoch visits the shards in an order
drawn from ``(seed, epoch)`` and each shard's pairs in an order drawn from
``(seed, epoch, shard)``; batch ``b`` is positions ``[b·B, (b+1)·B)`` of that sequence, so it
spans one shard or two. Each DDP rank reads its rows of every batch and each DataLoader
worker whole batches (:class:`~modtrans.training.fit.BatchOrder` hands them out). A shard's
files are mapped only while a batch is read from them, so resident memory holds batches,
not the store. The closed-form statistics (normalisers, ridge moments) are sums over passes
of the shards (:func:`pair_statistics`, :func:`ridge_moments`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from modtrans.data.store import PAIRING_ROW, EmbeddingStore, _shard_path
from modtrans.errors import NonFiniteError
from modtrans.io import load_npy, read_parquet
from modtrans.translators.base import DIRECTIONS, Normalizer
from modtrans.translators.baselines import RidgeMoments

logger = logging.getLogger(__name__)

#: Pairs read at once by the statistics passes.
CHUNK = 16_384


class StorePairs:
    """The (condition, target) pairs of a store in a direction, read shard by shard."""

    def __init__(self, store: EmbeddingStore, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if store.skip_bad_rows:
            raise ValueError("--skip-bad-rows needs the split in memory (it scans every row "
                             "first); train without --stream, or re-embed the bad rows")
        store._require_text()
        self.root, self.direction, self.split = store.root, direction, store.split
        self.pairing = store.manifest["pairing"]
        self.shards = [dict(s) for s in store.manifest["shards"]]
        self.sizes = np.array([s["n_captions"] for s in self.shards], dtype=np.int64)
        dims = store.text_dim, store.image_dim
        self.cond_dim, self.target_dim = dims if direction == "text2image" else dims[::-1]
        self._owner_of: tuple[int, np.ndarray] | None = None
        if not self.sizes.sum():
            raise ValueError(f"the {store.split!r} split at {store.root} has no caption; "
                             "embed a non-empty split")

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def _owner(self, position: int) -> np.ndarray:
        """The image row (within its shard) of each caption of the shard at ``position``."""
        if self._owner_of is None or self._owner_of[0] != position:
            shard = self.shards[position]
            if self.pairing == PAIRING_ROW:
                owner = np.arange(shard["n_captions"], dtype=np.int64)
            else:
                path = _shard_path(self.root, "text_metadata", shard["index"])
                owner = (read_parquet(path, ["image_index"]).column(0).to_numpy()
                         .astype(np.int64) - shard["first_image_row"])
            self._owner_of = position, owner
        return self._owner_of[1]

    def read(self, position: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(condition, target) float32 arrays of caption ``rows`` of the shard at ``position``
        (in the manifest's order); the shard's files are unmapped on return."""
        shard = self.shards[position]
        texts = load_npy(_shard_path(self.root, "text_emb", shard["index"]))
        images = load_npy(_shard_path(self.root, "img_emb", shard["index"]))
        text = np.asarray(texts[rows], dtype=np.float32)
        image = np.asarray(images[self._owner(position)[rows]], dtype=np.float32)
        del texts, images
        return (text, image) if self.direction == "text2image" else (image, text)

    def chunks(self, size: int = CHUNK, desc: str | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Every pair once, in store order, ``size`` at a time, as float32 tensors; a NaN or
        infinite value raises, naming its shard."""
        with tqdm(total=len(self), desc=desc, unit="pair", disable=desc is None) as bar:
            for position, n in enumerate(self.sizes):
                for start in range(0, int(n), size):
                    c, z = self.read(position, np.arange(start, min(start + size, int(n))))
                    if not (np.isfinite(c).all() and np.isfinite(z).all()):
                        raise NonFiniteError(
                            f"shard {self.shards[position]['index']} of {self.root} holds NaN "
                            "or infinite embeddings; re-embed it, or train without --stream "
                            "and with --skip-bad-rows to leave those rows out")
                    bar.update(len(c))
                    yield torch.from_numpy(c), torch.from_numpy(z)

    def sample(self, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Up to ``n`` pairs drawn without replacement, spread over the whole split."""
        total = len(self)
        rows = np.arange(total) if n >= total else np.sort(
            np.random.default_rng(seed).choice(total, n, replace=False))
        starts = np.cumsum(self.sizes) - self.sizes
        position = np.searchsorted(starts, rows, side="right") - 1
        parts = [self.read(int(p), rows[position == p] - starts[p]) for p in np.unique(position)]
        return (torch.from_numpy(np.concatenate([c for c, _ in parts])),
                torch.from_numpy(np.concatenate([z for _, z in parts])))


def pair_statistics(pairs: StorePairs, cond_norm: Normalizer, target_norm: Normalizer,
                    progress: bool = False) -> None:
    """Fit both normalisers in one pass (Chan's merge of float64 chunk moments), as
    :meth:`Normalizer.fit` would on the whole split."""
    n, sums = 0, None
    for c, z in pairs.chunks(desc="normaliser statistics" if progress else None):
        moments = []
        for x in (c.double(), z.double()):
            mean = x.mean(0)
            moments.append((mean, ((x - mean) ** 2).sum(0)))
        m = len(c)
        if sums is None:
            sums = moments
        else:
            sums = [(mean + (m_mean - mean) * m / (n + m),
                     m2 + m_m2 + (m_mean - mean) ** 2 * n * m / (n + m))
                    for (mean, m2), (m_mean, m_m2) in zip(sums, moments, strict=True)]
        n += m
    assert sums is not None
    for norm, (mean, m2) in zip((cond_norm, target_norm), sums, strict=True):
        norm.mean.copy_(mean)
        norm.std.copy_((m2 / max(n - 1, 1)).sqrt().clamp_min(1e-6))


def ridge_moments(pairs: StorePairs, cond_norm: Normalizer, target_norm: Normalizer,
                  progress: bool = False) -> RidgeMoments:
    """One pass over the normalised pairs; each chunk's products in float32, summed in
    float64."""
    dc, d = pairs.cond_dim, pairs.target_dim
    acc = RidgeMoments(0, torch.zeros(dc, dc, dtype=torch.float64),
                       torch.zeros(dc, d, dtype=torch.float64),
                       torch.zeros(dc, dtype=torch.float64), torch.zeros(d, dtype=torch.float64),
                       0.0)
    with torch.no_grad():
        for c, z in pairs.chunks(desc="ridge moments" if progress else None):
            cn, zn = cond_norm(c), target_norm(z)
            acc.n += len(cn)
            acc.ctc += (cn.T @ cn).double()
            acc.ctz += (cn.T @ zn).double()
            acc.c_sum += cn.double().sum(0)
            acc.z_sum += zn.double().sum(0)
            acc.z_sq += float(zn.double().pow(2).sum())
    return acc


class PairBatches(Dataset):
    """Batch ``b`` of epoch ``e`` of a :class:`StorePairs`, as ``(cond, target)`` tensors of
    the rows that rank ``r`` of ``w`` reads: ``dataset[(e, b, r, w)]``. Stateless, so that
    DataLoader workers and a resumed run read exactly the batches an uninterrupted run
    would."""

    def __init__(self, pairs: StorePairs, batch_size: int, seed: int, *, shuffle: bool = True,
                 drop_last: bool = True) -> None:
        self.pairs, self.batch_size, self.seed = pairs, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last and len(pairs) > batch_size

    def __len__(self) -> int:
        n = len(self.pairs)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, *parts: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *parts])

    def __getitem__(self, key: tuple[int, int, int, int]) -> tuple[Tensor, Tensor]:
        epoch, batch, rank, world = key
        sizes = self.pairs.sizes
        shards = (self._order(epoch).permutation(len(sizes)) if self.shuffle
                  else np.arange(len(sizes)))
        ends = np.cumsum(sizes[shards])
        lo = batch * self.batch_size
        hi = min(lo + self.batch_size, int(ends[-1]))
        picked = []  # (shard position, its rows) in batch order
        for k in range(int(np.searchsorted(ends, lo, side="right")), len(shards)):
            start = int(ends[k] - sizes[shards[k]])
            if start >= hi:
                break
            p = int(shards[k])
            within = (self._order(epoch, p).permutation(int(sizes[p])) if self.shuffle
                      else np.arange(int(sizes[p])))
            picked.extend((p, r) for r in within[max(lo - start, 0):hi - start])
        mine = picked[rank::world]
        if not mine:
            raise ValueError(f"a batch of {len(picked)} pairs cannot be split among {world} "
                             "processes; use a larger batch_size or fewer devices")
        where = np.array(mine, dtype=np.int64)
        parts = []
        for p in dict.fromkeys(where[:, 0].tolist()):
            parts.append(self.pairs.read(p, where[where[:, 0] == p, 1]))
        return (torch.from_numpy(np.concatenate([c for c, _ in parts])),
                torch.from_numpy(np.concatenate([z for _, z in parts])))
