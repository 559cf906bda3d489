"""One interface over every captioned-image format modtrans reads.

Every reader yields :class:`~modtrans.data.records.Record` s. The readers, one module per
format:

- :mod:`modtrans.data.coco` — MS-COCO captions JSON (2014/2017 layouts, the world's splits)
  and Karpathy-split JSON;
- :mod:`modtrans.data.folder` — a folder of images with sidecar ``.txt`` captions;
- :mod:`modtrans.data.table` — a CSV or parquet table of (image path, caption);
- :mod:`modtrans.data.webdataset` — img2dataset webdataset shards, streamed.

(clip-retrieval output folders are already embeddings: :func:`modtrans.data.store.open_store`
reads them directly.) :func:`open_sources` picks the reader from what a path looks like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modtrans.data import coco, folder, table, webdataset
from modtrans.data.records import CaptionSource

FORMATS_HINT = (
    "expected a world folder (made by `modtrans world`), a COCO or Karpathy captions .json, "
    "a .csv/.parquet table of image paths and captions, a folder of webdataset .tar shards, "
    "or a folder of images with .txt captions"
)


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
