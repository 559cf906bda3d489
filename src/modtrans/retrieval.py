"""faiss indexes over a store's embeddings: exact for small galleries, HNSW up to millions,
IVF-PQ beyond (its candidates re-scored exactly from the store's shards).

Embeddings are L2-normalised and searched by inner product (cosine); indexes are built from
the store's memory-mapped shards in batches. An index directory holds ``index.faiss``
(faiss' own binary format, not a pickle) and ``index.json``: which store, modality and split
it covers, how it was built, its size, and its measured recall and speed against exact
search.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from modtrans.data.store import EmbeddingStore, _shard_path
from modtrans.errors import NonFiniteError
from modtrans.io import atomic_path, load_npy, read_json, write_json

logger = logging.getLogger(__name__)

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
EXACT_UP_TO = 50_000  # "auto" builds an exact index up to this many vectors
HNSW_UP_TO = 2_000_000  # then HNSW; IVF-PQ beyond
INDEX_FILE, INFO_FILE = "index.faiss", "index.json"
BATCH = 65_536  # vectors normalised and added at once
TRAIN_ROWS = 65_536  # most vectors IVF and PQ train on (k-means is O(rows × lists))
MAX_LISTS = 4096  # IVF k-means cost grows with lists × training rows
PQ_MIN_VECTORS = 10_000  # 8-bit PQ wants ≥ 39 training rows per code of 256


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class Gallery:
    """Vectors to index, read in batches: an in-memory array, or one modality of a store
    read shard by shard, each shard memory-mapped only while it is read, so that building
    an index or searching it exactly holds batches in memory, not the gallery."""

    def __init__(self, source: np.ndarray | EmbeddingStore, modality: str = "image") -> None:
        self.array: np.ndarray | None = None
        if isinstance(source, EmbeddingStore):
            if modality not in ("image", "text"):
                raise ValueError(f"modality must be image or text, got {modality!r}")
            kind, count = ("img_emb", "n_images") if modality == "image" else (
                "text_emb", "n_captions")
            shards = source.manifest["shards"]
            self.paths = [_shard_path(source.root, kind, s["index"]) for s in shards]
            self.sizes = np.array([s[count] for s in shards], dtype=np.int64)
            self.dim = source.image_dim if modality == "image" else source.text_dim
        else:
            self.array = np.asarray(source)
            if self.array.ndim != 2:
                raise ValueError(f"vectors must be 2-D, got shape {self.array.shape}")
            self.sizes = np.array([len(self.array)], dtype=np.int64)
            self.dim = self.array.shape[1]

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def _shard(self, i: int) -> np.ndarray:
        return self.array if self.array is not None else load_npy(self.paths[i])

    def batches(self, size: int = BATCH) -> Iterator[np.ndarray]:
        """Every vector once, in row order, normalised float32, ``size`` at a time."""
        for i in range(len(self.sizes)):
            shard = self._shard(i)
            for start in range(0, len(shard), size):
                batch = _normalised(shard[start:start + size])
                if not np.isfinite(batch).all():
                    where = self.paths[i] if self.array is None else "the vectors"
                    raise NonFiniteError(f"{where} hold NaN or infinite values; re-embed them "
                                         "before indexing")
                yield batch
            del shard

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The normalised vectors of ``rows`` (any order)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        starts = np.cumsum(self.sizes) - self.sizes
        owner = np.searchsorted(starts, rows, side="right") - 1
        for i in np.unique(owner):
            shard, picked = self._shard(int(i)), owner == i
            out[picked] = _normalised(shard[rows[picked] - starts[i]])
            del shard
        return out


def choose_kind(n: int, kind: str = "auto") -> str:
    """The index kind for ``n`` vectors: ``kind`` itself unless it is ``auto``."""
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    if kind != "auto":
        return kind
    return "flat" if n <= EXACT_UP_TO else "hnsw" if n <= HNSW_UP_TO else "ivfpq"


def build_index(vectors: np.ndarray | Gallery, kind: str = "auto", *, hnsw_m: int = 32,
                ef_search: int = 128, nprobe: int = 16, nlist: int | None = None,
                pq_m: int = 64, rerank: int = 10, seed: int = 0,
                progress: bool = False) -> tuple[Any, dict]:
    """Build a cosine index over ``vectors`` (n, d), added in batches.

    Args:
        vectors: the gallery (an array, or a :class:`Gallery` read from a store's shards);
            normalised here.
        kind: ``flat`` (exact), ``hnsw``, ``ivf`` (IVF with full vectors), ``ivfpq`` (IVF
            with product-quantised codes: ``pq_m`` bytes a vector, for galleries of
            millions), or ``auto`` (by size, see :func:`choose_kind`).
        hnsw_m, ef_search: HNSW graph degree and search breadth.
        nprobe: IVF lists searched per query.
        nlist: IVF lists (default: about 4·√n, at most :data:`MAX_LISTS`).
        pq_m: PQ sub-vectors (the largest divisor of d up to it).
        rerank: ``ivfpq`` searches ``rerank``·k candidates by their codes, then re-scores
            them exactly from the gallery's vectors (1: no re-scoring).
        seed: which vectors IVF and PQ train on, and the k-means seed.
        progress: show a progress bar while vectors are added.

    Returns:
        (the faiss index, the parameters used).
    """
    import faiss

    gallery = vectors if isinstance(vectors, Gallery) else Gallery(vectors)
    n, dim = len(gallery), gallery.dim
    if n == 0:
        raise ValueError("cannot index an empty gallery")
    kind = choose_kind(n, kind)
    params: dict[str, Any] = {"kind": kind, "n": n, "dim": dim}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
        params.update(hnsw_m=hnsw_m, ef_search=ef_search)
    else:
        if kind == "ivfpq" and n < PQ_MIN_VECTORS:
            raise ValueError(f"ivfpq needs at least {PQ_MIN_VECTORS} vectors to train its "
                             f"codes, got {n}; use --kind flat, hnsw or ivf")
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39, MAX_LISTS))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            pq_m = max(m for m in range(1, min(pq_m, dim) + 1) if dim % m == 0)
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
            params.update(pq_m=pq_m, rerank=max(1, rerank))
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, min(n, max(TRAIN_ROWS, 39 * nlist)), replace=False))
        index.train(gallery.rows(sample))
        index.nprobe = min(nprobe, nlist)
        params.update(nlist=nlist, nprobe=index.nprobe, train_rows=len(sample))
    with tqdm(total=n, desc=f"index ({kind})", unit="vec", disable=not progress) as bar:
        for batch in gallery.batches():
            index.add(batch)
            bar.update(len(batch))
    return index, params


def search(index: Any, queries: np.ndarray, k: int, *, gallery: Gallery | None = None,
           rerank: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, rows) per query, by cosine; with a ``gallery`` and ``rerank`` > 1
    the index's top ``rerank``·k are re-scored exactly from the gallery's vectors."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    q = _normalised(queries)
    k = min(k, index.ntotal)
    if gallery is None or rerank <= 1:
        return index.search(q, k)
    _, candidates = index.search(q, min(k * rerank, index.ntotal))
    found = candidates >= 0
    vectors = np.zeros((*candidates.shape, q.shape[1]), dtype=np.float32)
    vectors[found] = gallery.rows(candidates[found])
    scores = np.einsum("qd,qcd->qc", q, vectors)
    scores[~found] = -np.inf
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, best, 1), np.take_along_axis(candidates, best, 1)


def exact_search(gallery: Gallery, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores, rows) by cosine, the gallery read batch by batch."""
    import faiss

    q = _normalised(queries)
    k = min(k, len(gallery))
    best_scores = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(q), 0), dtype=np.int64)
    offset = 0
    for batch in gallery.batches():
        scores, rows = faiss.knn(q, batch, min(k, len(batch)), metric=faiss.METRIC_INNER_PRODUCT)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, rows + offset], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, 1)
        best_rows = np.take_along_axis(best_rows, keep, 1)
        offset += len(batch)
    return best_scores, best_rows


def recall_against_exact(index: Any, gallery: np.ndarray | Gallery, queries: np.ndarray,
                         k: int = 10, rerank: int = 1) -> float:
    """Mean share of the exact top-``k`` that the index returns in its own top-``k``."""
    return measure_against_exact(index, gallery, queries, k, rerank)["recall"]


def measure_against_exact(index: Any, gallery: np.ndarray | Gallery, queries: np.ndarray,
                          k: int = 10, rerank: int = 1) -> dict[str, float]:
    """Recall@``k`` of the index against exact search, and both searches' queries/s."""
    gallery = gallery if isinstance(gallery, Gallery) else Gallery(gallery)
    start = time.perf_counter()
    _, truth = exact_search(gallery, queries, k)
    exact_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, found = search(index, queries, k, gallery=gallery, rerank=rerank)
    seconds = time.perf_counter() - start
    hits = [len(set(t) & set(f)) / len(t) for t, f in zip(truth, found, strict=True)]
    return {"recall": float(np.mean(hits)), "qps": len(queries) / max(seconds, 1e-9),
            "exact_qps": len(queries) / max(exact_seconds, 1e-9)}


@dataclass
class GalleryIndex:
    """An index with what it covers: the store, the modality, the items' labels."""

    index: Any
    info: dict[str, Any]
    store: EmbeddingStore

    @property
    def modality(self) -> str:
        return self.info["modality"]

    def labels(self) -> list[str]:
        """What to show for each row: image paths (image index) or captions (text index)."""
        if self.modality == "image":
            return self.store.image_metadata().column("image_path").to_pylist()
        return self.store.text_metadata().column("caption").to_pylist()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dim = self.info["dim"]
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise ValueError(
                f"queries have shape {queries.shape} but the {self.modality} index holds "
                f"{dim}-d embeddings; encode (or translate) the query into that space"
            )
        rerank = self.info.get("rerank", 1)
        gallery = Gallery(self.store, self.modality) if rerank > 1 else None
        return search(self.index, queries, k, gallery=gallery, rerank=rerank)


def index_store(store: EmbeddingStore, out_dir: str | Path, *, modality: str = "image",
                kind: str = "auto", n_queries: int = 1000, k: int = 10, seed: int = 0,
                queries: np.ndarray | None = None, progress: bool = False,
                **options: Any) -> dict[str, Any]:
    """Index one modality of a store, read from its shards in batches, and measure the
    index against exact search: build time, the index's size on disk and the process's
    peak memory, recall@``k`` and queries/s (its own and exact search's).

    Recall queries are ``queries`` if given, else up to ``n_queries`` embeddings of the
    other modality when the two share a space (same width), else of the same modality.

    Returns:
        The index info written to ``out_dir/index.json``.
    """
    import faiss

    gallery = Gallery(store, modality)
    start = time.perf_counter()
    index, params = build_index(gallery, kind, seed=seed, progress=progress, **options)
    seconds = time.perf_counter() - start
    if queries is None:
        other = "text" if modality == "image" else "image"
        pool = Gallery(store, other if store.has_text and Gallery(store, other).dim
                       == gallery.dim else modality)
        rows = np.sort(np.random.default_rng(seed).permutation(len(pool))[:n_queries])
        queries = pool.rows(rows)
    measured = measure_against_exact(index, gallery, queries, k, params.get("rerank", 1))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / INDEX_FILE) as tmp:
        faiss.write_index(index, os.fspath(tmp))
    info = {
        "store": str(Path(store.root).resolve()), "split": store.split, "modality": modality,
        **params, "build_seconds": round(seconds, 3),
        "index_mb": round((out_dir / INDEX_FILE).stat().st_size / 2**20, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        f"recall@{k}_vs_exact": round(measured["recall"], 4), "recall_queries": len(queries),
        "qps": round(measured["qps"], 1), "exact_qps": round(measured["exact_qps"], 1),
        "image_encoder": store.image_encoder, "text_encoder": store.text_encoder,
    }  # fmt: skip
    write_json(out_dir / INFO_FILE, info)
    logger.info("indexed %d %s embeddings (%s) in %.1fs; recall@%d vs exact %.3f at %.0f "
                "queries/s (exact: %.0f)", params["n"], modality, params["kind"], seconds, k,
                measured["recall"], measured["qps"], measured["exact_qps"])
    return info


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux and macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def load_index(path: str | Path) -> GalleryIndex:
    """Open an index directory written by :func:`index_store` (and the store it covers)."""
    import faiss

    path = Path(path)
    if not (path / INFO_FILE).is_file() or not (path / INDEX_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not an index directory (no {INFO_FILE}/{INDEX_FILE}); build one with "
            "`modtrans index <store> --out DIR`"
        )
    info = read_json(path / INFO_FILE)
    store = EmbeddingStore(info["store"])
    index = faiss.read_index(os.fspath(path / INDEX_FILE))
    if index.ntotal != (store.n_images if info["modality"] == "image" else store.n_captions):
        raise ValueError(
            f"index {path} holds {index.ntotal} vectors but its store {info['store']} has "
            "changed since; rebuild the index"
        )
    return GalleryIndex(index, info, store)
