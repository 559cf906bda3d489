"""L-Verse's own figures: BiART's sampling speed, and its tokenizer's reconstructions.

- ``speed``: seconds per image and tokens per second of BiART text → image sampling (256
  image tokens of the SL tokenizer, then its decoder) at the default sizes, one image a call
  and 16, with the KV cache and without it (every step re-reads the whole sequence),
  measured in the same run. Random weights: the
  cost does not depend on what was learnt.
- ``tokenizer`` (with ``--work``, a folder the end-to-end benchmark trained L-Verse in): the
  SL and ML tokenizers' val reconstructions: PSNR, codebook usage and perplexity, the share
  of each image's shapes, colours and colour–shape pairs the judge finds in its
  reconstruction (and in the image itself), and FD in the world CLIP's image space; and
  classifier-free guidance: BiART's text → image draws for the end-to-end benchmark's val
  prompts (the first ``--guidance-prompts`` of each object count), judged as the e2e
  benchmark judges them, at each ``--guidance`` scale (1: none).

Usage: ``python benchmarks/bench_lverse.py [--work benchmarks/work/e2e_budget]
[--device cpu]``; writes ``benchmarks/results/lverse_<device>.json``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, write_result

from modtrans.decoders.augvae import AugVAE, AugVAEConfig, reconstruction_metrics
from modtrans.decoders.biart import BiART, BiARTConfig
from modtrans.encoders.tokenizer import build_tokenizer
from modtrans.io import read_json

logger = logging.getLogger("bench_lverse")

PROMPTS = ["a red circle", "a blue square to the left of a green triangle",
           "two yellow stars", "a purple ring above an orange cross"]


def speed(device: str, repeats: int, batches: tuple[int, ...] = (1, 16)) -> dict[str, Any]:
    tokenizer = build_tokenizer(PROMPTS)
    config = BiARTConfig(augvae=AugVAEConfig(variant="sl", levels=(16,)),
                         text_vocab=len(tokenizer))
    model = BiART(config, tokenizer).to(device).eval()
    tokens = config.image_tokens
    out: dict[str, Any] = {"image_tokens": tokens, "width": config.width,
                           "layers": config.layers}
    for batch in batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        for use_cache in (True, False):
            model.generate_image(prompts[:1], use_cache=use_cache)  # warm-up
            start = time.perf_counter()
            for i in range(repeats):
                model.generate_image(prompts, generator=torch.Generator().manual_seed(i),
                                     use_cache=use_cache)
            seconds = (time.perf_counter() - start) / (repeats * batch)
            key = f"batch_{batch}_{'cache' if use_cache else 'no_cache'}"
            out[key] = {"seconds_per_image": round(seconds, 4),
                        "tokens_per_s": round(tokens / seconds, 1)}
            logger.info("%s: %.3f s an image, %.0f tokens/s", key, seconds, tokens / seconds)
        out[f"batch_{batch}_cache_speedup"] = round(
            out[f"batch_{batch}_no_cache"]["seconds_per_image"]
            / out[f"batch_{batch}_cache"]["seconds_per_image"], 2)
    return out


def tokenizer_figures(work: Path, n: int) -> dict[str, Any]:
    from modtrans.encoders import build_encoder
    from modtrans.world.recogniser import AttributeRecogniser, world_split
    from modtrans.world.semantic import image_fd, truth_recall

    images, rows = world_split(work / "world", "val")
    images, rows = images[:n], rows[:n]
    judge = AttributeRecogniser.load(work / "e2e" / "recogniser")
    clip = build_encoder(f"hf:{(work / 'world_clip').resolve()}")
    out: dict[str, Any] = {"val_images": len(images),
                           "real": {"judge": truth_recall(judge, images, rows)}}
    for name in ("augvae", "augvae_ml"):
        model = AugVAE.load(work / "e2e" / name).eval()
        with torch.no_grad():
            rebuilt = model.reconstruct(images)
            out[name] = {"variant": model.config.variant, "levels": list(model.config.levels),
                         **reconstruction_metrics(model, images),
                         "judge": truth_recall(judge, rebuilt, rows),
                         "fd": round(image_fd(clip, images, rebuilt), 4)}
        logger.info("%s: %s", name, out[name])
    return out


def guidance_figures(work: Path, scales: list[float], per_group: int) -> dict[str, Any]:
    from modtrans.eval.endtoend import EndToEndConfig, full_prompts
    from modtrans.world.recogniser import AttributeRecogniser
    from modtrans.world.semantic import image_semantic_scores

    seed = EndToEndConfig().seed
    groups = full_prompts(work / "world" / "val", per_group, seed)
    prompts = [prompt for items in groups.values() for prompt, _ in items]
    judge = AttributeRecogniser.load(work / "e2e" / "recogniser")
    biart = BiART.load(work / "e2e" / "biart").eval()
    out: dict[str, Any] = {"prompts": len(prompts)}
    for scale in scales:
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        images = torch.cat([biart.generate_image(prompts[i:i + 32], generator=generator,
                                                 guidance=scale)
                            for i in range(0, len(prompts), 32)])
        out[f"guidance_{scale:g}"] = {
            **image_semantic_scores(judge, images, prompts, [True] * len(prompts)),
            "seconds_per_image": round((time.perf_counter() - start) / len(prompts), 4)}
        logger.info("guidance %g: %s", scale, out[f"guidance_{scale:g}"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="a folder the e2e benchmark trained in")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per setting")
    parser.add_argument("--parts", nargs="*", default=["speed", "tokenizer", "guidance"],
                        help="what to measure (each part replaces its own figures in the "
                        "result file, the others are kept)")
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--guidance", type=float, nargs="*", default=[1.0, 2.0, 4.0],
                        help="classifier-free guidance scales to judge (with --work)")
    parser.add_argument("--guidance-prompts", type=int, default=20,
                        help="val prompts per object count for the guidance figures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    path = RESULTS / f"lverse_{args.device}.json"
    figures: dict[str, Any] = read_json(path)["figures"] if path.is_file() else {}
    if "speed" in args.parts:
        figures["speed"] = speed(args.device, args.repeats)
    if args.work is not None and "tokenizer" in args.parts:
        figures["tokenizer"] = tokenizer_figures(args.work, args.val_images)
    if args.work is not None and "guidance" in args.parts:
        figures["guidance"] = guidance_figures(args.work, args.guidance, args.guidance_prompts)
    config = {"device": args.device, "repeats": args.repeats, "val_images": args.val_images,
              "guidance": args.guidance, "guidance_prompts": args.guidance_prompts,
              "work": str(args.work) if args.work else None}
    logger.info("wrote %s", write_result(f"lverse_{args.device}", config, figures))


if __name__ == "__main__":
    main()
