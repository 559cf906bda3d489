"""The embedding store: paired image/text embeddings on disk, written shard by shard.

A store is one directory holding one split, in the clip-retrieval layout plus a manifest::

    img_emb/img_emb_{i}.npy                    (n_images_i, image_dim), one row per image
    text_emb/text_emb_{i}.npy                  (n_captions_i, text_dim), one row per caption
    metadata/metadata_{i}.parquet              one row per image: image_id, image_path, caption, ...
    text_metadata/text_metadata_{i}.parquet    one row per caption: image_index (global), caption,
                                               caption_id, truncated (longer than the text
                                               encoder's context), tokens, unknown_tokens
                                               (closed vocabularies), ...
    manifest.json                              rewritten after every complete shard; counts
                                               skipped items, truncated captions and the
                                               share of unknown caption tokens

Every file is written atomically and the manifest lists complete shards only, so a crash in
the middle of a shard leaves a store that reads as of the previous shard and can be resumed.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import re
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import DTypeLike

from modtrans.errors import Interrupted, NonFiniteError
from modtrans.io import atomic_path, load_npy, read_json, read_parquet, save_npy, write_json

logger = logging.getLogger(__name__)

FORMAT = "modtrans-store"
VERSION = 1
MANIFEST = "manifest.json"
PAIRING_IMAGE_INDEX = "text_metadata.image_index"
PAIRING_ROW = "row"
DTYPES = ("float16", "float32")

# shard folder (also the file stem) -> file extension
_KINDS = {"img_emb": "npy", "text_emb": "npy", "metadata": "parquet", "text_metadata": "parquet"}
_MANIFEST_KEYS = (
    "format", "version", "split", "image_encoder", "text_encoder", "image_dim", "text_dim",
    "dtype", "n_images", "n_captions", "shards", "pairing", "source", "complete", "skipped",
)  # fmt: skip
_EMBED_HINT = "run `modtrans embed` first"


def _shard_path(root: Path, kind: str, index: int) -> Path:
    return root / kind / f"{kind}_{index}.{_KINDS[kind]}"


def _shard_indices(root: Path, kind: str) -> list[int]:
    """Indices ``i`` of the ``{kind}/{kind}_{i}.{ext}`` files under ``root``, sorted as integers."""
    folder = root / kind
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"{kind}_(\d+)\.{_KINDS[kind]}")
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := pattern.fullmatch(p.name)))


def _load_manifest(root: Path) -> dict[str, Any]:
    manifest = read_json(root / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{root / MANIFEST} is not a {FORMAT} manifest")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"{root / MANIFEST} lacks {missing}; the store is damaged")
    if manifest["version"] > VERSION:
        raise ValueError(
            f"{root} is a version {manifest['version']} store; this modtrans reads up to "
            f"version {VERSION}: upgrade modtrans"
        )
    for count in ("n_images", "n_captions"):
        if manifest[count] != sum(s[count] for s in manifest["shards"]):
            raise ValueError(f"{root / MANIFEST}: {count} disagrees with its shards; damaged")
    if manifest["pairing"] not in (PAIRING_IMAGE_INDEX, PAIRING_ROW):
        raise ValueError(f"{root / MANIFEST}: unknown pairing {manifest['pairing']!r}")
    return manifest


def _clip_retrieval_manifest(root: Path) -> dict[str, Any]:
    """Describe a clip-retrieval output folder (no manifest.json) as a manifest."""
    image_shards = _shard_indices(root, "img_emb")
    if not image_shards:
        raise FileNotFoundError(
            f"{root} holds no embedding store (no {MANIFEST}, no img_emb/img_emb_{{i}}.npy); "
            f"{_EMBED_HINT}"
        )
    text_shards = _shard_indices(root, "text_emb")
    if text_shards and text_shards != image_shards:
        raise ValueError(
            f"{root}: img_emb shards {image_shards} and text_emb shards {text_shards} differ; "
            "clip-retrieval output must hold one text_emb_{i}.npy per img_emb_{i}.npy"
        )
    shards: list[dict[str, int]] = []
    n_images = n_captions = 0
    image_dim = text_dim = None
    dtype = None
    for i in image_shards:
        img = load_npy(_shard_path(root, "img_emb", i))
        if img.ndim != 2:
            raise ValueError(f"{_shard_path(root, 'img_emb', i)} is not 2-D (shape {img.shape})")
        image_dim, dtype = img.shape[1], str(img.dtype)
        n_rows_text = 0
        if text_shards:
            txt = load_npy(_shard_path(root, "text_emb", i))
            if txt.ndim != 2 or len(txt) != len(img):
                raise ValueError(
                    f"{_shard_path(root, 'text_emb', i)} has shape {txt.shape} but img_emb_{i} has "
                    f"{len(img)} rows; clip-retrieval text and image rows must pair 1:1"
                )
            text_dim, n_rows_text = txt.shape[1], len(txt)
        shards.append({
            "index": i, "n_images": len(img), "n_captions": n_rows_text,
            "first_image_row": n_images, "first_caption_row": n_captions,
        })  # fmt: skip
        n_images += len(img)
        n_captions += n_rows_text
    return {
        "format": "clip-retrieval", "version": VERSION, "split": "all",
        "image_encoder": "unknown", "text_encoder": "unknown" if text_shards else None,
        "image_dim": image_dim, "text_dim": text_dim, "dtype": dtype,
        "n_images": n_images, "n_captions": n_captions, "shards": shards,
        "pairing": PAIRING_ROW, "source": {"clip_retrieval": str(root)},
        "complete": True, "skipped": [],
    }  # fmt: skip


class ShardedArray:
    """A read-only row-wise concatenation of 2-D arrays (memory-mapped shards), never copied whole.

    Indexing with an int, a slice, or an integer (or boolean) array reads just those rows and
    returns an in-memory ``np.ndarray``; integer arrays may be any shape (rows are gathered
    as ``np.take`` would, so ``a[idx].shape == idx.shape + (dim,)``).
    """

    def __init__(self, shards: Sequence[np.ndarray]) -> None:
        """Args:
        shards: 2-D arrays with the same width and dtype, in row order.
        """
        if not shards:
            raise ValueError("a ShardedArray needs at least one shard")
        if any(s.ndim != 2 for s in shards) or len({(s.shape[1], s.dtype) for s in shards}) != 1:
            layout = [(s.shape, str(s.dtype)) for s in shards]
            raise ValueError(f"shards must be 2-D with one width and dtype, got {layout}")
        self._shards = tuple(shards)
        self._offsets = np.cumsum([0, *(len(s) for s in shards)], dtype=np.int64)

    @property
    def shards(self) -> tuple[np.ndarray, ...]:
        """The backing arrays (``np.memmap`` when read from a store)."""
        return self._shards

    @property
    def shape(self) -> tuple[int, int]:
        return int(self._offsets[-1]), int(self._shards[0].shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self._shards[0].dtype

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, dtype={self.dtype}, shards={len(self._shards)})"

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            if not -n <= key < n:
                raise IndexError(f"row {key} is out of range for {n} rows")
            return self._take(np.array([int(key) % n]))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self._read_range(start, stop)
            return self._take(np.arange(start, stop, step))
        if isinstance(key, tuple):
            raise TypeError("ShardedArray supports row indexing only; index columns afterwards")
        index = np.asarray(key)
        if index.dtype == bool:
            if index.shape != (n,):
                raise IndexError(f"boolean index of shape {index.shape} for {n} rows")
            return self._take(np.flatnonzero(index))
        if index.size == 0:
            index = index.astype(np.int64)
        if not np.issubdtype(index.dtype, np.integer):
            raise TypeError(f"cannot index rows with {index.dtype} values; use integers")
        return self._take(index)

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(stop - start, 0), self.shape[1]), dtype=self.dtype)
        for shard, lo, hi in zip(self._shards, self._offsets[:-1], self._offsets[1:], strict=True):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                out[a - start : b - start] = shard[a - lo : b - lo]
        return out

    def _take(self, index: np.ndarray) -> np.ndarray:
        n = len(self)
        flat = index.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < -n or flat.max() >= n):
            raise IndexError(f"row indices {flat.min()}..{flat.max()} out of range for {n} rows")
        flat = np.where(flat < 0, flat + n, flat)
        out = np.empty((flat.size, self.shape[1]), dtype=self.dtype)
        owner = np.searchsorted(self._offsets, flat, side="right") - 1
        for s in np.unique(owner):
            sel = owner == s
            out[sel] = self._shards[s][flat[sel] - self._offsets[s]]
        return out.reshape(*index.shape, self.shape[1])

    def to_numpy(self, dtype: DTypeLike | None = np.float32) -> np.ndarray:
        """Read every row into one in-memory array.

        Args:
            dtype: result dtype (``None`` keeps the stored one).

        Returns:
            ``(len(self), dim)`` array.
        """
        out = np.empty(self.shape, dtype=self.dtype if dtype is None else dtype)
        for shard, lo, hi in zip(self._shards, self._offsets[:-1], self._offsets[1:], strict=True):
            out[lo:hi] = shard
        return out

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        return self.to_numpy(dtype)


class ImageCaptionRows(NamedTuple):
    """Caption rows per image, CSR style: image ``i`` owns ``rows[indptr[i]:indptr[i + 1]]``."""

    indptr: np.ndarray
    rows: np.ndarray

    def of(self, image_row: int) -> np.ndarray:
        """Caption rows of one image, ascending."""
        return self.rows[self.indptr[image_row] : self.indptr[image_row + 1]]


class EmbeddingStore:
    """Read an embedding store written by :class:`StoreWriter`, or a clip-retrieval output folder.

    A folder without ``manifest.json`` is read as clip-retrieval output, assuming: shards
    ``img_emb/img_emb_{i}.npy``, ``text_emb/text_emb_{i}.npy`` and
    ``metadata/metadata_{i}.parquet`` are ordered by the integer ``i``; image and text rows pair
    1:1 (row k of text_emb is the caption of row k of img_emb; pairing ``"row"``); metadata rows
    align with image rows; encoders are ``"unknown"`` and the split is ``"all"``. clip-retrieval
    may run image-only: then ``text_emb/`` is absent and asking for text raises
    ``FileNotFoundError``.

    Embeddings are memory-mapped; metadata is read on demand.
    """

    def __init__(self, root: str | os.PathLike, *, skip_bad_rows: bool = False) -> None:
        """Args:
        root: the store directory.
        skip_bad_rows: log embedding rows holding NaN or infinite values and record them in
            :attr:`bad_rows` instead of raising; readers such as
            :func:`~modtrans.data.pairs.load_pairs` leave them out.
        """
        self.root = Path(root)
        self.skip_bad_rows = skip_bad_rows
        #: Non-finite rows found so far, by kind (``img_emb``, ``text_emb``): global row numbers.
        self.bad_rows: dict[str, np.ndarray] = {}
        if not self.root.is_dir():
            raise FileNotFoundError(f"embedding store {self.root} does not exist; {_EMBED_HINT}")
        if (self.root / MANIFEST).is_file():
            self.manifest: dict[str, Any] = _load_manifest(self.root)
        else:
            self.manifest = _clip_retrieval_manifest(self.root)
        if not self.manifest["shards"]:
            raise FileNotFoundError(
                f"embedding store {self.root} holds no complete shard yet; {_EMBED_HINT} "
                "(with --resume to continue an interrupted run)"
            )
        if not self.manifest["complete"]:
            logger.warning(
                "embedding store %s is incomplete (%d images in %d shards); finish it with "
                "`modtrans embed --resume`",
                self.root, self.n_images, len(self.manifest["shards"]),
            )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"EmbeddingStore({str(self.root)!r}, split={self.split!r}, n_images={self.n_images}, "
            f"n_captions={self.n_captions})"
        )

    @property
    def split(self) -> str:
        return self.manifest["split"]

    @property
    def image_encoder(self) -> str:
        return self.manifest["image_encoder"]

    @property
    def text_encoder(self) -> str:
        self._require_text()
        return self.manifest["text_encoder"]

    @property
    def image_dim(self) -> int:
        return self.manifest["image_dim"]

    @property
    def text_dim(self) -> int:
        self._require_text()
        return self.manifest["text_dim"]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    @property
    def n_images(self) -> int:
        return self.manifest["n_images"]

    @property
    def n_captions(self) -> int:
        return self.manifest["n_captions"]

    @property
    def has_text(self) -> bool:
        """False for image-only clip-retrieval output."""
        return self.manifest["text_dim"] is not None

    def _require_text(self) -> None:
        if not self.has_text:
            raise FileNotFoundError(
                f"{self.root} has no text_emb/ (clip-retrieval ran image-only); embed the "
                "captions too (clip-retrieval with captions, or `modtrans embed`)"
            )

    @functools.cached_property
    def image_embeddings(self) -> ShardedArray:
        """All image embeddings, ``(n_images, image_dim)``, memory-mapped."""
        return self._load_shards("img_emb", "n_images", self.image_dim)

    @functools.cached_property
    def text_embeddings(self) -> ShardedArray:
        """All caption embeddings, ``(n_captions, text_dim)``, memory-mapped."""
        return self._load_shards("text_emb", "n_captions", self.text_dim)

    def _load_shards(self, kind: str, count: str, dim: int) -> ShardedArray:
        arrays = []
        for shard in self.manifest["shards"]:
            path = _shard_path(self.root, kind, shard["index"])
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; the store is damaged, re-embed it")
            array = load_npy(path)
            expected = (shard[count], dim)
            if array.shape != expected or array.dtype != self.dtype:
                raise ValueError(
                    f"{path} has shape {array.shape} and dtype {array.dtype}, expected {expected} "
                    f"and {self.dtype}; the store is damaged or mixes runs, re-embed it"
                )
            arrays.append(array)
        self._check_finite(kind, [len(a) for a in arrays])
        return ShardedArray(arrays)

    def _check_finite(self, kind: str, lengths: list[int]) -> None:
        """Find rows with NaN or infinite values (read once, in chunks); raise naming the
        store, split and shards, or record them when ``skip_bad_rows``.

        Each shard is scanned through a mapping of its own, closed after the scan, so the
        pages it read do not stay in this process's resident memory: opening a store larger
        than memory keeps memory flat.
        """
        found, offset = {}, 0
        for shard, length in zip(self.manifest["shards"], lengths, strict=True):
            path = _shard_path(self.root, kind, shard["index"])
            rows = _non_finite_rows(load_npy(path))
            if rows.size:
                found[path.name] = rows + offset
            offset += length
        if not found:
            return
        total = sum(len(r) for r in found.values())
        where = "; ".join(f"{name}: {len(r)} rows (first {r[:5].tolist()})"
                          for name, r in found.items())
        if not self.skip_bad_rows:
            raise NonFiniteError(
                f"store {self.root} (split {self.split!r}) has {total} {kind} rows with NaN or "
                f"infinite values ({where}); re-embed the split, or pass --skip-bad-rows to "
                "leave those rows out")
        self.bad_rows[kind] = np.concatenate(list(found.values()))
        logger.warning("store %s (split %r): leaving out %d %s rows with NaN or infinite "
                       "values (%s)", self.root, self.split, total, kind, where)

    def _read_tables(self, kind: str, count: str) -> pa.Table:
        tables = []
        for shard in self.manifest["shards"]:
            path = _shard_path(self.root, kind, shard["index"])
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; {kind} is needed to read metadata")
            table = read_parquet(path)
            if table.num_rows != shard[count]:
                raise ValueError(
                    f"{path} has {table.num_rows} rows, expected {shard[count]} (one per "
                    f"{'image' if kind == 'metadata' else 'caption'} row)"
                )
            tables.append(table)
        return pa.concat_tables(tables, promote_options="default")

    def image_metadata(self) -> pa.Table:
        """Returns: one row per image row (image_id, image_path, caption, extra columns)."""
        return self._read_tables("metadata", "n_images")

    def text_metadata(self) -> pa.Table:
        """Returns: one row per caption row, with ``image_index`` (global image row).

        For clip-retrieval output: ``image_index`` is the row itself, plus ``caption`` when the
        image metadata has it.
        """
        self._require_text()
        if self.manifest["pairing"] == PAIRING_IMAGE_INDEX:
            return self._read_tables("text_metadata", "n_captions")
        columns: dict[str, Any] = {"image_index": pa.array(self.caption_image_index)}
        if _shard_indices(self.root, "metadata"):
            meta = self.image_metadata()
            if "caption" in meta.column_names:
                columns["caption"] = meta.column("caption")
        return pa.table(columns)

    @functools.cached_property
    def caption_image_index(self) -> np.ndarray:
        """For each caption row, the row of its image (read-only int64, ``(n_captions,)``)."""
        self._require_text()
        if self.manifest["pairing"] == PAIRING_ROW:
            index = np.arange(self.n_captions, dtype=np.int64)
        else:
            paths = [
                _shard_path(self.root, "text_metadata", s["index"]) for s in self.manifest["shards"]
            ]
            parts = [read_parquet(p, ["image_index"]).column(0).to_numpy() for p in paths]
            index = np.concatenate(parts).astype(np.int64)
        index.flags.writeable = False
        return index

    def image_caption_rows(self) -> ImageCaptionRows:
        """Returns: the caption rows of every image, CSR style (``indptr``, ``rows``)."""
        index = self.caption_image_index
        indptr = np.zeros(self.n_images + 1, dtype=np.int64)
        np.cumsum(np.bincount(index, minlength=self.n_images), out=indptr[1:])
        return ImageCaptionRows(indptr, np.argsort(index, kind="stable").astype(np.int64))


def _non_finite_rows(array: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """The rows of ``array`` holding a NaN or an infinity, read ``chunk`` rows at a time."""
    bad = [start + np.flatnonzero(~np.isfinite(array[start:start + chunk]).all(axis=1))
           for start in range(0, len(array), chunk)]
    return np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, np.int64)


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a store (a manifest, or clip-retrieval ``img_emb/`` shards)."""
    path = Path(path)
    return (path / MANIFEST).is_file() or bool(_shard_indices(path, "img_emb"))


def open_store(data: str | os.PathLike, split: str | None = None, *,
               skip_bad_rows: bool = False) -> EmbeddingStore:
    """Open one split's store, given the store itself or a dataset root with one per split.

    Args:
        data: a store directory, or a directory holding ``<split>/`` stores.
        split: the split wanted; ``None`` accepts ``data`` itself whatever its split.
        skip_bad_rows: see :class:`EmbeddingStore`.

    Returns:
        The opened store.
    """
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"{data} does not exist; {_EMBED_HINT}")
    if split is not None and is_store(data / split):
        return EmbeddingStore(data / split, skip_bad_rows=skip_bad_rows)
    if is_store(data):
        store = EmbeddingStore(data, skip_bad_rows=skip_bad_rows)
        if split is None or store.split == split:
            return store
        available = [store.split]
    else:
        available = sorted(p.name for p in data.iterdir() if p.is_dir() and is_store(p))
    if not available:
        raise FileNotFoundError(
            f"no embedding store in {data} (expected {MANIFEST}, img_emb/, or one store per split "
            f"in subdirectories); {_EMBED_HINT}"
        )
    wanted = "a split" if split is None else f"split {split!r}"
    raise FileNotFoundError(f"{data} has no store for {wanted}; available splits: {available}")


def _as_table(meta: pa.Table | Sequence[dict[str, Any]], name: str) -> pa.Table:
    if isinstance(meta, pa.Table):
        return meta
    if isinstance(meta, Sequence):
        return pa.Table.from_pylist(list(meta))
    raise TypeError(f"{name} must be a pyarrow Table or a list of dicts, got {type(meta).__name__}")


def _write_table(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class StoreWriter:
    """Write a store shard by shard; after a crash it reads as of the last complete shard.

    Use as a context manager: a clean exit marks the store complete, an exception leaves it
    incomplete and resumable. Skipped items recorded after the last complete shard are saved
    with the next shard (or on close); after a crash they are simply tried again.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str,
        image_encoder: str,
        text_encoder: str,
        image_dim: int,
        text_dim: int,
        dtype: str = "float16",
        source: dict[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        """Args:
        root: store directory (created if needed; must be empty unless resuming).
        split: the split this store holds ("train", "val", ...).
        image_encoder, text_encoder: encoder spec strings.
        image_dim, text_dim: embedding widths.
        dtype: "float16" or "float32", the stored dtype.
        source: what was embedded (free JSON-able dict, e.g. the captions file).
        resume: continue an existing store after its last complete shard.
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        for name, dim in (("image_dim", image_dim), ("text_dim", text_dim)):
            if not isinstance(dim, (int, np.integer)) or dim <= 0:
                raise ValueError(f"{name} must be a positive int, got {dim!r}")
        if not split:
            raise ValueError("split must be a non-empty string")
        self.root = Path(root)
        self._dtype = np.dtype(dtype)
        self._closed = False
        self._done_ids: set[Any] = set()
        self._schemas: dict[str, pa.Schema | None] = {"metadata": None, "text_metadata": None}
        settings = {
            "split": split, "image_encoder": image_encoder, "text_encoder": text_encoder,
            "image_dim": int(image_dim), "text_dim": int(text_dim), "dtype": dtype,
        }  # fmt: skip
        if resume and (self.root / MANIFEST).is_file():
            self._manifest = self._reopen(settings, source or {})
        else:
            self._check_empty(resume)
            self._manifest = {
                "format": FORMAT, "version": VERSION, **settings, "n_images": 0, "n_captions": 0,
                "shards": [], "pairing": PAIRING_IMAGE_INDEX, "source": dict(source or {}),
                "complete": False, "skipped": [],
            }  # fmt: skip
        self._skipped_at = {e["item"]: i for i, e in enumerate(self._manifest["skipped"])}
        self._write_manifest()
        logger.info(
            "writing embedding store %s (%s, %d images already done)",
            self.root, split, self.n_images_done,
        )  # fmt: skip

    def _check_empty(self, resume: bool) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise FileExistsError(f"{self.root} exists and is not a directory")
        if self.root.is_dir() and any(self.root.iterdir()):
            if resume:
                raise FileExistsError(
                    f"cannot resume {self.root}: it is not empty but holds no {MANIFEST}; "
                    "choose a new directory"
                )
            raise FileExistsError(
                f"{self.root} already holds files; pass --resume (resume=True) to continue the "
                "store in it, or choose a new directory"
            )

    def _reopen(self, settings: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
        manifest = _load_manifest(self.root)
        mismatches = [
            f"{key} is {manifest[key]!r} in the store but {value!r} in this run"
            for key, value in settings.items()
            if manifest[key] != value
        ]
        if mismatches:
            raise ValueError(
                f"cannot resume {self.root}: " + "; ".join(mismatches)
                + ". Use the store's settings, or choose a new directory"
            )  # fmt: skip
        if source and source != manifest["source"]:
            logger.warning(
                "resuming %s with source %s; the store was started from %s (kept)",
                self.root, source, manifest["source"],
            )  # fmt: skip
        self._drop_partial_shard(len(manifest["shards"]))
        for shard in manifest["shards"]:
            paths = {kind: _shard_path(self.root, kind, shard["index"]) for kind in _KINDS}
            missing = [str(p) for p in paths.values() if not p.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"cannot resume {self.root}: {missing} missing; the store is damaged, "
                    "choose a new directory"
                )
            ids = read_parquet(paths["metadata"], ["image_id"]).column(0)
            self._done_ids.update(ids.to_pylist())
            for kind in self._schemas:
                self._schemas[kind] = self._unified_schema(kind, pq.read_schema(paths[kind]))
        manifest["complete"] = False
        return manifest

    def _drop_partial_shard(self, n_complete: int) -> None:
        """Delete shard files (and temporary files) beyond the manifest's complete shards."""
        for kind in _KINDS:
            for i in _shard_indices(self.root, kind):
                if i >= n_complete:
                    path = _shard_path(self.root, kind, i)
                    logger.info("removing %s, left by an interrupted shard", path)
                    path.unlink()
            if (self.root / kind).is_dir():
                for tmp in (self.root / kind).glob(".*.tmp"):
                    tmp.unlink()

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest as it stands."""
        return copy.deepcopy(self._manifest)

    @property
    def n_images_done(self) -> int:
        return self._manifest["n_images"]

    @property
    def n_captions_done(self) -> int:
        return self._manifest["n_captions"]

    @property
    def n_shards(self) -> int:
        return len(self._manifest["shards"])

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """A copy of the skipped items, ``{"item", "reason"}`` each."""
        return copy.deepcopy(self._manifest["skipped"])

    @property
    def done_image_ids(self) -> AbstractSet[Any]:
        """``image_id`` values of every image in a complete shard (read-only view)."""
        return self._done_ids

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:
            self._closed = True
            if issubclass(exc_type, Interrupted):  # its message says what was kept
                return
            logger.warning(
                "embedding store %s left incomplete at %d shards (%d images) by %s; once its "
                "cause is fixed, the same command with --resume continues it",
                self.root, self.n_shards, self.n_images_done, exc_type.__name__,
            )  # fmt: skip

    def close(self) -> None:
        """Mark the store complete and stop writing (a no-op when already closed)."""
        if self._closed:
            return
        if not self._manifest["shards"]:
            logger.warning("embedding store %s was closed without any shard", self.root)
        self._manifest["complete"] = True
        self._write_manifest()
        self._closed = True
        logger.info(
            "embedding store %s complete: %d images, %d captions, %d skipped",
            self.root, self.n_images_done, self.n_captions_done, len(self._manifest["skipped"]),
        )  # fmt: skip

    def record_skipped(self, item: str | int | os.PathLike, reason: str, *,
                       unknown_tokens: int | None = None) -> None:
        """Note an item left out (unreadable image, empty caption, ...) in the manifest.

        An item already recorded (say, before a resume retried it) keeps one entry, the latest.

        Args:
            item: the image path or caption id.
            reason: why it was skipped.
            unknown_tokens: a caption left out for holding only tokens unknown to the text
                encoder: how many (counted in the manifest's ``unknown_token_share``).
        """
        self._check_open()
        entry = {"item": item if isinstance(item, int) else os.fspath(item), "reason": str(reason)}
        if unknown_tokens is not None:
            entry["unknown_tokens"] = int(unknown_tokens)
        skipped = self._manifest["skipped"]
        if entry["item"] in self._skipped_at:
            skipped[self._skipped_at[entry["item"]]] = entry
        else:
            self._skipped_at[entry["item"]] = len(skipped)
            skipped.append(entry)
        logger.debug("skipped %s: %s", entry["item"], reason)

    def write_shard(
        self,
        img_emb: np.ndarray,
        text_emb: np.ndarray,
        image_meta: pa.Table | Sequence[dict[str, Any]],
        text_meta: pa.Table | Sequence[dict[str, Any]],
    ) -> int:
        """Append one shard, atomically, then record it in the manifest.

        Args:
            img_emb: ``(n_images, image_dim)`` floating-point embeddings.
            text_emb: ``(n_captions, text_dim)`` floating-point embeddings.
            image_meta: one row per image; needs ``image_id`` (unique in the store).
            text_meta: one row per caption; needs ``caption`` and ``image_index``, the caption's
                image row within this shard (0..n_images-1), stored as a global row.

        Returns:
            The shard's index.
        """
        self._check_open()
        img = self._check_embeddings("img_emb", img_emb, self._manifest["image_dim"])
        txt = self._check_embeddings("text_emb", text_emb, self._manifest["text_dim"])
        if len(img) == 0:
            raise ValueError("a shard needs at least one image")
        image_table = _as_table(image_meta, "image_meta")
        text_table = _as_table(text_meta, "text_meta")
        ids = self._check_image_meta(image_table, len(img))
        local = self._check_text_meta(text_table, len(txt), len(img))
        first_image_row, first_caption_row = self.n_images_done, self.n_captions_done
        text_table = text_table.set_column(
            text_table.schema.get_field_index("image_index"),
            "image_index",
            pa.array(local + first_image_row, type=pa.int64()),
        )
        schemas = {
            "metadata": self._unified_schema("metadata", image_table.schema),
            "text_metadata": self._unified_schema("text_metadata", text_table.schema),
        }

        index = self.n_shards
        save_npy(_shard_path(self.root, "img_emb", index), img)
        save_npy(_shard_path(self.root, "text_emb", index), txt)
        _write_table(_shard_path(self.root, "metadata", index), image_table)
        _write_table(_shard_path(self.root, "text_metadata", index), text_table)
        self._manifest["shards"].append({
            "index": index, "n_images": len(img), "n_captions": len(txt),
            "first_image_row": first_image_row, "first_caption_row": first_caption_row,
        })  # fmt: skip
        if "truncated" in text_table.column_names:  # captions longer than the encoder's context
            self._manifest["shards"][-1]["n_truncated"] = sum(
                bool(t) for t in text_table.column("truncated").to_pylist())
            self._manifest["captions_truncated"] = sum(
                s.get("n_truncated", 0) for s in self._manifest["shards"])
        if "unknown_tokens" in text_table.column_names:  # a closed-vocabulary text encoder
            shard = self._manifest["shards"][-1]
            shard["n_tokens"] = sum(text_table.column("tokens").to_pylist())
            shard["n_unknown_tokens"] = sum(text_table.column("unknown_tokens").to_pylist())
        self._manifest["n_images"] += len(img)
        self._manifest["n_captions"] += len(txt)
        self._write_manifest()
        self._done_ids.update(ids)
        self._schemas.update(schemas)
        logger.debug(
            "wrote shard %d of %s: %d images, %d captions", index, self.root, len(img), len(txt)
        )
        return index

    def append_store(self, other: EmbeddingStore) -> int:
        """Append the complete shards of a store embedded with the same settings (a work unit's),
        in order, and its skipped items; a shard whose images are already here (appended
        before an interruption) is passed over, so appending again never duplicates a row.

        Returns:
            The number of shards appended.
        """
        self._check_open()
        settings = ("image_encoder", "text_encoder", "image_dim", "text_dim", "dtype")
        clashes = [f"{k} {other.manifest[k]!r} (here {self._manifest[k]!r})" for k in settings
                   if other.manifest[k] != self._manifest[k]]
        if clashes:
            raise ValueError(f"cannot append {other.root}: its {'; '.join(clashes)}")
        images, texts = other.image_embeddings.shards, other.text_embeddings.shards
        appended = 0
        for shard, img, txt in zip(other.manifest["shards"], images, texts, strict=True):
            meta = read_parquet(_shard_path(other.root, "metadata", shard["index"]))
            ids = meta.column("image_id").to_pylist()
            if ids[0] in self._done_ids:
                continue
            text_meta = read_parquet(_shard_path(other.root, "text_metadata", shard["index"]))
            local = text_meta.column("image_index").to_numpy() - shard["first_image_row"]
            text_meta = text_meta.set_column(text_meta.schema.get_field_index("image_index"),
                                             "image_index", pa.array(local, type=pa.int64()))
            self.write_shard(img, txt, meta, text_meta)
            appended += 1
        for entry in other.manifest["skipped"]:
            self.record_skipped(entry["item"], entry["reason"],
                                unknown_tokens=entry.get("unknown_tokens"))
        return appended

    def note(self, key: str, value: Any) -> None:
        """Keep a JSON-able ``value`` under ``key`` in the manifest, written at once."""
        self._check_open()
        if key in _MANIFEST_KEYS:
            raise ValueError(f"{key!r} is one of the manifest's own keys")
        self._manifest[key] = value
        self._write_manifest()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the writer of {self.root} is closed")

    def _check_embeddings(self, name: str, array: np.ndarray, dim: int) -> np.ndarray:
        array = np.asarray(array)
        if array.ndim != 2 or array.shape[1] != dim:
            raise ValueError(f"{name} must have shape (n, {dim}), got {array.shape}")
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{name} must be floating-point, got {array.dtype}")
        bad = ~np.isfinite(array).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{name} has NaN or inf in {int(bad.sum())} row(s) (first: row "
                f"{int(np.argmax(bad))}); fix the encoder or record those items as skipped"
            )
        with np.errstate(over="ignore"):
            stored = np.ascontiguousarray(array, dtype=self._dtype)
        if stored.dtype != array.dtype and not np.isfinite(stored).all():
            raise ValueError(f"{name} overflows {self._dtype}; store as float32 instead")
        return stored

    def _check_image_meta(self, table: pa.Table, n_images: int) -> list[Any]:
        if table.num_rows != n_images:
            raise ValueError(f"image_meta has {table.num_rows} rows for {n_images} images")
        if "image_id" not in table.column_names:
            raise ValueError(f"image_meta needs an image_id column, has {table.column_names}")
        ids = table.column("image_id").to_pylist()
        if None in ids:
            raise ValueError("image_meta.image_id has nulls")
        if len(set(ids)) != len(ids):
            raise ValueError("image_meta.image_id has duplicates within the shard")
        repeated = [i for i in ids if i in self._done_ids]
        if repeated:
            raise ValueError(
                f"{len(repeated)} image_id(s) are already in the store (e.g. {repeated[:3]}); "
                "skip writer.done_image_ids when resuming"
            )
        return ids

    def _check_text_meta(self, table: pa.Table, n_captions: int, n_images: int) -> np.ndarray:
        if table.num_rows != n_captions:
            raise ValueError(f"text_meta has {table.num_rows} rows for {n_captions} captions")
        missing = [c for c in ("image_index", "caption") if c not in table.column_names]
        if missing:
            raise ValueError(f"text_meta needs columns {missing}, has {table.column_names}")
        column = table.column("image_index")
        if not pa.types.is_integer(column.type) or column.null_count:
            raise ValueError(
                f"text_meta.image_index must be integers without nulls ({column.type})"
            )
        local = column.to_numpy().astype(np.int64)
        if local.size and (local.min() < 0 or local.max() >= n_images):
            raise ValueError(
                f"text_meta.image_index spans {local.min()}..{local.max()} but must index this "
                f"shard's {n_images} images (0..{n_images - 1})"
            )
        return local

    def _unified_schema(self, kind: str, schema: pa.Schema) -> pa.Schema:
        """Returns: the store's ``kind`` schema widened by ``schema``; ValueError if they clash."""
        known = self._schemas[kind]
        if known is None:
            return schema
        if set(known.names) != set(schema.names):
            raise ValueError(
                f"{kind} columns {schema.names} differ from the store's {known.names}; every "
                "shard needs the same columns"
            )
        try:
            return pa.unify_schemas([known, schema], promote_options="default")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(f"{kind} column types clash with earlier shards: {e}") from e

    def _write_manifest(self) -> None:
        shards, skipped = self._manifest["shards"], self._manifest["skipped"]
        if any("n_tokens" in s for s in shards) or any("unknown_tokens" in e for e in skipped):
            # captions skipped for having no known word count too: they are the data's
            left_out = sum(e.get("unknown_tokens", 0) for e in skipped)
            total = sum(s.get("n_tokens", 0) for s in shards) + left_out
            unknown = sum(s.get("n_unknown_tokens", 0) for s in shards) + left_out
            self._manifest["unknown_token_share"] = round(unknown / max(total, 1), 6)
        write_json(self.root / MANIFEST, self._manifest)
