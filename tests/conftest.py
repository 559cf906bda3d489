"""Shared fixtures: a tiny world generated once and a tiny world CLIP trained once on it."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

# Everything runs offline: a hub lookup must fail fast instead of trying the network. Set at
# import, before huggingface_hub reads them, and kept for the whole session.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

N_WORLD_IMAGES = 80
TINY_CLIP: dict[str, Any] = {
    "vision": "vit",
    "vision_width": 32,
    "text_width": 32,
    "heads": 2,
    "vision_layers": 1,
    "text_layers": 1,
    "projection_dim": 16,
    "epochs": 1,
    "batch_size": 32,
}


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster, and steady on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI reconfigures the root logger; give the next test the logging it had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _quiet_lightning() -> Iterator[None]:
    """Lightning's per-fit banners are noise in a test log."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world of ``N_WORLD_IMAGES`` images (all four splits non-empty), generated once."""
    from modtrans.world.generator import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("tiny") / "world"
    summary = generate_world(
        WorldConfig(n_images=N_WORLD_IMAGES, seed=0), out, workers=1, progress=False
    )
    assert set(summary["counts"]) == {"train", "val", "test", "novel"}, summary
    return out


@dataclasses.dataclass
class TrainedClip:
    """The tiny world CLIP: where it was saved, plus the in-memory model and tokenizer."""

    path: Path
    spec: str
    config: Any
    model: Any
    tokenizer: Any


@pytest.fixture(scope="session")
def tiny_clip(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedClip:
    """A tiny world CLIP trained once on ``tiny_world``; the in-memory model is kept too."""
    from modtrans.world import clip as world_clip

    captured: dict[str, Any] = {}
    real_model, real_tokenizer = world_clip.build_model, world_clip.build_tokenizer

    def capturing_model(config: Any, tokenizer: Any) -> Any:
        captured["model"] = real_model(config, tokenizer)
        return captured["model"]

    def capturing_tokenizer(captions: list[str]) -> Any:
        captured["tokenizer"] = real_tokenizer(captions)
        return captured["tokenizer"]

    config = world_clip.WorldClipConfig(**TINY_CLIP)
    out = tmp_path_factory.mktemp("tiny_clip") / "clip"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(world_clip, "build_model", capturing_model)
        mp.setattr(world_clip, "build_tokenizer", capturing_tokenizer)
        world_clip.fit_world_clip_from_world(
            tiny_world, out, config=config, accelerator="cpu", progress=False
        )
    model = captured["model"].eval()
    return TrainedClip(out, f"hf:{out}", config, model, captured["tokenizer"])


@pytest.fixture(scope="session")
def clip_encoder(tiny_clip: TrainedClip) -> Any:
    """The tiny world CLIP loaded through the ``hf:`` spec (normalised, float32)."""
    from modtrans.encoders import build_encoder

    return build_encoder(tiny_clip.spec)


@pytest.fixture(scope="session")
def minilm() -> Any:
    """The packaged all-MiniLM-L6-v2 text encoder."""
    from modtrans.encoders import build_encoder

    return build_encoder("sbert:minilm")


@pytest.fixture(scope="session")
def tiny_store(tiny_world: Path, clip_encoder: Any, tmp_path_factory: pytest.TempPathFactory
               ) -> Path:
    """Every split of ``tiny_world`` embedded with the tiny CLIP (float32): a store root."""
    from modtrans.data.coco import read_coco_captions
    from modtrans.data.embed import embed_captioned_images, load_sidecar_metadata

    root = tmp_path_factory.mktemp("tiny_store") / "store"
    for captions in sorted(tiny_world.glob("*/captions.json")):
        split = captions.parent.name
        embed_captioned_images(
            read_coco_captions(captions), clip_encoder, clip_encoder, root / split,
            split=split, source={}, sidecar=load_sidecar_metadata(captions), dtype="float32",
            progress=False,
        )  # fmt: skip
    return root
