"""``ced``'s mean map: closed-form ridge against ridge plus an MLP correction learned jointly.

Trains ridge, mlp, ``ced`` (``mean_map`` ridge, the default) and ``ced`` with ``mean_map``
mlp in both directions and evaluates them with the WorldBench code on val and novel, with
the demo's settings (mlp 3 epochs, both ``ced`` 2 epochs, 250 images, the mean of 8 draws).
Two stores of the benchmark world (``bench_worldbench.py`` builds it):

* ``world-clip``: the world CLIP for both modalities (the demo's store);
* ``minilm-text``: the world CLIP's images with all-MiniLM-L6-v2 caption embeddings, a text
  encoder that was never aligned with that image space (built here when missing).

Usage: ``python benchmarks/bench_mean_map.py [--work benchmarks/work/worldbench]``; writes
``benchmarks/results/mean_map.json``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from _common import write_result

from modtrans.data.coco import read_coco_captions
from modtrans.data.embed import embed_captioned_images, load_sidecar_metadata
from modtrans.data.pairs import load_pairs
from modtrans.data.store import EmbeddingStore, is_store, open_store
from modtrans.encoders import build_encoder
from modtrans.eval.worldbench import EvalOptions, evaluate_translator
from modtrans.training.translator import TrainConfig, fit_translator

logger = logging.getLogger("bench_mean_map")

#: variant → (method, params, TrainConfig overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "ridge": ("ridge", {}, {}),
    "mlp": ("mlp", {}, {"epochs": 3}),
    "ced": ("ced", {}, {"epochs": 2}),
    "ced-mlp-map": ("ced", {"mean_map": "mlp"}, {"epochs": 2}),
}
KEPT = ("sim", "R@1", "R@5", "R@10", "MedR", "fd", "diversity", "sim_sample")
SPLITS = ("val", "novel")


def minilm_store(work: Path) -> Path:
    """The world's splits embedded with the world CLIP's images and MiniLM captions."""
    stores, world = work / "store_minilm", work / "world"
    todo = [s for s in ("train", *SPLITS) if not (
        is_store(stores / s) and EmbeddingStore(stores / s).manifest.get("complete"))]
    if not todo:
        return stores
    image_encoder = build_encoder(f"hf:{(work / 'world_clip').resolve()}")
    text_encoder = build_encoder("sbert:minilm")
    for split in todo:
        out = stores / split
        captions = world / split / "captions.json"
        embed_captioned_images(
            read_coco_captions(captions), image_encoder, text_encoder, out, split=split,
            source={"captions": str(captions)}, sidecar=load_sidecar_metadata(captions),
            resume=True, progress=False)
    return stores


def run_store(stores: Path, models: Path, eval_images: int, n_samples: int) -> dict[str, Any]:
    """Every variant, both directions: val and novel rows, and the training summaries."""
    tables, train_info = [], {}
    train, val = open_store(stores, "train"), open_store(stores, "val")
    for direction in ("text2image", "image2text"):
        fitted = {}
        for name, (method, params, train_config) in VARIANTS.items():
            model, info = fit_translator(
                method, load_pairs(train, direction), load_pairs(val, direction),
                models / direction / name, params=params,
                train_config=TrainConfig(**train_config), progress=False)
            fitted[name] = model
            train_info[f"{direction}/{name}"] = {
                k: info[k] for k in ("chosen", "seconds") if k in info}
            logger.info("%s %s %s: trained in %.0f s", stores.name, direction, name,
                        info["seconds"])
        for split in SPLITS:
            pairs = load_pairs(open_store(stores, split), direction, eval_images)
            rows = []
            for name, model in fitted.items():
                row = evaluate_translator(model, pairs, options=EvalOptions(n_samples=n_samples))
                rows.append({"variant": name, **{k: row[k] for k in KEPT}})
            tables.append({"direction": direction, "split": split, "rows": rows})
    return {"tables": tables, "train": train_info}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/worldbench"))
    parser.add_argument("--eval-images", type=int, default=250)
    parser.add_argument("--n-samples", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.work / "world_clip" / "config.json").is_file():
        raise SystemExit(f"{args.work} has no world CLIP; run benchmarks/bench_worldbench.py "
                         "first (or pass --work)")
    stores = {"world-clip": args.work / "store", "minilm-text": minilm_store(args.work)}
    figures = {name: run_store(path, args.work / "mean_map" / name, args.eval_images,
                               args.n_samples)
               for name, path in stores.items()}
    config = {"variants": {k: {"method": m, "params": p, "train": t}
                           for k, (m, p, t) in VARIANTS.items()},
              "stores": {k: str(v) for k, v in stores.items()},
              "eval_images": args.eval_images, "n_samples": args.n_samples}
    path = write_result("mean_map", config, figures)
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
