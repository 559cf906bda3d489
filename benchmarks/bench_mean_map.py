"""``ced``'s mean map: closed-form ridge against ridge plus an MLP correction learned jointly.

Trains ridge, mlp, ``ced`` (``mean_map`` ridge, the default) and ``ced`` with ``mean_map``
mlp in both directions and evaluates them with the WorldBench code on val and novel, with
the demo's settings (mlp 3 epochs, both ``ced`` 2 epochs, 250 images, the mean of 8 draws).
For the two ``ced`` it also records the Sim of the mean term alone and of the mean of 16
and 64 draws (``--ks``), to show where their Sim is lost. Checkpoints already in the work
folder with the same options are reused, so a rerun only evaluates.
Two stores of the benchmark world (``bench_worldbench.py`` builds it):

* ``world-clip``: the world CLIP for both modalities (the demo's store);
* ``minilm-text``: the world CLIP's images with all-MiniLM-L6-v2 caption embeddings, a text
  encoder that was never aligned with that image space (built here when missing).

Usage: ``python benchmarks/bench_mean_map.py [--work benchmarks/work/worldbench]``; writes
``benchmarks/results/mean_map.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch
from _common import write_result

from modtrans.data.pairs import PairedSplit, load_pairs
from modtrans.data.store import open_store
from modtrans.demo import embed_world, stores_complete
from modtrans.eval.metrics import mean_cosine
from modtrans.eval.worldbench import EvalOptions, evaluate_translator
from modtrans.training.fit import Recipe
from modtrans.training.translator import fit_translator
from modtrans.translators.base import Translator, row_seeds

logger = logging.getLogger("bench_mean_map")

#: variant → (method, params, Recipe overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "ridge": ("ridge", {}, {}),
    "mlp": ("mlp", {}, {"epochs": 3}),
    "ced": ("ced", {}, {"epochs": 2}),
    "ced-mlp-map": ("ced", {"mean_map": "mlp"}, {"epochs": 2}),
}
KEPT = ("sim", "R@1", "R@5", "R@10", "MedR", "fd", "diversity", "sim_sample")
SPLITS = ("test", "novel")


def minilm_store(work: Path) -> Path:
    """The world's splits embedded with the world CLIP's images and MiniLM captions."""
    stores, world = work / "store_minilm", work / "world"
    if not stores_complete(stores, world):
        embed_world(world, stores, f"hf:{(work / 'world_clip').resolve()}", "sbert:minilm",
                    progress=False)
    return stores


def fit_or_load(method: str, params: dict[str, Any], train_config: dict[str, Any],
                train: PairedSplit, val: PairedSplit, ckpt: Path) -> tuple[Translator, dict]:
    """The checkpoint in ``ckpt`` when it was trained with these options, else a new fit."""
    info_file = ckpt / "summary.json"
    if info_file.is_file():
        model, info = Translator.load(ckpt), json.loads(info_file.read_text())
        same_train = all(info["train_config"].get(k) == v for k, v in train_config.items())
        if model.config.method == method and same_train and all(
                model.config.params.get(k) == v for k, v in params.items()):
            return model, info
    return fit_translator(method, train, val, ckpt, params=params,
                          recipe=Recipe(**train_config), progress=False)


def mean_mode_sims(model: Translator, pairs: PairedSplit, ks: list[int],
                   seed: int) -> dict[str, float]:
    """Sim of the mean term alone and of mean mode with K draws, as the evaluation draws them."""
    def sim(z: torch.Tensor) -> float:
        return mean_cosine(z if pairs.direction == "text2image" else z[pairs.owner],
                           pairs.target)

    with torch.no_grad():
        mapped = model.target_norm.inverse(model.mapped(model.cond_norm(pairs.queries)))
    out = {"map": sim(mapped)}
    for k in ks:
        out[f"K={k}"] = sim(model.translate(pairs.queries, mode="mean", n_samples=k,
                                            seed=row_seeds(seed, len(pairs.queries))))
    return out


def run_store(stores: Path, models: Path, eval_images: int, n_samples: int,
              ks: list[int]) -> dict[str, Any]:
    """Every variant, both directions: val and novel rows, and the training summaries."""
    tables, train_info = [], {}
    train, val = open_store(stores, "train"), open_store(stores, "val")
    options = EvalOptions(n_samples=n_samples)
    for direction in ("text2image", "image2text"):
        fitted = {}
        for name, (method, params, train_config) in VARIANTS.items():
            model, info = fit_or_load(method, params, train_config, load_pairs(train, direction),
                                      load_pairs(val, direction), models / direction / name)
            fitted[name] = model
            train_info[f"{direction}/{name}"] = {
                k: info[k] for k in ("chosen", "seconds") if k in info}
            logger.info("%s %s %s: trained in %.0f s", stores.name, direction, name,
                        info["seconds"])
        for split in SPLITS:
            pairs = load_pairs(open_store(stores, split), direction, eval_images)
            rows = []
            for name, model in fitted.items():
                row = evaluate_translator(model, pairs, options=options)
                rows.append({"variant": name, **{k: row[k] for k in KEPT}})
                if model.stochastic:
                    rows[-1]["sim_by_draws"] = mean_mode_sims(
                        model, pairs, [n_samples, *ks], options.seed)
            tables.append({"direction": direction, "split": split, "rows": rows})
    return {"tables": tables, "train": train_info}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/worldbench"))
    parser.add_argument("--eval-images", type=int, default=250)
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--ks", type=int, nargs="*", default=[16, 64],
                        help="more draws for the mean-mode Sim of the ced variants")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.work / "world_clip" / "config.json").is_file():
        raise SystemExit(f"{args.work} has no world CLIP; run benchmarks/bench_worldbench.py "
                         "first (or pass --work)")
    stores = {"world-clip": args.work / "store", "minilm-text": minilm_store(args.work)}
    figures = {name: run_store(path, args.work / "mean_map" / name, args.eval_images,
                               args.n_samples, args.ks)
               for name, path in stores.items()}
    config = {"variants": {k: {"method": m, "params": p, "train": t}
                           for k, (m, p, t) in VARIANTS.items()},
              "stores": {k: str(v) for k, v in stores.items()},
              "eval_images": args.eval_images, "n_samples": args.n_samples, "ks": args.ks}
    path = write_result("mean_map", config, figures)
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
