"""faiss indexes over a store's embeddings: exact for small galleries, HNSW or IVF above.

Embeddings are L2-normalised and searched by inner product (cosine). An index directory
holds ``index.faiss`` (faiss' own binary format, not a pickle) and ``index.json``: which
store, modality and split it covers, how it was built, and its measured recall against brute
force.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modtrans.data.store import EmbeddingStore
from modtrans.io import atomic_path, read_json, write_json

logger = logging.getLogger(__name__)

KINDS = ("auto", "flat", "hnsw", "ivf")
EXACT_UP_TO = 50_000  # "auto" builds an exact index up to this many vectors
HNSW_UP_TO = 2_000_000  # then HNSW; IVF beyond
INDEX_FILE, INFO_FILE = "index.faiss", "index.json"


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def choose_kind(n: int, kind: str = "auto") -> str:
    """The index kind for ``n`` vectors: ``kind`` itself unless it is ``auto``."""
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    if kind != "auto":
        return kind
    return "flat" if n <= EXACT_UP_TO else "hnsw" if n <= HNSW_UP_TO else "ivf"


def build_index(vectors: np.ndarray, kind: str = "auto", *, hnsw_m: int = 32,
                ef_search: int = 128, nprobe: int = 16, seed: int = 0) -> tuple[Any, dict]:
    """Build a cosine index over ``vectors`` (n, d).

    Args:
        vectors: the gallery; normalised here.
        kind: ``flat`` (exact), ``hnsw``, ``ivf``, or ``auto`` (by size, see :func:`choose_kind`).
        hnsw_m, ef_search: HNSW graph degree and search breadth.
        nprobe: IVF lists searched per query (of about 4·√n lists).
        seed: IVF k-means seed.

    Returns:
        (the faiss index, the parameters used).
    """
    import faiss

    x = _normalised(vectors)
    n, dim = x.shape
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
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants ≥ 39 points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(nprobe, nlist)
        params.update(nlist=nlist, nprobe=index.nprobe)
    index.add(x)
    return index, params


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, rows) per query, by cosine."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return index.search(_normalised(queries), min(k, index.ntotal))


def recall_against_exact(index: Any, gallery: np.ndarray, queries: np.ndarray, k: int = 10
                         ) -> float:
    """Mean share of the exact top-``k`` that the index returns in its own top-``k``."""
    import faiss

    exact = faiss.IndexFlatIP(gallery.shape[1])
    exact.add(_normalised(gallery))
    _, truth = search(exact, queries, k)
    _, found = search(index, queries, k)
    hits = [len(set(t) & set(f)) / len(t) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits))


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
        return search(self.index, queries, k)


def index_store(store: EmbeddingStore, out_dir: str | Path, *, modality: str = "image",
                kind: str = "auto", n_queries: int = 1000, k: int = 10, seed: int = 0,
                **options: Any) -> dict[str, Any]:
    """Index one modality of a store and measure the index's recall against brute force.

    Recall queries are up to ``n_queries`` embeddings of the other modality when the two
    share a space (same width), else of the same modality.

    Returns:
        The index info written to ``out_dir/index.json``.
    """
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be image or text, got {modality!r}")
    gallery = (store.image_embeddings if modality == "image" else store.text_embeddings).to_numpy()
    start = time.perf_counter()
    index, params = build_index(gallery, kind, seed=seed, **options)
    seconds = time.perf_counter() - start
    other = store.text_embeddings if modality == "image" else store.image_embeddings
    pool = other if other.shape[1] == gallery.shape[1] else (
        store.image_embeddings if modality == "image" else store.text_embeddings)
    rows = np.random.default_rng(seed).permutation(len(pool))[:n_queries]
    recall = recall_against_exact(index, gallery, pool[np.sort(rows)], k)
    import faiss

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / INDEX_FILE) as tmp:
        faiss.write_index(index, os.fspath(tmp))
    info = {
        "store": str(Path(store.root).resolve()), "split": store.split, "modality": modality,
        **params, "build_seconds": round(seconds, 3),
        f"recall@{k}_vs_exact": round(recall, 4), "recall_queries": len(rows),
        "image_encoder": store.image_encoder, "text_encoder": store.text_encoder,
    }  # fmt: skip
    write_json(out_dir / INFO_FILE, info)
    logger.info("indexed %d %s embeddings (%s) in %.1fs; recall@%d vs exact %.3f",
                params["n"], modality, params["kind"], seconds, k, recall)
    return info


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
