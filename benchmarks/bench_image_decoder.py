"""Image decoder variants on the e2e prompts: what their draws hold, judged.

The e2e findings put the loss of shapes between the conditioning embedding and the drawn
image. This judges variants of the benchmark folder's image decoder (``e2e/vae_image``) on
the same prompts and draws as the e2e evaluation: ``oracle`` (the prompt's own image
embedding), ``ced`` (one translator draw) and, with ``--candidates`` > 1, ``ced-rerank``
(the best of that many draws by CLIP score), for val prompts naming one, two and three
objects; ``reconstruction`` (redrawn from the VAE's posterior) and ``real`` (the prompt's
image) bound them. A variant that changes only ``prior`` options keeps the e2e VAE and
retrains its prior (``refit_latent_prior``); any other option trains a whole decoder. A
variant already in the work folder with the same options is reused. ``bench_e2e.py`` must
have run first (judge, decoder, translators).

Usage: ``python benchmarks/bench_image_decoder.py [--work benchmarks/work/worldbench]
[--variants default,beta-1 ...] [--threads N] [--train-only]``; writes
``benchmarks/results/image_decoder.json``. ``--train-only`` with one variant and
``--threads 1`` lets two variants train side by side on two cores.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from _common import write_result

from modtrans.data.store import open_store
from modtrans.decoders.image_vae import (
    ConditionalVAE,
    ImageDecoderConfig,
    fit_image_decoder,
    refit_latent_prior,
)
from modtrans.encoders import build_encoder
from modtrans.eval.endtoend import RERANK, RouteGenerator, full_prompts
from modtrans.images import load_images
from modtrans.io import read_json
from modtrans.world.recogniser import AttributeRecogniser
from modtrans.world.semantic import image_semantic_scores

logger = logging.getLogger("bench_image_decoder")

#: variant → ImageDecoderConfig options over the e2e decoder's (``prior``: its options)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "prior-mean-cosine-lr": {"prior": {"target": "mean", "lr_decay": "cosine"}},
    "prior-deep": {"prior": {"depth": 2}},
    "beta-1": {"beta": 1.0},
    "grid-16": {"grid": 16, "prior": {"width": 32}},
}
KEPT = ("colours_recall", "shapes_recall", "pairs_recall", "pairs_hallucination")


def variant_config(base: ImageDecoderConfig, options: dict[str, Any]) -> ImageDecoderConfig:
    """``base`` with ``options`` over it, ``prior`` options merged into its own."""
    saved = base.to_dict()
    return ImageDecoderConfig.from_dict({**saved, **options,
                                         "prior": {**saved["prior"], **options.get("prior", {})}})


def variant_decoder(work: Path, name: str) -> Path:
    """The decoder folder of variant ``name``, trained here unless already there."""
    base_dir = work / "e2e" / "vae_image"
    base = ConditionalVAE.read_config(base_dir)
    options = VARIANTS[name]
    wanted = variant_config(base, options)
    if wanted == base:
        return base_dir
    out = work / "decoder_variants" / name
    if (out / "summary.json").is_file() and ConditionalVAE.read_config(out) == wanted:
        return out
    if out.exists():
        shutil.rmtree(out)
    train, val = open_store(work / "store", "train"), open_store(work / "store", "val")
    if set(options) == {"prior"}:
        shutil.copytree(base_dir, out, ignore=shutil.ignore_patterns("*logs"))
        refit_latent_prior(train, val, out, options["prior"], progress=False)
    else:
        fit_image_decoder(train, val, out, wanted, progress=False)
    return out


def judge_routes(generate: RouteGenerator, judge: AttributeRecogniser,
                 groups: dict[int, list[tuple[str, Path]]], routes: list[str]) -> dict[str, Any]:
    """Scores per route and object count on the prompts of ``groups``."""
    out: dict[str, Any] = {}
    for route in routes:
        out[route] = {}
        for n, items in groups.items():
            scores = image_semantic_scores(judge, generate(route, items),
                                           [prompt for prompt, _ in items], [True] * len(items))
            out[route][f"{n}_objects"] = {k: round(scores[k], 4) for k in KEPT}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/worldbench"))
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {sorted(VARIANTS)}")
    parser.add_argument("--prompts", type=int, default=150, help="prompts per object count")
    parser.add_argument("--candidates", type=int, default=8, help="draws per ced-rerank prompt")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--train-only", action="store_true", help="train, do not judge")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    needed = ["e2e/vae_image"] + ([] if args.train_only else
                                  ["e2e/recogniser", "translators/text2image/ced"])
    for path in needed:
        if not (args.work / path).is_dir():
            parser.error(f"{args.work} has no {path}: run benchmarks/bench_e2e.py first")
    folders = {name: variant_decoder(args.work, name) for name in names}
    if args.train_only:
        return
    torch.set_grad_enabled(False)
    judge = AttributeRecogniser.load(args.work / "e2e" / "recogniser")
    clip = build_encoder(f"hf:{(args.work / 'world_clip').resolve()}")
    groups = full_prompts(args.work / "world" / "val", args.prompts, seed=0)
    routes = ["reconstruction", "oracle", "ced"] + (["ced" + RERANK] if args.candidates > 1
                                                    else [])
    generate = RouteGenerator(args.work, clip, seed=0, candidates=args.candidates)
    figures: dict[str, Any] = {"variants": {}}
    for name, folder in folders.items():
        generate.vae_image = ConditionalVAE.load(folder)
        summary = read_json(folder / "summary.json")
        figures["variants"][name] = {
            "options": VARIANTS[name],
            "vae_seconds": summary.get("vae_seconds"),
            "prior_seconds": summary.get("prior_seconds"),
            "val_vae_rec": summary.get("val/rec"), "val_vae_kl": summary.get("val/kl"),
            "val_prior_loss": summary.get("val/prior_loss"),
            "routes": judge_routes(generate, judge, groups, routes)}
        logger.info("%s: %s", name, figures["variants"][name]["routes"])
    figures["real"] = {f"{n}_objects": {k: round(v, 4) for k, v in image_semantic_scores(
        judge, load_images([path for _, path in items], 64), [p for p, _ in items],
        [True] * len(items)).items() if k in KEPT} for n, items in groups.items()}
    path = write_result("image_decoder", {"work": str(args.work), "variants": names,
                                         "prompts": args.prompts, "split": "val",
                                         "candidates": args.candidates}, figures)
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
