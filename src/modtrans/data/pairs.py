"""Paired rows for translation, read from an embedding store in either direction.

One image has several captions, so the pairs are the (caption, image) rows of the store:
for ``text2image`` the condition is a caption embedding and the target its image's
embedding; for ``image2text`` the reverse (the same image conditions several captions).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from modtrans.data.store import EmbeddingStore
from modtrans.translators.base import DIRECTIONS


@dataclasses.dataclass
class PairedSplit:
    """The embeddings of one split, arranged for a direction.

    Attributes:
        direction: ``text2image`` or ``image2text``.
        images: (n_images, D_img) image embeddings.
        texts: (n_captions, D_txt) caption embeddings.
        owner: (n_captions,) the image row of each caption.
    """

    direction: str
    images: Tensor
    texts: Tensor
    owner: Tensor

    @property
    def cond(self) -> Tensor:
        """(n_pairs, Dc) condition of every (caption, image) pair."""
        return self.texts if self.direction == "text2image" else self.images[self.owner]

    @property
    def target(self) -> Tensor:
        """(n_pairs, D) target of every pair."""
        return self.images[self.owner] if self.direction == "text2image" else self.texts

    @property
    def queries(self) -> Tensor:
        """Distinct conditions: every caption (text2image) or every image (image2text)."""
        return self.texts if self.direction == "text2image" else self.images

    @property
    def gallery(self) -> Tensor:
        """Distinct targets to retrieve from."""
        return self.images if self.direction == "text2image" else self.texts


def load_pairs(store: EmbeddingStore, direction: str, max_images: int | None = None) -> PairedSplit:
    """Read a split's embeddings as float32 tensors, optionally only its first ``max_images``.

    Rows the store found non-finite (opened with ``skip_bad_rows``) are left out: such an
    image with its captions, such a caption alone.

    Args:
        store: the split's store.
        direction: ``text2image`` or ``image2text``.
        max_images: keep the first images and their captions (evaluation subsets).

    Returns:
        The :class:`PairedSplit`.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    n = store.n_images if max_images is None else min(max_images, store.n_images)
    images = store.image_embeddings[:n].astype(np.float32)
    texts = store.text_embeddings
    none = np.zeros(0, np.int64)
    bad_images = store.bad_rows.get("img_emb", none)
    bad_texts = store.bad_rows.get("text_emb", none)
    keep_image = np.ones(n, dtype=bool)
    keep_image[bad_images[bad_images < n]] = False
    keep_text = np.ones(len(texts), dtype=bool)
    keep_text[bad_texts] = False
    owner = np.asarray(store.caption_image_index)
    in_subset = owner < n
    rows = np.flatnonzero(in_subset & keep_text & keep_image[np.where(in_subset, owner, 0)])
    if n == 0 or len(rows) == 0:
        raise ValueError(
            f"the {store.split!r} split at {store.root} has no image with a caption; "
            "embed a non-empty split"
        )
    new_row = np.cumsum(keep_image) - 1
    return PairedSplit(
        direction=direction,
        images=torch.from_numpy(images[keep_image]),
        texts=torch.from_numpy(texts[rows].astype(np.float32)),
        owner=torch.from_numpy(new_row[owner[rows]].astype(np.int64)),
    )
