"""Readers for MS-COCO captions: the official JSON (2014 and 2017 layouts) and Karpathy splits.

The world generator writes the official format too, so the same reader serves both.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modtrans.data.records import Record, contiguous_ranges
from modtrans.io import read_json

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CaptionedImages:
    """Images on disk with their captions, in file order; a :class:`CaptionSource`.

    Attributes:
        image_ids: unique image ids (COCO ids, or relative paths), one per image.
        image_paths: absolute image paths, one per image.
        captions: the captions of each image (one image, several captions).
        caption_ids: the annotation ids, parallel to ``captions``.
        extra: per-caption extra annotation fields (e.g. the world's caption ``kind``).
    """

    image_ids: list[int | str]
    image_paths: list[Path]
    captions: list[list[str]]
    caption_ids: list[list[int | str]]
    extra: list[list[dict]]

    def __len__(self) -> int:
        return len(self.image_ids)

    def records(self, worker: int = 0, n_workers: int = 1) -> Iterator[Record]:
        for row in range(worker, len(self), n_workers):
            path = self.image_paths[row]
            yield Record(self.image_ids[row], path, self.captions[row], self.caption_ids[row],
                         str(path))

    def units(self, n: int) -> list[CaptionedImages]:
        """At most ``n`` contiguous, non-empty image ranges that cover the source in order."""
        return [
            CaptionedImages(*(field[a:b] for field in (
                self.image_ids, self.image_paths, self.captions, self.caption_ids, self.extra)))
            for a, b in contiguous_ranges(len(self), n)
        ]

    @property
    def n_captions(self) -> int:
        return sum(len(c) for c in self.captions)


_OFFICIAL_NAME = re.compile(r"captions_([a-z]+20\d\d)\.json$")


def default_image_dir(captions_file: Path) -> Path:
    """Where a captions file's images are when ``--images`` is not given.

    ``<dir>/images`` (the world layout); for ``annotations/captions_val2017.json`` (or 2014)
    the COCO layout's ``val2017/`` beside ``annotations/`` or beside the file; else ``<dir>``.
    """
    sibling = captions_file.parent / "images"
    if sibling.is_dir():
        return sibling
    official = _OFFICIAL_NAME.search(captions_file.name)
    if official:
        for root in (captions_file.parent.parent, captions_file.parent):
            if (root / official.group(1)).is_dir():
                return root / official.group(1)
    return captions_file.parent


def read_coco_captions(
    captions_file: str | Path, image_dir: str | Path | None = None
) -> CaptionedImages:
    """Read a COCO captions JSON file.

    Args:
        captions_file: e.g. ``annotations/captions_val2017.json`` or a world split's
            ``captions.json``.
        image_dir: folder that ``file_name`` entries are relative to; by default
            :func:`default_image_dir`.

    Returns:
        The images that have at least one caption, in the order of the ``images`` list.
    """
    captions_file = Path(captions_file)
    data = read_json(captions_file)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(
            f"{captions_file} is not a COCO captions file: expected a JSON object with "
            "'images' and 'annotations' lists"
        )
    image_dir = Path(image_dir) if image_dir is not None else default_image_dir(captions_file)
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"image folder {image_dir} does not exist; pass the folder holding the images "
            "named in the captions file (--images)"
        )
    by_image: dict[int, list[dict]] = {}
    for i, ann in enumerate(data["annotations"]):
        for key in ("image_id", "id", "caption"):
            _require(ann, key, f"annotation {i}", captions_file)
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    result = CaptionedImages([], [], [], [], [])
    for i, image in enumerate(data["images"]):
        for key in ("id", "file_name"):
            _require(image, key, f"image {i}", captions_file)
        anns = by_image.get(int(image["id"]))
        if not anns:
            continue
        result.image_ids.append(int(image["id"]))
        result.image_paths.append((image_dir / image["file_name"]).resolve())
        result.captions.append([str(a["caption"]) for a in anns])
        result.caption_ids.append([int(a["id"]) for a in anns])
        result.extra.append(
            [{k: v for k, v in a.items() if k not in ("id", "image_id", "caption")} for a in anns]
        )
    if not result.image_ids:
        raise ValueError(f"{captions_file} holds no image with a caption")
    logger.info("read %d images, %d captions from %s", len(result), result.n_captions,
                captions_file)
    return result


def _require(entry: Any, key: str, where: str, path: Path) -> None:
    """Raise a ValueError naming the file, the entry and the key when ``key`` is missing."""
    if not isinstance(entry, dict) or key not in entry:
        shown = json.dumps(entry)[:120] if isinstance(entry, dict) else repr(entry)[:120]
        raise ValueError(f"{path}: {where} has no {key!r} ({shown}); every COCO annotation "
                         "needs 'id', 'image_id' and 'caption', every image 'id' and "
                         "'file_name'")


KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


def is_karpathy(path: str | Path) -> bool:
    """Whether a JSON file is a Karpathy split file (``images`` with ``sentences``)."""
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    return bool(images) and "sentences" in images[0] and "annotations" not in data


def read_karpathy(
    path: str | Path, image_root: str | Path | None = None, split: str | None = None
) -> dict[str, CaptionedImages]:
    """Read a Karpathy-split JSON (``dataset_coco.json``): each image's ``filepath``,
    ``filename``, ``split`` and ``sentences``.

    Args:
        path: the JSON file.
        image_root: the folder that ``filepath/filename`` are relative to (default: the
            file's folder).
        split: ``train`` (which includes ``restval``), ``val`` or ``test``; default all three.

    Returns:
        split name → its images, for the splits that have any.
    """
    path = Path(path)
    if split is not None and split not in KARPATHY_SPLITS:
        raise ValueError(f"Karpathy splits are {sorted(KARPATHY_SPLITS)}, got {split!r}")
    root = Path(image_root) if image_root is not None else path.parent
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; pass it with --images")
    wanted = [split] if split else list(KARPATHY_SPLITS)
    out = {name: CaptionedImages([], [], [], [], []) for name in wanted}
    for image in read_json(path)["images"]:
        name = next((n for n in wanted if image.get("split") in KARPATHY_SPLITS[n]), None)
        if name is None:
            continue
        data = out[name]
        sentences = image.get("sentences", [])
        image_id = image.get("cocoid", image.get("imgid"))
        data.image_ids.append(int(image_id) if image_id is not None else image["filename"])
        data.image_paths.append((root / image.get("filepath", "") / image["filename"]).resolve())
        data.captions.append([str(s.get("raw", " ".join(s.get("tokens", [])))) for s in sentences])
        data.caption_ids.append([int(s.get("sentid", i)) for i, s in enumerate(sentences)])
        data.extra.append([{} for _ in sentences])
    found = {name: data for name, data in out.items() if len(data)}
    if not found:
        raise ValueError(f"{path} has no image in split(s) {wanted}")
    return found
