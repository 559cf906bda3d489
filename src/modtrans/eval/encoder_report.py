"""How good is an encoder pair on a captioned dataset: retrieval, modality gap, linear probes.

Computed from an embedding store, so it applies to the world CLIP and to any real pair.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from modtrans.data.store import EmbeddingStore
from modtrans.encoders import Encoder
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
    return retrieval_report(*_first_items(store, n_items))


def retrieval_report(images: torch.Tensor, texts: torch.Tensor, owner: torch.Tensor) -> dict:
    """Cross-modal retrieval between image and caption embeddings (caption i describes image
    ``owner[i]``), with the modality gap and the recall a random ranking would get."""
    report = {
        "n_images": len(images),
        "n_captions": len(texts),
        "text_to_image": retrieval_metrics(texts, images, target_index=owner),
        "image_to_text": retrieval_metrics(images, texts, gallery_owner=owner),
        "chance_text_to_image_R@5": min(1.0, 5 / len(images)),
    }
    if images.shape[1] == texts.shape[1]:
        paired = torch.nn.functional.cosine_similarity(images[owner], texts, dim=-1)
        report["modality_gap_cosine"] = float(paired.mean())
    return report


def encoder_retrieval(encoder: Encoder, images: torch.Tensor, captions: list[list[str]]
                      ) -> dict:
    """:func:`retrieval_report` of images (uint8, N×H×W×3) and their captions embedded by a
    CLIP-like ``encoder``: how well a freshly trained one matches held-out pairs."""
    owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps])
    texts = encoder.encode_texts([c for caps in captions for c in caps])
    return retrieval_report(encoder.encode_images(images), texts, owner)


def _probe_inputs(store: EmbeddingStore, modality: str, images: np.ndarray) -> np.ndarray:
    """The embeddings of the given image rows, or for ``text`` the mean of each one's
    captions' (every one of them must have a caption)."""
    if modality == "image":
        return store.image_embeddings[images].astype(np.float32)
    owner = np.asarray(store.caption_image_index)
    counts = np.bincount(owner, minlength=store.n_images)[images]
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} probed image(s) of {store.root} have no "
                         "caption; a text probe needs each one captioned")
    sums = np.zeros((store.n_images, store.text_dim), dtype=np.float64)
    np.add.at(sums, owner, store.text_embeddings.to_numpy(np.float64))
    return (sums[images] / counts[:, None]).astype(np.float32)


def linear_probe(
    train: EmbeddingStore, val: EmbeddingStore, column: str, *, modality: str = "image",
    where: tuple[str, object] | None = None, max_train: int = 10_000
) -> dict:
    """Accuracy of a logistic-regression probe on embeddings for an image-metadata column.

    Args:
        train, val: stores whose image metadata hold ``column`` (e.g. the world's
            ``main_shape``).
        column: the label column.
        modality: ``image`` probes the image embeddings; ``text`` the mean of each image's
            caption embeddings (what its captions say, in the text space).
        where: ``(column, value)``: probe only the images whose metadata has that value in
            both splits (e.g. ``("n_objects", 1)``); None: every image.
        max_train: cap on training images (the probe is a check, not a model).

    Returns:
        ``{"accuracy", "chance", "classes", "n_val"}``; chance is the majority-class rate on
        val.
    """
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    data = {}
    for name, store in (("train", train), ("val", val)):
        meta = store.image_metadata()
        needed = [column] + ([where[0]] if where else [])
        missing = [c for c in needed if c not in meta.column_names]
        if missing:
            raise ValueError(
                f"the {name} store's image metadata has no column {missing[0]!r}; "
                f"available: {meta.column_names}"
            )
        keep = np.arange(store.n_images)
        if where:
            keep = np.flatnonzero(np.asarray(meta.column(where[0]).to_pylist()) == where[1])
            if not len(keep):
                raise ValueError(f"no {name} image has {where[0]} = {where[1]!r}")
        if not len(keep):
            raise ValueError(f"the {name} store {store.root} holds no images")
        if name == "train":
            keep = keep[:max_train]
        data[name] = (_probe_inputs(store, modality, keep),
                      np.asarray(meta.column(column).to_pylist())[keep])
    (x_train, y_train), (x_val, y_val) = data["train"], data["val"]
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"the probe's train images hold one {column!r} only "
                         f"({str(y_train[0])!r}); it needs at least two classes (a larger "
                         "train split)")
    probe = LogisticRegression(max_iter=2000, C=10.0).fit(x_train, y_train)
    _, counts = np.unique(y_val, return_counts=True)
    return {
        "accuracy": float((probe.predict(x_val) == y_val).mean()),
        "chance": float(counts.max() / counts.sum()),
        "classes": len(np.unique(y_train)),
        "n_val": len(y_val),
    }
