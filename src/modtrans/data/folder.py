"""Image folders: images with sidecar ``.txt`` captions, and class-labelled folders.

Captioned: ``photos/a.jpg`` + ``photos/a.txt`` (one caption per non-empty line), any depth;
an image without a sidecar is kept with no caption, so the embedder skips and lists it.
Labelled (for zero-shot classification): ``root/<class name>/<image>``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from modtrans.data.coco import CaptionedImages
from modtrans.data.records import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def has_images(root: Path) -> bool:
    """Whether any image file lies under ``root``."""
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.rglob("*"))


def read_image_folder(root: str | Path) -> CaptionedImages:
    """Read every image under ``root`` with the captions of its ``.txt`` sidecar.

    Image ids are the paths relative to ``root``; caption ids are ``<image id>#<line>``.
    """
    root = Path(root)
    files = _image_files(root)
    if not files:
        raise ValueError(
            f"{root} holds no image ({', '.join(IMAGE_SUFFIXES)}); a captioned folder is images "
            "with a .txt file of the same name holding one caption per line"
        )
    data = CaptionedImages([], [], [], [], [])
    unreadable = []
    for path in files:
        sidecar = path.with_suffix(".txt")
        try:
            lines = sidecar.read_text(encoding="utf-8").splitlines() if sidecar.is_file() else []
        except UnicodeDecodeError as e:
            unreadable.append(f"{sidecar.relative_to(root)} (byte {e.start} is not UTF-8)")
            continue
        captions = [line.strip() for line in lines if line.strip()]
        image_id = path.relative_to(root).as_posix()
        data.image_ids.append(image_id)
        data.image_paths.append(path.resolve())
        data.captions.append(captions)
        data.caption_ids.append([f"{image_id}#{i}" for i in range(len(captions))])
        data.extra.append([{} for _ in captions])
    if unreadable:
        logger.warning("skipped %d image(s) whose caption file is not UTF-8 text: %s; save "
                       "them as UTF-8 to include them", len(unreadable), ", ".join(unreadable))
    logger.info("read %d images, %d captions from %s", len(data), data.n_captions, root)
    return data


def read_labelled_folder(root: str | Path) -> tuple[list[Path], list[str]]:
    """Images of ``root/<class>/...`` and their class names (the sub-folder names).

    Returns:
        (image paths, class name of each), sorted by class then path.
    """
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    paths, labels = [], []
    for name in classes:
        for path in _image_files(root / name):
            paths.append(path)
            labels.append(name)
    if not paths:
        raise ValueError(
            f"{root} holds no labelled images; expected one sub-folder per class with its "
            "images inside, e.g. root/cat/1.jpg, root/dog/2.jpg"
        )
    return paths, labels
