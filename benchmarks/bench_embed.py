"""Embedding throughput of a ViT-B/32-sized CLIP image tower over JPEGs of varied sizes.

Random weights cost exactly what real ones do. The benchmark writes its own JPEGs (sizes
drawn between 200 and 1000 px a side, like web images), saves the random CLIP with
``save_pretrained`` and loads it through ``hf:`` — the path real weights take — then
measures, in one run:

- ``decode``: DataLoader workers reading, decoding, resizing and normalising, no model;
- ``model``: ``encode_pixels`` on ready pixel batches, no decoding;
- ``end_to_end``: ``modtrans embed``'s own pipeline (workers + model + store writing).

The smaller of the first two is the bound; the end-to-end rate says how well they overlap.

Usage: ``python benchmarks/bench_embed.py [--n 512] [--device cpu] [--workers 2]
[--batch-size 64] [--dtype float32]``; on a GPU e.g. ``--n 20000 --device cuda --workers 16
--batch-size 512 --dtype float16``. Writes ``benchmarks/results/embed_throughput[_<device>].json``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from _common import write_result
from PIL import Image, ImageDraw

from modtrans.data.coco import CaptionedImages
from modtrans.data.embed import decoded_batches, embed_captioned_images
from modtrans.encoders import build_encoder
from modtrans.encoders.tokenizer import build_tokenizer

logger = logging.getLogger("bench_embed")
WORDS = ("a", "photo", "of", "the", "red", "green", "blue", "cat", "dog", "car", "tree",
         "house", "on", "in", "with")


def _write_jpeg(path: Path, seed: int) -> None:
    """One JPEG of a random size (200-1000 px a side): three discs drawn on upscaled noise."""
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(200, 1001, size=2))
    image = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8))
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(10, min(w, h) // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    image.save(path, quality=90)


def write_jpegs(folder: Path, n: int, seed: int = 0, workers: int = 1) -> CaptionedImages:
    """``n`` JPEGs (image ``i`` seeded by ``(seed, i)``, so any worker count writes the same
    files), one caption each."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}.jpg" for i in range(n)]
    seeds = [np.random.SeedSequence((seed, i)) for i in range(n)]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        list(pool.map(_write_jpeg, paths, seeds, chunksize=64))
    rng = np.random.default_rng(seed)
    return CaptionedImages(list(range(n)), paths,
                           [[" ".join(rng.choice(WORDS, size=8))] for _ in range(n)],
                           [[i] for i in range(n)], [[{}] for _ in range(n)])


def save_vit_b32_clip(folder: Path) -> str:
    """A randomly initialised CLIP with ViT-B/32's configuration, saved for ``hf:``."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tokenizer = build_tokenizer([" ".join(WORDS)])
    config = CLIPConfig(text_config={"vocab_size": len(tokenizer), "eos_token_id":
                                     tokenizer.eos_token_id, "bos_token_id":
                                     tokenizer.bos_token_id, "pad_token_id":
                                     tokenizer.pad_token_id})  # vision: ViT-B/32 defaults
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 224},
                          crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    return f"hf:{folder}"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="JPEGs to embed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory(prefix="modtrans-embed-bench-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        data = write_jpegs(tmp / "jpegs", args.n, workers=args.workers)
        logger.info("wrote %d JPEGs in %.1fs", args.n, time.perf_counter() - start)
        encoder = build_encoder(save_vit_b32_clip(tmp / "clip"), device=args.device, dtype=dtype)

        loader = decoded_batches(data, encoder.image_transform, batch_size=args.batch_size,
                                 workers=args.workers)
        start = time.perf_counter()
        batches = [b["pixels"] for b in loader]
        decode_s = time.perf_counter() - start

        encoder.encode_pixels(batches[0])  # warm-up (kernels, allocator)
        _sync(args.device)
        start = time.perf_counter()
        for pixels in batches:
            encoder.encode_pixels(pixels)
        _sync(args.device)
        model_s = time.perf_counter() - start

        start = time.perf_counter()
        summary = embed_captioned_images(data, encoder, encoder, tmp / "store", split="bench",
                                         source={}, batch_size=args.batch_size,
                                         workers=args.workers, progress=False)
        end_to_end_s = time.perf_counter() - start
    rates = {
        "decode_images_per_s": round(args.n / decode_s, 1),
        "model_images_per_s": round(args.n / model_s, 1),
        "end_to_end_images_per_s": round(summary["images_written"] / end_to_end_s, 1),
    }
    rates["bound"] = "decode" if rates["decode_images_per_s"] < rates["model_images_per_s"] \
        else "model"
    name = "embed_throughput" + ("" if args.device == "cpu" else f"_{args.device.split(':')[0]}")
    path = write_result(name, {**vars(args), "model": "CLIP ViT-B/32 config, random weights",
                               "jpeg_sizes": "200-1000 px a side"}, rates)
    logger.info("%s → %s", rates, path)


if __name__ == "__main__":
    main()
