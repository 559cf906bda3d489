"""Encode captioned images with an encoder pair and write an embedding store, shard by shard.

DataLoader workers read, decode and preprocess images (each encoder's own
``image_transform``); the main process runs the models and writes shards atomically. Every
reader (world, COCO, folder, table, webdataset) goes through this one path.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from modtrans.data.records import DECODE_ERRORS, CaptionSource, Record
from modtrans.data.store import StoreWriter
from modtrans.encoders.base import Encoder
from modtrans.errors import Interrupted, StopOnSignal
from modtrans.io import read_parquet

logger = logging.getLogger(__name__)

#: Above this share of unknown caption tokens, ``embed`` warns that the text encoder's
#: vocabulary does not fit the data.
UNKNOWN_WARN_SHARE = 0.05


class BadInputError(ValueError):
    """An unreadable image or an empty caption met with ``strict=True``."""


def load_sidecar_metadata(captions_file: Path) -> dict[int, dict]:
    """Per-image extra columns from ``ground_truth.parquet`` beside the captions file, if any.

    Nested columns (the world's object lists) are kept as JSON-compatible python values.
    """
    path = captions_file.parent / "ground_truth.parquet"
    if not path.is_file():
        return {}
    rows = read_parquet(path).to_pylist()
    return {int(r["image_id"]): {k: v for k, v in r.items() if k != "image_id"} for r in rows}


class _DecodedRecords(IterableDataset):
    """Each worker reads its part of the source and yields ``(record, pixels, error)``.

    Records already in the store (``done``) are passed over; image bytes are dropped after
    decoding so only pixels travel back to the main process.
    """

    def __init__(self, source: CaptionSource, transform: Any, done: frozenset) -> None:
        self.source, self.transform, self.done = source, transform, done

    def __iter__(self) -> Iterator[tuple[Record, torch.Tensor | None, str | None]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        for record in self.source.records(worker, n_workers):
            if record.image_id in self.done:
                continue
            pixels, error = None, record.error
            if error is None:
                try:
                    pixels = self.transform(record.open_image())
                except FileNotFoundError:
                    error = "missing"
                except DECODE_ERRORS as e:
                    error = f"unreadable ({e})"
            if isinstance(record.image, bytes):
                record = dataclasses.replace(record, image=b"")
            yield record, pixels, error


def _collate(items: list[tuple[Record, torch.Tensor | None, str | None]]) -> dict[str, Any]:
    """Stack the decoded images (in the worker); keep the failures apart."""
    good = [(r, p) for r, p, e in items if e is None]
    return {
        "records": [r for r, _ in good],
        "pixels": torch.stack([p for _, p in good]) if good else None,
        "failed": [(r, e) for r, _, e in items if e is not None],
    }


def decoded_batches(data: CaptionSource, transform: Any, *, batch_size: int, workers: int,
                    done: frozenset = frozenset()) -> DataLoader:
    """Batches ``{"records", "pixels", "failed"}`` of a source, read, decoded and
    preprocessed by ``workers`` DataLoader processes; images in ``done`` are passed over."""
    return DataLoader(_DecodedRecords(data, transform, done), batch_size=batch_size,
                      num_workers=workers, collate_fn=_collate,
                      worker_init_fn=_exit_with_parent if workers else None)


def _exit_with_parent(worker_id: int) -> None:
    """Ask Linux to kill this worker when its parent dies (even by kill -9), so no decoder
    process outlives the job; elsewhere PyTorch's own watchdog ends it later."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the job, not its decoders
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class _ShardBuffer:
    """Embedded images waiting to be written, one entry per image."""

    def __init__(self) -> None:
        self.items: list[tuple[np.ndarray, np.ndarray, dict, list[dict]]] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, image_vec: np.ndarray, text_vecs: np.ndarray, image_meta: dict,
            text_meta: list[dict]) -> None:
        self.items.append((image_vec, text_vecs, image_meta, text_meta))

    def write(self, writer: StoreWriter, n: int) -> None:
        """Write the first ``n`` images as one shard."""
        taken, self.items = self.items[:n], self.items[n:]
        text_meta = [
            {**meta, "image_index": i} for i, item in enumerate(taken) for meta in item[3]
        ]
        writer.write_shard(
            np.stack([item[0] for item in taken]).astype(np.float32),
            np.concatenate([item[1] for item in taken]).astype(np.float32),
            pa.Table.from_pylist([item[2] for item in taken]),
            pa.Table.from_pylist(text_meta),
        )


def embed_captioned_images(
    data: CaptionSource,
    image_encoder: Encoder,
    text_encoder: Encoder,
    out_dir: str | Path,
    *,
    split: str,
    source: dict,
    sidecar: dict[Any, dict] | None = None,
    shard_size: int = 10_000,
    dtype: str = "float16",
    batch_size: int = 256,
    workers: int = 0,
    resume: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> dict:
    """Embed every image and caption of a source into a store at ``out_dir``.

    A missing, corrupt or truncated image, an empty caption, or a caption made of nothing
    but tokens the text encoder does not know, is skipped, counted and listed in the
    manifest and the returned summary (or raises :class:`BadInputError` when ``strict``).
    A text encoder with a closed vocabulary also counts each caption's unknown tokens
    (``text_metadata``, the manifest's ``unknown_token_share``); above
    :data:`UNKNOWN_WARN_SHARE` a warning names the most frequent unknown words. With
    ``resume`` an interrupted run continues after its last complete shard: images already
    stored are passed over, so there is no duplicate and no gap.

    Args:
        data: the captioned images, any reader of :mod:`modtrans.data.sources`.
        image_encoder, text_encoder: the pair; they may come from different specs.
        out_dir: the store directory.
        split: recorded in the manifest (train, val, ...).
        source: recorded in the manifest (what was embedded).
        sidecar: extra per-image metadata keyed by image id (e.g. the world's ground truth).
        shard_size: images per shard.
        dtype: "float16" or "float32" on disk.
        batch_size: images per encoder batch (and per DataLoader batch).
        workers: DataLoader worker processes that read, decode and preprocess (0: in-process).
        resume: continue an existing store instead of refusing to overwrite it.
        strict: fail on the first bad image or caption instead of skipping it.
        progress: show a progress bar (rate and ETA).

    Returns:
        A summary: images and captions written, skipped items with reasons, seconds.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    if workers < 0:
        raise ValueError(f"workers must be at least 0, got {workers}")
    if image_encoder.image_transform is None:
        raise ValueError(f"{image_encoder.spec} cannot encode images; give an image encoder")
    sidecar = sidecar or {}
    start = time.perf_counter()
    with StoreWriter(
        out_dir,
        split=split,
        image_encoder=image_encoder.spec,
        text_encoder=text_encoder.spec,
        image_dim=image_encoder.dim,
        text_dim=text_encoder.dim,
        dtype=dtype,
        source=source,
        resume=resume,
    ) as writer:
        done = frozenset(writer.done_image_ids)
        before = writer.n_images_done, writer.n_captions_done
        if done:
            logger.info("resuming: %d images already embedded", len(done))
        loader = decoded_batches(data, image_encoder.image_transform, batch_size=batch_size,
                                 workers=workers, done=done)
        buffer, unknown = _ShardBuffer(), Counter()
        total = max(len(data) - len(done), 0) or None
        with StopOnSignal() as stop, tqdm(total=total, desc=f"embed {split}", unit="img",
                                          disable=not progress) as bar:
            for batch in loader:
                for record, reason in batch["failed"]:
                    _skip(writer, record.location, reason, strict)
                _embed_batch(batch, image_encoder, text_encoder, buffer, writer, sidecar,
                             batch_size, strict, unknown)
                while len(buffer) >= shard_size:
                    buffer.write(writer, shard_size)
                bar.update(len(batch["records"]) + len(batch["failed"]))
                if stop.received:
                    break
        if len(buffer):
            buffer.write(writer, len(buffer))
        if stop.received:
            raise Interrupted(f"{stop.received} received: stopped with {writer.n_images_done} "
                              f"images stored in {out_dir}; rerun with --resume to continue")
        long = writer.manifest.get("captions_truncated", 0)
        unknown_share = writer.manifest.get("unknown_token_share")
        written_images = writer.n_images_done - before[0]
        written_captions = writer.n_captions_done - before[1]
        skipped = list(writer.skipped)
    summary = {
        "store": str(out_dir),
        "split": split,
        "images_written": written_images,
        "captions_written": written_captions,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if unknown_share is not None:
        summary["unknown_token_share"] = unknown_share
        if unknown_share > UNKNOWN_WARN_SHARE:
            words = ", ".join(f"{w!r} ({n})" for w, n in unknown.most_common(12))
            logger.warning(
                "%.1f%% of the caption tokens are unknown to %s, so those words carry nothing "
                "into the embeddings; most frequent: %s. Use a text encoder whose vocabulary "
                "covers this data (e.g. train one on it: `modtrans fit-encoder`)",
                100 * unknown_share, text_encoder.spec, words)
    if long:
        logger.warning("%d caption(s) are longer than the text encoder's context (%s tokens) "
                       "and were embedded from their start; they are flagged `truncated` in "
                       "text_metadata and counted in %s/manifest.json", long,
                       getattr(text_encoder, "text_context", "?"), out_dir)
    if skipped:
        logger.warning("%d item(s) skipped; they are listed in %s/manifest.json", len(skipped),
                       out_dir)
    return summary


def _skip(writer: StoreWriter, item: str, reason: str, strict: bool, of: str = "",
          **counts: int) -> None:
    """Record a skipped item, or raise :class:`BadInputError` naming it (and ``of``, its image)."""
    if strict:
        where = f"{item} of {of}" if of else item
        raise BadInputError(f"{where}: {reason}; fix or remove it, or drop --strict to skip bad "
                            "images and empty captions")
    writer.record_skipped(item, reason, **counts)


def _embed_batch(batch: dict[str, Any], image_encoder: Encoder, text_encoder: Encoder,
                 buffer: _ShardBuffer, writer: StoreWriter, sidecar: dict[Any, dict],
                 batch_size: int, strict: bool, unknown: Counter) -> None:
    """Embed one decoded batch and add its images (with captions that have words the text
    encoder knows) to the buffer; ``unknown`` counts the words it does not."""
    records = batch["records"]
    counter = getattr(text_encoder, "unknown_tokens", None)
    nonempty = [t for r in records for t in r.captions if t.strip()]
    counts = iter(counter(nonempty) if counter and nonempty else [])
    keep, texts, tokens = [], [], []
    for row, record in enumerate(records):
        captions = []
        for text, cid in zip(record.captions, record.caption_ids, strict=True):
            if not text.strip():
                _skip(writer, f"caption:{cid}", "empty caption", strict, of=record.location)
                continue
            count = next(counts, None)
            if count is not None:
                unknown.update(w.lower() for w in count.unknown)
                if count.tokens and len(count.unknown) == count.tokens:
                    _skip(writer, f"caption:{cid}", "only unknown tokens "
                          f"({', '.join(map(repr, count.unknown[:5]))}): the text encoder's "
                          "vocabulary has none of its words", strict, of=record.location,
                          unknown_tokens=count.tokens)
                    continue
                tokens.append(count)
            captions.append((text, cid))
        if captions:
            keep.append((row, record, captions))
            texts.extend(t for t, _ in captions)
        else:
            reason = ("no caption with a word the text encoder knows"
                      if any(t.strip() for t in record.captions) else "no non-empty caption")
            _skip(writer, record.location, reason, strict)
    if not keep:
        return
    image_vecs = image_encoder.encode_pixels(batch["pixels"][[row for row, _, _ in keep]]).numpy()
    text_vecs = text_encoder.encode_texts(texts, batch_size=batch_size).numpy()
    truncated = text_encoder.truncated(texts) if hasattr(text_encoder, "truncated") else None
    first = 0
    for vec, (_, record, captions) in zip(image_vecs, keep, strict=True):
        image_meta = {
            "image_id": record.image_id,
            "image_path": record.location,
            "caption": captions[0][0],
            **record.meta,
            **sidecar.get(record.image_id, {}),
        }
        text_meta = [{"caption": t, "caption_id": c} for t, c in captions]
        if truncated is not None:
            for row, flag in zip(text_meta, truncated[first: first + len(captions)], strict=True):
                row["truncated"] = flag
        if tokens:
            for row, count in zip(text_meta, tokens[first: first + len(captions)], strict=True):
                row["tokens"], row["unknown_tokens"] = count.tokens, len(count.unknown)
        buffer.add(vec, text_vecs[first : first + len(captions)], image_meta, text_meta)
        first += len(captions)
