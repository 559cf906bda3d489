"""The record interface every reader yields: an image (a path, or encoded bytes for streamed
shards), its captions and extra metadata, split across DataLoader workers by
``records(worker, n_workers)``."""

from __future__ import annotations

import dataclasses
import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

#: What decoding a broken image file raises (PIL's UnidentifiedImageError is an OSError;
#: truncated or malformed files also raise ValueError or SyntaxError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError)

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

    def units(self, n: int) -> list[CaptionSource]:
        """At most ``n`` contiguous, non-empty sources that cover this one in order: the work
        units of a distributed embedding job."""
        ...


def contiguous_ranges(length: int, n: int) -> list[tuple[int, int]]:
    """At most ``n`` contiguous, non-empty, near-equal ``(start, stop)`` ranges covering
    ``range(length)`` in order: how a source is cut into work units."""
    k = max(min(n, length), 1)
    bounds = [length * i // k for i in range(k + 1)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
