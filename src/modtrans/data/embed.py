"""Encode captioned images with an encoder pair and write an embedding store, shard by shard."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from modtrans.data.coco import CaptionedImages
from modtrans.data.store import StoreWriter
from modtrans.encoders.base import Encoder

logger = logging.getLogger(__name__)


class BadInputError(ValueError):
    """An unreadable image or an empty caption met with ``strict=True``."""


def _read_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def load_sidecar_metadata(captions_file: Path) -> dict[int, dict]:
    """Per-image extra columns from ``ground_truth.parquet`` beside the captions file, if any.

    Nested columns (the world's object lists) are kept as JSON-compatible python values.
    """
    path = captions_file.parent / "ground_truth.parquet"
    if not path.is_file():
        return {}
    rows = pq.read_table(path).to_pylist()
    return {int(r["image_id"]): {k: v for k, v in r.items() if k != "image_id"} for r in rows}


def embed_captioned_images(
    data: CaptionedImages,
    image_encoder: Encoder,
    text_encoder: Encoder,
    out_dir: str | Path,
    *,
    split: str,
    source: dict,
    sidecar: dict[int, dict] | None = None,
    shard_size: int = 10_000,
    dtype: str = "float16",
    batch_size: int = 256,
    resume: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> dict:
    """Embed every image and caption of ``data`` into a store at ``out_dir``.

    A missing or unreadable image, or an empty caption, is skipped, counted and listed in
    the manifest and the returned summary (or raises :class:`BadInputError` when ``strict``).
    With ``resume`` an interrupted run continues after its last complete shard.

    Args:
        data: the captioned images (e.g. from :func:`read_coco_captions`).
        image_encoder, text_encoder: the pair; they may come from different specs.
        out_dir: the store directory.
        split: recorded in the manifest (train, val, ...).
        source: recorded in the manifest (what was embedded).
        sidecar: extra per-image metadata keyed by image id (e.g. the world's ground truth).
        shard_size: images per shard.
        dtype: "float16" or "float32" on disk.
        batch_size: encoder batch size.
        resume: continue an existing store instead of refusing to overwrite it.
        strict: fail on the first bad image or caption instead of skipping it.
        progress: show a progress bar.

    Returns:
        A summary: images and captions written, skipped items with reasons, seconds.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    sidecar = sidecar or {}
    start = time.perf_counter()
    written_images = written_captions = 0
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
        done = set(writer.done_image_ids)
        pending = [i for i, image_id in enumerate(data.image_ids) if image_id not in done]
        if done:
            logger.info("resuming: %d images already embedded, %d to go", len(done), len(pending))
        bar = tqdm(total=len(pending), desc=f"embed {split}", unit="img", disable=not progress)
        for first in range(0, len(pending), shard_size):
            rows = pending[first : first + shard_size]
            images, image_meta, captions, text_meta = [], [], [], []
            for row in rows:
                kept = _collect(data, row, writer, strict)
                if kept is None:
                    continue
                image, texts, ids = kept
                local = len(images)
                images.append(image)
                image_meta.append({
                    "image_id": data.image_ids[row],
                    "image_path": str(data.image_paths[row]),
                    "caption": texts[0],
                    **sidecar.get(data.image_ids[row], {}),
                })
                captions.extend(texts)
                text_meta.extend(
                    {"image_index": local, "caption": t, "caption_id": c}
                    for t, c in zip(texts, ids, strict=True)
                )
            if images:
                img_emb = image_encoder.encode_images(images, batch_size=batch_size).numpy()
                txt_emb = text_encoder.encode_texts(captions, batch_size=batch_size).numpy()
                writer.write_shard(
                    img_emb.astype(np.float32),
                    txt_emb.astype(np.float32),
                    pa.Table.from_pylist(image_meta),
                    pa.Table.from_pylist(text_meta),
                )
                written_images += len(images)
                written_captions += len(captions)
            bar.update(len(rows))
        bar.close()
        skipped = list(writer.skipped)
    summary = {
        "store": str(out_dir),
        "split": split,
        "images_written": written_images,
        "captions_written": written_captions,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if skipped:
        logger.warning("%d item(s) skipped; they are listed in %s/manifest.json", len(skipped),
                       out_dir)
    return summary


def _collect(
    data: CaptionedImages, row: int, writer: StoreWriter, strict: bool
) -> tuple[Image.Image, list[str], list[int]] | None:
    """Read one image and its non-empty captions; record and skip what is bad."""
    path = data.image_paths[row]
    try:
        image = _read_image(path)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        reason = "missing" if isinstance(e, FileNotFoundError) else f"unreadable ({e})"
        if strict:
            raise BadInputError(f"image {path} is {reason}; fix or remove it, or drop --strict "
                                "to skip bad images") from e
        writer.record_skipped(str(path), reason)
        return None
    texts, ids = [], []
    for text, cid in zip(data.captions[row], data.caption_ids[row], strict=True):
        if text.strip():
            texts.append(text)
            ids.append(cid)
            continue
        if strict:
            raise BadInputError(f"caption {cid} of image {path} is empty; remove it from the "
                                "captions file, or drop --strict to skip empty captions")
        writer.record_skipped(f"caption:{cid}", "empty caption")
    if not texts:
        writer.record_skipped(str(path), "no non-empty caption")
        return None
    return image, texts, ids
