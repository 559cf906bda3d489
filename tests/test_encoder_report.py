"""Linear probes of an encoder pair's embeddings (image, or each image's mean caption)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modtrans.data.store import open_store
from modtrans.eval.encoder_report import _probe_inputs, linear_probe


def test_text_probe_input_is_each_images_mean_caption(tiny_store: Path) -> None:
    store = open_store(tiny_store, "val")
    n = store.n_images - 1
    owner = np.asarray(store.caption_image_index)
    texts = store.text_embeddings.to_numpy()
    expected = np.stack([texts[owner == i].mean(axis=0) for i in range(n)])
    images = np.arange(n)
    np.testing.assert_allclose(_probe_inputs(store, "text", images), expected, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(_probe_inputs(store, "image", images),
                                  store.image_embeddings.to_numpy()[:n])


def test_probe_on_a_subset_evaluates_only_those_images(tiny_store: Path) -> None:
    train, val = open_store(tiny_store, "train"), open_store(tiny_store, "val")
    counts = np.asarray(val.image_metadata().column("n_objects").to_pylist())
    value = int(np.bincount(counts).argmax())
    for modality in ("image", "text"):
        everything = linear_probe(train, val, "main_colour", modality=modality)
        subset = linear_probe(train, val, "main_colour", modality=modality,
                              where=("n_objects", value))
        assert everything["n_val"] == val.n_images
        assert subset["n_val"] == int((counts == value).sum()) < val.n_images


def test_probe_says_what_is_wrong(tiny_store: Path) -> None:
    train, val = open_store(tiny_store, "train"), open_store(tiny_store, "val")
    with pytest.raises(ValueError, match="modality must be 'image' or 'text'"):
        linear_probe(train, val, "main_shape", modality="audio")
    with pytest.raises(ValueError, match="no column 'colour_count'"):
        linear_probe(train, val, "main_shape", where=("colour_count", 1))
    with pytest.raises(ValueError, match="no train image has n_objects = 99"):
        linear_probe(train, val, "main_shape", where=("n_objects", 99))
    shape = val.image_metadata().column("main_shape")[0].as_py()
    with pytest.raises(ValueError, match=f"hold one 'main_shape' only \\('{shape}'\\)"):
        linear_probe(train, val, "main_shape", where=("main_shape", shape))
