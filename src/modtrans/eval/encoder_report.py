"""How good is an encoder pair on a captioned dataset: retrieval, modality gap, linear probes.

Computed from an embedding store, so it applies to the world CLIP and to any real pair.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from modtrans.data.store import EmbeddingStore
from modtrans.eval.metrics import retrieval_metrics

logger = logging.getLogger(__name__)


def _first_items(store: EmbeddingStore, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image embeddings of the first ``n`` images, all their captions, and each caption's image."""
    n = min(n, store.n_images)
    owner = np.asarray(store.caption_image_index)
    rows = np.flatnonzero(owner < n)
    images = torch.from_numpy(store.image_embeddings[:n].astype(np.float32))
    texts = torch.from_numpy(store.text_embeddings[rows].astype(np.float32))
    return images, texts, torch.from_numpy(owner[rows])


def cross_modal_report(store: EmbeddingStore, n_items: int = 1000) -> dict:
    """Text→image and image→text retrieval on ``n_items`` images and the modality gap.

    Every caption of the chosen images is a text query (its own image is the target); every
    image queries the gallery of all their captions, any of its own captions counting.

    Returns:
        ``{"n_images", "n_captions", "text_to_image": {R@1, R@5, R@10, MedR},
        "image_to_text": {...}, "modality_gap_cosine"}``; the gap is the mean cosine of
        paired raw embeddings (about 0.3 for real CLIP), only when the dims match.
    """
    images, texts, owner = _first_items(store, n_items)
    report = {
        "n_images": len(images),
        "n_captions": len(texts),
        "text_to_image": retrieval_metrics(texts, images, target_index=owner),
        "image_to_text": retrieval_metrics(images, texts, gallery_owner=owner),
    }
    if images.shape[1] == texts.shape[1]:
        paired = torch.nn.functional.cosine_similarity(images[owner], texts, dim=-1)
        report["modality_gap_cosine"] = float(paired.mean())
    return report


def linear_probe(
    train: EmbeddingStore, val: EmbeddingStore, column: str, *, max_train: int = 10_000
) -> dict:
    """Accuracy of a logistic-regression probe on image embeddings for a metadata column.

    Args:
        train, val: stores whose image metadata hold ``column`` (e.g. the world's
            ``main_shape``).
        column: the label column.
        max_train: cap on training images (the probe is a check, not a model).

    Returns:
        ``{"accuracy", "chance", "classes"}``; chance is the majority-class rate on val.
    """
    train_meta, val_meta = train.image_metadata(), val.image_metadata()
    for name, meta in (("train", train_meta), ("val", val_meta)):
        if column not in meta.column_names:
            raise ValueError(
                f"the {name} store's image metadata has no column {column!r}; "
                f"available: {meta.column_names}"
            )
    n = min(max_train, train.n_images)
    x_train = train.image_embeddings[:n].astype(np.float32)
    y_train = np.asarray(train_meta.column(column).to_pylist()[:n])
    x_val = val.image_embeddings[: val.n_images].astype(np.float32)
    y_val = np.asarray(val_meta.column(column).to_pylist())
    probe = LogisticRegression(max_iter=2000, C=10.0).fit(x_train, y_train)
    _, counts = np.unique(y_val, return_counts=True)
    return {
        "accuracy": float((probe.predict(x_val) == y_val).mean()),
        "chance": float(counts.max() / counts.sum()),
        "classes": len(np.unique(y_train)),
    }
