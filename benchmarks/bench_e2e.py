"""End-to-end generation on the world: text → image and image → text, judged semantically.

Uses the demo's world, world CLIP, store and translators (run ``bench_worldbench.py``
first; it fills ``--work``) and trains, in ``--work/e2e`` (resumed if present):

- the attribute recogniser (the judge; its held-out accuracy is reported first);
- the image VAE on image embeddings (for the translators) and on text embeddings (direct);
- the caption decoders: ClipCap on image embeddings, CapDec on noisy text embeddings.

Then, on ``val`` and on the ``novel`` hold-out:

- text → image, through ``ced`` (one draw), through ``ridge``, and direct: the recogniser's
  recall of the colour–shape pairs each prompt names and its hallucinations, for "full"
  prompts (every object named) with one, two and three objects; image FD against the
  split's real images in the world CLIP's image space;
- image → text, through ``ced`` + CapDec, ``ridge`` + CapDec, and ClipCap directly on the
  image embeddings: BLEU/METEOR/ROUGE-L/CIDEr against the five references, and semantic
  precision/recall against the ground truth.

Writes ``benchmarks/results/e2e.json`` and two pictures beside it
(``e2e_text2image.png``: prompt rows × routes; ``e2e_image2text.md``: captions per route).

Usage: ``python benchmarks/bench_e2e.py [--work benchmarks/work/worldbench] [--prompts 150]
[--images 300]``
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, write_result

from modtrans.data.coco import read_coco_captions
from modtrans.data.store import open_store
from modtrans.data.world import load_ground_truth
from modtrans.decoders.caption import CaptionDecoder, CaptionDecoderConfig, fit_caption_decoder
from modtrans.decoders.image_vae import (
    ConditionalVAE,
    ImageDecoderConfig,
    fit_image_decoder,
    image_grid,
)
from modtrans.encoders import build_encoder
from modtrans.encoders.world_clip import load_images
from modtrans.eval.captioning import caption_metrics
from modtrans.eval.recogniser import AttributeRecogniser, RecogniserConfig, fit_recogniser
from modtrans.eval.semantic import caption_semantic_scores, image_fd, image_semantic_scores
from modtrans.io import atomic_open, read_json
from modtrans.translators.base import load_translator

logger = logging.getLogger("bench_e2e")
SEED = 0


def _train_models(work: Path, epochs_scale: float) -> dict[str, Any]:
    """Train (or reuse) the judge and the four decoders; returns their summaries."""
    e2e, stores = work / "e2e", work / "store"
    train, val = open_store(stores, "train"), open_store(stores, "val")
    scale = max(epochs_scale, 0.01)

    def epochs(n: int) -> int:
        return max(1, round(n * scale))

    summaries: dict[str, Any] = {}
    if not (e2e / "recogniser" / "recogniser_report.json").is_file():
        fit_recogniser(work / "world", e2e / "recogniser",
                       RecogniserConfig(epochs=epochs(6)), progress=False)
    summaries["recogniser"] = read_json(e2e / "recogniser" / "recogniser_report.json")
    jobs = {
        "vae_image": (fit_image_decoder, ImageDecoderConfig(condition="image", epochs=epochs(10))),
        "vae_text": (fit_image_decoder, ImageDecoderConfig(condition="text", epochs=epochs(2))),
        "clipcap": (fit_caption_decoder, CaptionDecoderConfig(mode="clipcap", epochs=epochs(3))),
        "capdec": (fit_caption_decoder, CaptionDecoderConfig(mode="capdec", epochs=epochs(3))),
    }
    for name, (fit, config) in jobs.items():
        if not (e2e / name / "summary.json").is_file():
            fit(train, val, e2e / name, config, progress=False)
        summaries[name] = read_json(e2e / name / "summary.json")
    return summaries


def _prompts(world_split: Path, per_group: int, rng: np.random.Generator
             ) -> dict[int, list[tuple[str, int]]]:
    """Full captions (every object named) of images with 1, 2, 3 distinct objects:
    group → [(prompt, image row)]."""
    data = read_coco_captions(world_split / "captions.json")
    rows = {r["image_id"]: r for r in load_ground_truth(world_split)}
    groups: dict[int, list[tuple[str, int]]] = {1: [], 2: [], 3: []}
    for i, (image_id, caps, extra) in enumerate(zip(data.image_ids, data.captions, data.extra,
                                                    strict=True)):
        n = len({(o["colour"], o["shape"]) for o in rows[image_id]["objects"]})
        full = [c for c, e in zip(caps, extra, strict=True) if e.get("kind") == "full"]
        if n in groups and full:
            groups[n].append((full[0], i))
    return {n: [items[j] for j in rng.permutation(len(items))[:per_group]]
            for n, items in groups.items()}


def text_to_image(work: Path, split: str, per_group: int, judge: AttributeRecogniser,
                  clip: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    e2e = work / "e2e"
    groups = _prompts(work / "world" / split, per_group, np.random.default_rng(SEED))
    vae_image = ConditionalVAE.load(e2e / "vae_image")
    vae_text = ConditionalVAE.load(e2e / "vae_text")
    translators = {m: load_translator(work / "translators" / "text2image" / m)
                   for m in ("ced", "ridge")}

    def generate(route: str, prompts: list[str]) -> torch.Tensor:
        """One image per prompt, seeded: through a translator (one draw) or direct."""
        text_emb = clip.encode_texts(prompts)
        generator = torch.Generator().manual_seed(SEED)
        if route == "direct":
            return vae_text.generate(text_emb, generator=generator)
        e = translators[route].translate(text_emb, mode="sample", generator=generator)
        return vae_image.generate(e, generator=generator)

    world = read_coco_captions(work / "world" / split / "captions.json")
    real = load_images(world.image_paths[:2000], 64)
    example_prompts = [groups[n][0][0] for n in (1, 2, 3) if groups[n]]
    results: dict[str, Any] = {}
    examples: dict[str, torch.Tensor] = {}
    for route in ("ced", "ridge", "direct"):
        by_objects, generated = {}, []
        for n, items in groups.items():
            prompts = [p for p, _ in items]
            if prompts:
                images = generate(route, prompts)
                generated.append(images)
                by_objects[f"{n}_objects"] = image_semantic_scores(
                    judge, images, prompts, [True] * len(prompts))
        results[route] = {"by_objects": by_objects,
                          "fd": image_fd(clip, real, torch.cat(generated))}
        examples[route] = generate(route, [p for p in example_prompts for _ in range(6)])
    return results, examples, example_prompts


def image_to_text(work: Path, split: str, n_images: int, clip: Any
                  ) -> tuple[dict[str, Any], dict[str, list[str]], list[str]]:
    e2e = work / "e2e"
    store = open_store(work / "store", split)
    n = min(n_images, store.n_images)
    image_emb = torch.from_numpy(store.image_embeddings[:n].astype(np.float32))
    meta = store.image_metadata()
    ids = meta.column("image_id").to_pylist()[:n]
    rows_by_id = {r["image_id"]: r for r in load_ground_truth(work / "world" / split)}
    rows = [rows_by_id[i] for i in ids]
    owner = np.asarray(store.caption_image_index)
    captions = store.text_metadata().column("caption").to_pylist()
    references = [[captions[j] for j in np.flatnonzero(owner == i)] for i in range(n)]
    capdec, clipcap = CaptionDecoder.load(e2e / "capdec"), CaptionDecoder.load(e2e / "clipcap")
    results: dict[str, Any] = {}
    outputs: dict[str, list[str]] = {}
    for route in ("ced", "ridge", "clipcap"):
        if route == "clipcap":
            predicted = clipcap.generate(image_emb, num_beams=3)
        else:
            translator = load_translator(work / "translators" / "image2text" / route)
            e = translator.translate(image_emb, mode="mean", n_samples=8,
                                     generator=torch.Generator().manual_seed(SEED))
            predicted = capdec.generate(e, num_beams=3)
        outputs[route] = predicted
        results[route] = {**caption_metrics(predicted, references),
                          **caption_semantic_scores(predicted, rows)}
    paths = meta.column("image_path").to_pylist()[:n]
    return results, outputs, paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/worldbench"))
    parser.add_argument("--prompts", type=int, default=150, help="prompts per object count")
    parser.add_argument("--images", type=int, default=300, help="images to caption per split")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply every decoder's epochs (quick runs: 0.2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(SEED)
    if not (args.work / "store").is_dir():
        raise FileNotFoundError(f"{args.work} has no store; run bench_worldbench.py first")
    summaries = _train_models(args.work, args.epochs_scale)
    judge = AttributeRecogniser.load(args.work / "e2e" / "recogniser")
    clip = build_encoder(f"hf:{args.work / 'world_clip'}")
    figures: dict[str, Any] = {"recogniser": summaries["recogniser"], "training": summaries,
                               "text_to_image": {}, "image_to_text": {}}
    lines = ["# Image → text examples", ""]
    for split in ("val", "novel"):
        t2i, examples, prompts = text_to_image(args.work, split, args.prompts, judge, clip)
        figures["text_to_image"][split] = t2i
        i2t, outputs, paths = image_to_text(args.work, split, args.images, clip)
        figures["image_to_text"][split] = i2t
        if split == "val":
            stacked = torch.cat([examples[r].view(len(prompts), 6, 64, 64, 3)
                                 for r in ("ced", "ridge", "direct")], dim=1)
            image_grid(stacked.reshape(-1, 64, 64, 3), rows=len(prompts)).save(
                RESULTS / "e2e_text2image.png")
            figures["text_to_image_grid"] = {"rows": prompts,
                                             "columns": "6 × ced, 6 × ridge, 6 × direct"}
            for i in range(8):
                lines += [f"**{Path(paths[i]).name}**", ""]
                lines += [f"- {route}: {outputs[route][i]}" for route in outputs]
                lines.append("")
    with atomic_open(RESULTS / "e2e_image2text.md") as f:
        f.write("\n".join(lines))
    path = write_result("e2e", vars(args) | {"work": str(args.work)}, figures)
    logger.info("wrote %s", path)
    logger.info(json.dumps({k: figures[k] for k in ("text_to_image", "image_to_text")},
                           indent=1)[:4000])


if __name__ == "__main__":
    main()
