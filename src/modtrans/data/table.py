"""A CSV or parquet table of (image path, caption) rows; several rows may share one image."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv

from modtrans.data.coco import CaptionedImages
from modtrans.io import read_parquet

logger = logging.getLogger(__name__)

SUFFIXES = (".csv", ".tsv", ".parquet")
IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_name", "filename", "path")
CAPTION_COLUMNS = ("caption", "text", "title", "sentence")


def _pick(columns: list[str], given: str | None, options: tuple[str, ...], what: str,
          path: Path) -> str:
    if given is not None:
        if given not in columns:
            raise ValueError(f"{path} has no column {given!r} ({what}); its columns: {columns}")
        return given
    for name in options:
        if name in columns:
            return name
    flag = "--image-column" if what == "image path" else "--caption-column"
    raise ValueError(
        f"{path}: no {what} column among {columns}; name it {' or '.join(options[:3])}, or pass "
        f"{flag}"
    )


def read_caption_table(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> CaptionedImages:
    """Read a table of image paths and captions, grouping rows by image.

    Args:
        path: a ``.csv``, ``.tsv`` or ``.parquet`` file.
        image_root: folder that relative image paths are under (default: the table's folder).
        image_column, caption_column: column names; by default the first of
            :data:`IMAGE_COLUMNS` / :data:`CAPTION_COLUMNS` present.

    Returns:
        The images in order of first appearance; image ids are the paths as written.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        table = read_parquet(path)
    else:
        delimiter = "\t" if path.suffix == ".tsv" else ","
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        try:
            table = pa_csv.read_csv(path,
                                    parse_options=pa_csv.ParseOptions(delimiter=delimiter))
        except pa.ArrowException as e:
            raise ValueError(f"{path} is not a readable {path.suffix[1:].upper()} table ({e}); "
                             "fix the row it names") from e
    image_col = _pick(table.column_names, image_column, IMAGE_COLUMNS, "image path", path)
    caption_col = _pick(table.column_names, caption_column, CAPTION_COLUMNS, "caption", path)
    root = Path(image_root) if image_root is not None else path.parent
    rows: dict[str, int] = {}
    data = CaptionedImages([], [], [], [], [])
    images = table.column(image_col).to_pylist()
    captions = table.column(caption_col).to_pylist()
    for line, (image, caption) in enumerate(zip(images, captions, strict=True)):
        if not image:
            raise ValueError(f"{path}: row {line} has no image path")
        if image not in rows:
            rows[image] = len(data)
            data.image_ids.append(str(image))
            data.image_paths.append((root / str(image)).resolve())
            data.captions.append([])
            data.caption_ids.append([])
            data.extra.append([])
        row = rows[image]
        data.captions[row].append("" if caption is None else str(caption))
        data.caption_ids[row].append(line)
        data.extra[row].append({})
    if not len(data):
        raise ValueError(f"{path} has no rows")
    logger.info("read %d images, %d captions from %s", len(data), data.n_captions, path)
    return data
