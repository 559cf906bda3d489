"""SIGTERM (and SIGINT, handled alike) stop embed and train after what they had done is
written; ``--resume`` then ends as an uninterrupted run would."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modtrans.data import embed as embed_mod
from modtrans.data.coco import read_coco_captions
from modtrans.data.embed import embed_captioned_images
from modtrans.data.store import EmbeddingStore
from modtrans.errors import Interrupted
from modtrans.training import fit as fit_module
from modtrans.training.translator import fit_translator
from tests.faults.test_training_faults import PARAMS, RECIPE, _assert_same_weights, _pairs


def _embed(tiny_world: Path, encoder: Any, out: Path, **kwargs: Any) -> dict:
    data = read_coco_captions(tiny_world / "train" / "captions.json")
    return embed_captioned_images(data, encoder, encoder, out, split="train",
                                  source={"captions": "test"}, dtype="float32", shard_size=1000,
                                  batch_size=8, progress=False, **kwargs)


def test_sigterm_stops_embed_with_its_batches_written(
    tiny_world: Path, clip_encoder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One shard of 1000 would be written at the end; a SIGTERM after the 3rd batch writes
    the 24 images embedded so far as a shard, and resuming embeds only the rest."""
    _embed(tiny_world, clip_encoder, tmp_path / "whole")
    real, calls = embed_mod._embed_batch, {"n": 0}

    def terminated_after_third(*args: Any) -> None:
        real(*args)
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        m.setattr(embed_mod, "_embed_batch", terminated_after_third)
        with pytest.raises(Interrupted, match="SIGTERM received: stopped with 24 images"):
            _embed(tiny_world, clip_encoder, tmp_path / "cut")
    assert signal.getsignal(signal.SIGTERM) is before
    assert EmbeddingStore(tmp_path / "cut").n_images == 24
    summary = _embed(tiny_world, clip_encoder, tmp_path / "cut", resume=True)
    whole, cut = EmbeddingStore(tmp_path / "whole"), EmbeddingStore(tmp_path / "cut")
    assert summary["images_written"] == whole.n_images - 24
    ids = cut.image_metadata().column("image_id").to_pylist()
    assert ids == whole.image_metadata().column("image_id").to_pylist()
    assert cut.text_metadata().to_pylist() == whole.text_metadata().to_pylist()
    np.testing.assert_allclose(cut.image_embeddings[:], whole.image_embeddings[:], atol=1e-5)
    np.testing.assert_allclose(cut.text_embeddings[:], whole.text_embeddings[:], atol=1e-5)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_training_with_a_checkpoint_to_resume_from(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    train, val = _pairs(tiny_store)
    fit_translator("ced", train, val, tmp_path / "whole", recipe=RECIPE, params=PARAMS["ced"],
                   progress=False)
    real, before = fit_module.FitModule.training_step, signal.getsignal(signum)

    def signalled_at_step_4(self, batch: Any, batch_idx: int) -> Any:
        if self.global_step == 4:
            os.kill(os.getpid(), signum)
        return real(self, batch, batch_idx)

    with monkeypatch.context() as m:
        m.setattr(fit_module.FitModule, "training_step", signalled_at_step_4)
        name = signal.Signals(signum).name
        with pytest.raises(Interrupted, match=f"{name} received: stopped at step 5"):
            fit_translator("ced", train, val, tmp_path / "cut", recipe=RECIPE,
                           params=PARAMS["ced"], progress=False)
    assert signal.getsignal(signum) is before
    fit_translator("ced", train, val, tmp_path / "cut", recipe=RECIPE, params=PARAMS["ced"],
                   resume=True, progress=False)
    _assert_same_weights(tmp_path / "whole", tmp_path / "cut")
