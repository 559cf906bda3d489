"""The token decoder's own figures: its sampling speed, and the ceiling study.

- ``speed``: seconds per image of the token decoder's sampling (codes with the KV cache and
  guidance, then the tokenizer's decoder), one image a call and 16, and without the cache;
  beside it the VAE + latent prior's ``generate`` in the same run (the ratio is the figure to
  compare). With ``--work``, the decoders trained there (``e2e/token_image``,
  ``e2e/vae_image``); else random weights at the default sizes (the cost does not depend on
  what was learnt).
- ``ceiling`` (with ``--work`` and the end-to-end result ``--result``, written by
  ``bench_e2e.py --tag tokens``): how much of the embedding's shape information each decoder
  recovers, per object count: the val accuracy of a linear probe of the main shape in the
  image embeddings of images with n objects, beside the ``oracle`` route's shape recall
  (decoding the prompt's own image embedding) of each decoder, what each decoder can draw at
  all (``reconstruction``: the VAE's posterior; ``tokens-reconstruction``: the tokenizer) and
  the real images.
- ``tokenizers`` (with ``--work``, a folder of its own): what a token decoder could draw at
  all with each tokenizer, at a budget the CPU runs cannot give. In a world made there
  (``--world-images``), it trains the judge and tokenizers of several grids, each at the
  end-to-end benchmark's budget and at ``--tokenizer-epochs`` on every train image, and judges
  their reconstructions of the test and novel images per object count (shape, colour and
  pair recall of the ground truth), beside the real images. Meant for the GPU machine.

Usage: ``python benchmarks/bench_token_decoder.py [--work benchmarks/work/worldbench]
[--parts speed ceiling tokenizers]``; writes ``benchmarks/results/token_decoder_<device>.json``
(``cuda`` where a GPU is found, else ``cpu``).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, write_result

from modtrans.io import read_json

logger = logging.getLogger("bench_token_decoder")


def _timed(draw: Any, rows: int, repeats: int) -> float:
    """Seconds per image of ``draw(rows)``, after one warm-up call."""
    draw(1)
    start = time.perf_counter()
    for _ in range(repeats):
        draw(rows)
    return round((time.perf_counter() - start) / (repeats * rows), 4)


def speed(work: Path | None, repeats: int, batches: tuple[int, ...] = (1, 16)) -> dict[str, Any]:
    from modtrans.decoders.augvae import AugVAEConfig
    from modtrans.decoders.image_vae import ConditionalVAE, ImageDecoderConfig
    from modtrans.decoders.token_decoder import TokenDecoder, TokenDecoderConfig
    from modtrans.eval.endtoend import EndToEndConfig

    if work is not None:
        tokens = TokenDecoder.load(work / "e2e" / "token_image")
        vae = ConditionalVAE.load(work / "e2e" / "vae_image")
    else:
        tokenizer = AugVAEConfig(**EndToEndConfig().tokenizer)
        tokens = TokenDecoder(TokenDecoderConfig(embed_dim=64, augvae=tokenizer)).eval()
        vae = ConditionalVAE(ImageDecoderConfig(embed_dim=64)).eval()
    dim = tokens.config.embed_dim
    out: dict[str, Any] = {"trained": work is not None, "tokens": tokens.config.tokens,
                           "width": tokens.config.width, "layers": tokens.config.layers,
                           "guidance": tokens.config.guidance,
                           "prior_steps": vae.config.prior.steps}

    def token_draw(use_cache: bool):
        return lambda n: tokens.generate(torch.randn(n, dim), use_cache=use_cache,
                                         generator=torch.Generator().manual_seed(0))

    for batch in batches:
        figures = {"tokens_cache": _timed(token_draw(True), batch, repeats),
                   "tokens_no_cache": _timed(token_draw(False), batch, repeats),
                   "vae_prior": _timed(lambda n: vae.generate(
                       torch.randn(n, dim), generator=torch.Generator().manual_seed(0)),
                       batch, repeats)}
        figures["cache_speedup"] = round(figures["tokens_no_cache"] / figures["tokens_cache"], 2)
        figures["tokens_over_vae"] = round(figures["tokens_cache"] / figures["vae_prior"], 2)
        out[f"batch_{batch}"] = figures
        logger.info("batch %d: %s (seconds per image)", batch, figures)
    return out


def ceiling(work: Path, result: Path) -> dict[str, Any]:
    from modtrans.data.store import open_store
    from modtrans.eval.encoder_report import linear_probe

    train, val = open_store(work / "store", "train"), open_store(work / "store", "val")
    probes = {f"{n}_objects": round(linear_probe(train, val, "main_shape",
                                                 where=("n_objects", n))["accuracy"], 4)
              for n in (1, 2, 3)}
    routes = ("real", "reconstruction", "oracle", "tokens-reconstruction", "tokens-oracle")
    t2i = read_json(result)["figures"]["text_to_image"]
    out: dict[str, Any] = {"probe_main_shape_val": probes}
    for split, by_route in t2i.items():
        out[split] = {group: {route: round(by_route[route]["by_objects"][group]
                                           ["shapes_recall"], 4)
                              for route in routes if route in by_route}
                      for group in probes}
    logger.info("ceiling: %s", out)
    return out


#: The tokenizers compared: (name, AugVAEConfig overrides). The first is the token decoder's
#: in the end-to-end benchmark (80 codes), the second L-Verse's grids (320), the third a finer
#: pair of grids (1,280 codes) as the reference of what a finer grid keeps.
TOKENIZERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("8x8+4x4", {"levels": [8, 4], "channels": [16, 32, 64, 64]}),
    ("16x16+8x8", {"levels": [16, 8], "channels": [32, 64, 128]}),
    ("32x32+16x16", {"levels": [32, 16], "channels": [32, 64]}),
)
#: The end-to-end benchmark's tokenizer budget (``configs/e2e_tokens.yaml``).
E2E_BUDGET = {"images": 4000, "epochs": 2}


def _by_objects(judge: Any, images: torch.Tensor, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The judge's recall of each image's ground truth, per object count."""
    from modtrans.world.semantic import truth_recall

    out = {}
    for n in (1, 2, 3):
        keep = [i for i, row in enumerate(rows) if len(row["objects"]) == n]
        out[f"{n}_objects"] = truth_recall(judge, images[keep], [rows[i] for i in keep])
    return out


def tokenizers(work: Path, world_images: int, epochs: int, judge_epochs: int,
               names: list[str]) -> dict[str, Any]:
    from modtrans.decoders.augvae import AugVAE, AugVAEConfig, fit_augvae
    from modtrans.world.generator import WorldConfig, generate_world
    from modtrans.world.recogniser import (
        AttributeRecogniser,
        RecogniserConfig,
        fit_recogniser,
        world_split,
    )

    world = work / "world"
    if not (world / "world.json").is_file():
        generate_world(WorldConfig(n_images=world_images), world, overwrite=True)
    if not (work / "judge" / "recogniser_report.json").is_file():
        fit_recogniser(world, work / "judge", RecogniserConfig(epochs=judge_epochs),
                       resume=(work / "judge").is_dir())
    judge = AttributeRecogniser.load(work / "judge")
    train, _ = world_split(world, "train")
    val, _ = world_split(world, "val")
    splits = {split: world_split(world, split) for split in ("test", "novel")}
    out: dict[str, Any] = {"world_images": world_images, "train_images": len(train),
                           "judge": read_json(work / "judge" / "recogniser_report.json"),
                           "real": {split: _by_objects(judge, *data)
                                    for split, data in splits.items()}}
    budgets = {"e2e": E2E_BUDGET, "long": {"images": len(train), "epochs": epochs}}
    with torch.enable_grad():
        for name, overrides in TOKENIZERS:
            if name not in names:
                continue
            for budget, b in budgets.items():
                folder = work / f"tokenizer_{name}_{budget}"
                if not (folder / "summary.json").is_file():
                    config = AugVAEConfig(**overrides, epochs=b["epochs"])
                    fit_augvae(train[:b["images"]], val[:500], folder, config,
                               resume=folder.is_dir())
                summary = read_json(folder / "summary.json")
                model = AugVAE.load(folder).eval()
                with torch.no_grad():
                    rebuilt = {split: _by_objects(judge, model.decode(model.encode(images)),
                                                  rows)
                               for split, (images, rows) in splits.items()}
                out[f"{name}_{budget}"] = {
                    "tokens": model.config.tokens, "images": summary["images"],
                    "epochs": b["epochs"], "seconds": round(summary["seconds"], 1),
                    "val": summary["val"], **rebuilt}
                logger.info("%s at the %s budget: %s", name, budget, out[f"{name}_{budget}"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="a folder bench_e2e.py trained in")
    parser.add_argument("--result", type=Path, default=RESULTS / "e2e_tokens.json",
                        help="the end-to-end result the ceiling study reads")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per setting")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--world-images", type=int, default=20_000,
                        help="the tokenizer study's world size")
    parser.add_argument("--tokenizer-epochs", type=int, default=20,
                        help="the tokenizer study's long budget, over every train image")
    parser.add_argument("--judge-epochs", type=int, default=10,
                        help="the tokenizer study's judge epochs")
    parser.add_argument("--tokenizers", nargs="*", default=[n for n, _ in TOKENIZERS],
                        choices=[n for n, _ in TOKENIZERS], help="the tokenizers studied")
    parser.add_argument("--parts", nargs="*", default=["speed", "ceiling"],
                        help="what to measure (each replaces its own figures in the result "
                        "file, the others are kept)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    name = "token_decoder_" + ("cuda" if torch.cuda.is_available() else "cpu")
    path = RESULTS / f"{name}.json"
    previous = read_json(path) if path.is_file() else {}
    figures: dict[str, Any] = previous.get("figures", {})
    config: dict[str, Any] = previous.get("config", {})
    if {"speed", "ceiling"} & set(args.parts):
        config.update({"repeats": args.repeats, "threads": args.threads,
                       "work": str(args.work) if args.work else None,
                       "result": str(args.result)})
    if "speed" in args.parts:
        figures["speed"] = speed(args.work, args.repeats)
    if "ceiling" in args.parts:
        if args.work is None or not args.result.is_file():
            parser.error("the ceiling study needs --work and the end-to-end --result")
        figures["ceiling"] = ceiling(args.work, args.result)
    if "tokenizers" in args.parts:
        if args.work is None:
            parser.error("the tokenizer study needs --work (a folder of its own)")
        figures["tokenizers"] = tokenizers(args.work, args.world_images, args.tokenizer_epochs,
                                           args.judge_epochs, args.tokenizers)
        config["tokenizers"] = {"work": str(args.work), "threads": args.threads,
                                "world_images": args.world_images,
                                "tokenizer_epochs": args.tokenizer_epochs,
                                "judge_epochs": args.judge_epochs, "tokenizers": args.tokenizers}
    logger.info("wrote %s", write_result(name, config, figures))


if __name__ == "__main__":
    main()
