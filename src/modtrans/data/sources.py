"""One interface over every captioned-image format modtrans reads.

A source yields :class:`Record` s — an image (a path, or encoded bytes for streamed shards),
its captions, and extra metadata — split across DataLoader workers by
``records(worker, n_workers)``. The readers, one module per format:

- :mod:`modtrans.data.coco` — MS-COCO captions JSON (2014/2017 layouts, the world's splits)
  and Karpathy-split JSON;
- :mod:`modtrans.data.folder` — a folder of images with sidecar ``.txt`` captions;
- :mod:`modtrans.data.table` — a CSV or parquet table of (image path, caption);
- :mod:`modtrans.data.webdataset` — img2dataset webdataset shards, streamed.

(clip-retrieval output folders are already embeddings: :func:`modtrans.data.store.open_store`
reads them directly.) :func:`open_sources` picks the reader from what a path looks like.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

FORMATS_HINT = (
    "expected a world folder (made by `modtrans world`), a COCO or Karpathy captions .json, "
    "a .csv/.parquet table of image paths and captions, a folder of webdataset .tar shards, "
    "or a folder of images with .txt captions"
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class Record:
    """One image and its captions, as a reader yields it.

    Attributes:
        image_id: unique within the source (a COCO id, a relative path, a webdataset key).
        image: the image file, or its encoded bytes (streamed shards).
        captions: its captions (possibly empty strings: the embedder skips and lists those).
        caption_ids: one id per caption.
        location: where the image lives, for logs and skip lists ("a/b.jpg", "00001.tar:key").
        meta: extra per-image columns kept in the store's metadata.
        error: a problem the reader found (no image member, truncated shard): the embedder
            skips and lists the record with this reason.
    """

    image_id: int | str
    image: Path | bytes
    captions: list[str]
    caption_ids: list[int | str]
    location: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None

    def open_image(self) -> Image.Image:
        """Decode the image as RGB (raises ``OSError``/``UnidentifiedImageError`` if broken)."""
        source = io.BytesIO(self.image) if isinstance(self.image, bytes) else self.image
        with Image.open(source) as im:
            return im.convert("RGB")


class CaptionSource(Protocol):
    """What the embedder reads: records, split across workers."""

    def __len__(self) -> int:
        """Number of images, or an estimate (used for the progress bar only)."""
        ...

    def records(self, worker: int = 0, n_workers: int = 1) -> Iterator[Record]:
        """The records of one of ``n_workers`` disjoint parts, together covering the source."""
        ...


def _is_webdataset(path: Path) -> bool:
    return path.suffix == ".tar" or (path.is_dir() and any(path.glob("*.tar")))


def open_sources(
    path: str | Path,
    *,
    images: str | Path | None = None,
    split: str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> dict[str, tuple[CaptionSource, dict[str, Any]]]:
    """Open whatever ``path`` holds as captioned images, split by split.

    Args:
        path: a world folder (every split), a COCO captions JSON, a Karpathy-split JSON
            (every split, or ``split``), a CSV/parquet table, a folder of webdataset ``.tar``
            shards (or one shard), or a folder of images with ``.txt`` sidecars.
        images: the image folder of a COCO/Karpathy JSON or a table (default: see readers).
        split: take only this split, or name the single split of a flat source.
        image_column, caption_column: a table's column names (default: detected).

    Returns:
        split name → (source, description recorded in the store manifest).
    """
    from modtrans.data import coco, folder, table, webdataset

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; {FORMATS_HINT}")
    if path.is_dir() and (path / "world.json").is_file():
        found = {p.parent.name: p for p in sorted(path.glob("*/captions.json"))}
        if split and split not in found:
            raise FileNotFoundError(f"world {path} has no split {split!r}; it has {sorted(found)}")
        return {
            name: (coco.read_coco_captions(f), {"format": "world", "captions": str(f.resolve())})
            for name, f in found.items()
            if not split or name == split
        }
    if path.suffix == ".json":
        if coco.is_karpathy(path):
            splits = coco.read_karpathy(path, images, split)
            return {
                name: (data, {"format": "karpathy", "file": str(path.resolve()), "split": name})
                for name, data in splits.items()
            }
        data = coco.read_coco_captions(path, images)
        return {split or path.stem: (data, {"format": "coco", "captions": str(path.resolve())})}
    if path.suffix in table.SUFFIXES:
        data = table.read_caption_table(path, images, image_column=image_column,
                                        caption_column=caption_column)
        return {split or path.stem: (data, {"format": "table", "file": str(path.resolve())})}
    if _is_webdataset(path):
        shards = webdataset.WebDatasetShards(path)
        return {split or path.stem: (shards, {"format": "webdataset", "path": str(path.resolve())})}
    if path.is_dir() and folder.has_images(path):
        data = folder.read_image_folder(path)
        return {split or path.name: (data, {"format": "folder", "path": str(path.resolve())})}
    raise ValueError(f"{path} is neither of the formats modtrans reads: {FORMATS_HINT}")
