"""The embedded default, end to end: world → world CLIP → embed → translators → report.

Every stage writes into one folder and is skipped when its output is already complete, so an
interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from modtrans.config import Config
from modtrans.io import read_json, write_json

logger = logging.getLogger(__name__)

DIRECTIONS = ("text2image", "image2text")


@dataclasses.dataclass
class DemoConfig(Config):
    """What the demo builds.

    Attributes:
        n_images: world size.
        clip: WorldClipConfig overrides.
        methods: translators trained and compared, in table order.
        method_params: per-method option overrides (e.g. net size).
        method_train: per-method Recipe overrides (epochs, max_time); epochs default to
            the method's own, as in ``modtrans train``.
        eval_images: images of each evaluation split used (their captions included).
        eval_splits: splits evaluated: held out from every choice (val picks the
            translators' λ and γ, so it is never reported).
        n_samples: draws averaged in mean mode.
        generation: EndToEndConfig overrides to also train the decoders and the judge and
            evaluate generation end to end (text → image, image → text); None: skipped.
    """

    n_images: int = 20_000
    clip: dict[str, Any] = dataclasses.field(default_factory=dict)
    methods: list[str] = dataclasses.field(default_factory=lambda: [
        "identity", "mean-shift", "ridge", "knn", "mlp", "ced-paper", "ced"])
    method_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=lambda: {
        "ced-paper": {"width": 512, "depth": 4, "emb_dim": 256, "steps": 10},
    })
    method_train: dict[str, dict[str, Any]] = dataclasses.field(default_factory=lambda: {
        "ced-paper": {"max_time": "00:00:00:20"},
    })
    eval_images: int = 250
    eval_splits: list[str] = dataclasses.field(default_factory=lambda: ["test", "novel"])
    n_samples: int = 8
    generation: dict[str, Any] | None = None


TINY_PRIOR = {"width": 32, "depth": 2, "emb_dim": 32, "train_steps": 20, "steps": 4}

#: The end-to-end stage at the tiny preset's size (``--preset tiny-generation``).
TINY_GENERATION: dict[str, Any] = {
    "prompts_per_group": 4, "images": 8, "candidates": 2,
    "recogniser": {"channels": [8, 16], "epochs": 1},
    "vae_image": {"channels": [8, 8, 16], "latent_channels": 2, "epochs": 1,
                  "prior": TINY_PRIOR},
    "vae_text": {"channels": [8, 8, 16], "latent_channels": 2, "epochs": 1,
                 "prior": TINY_PRIOR},
    "clipcap": {"width": 16, "layers": 1, "heads": 2, "epochs": 1},
    "capdec": {"width": 16, "layers": 1, "heads": 2, "epochs": 1},
    "capdec_paper": {"width": 16, "layers": 1, "heads": 2, "epochs": 1},
    "augvae": {"channels": [8, 8, 8], "codebook_size": 16, "code_dim": 8, "epochs": 1},
    "augvae_sl": {"epochs": 1},
    "biart": {"max_text_length": 16, "width": 16, "layers": 1, "heads": 2, "epochs": 1},
    "tokenizer": {"levels": [8, 4], "channels": [8, 8, 8, 8], "codebook_size": 16,
                  "code_dim": 8, "epochs": 1},
    "token_image": {"prefix": 2, "width": 16, "layers": 1, "heads": 2, "epochs": 1},
    "token_text": {"prefix": 2, "width": 16, "layers": 1, "heads": 2, "epochs": 1},
    "joint": True,
    "joint_vae": {"latent_dim": 4, "channels": [8, 8, 8, 8], "text_width": 16,
                  "text_layers": 1, "heads": 2, "prefix_length": 2, "max_text_length": 12,
                  "epochs": 1, "prior_components": 2},
}

PRESETS: dict[str, DemoConfig] = {
    "default": DemoConfig(),
    "tiny": DemoConfig(
        n_images=300,
        clip={"vision": "vit", "vision_width": 32, "text_width": 32, "heads": 2, "vision_layers": 1,
              "text_layers": 1, "projection_dim": 32, "epochs": 2, "batch_size": 64},
        method_params={
            "ced": {"width": 64, "depth": 2, "emb_dim": 64, "steps": 4},
            "ced-paper": {"width": 64, "depth": 2, "emb_dim": 64, "steps": 4},
            "mlp": {"width": 64},
        },
        method_train={m: {"epochs": 1} for m in ("mlp", "ced", "ced-paper")},
        eval_images=40,
        n_samples=2,
    ),
}
PRESETS["tiny-generation"] = dataclasses.replace(PRESETS["tiny"], generation=TINY_GENERATION)
#: the end-to-end options ``--generation`` adds to a preset that has none
GENERATION: dict[str, dict[str, Any]] = {"default": {}, "tiny": TINY_GENERATION}


def run_demo(out: str | Path, config: DemoConfig | None = None, *, progress: bool = True
             ) -> Path:
    """Run (or resume) the demo in ``out`` and return the path of ``report.html``: a finished
    stage is skipped, an interrupted one continues from its last checkpoint."""
    config = config or PRESETS["default"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = read_json(out / "timings.json") if (
        out / "timings.json").is_file() else {}

    def stage(name: str, done: bool, fn) -> None:
        if done:
            logger.info("demo: %s already done, skipped", name)
            return
        logger.info("demo: %s ...", name)
        start = time.perf_counter()
        fn()
        timings[name] = round(time.perf_counter() - start, 1)
        write_json(out / "timings.json", timings)

    world, clip, stores = out / "world", out / "world_clip", out / "store"
    stage("world", (world / "world.json").is_file(), lambda: _world(world, config, progress))
    stage("fit-encoder", (clip / "config.json").is_file(),
          lambda: _clip(world, clip, config, progress))
    spec = f"hf:{clip.resolve()}"
    stage("embed", stores_complete(stores, world),
          lambda: embed_world(world, stores, spec, progress=progress))
    stage("encoder-report", (out / "encoder_report.json").is_file(),
          lambda: _encoder_report(stores, out / "encoder_report.json"))
    for direction in DIRECTIONS:
        for method in config.methods:
            ckpt = out / "translators" / direction / method
            stage(f"train {direction} {method}", (ckpt / "config.json").is_file(),
                  lambda d=direction, m=method, c=ckpt: _train(stores, d, m, c, config,
                                                               progress))
        for split in config.eval_splits:
            result = out / "results" / f"{direction}_{split}.json"
            stage(f"eval {direction} {split}", result.is_file(),
                  lambda d=direction, s=split, r=result: _evaluate(stores, out, d, s, r,
                                                                   config, spec))
    if config.generation is not None:
        from modtrans.eval.endtoend import EndToEndConfig, run_end_to_end

        stage("end-to-end", (out / "e2e" / "results.json").is_file(),
              lambda: run_end_to_end(out, EndToEndConfig.from_dict(config.generation),
                                     progress=progress))
    from modtrans.eval.report import write_report

    return write_report(out)


def _world(world: Path, config: DemoConfig, progress: bool) -> None:
    from modtrans.world.generator import WorldConfig, generate_world

    generate_world(WorldConfig(n_images=config.n_images), world, progress=progress,
                   overwrite=True)


def _clip(world: Path, clip: Path, config: DemoConfig, progress: bool) -> None:
    from modtrans.world.clip import WorldClipConfig, fit_world_clip_from_world

    fit_world_clip_from_world(world, clip, config=WorldClipConfig(**config.clip),
                              progress=progress, resume=clip.is_dir())


def stores_complete(stores: Path, world: Path) -> bool:
    """Whether every split of ``world`` has a complete store under ``stores``."""
    from modtrans.data.store import EmbeddingStore, is_store

    splits = [p.parent.name for p in world.glob("*/captions.json")]
    return bool(splits) and all(
        is_store(stores / s) and EmbeddingStore(stores / s).manifest.get("complete")
        for s in splits)


def embed_world(world: Path, stores: Path, image_spec: str, text_spec: str | None = None, *,
                progress: bool = True) -> None:
    """Embed every split of a world into ``stores/<split>`` (resuming), its images with
    ``image_spec`` and its captions with ``text_spec`` (default: the same encoder)."""
    from modtrans.data.coco import read_coco_captions
    from modtrans.data.embed import embed_captioned_images, load_sidecar_metadata
    from modtrans.encoders import build_encoder

    image_encoder = build_encoder(image_spec)
    text_encoder = image_encoder if text_spec in (None, image_spec) else build_encoder(text_spec)
    for captions in sorted(world.glob("*/captions.json")):
        split = captions.parent.name
        embed_captioned_images(
            read_coco_captions(captions), image_encoder, text_encoder, stores / split,
            split=split, source={"captions": str(captions)},
            sidecar=load_sidecar_metadata(captions), resume=True, progress=progress)


def _encoder_report(stores: Path, path: Path) -> None:
    from modtrans.data.store import open_store
    from modtrans.eval.encoder_report import cross_modal_report, linear_probe

    val, train = open_store(stores, "val"), open_store(stores, "train")
    report = cross_modal_report(val, 1000)
    report["probes"] = {c: linear_probe(train, val, c) for c in ("main_shape", "main_colour")}
    write_json(path, report)


def _train(stores: Path, direction: str, method: str, ckpt: Path, config: DemoConfig,
           progress: bool) -> None:
    from modtrans.data.pairs import load_pairs
    from modtrans.data.store import open_store
    from modtrans.training.fit import Recipe
    from modtrans.training.translator import fit_translator
    from modtrans.translators.base import translator_class

    train, val = open_store(stores, "train"), open_store(stores, "val")
    fit_translator(
        method, load_pairs(train, direction), load_pairs(val, direction), ckpt,
        params=config.method_params.get(method),
        recipe=Recipe(**{"epochs": translator_class(method).default_epochs,
                         **config.method_train.get(method, {})}),
        image_encoder=train.image_encoder, text_encoder=train.text_encoder, progress=progress,
        resume=ckpt.is_dir())


def _evaluate(stores: Path, out: Path, direction: str, split: str, result: Path,
              config: DemoConfig, spec: str) -> None:
    from modtrans.data.pairs import load_pairs
    from modtrans.data.store import open_store
    from modtrans.encoders import build_encoder
    from modtrans.eval.worldbench import EvalOptions, evaluate_translator, world_shape_task
    from modtrans.translators.base import Translator

    store = open_store(stores, split)
    pairs = load_pairs(store, direction, config.eval_images)
    task = world_shape_task(store, build_encoder(spec))
    rows = []
    for method in config.methods:
        model = Translator.load(out / "translators" / direction / method)
        rows.append(evaluate_translator(model, pairs, zero_shot=task,
                                        options=EvalOptions(n_samples=config.n_samples)))
    write_json(result, {"direction": direction, "split": split, "rows": rows})
