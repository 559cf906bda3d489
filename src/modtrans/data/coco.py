"""Reader for MS-COCO-format caption files (``images`` + ``annotations``).

The world generator writes this format too, so the same reader serves both.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from modtrans.io import read_json

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CaptionedImages:
    """Images with their captions, in file order.

    Attributes:
        image_ids: COCO image ids, one per image.
        image_paths: absolute image paths, one per image.
        captions: the captions of each image (one image, several captions).
        caption_ids: the annotation ids, parallel to ``captions``.
        extra: per-caption extra annotation fields (e.g. the world's caption ``kind``).
    """

    image_ids: list[int]
    image_paths: list[Path]
    captions: list[list[str]]
    caption_ids: list[list[int]]
    extra: list[list[dict]]

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def n_captions(self) -> int:
        return sum(len(c) for c in self.captions)


def default_image_dir(captions_file: Path) -> Path:
    """``<dir>/images`` beside the captions file if present (the world layout), else ``<dir>``."""
    sibling = captions_file.parent / "images"
    return sibling if sibling.is_dir() else captions_file.parent


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
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    result = CaptionedImages([], [], [], [], [])
    for image in data["images"]:
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
