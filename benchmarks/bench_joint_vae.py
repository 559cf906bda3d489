"""The joint image–caption VAE on the end-to-end benchmark's world: its training cost, the
coherence of its joint samples against a random pairing, and its cross-modal rows scored as
every end-to-end route.

Stages in ``--work``, each reused when there (a folder the end-to-end benchmark filled, such
as ``benchmarks/work/e2e_budget``, lends its world, judge and world CLIP):

- the world of ``benchmarks/configs/e2e_budget_demo.yaml`` (its size, seed 0) and the judge
  (the end-to-end benchmark's recogniser options), so the prompts and images are that
  benchmark's;
- the joint VAE (``--config``: JointVAEConfig options) in ``e2e/joint``, resumed if killed;
- ``coherence``: ``--samples`` joint samples from the prior (seeded; the fitted mixture when
  the config has ``prior_components``, and N(0, I) beside it), the judge on each image
  against the caption parser on its caption, beside the same captions paired with other
  samples' images at random; also for ``--samples`` val images against their own real
  captions and against the joint VAE's captions of them (what agreement is attainable);
- ``reconstruction``: the share of each val image's shapes, colours and pairs the judge finds
  in its redrawing from the mean of q(z | image) (what the image decoder can draw at all),
  and in the image itself;
- ``cross_modal``: :func:`modtrans.eval.endtoend.joint_rows` on the end-to-end config's
  splits, prompts and images (FD when ``--work`` has a world CLIP);
- the first 16 joint samples as a grid (``joint_vae_samples.png``, row-major; their captions
  in the result file).

Usage: ``python benchmarks/bench_joint_vae.py [--work benchmarks/work/joint]
[--config benchmarks/configs/joint_vae.yaml] [--tag T]``; writes
``benchmarks/results/joint_vae.json`` (``joint_vae_<tag>.json`` with ``--tag``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, write_result

from modtrans.decoders.joint_vae import JointVAE, JointVAEConfig
from modtrans.demo import DemoConfig
from modtrans.eval.endtoend import EndToEndConfig, joint_rows, joint_samples, train_joint
from modtrans.io import read_json
from modtrans.world.generator import WorldConfig, generate_world
from modtrans.world.recogniser import (
    AttributeRecogniser,
    RecogniserConfig,
    fit_recogniser,
    world_split,
)
from modtrans.world.semantic import joint_coherence, truth_recall

logger = logging.getLogger("bench_joint_vae")

CONFIGS = Path(__file__).resolve().parent / "configs"


def prepare(work: Path, e2e: EndToEndConfig) -> None:
    """The world and the judge of the end-to-end benchmark, unless ``work`` has them."""
    world = work / "world"
    if not (world / "world.json").is_file():
        demo = DemoConfig.load(CONFIGS / "e2e_budget_demo.yaml")
        generate_world(WorldConfig(n_images=demo.n_images), world, progress=False,
                       overwrite=True)
    judge = work / "e2e" / "recogniser"
    if not (judge / "recogniser_report.json").is_file():
        fit_recogniser(world, judge, RecogniserConfig(**e2e.recogniser), progress=False,
                       resume=judge.is_dir())


def coherence(work: Path, model: JointVAE, judge: AttributeRecogniser, n: int
              ) -> dict[str, Any]:
    """Joint samples' coherence (their examples kept in ``work/e2e``; with a fitted prior
    also from N(0, I)), and the same measure on real val pairs and on val images captioned
    by the model."""
    from modtrans.data.coco import read_coco_captions

    start = time.perf_counter()
    prior = joint_samples(work / "e2e", model, judge, n, seed=0)
    seconds = time.perf_counter() - start
    real, _ = world_split(work / "world", "val")
    real = real[:n]
    references = read_coco_captions(work / "world" / "val" / "captions.json").captions[:n]
    own = [c for i in range(0, len(real), 64) for c in model.caption(real[i:i + 64])]
    out: dict[str, Any] = {}
    if model.config.prior_components:
        images, captions = model.sample_pairs(n, prior="standard",
                                              generator=torch.Generator().manual_seed(0))
        out["standard_prior"] = joint_coherence(judge, images, captions)
    return {"samples": n, "sample_and_judge_seconds": round(seconds, 2), "prior": prior, **out,
            "real_pairs": joint_coherence(judge, real, [texts[0] for texts in references]),
            "captioned_val": joint_coherence(judge, real, own)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/joint"))
    parser.add_argument("--config", type=Path, default=CONFIGS / "joint_vae.yaml",
                        help="JointVAEConfig options")
    parser.add_argument("--e2e-config", type=Path, default=CONFIGS / "e2e_budget.yaml",
                        help="the EndToEndConfig whose splits, prompts and images are scored")
    parser.add_argument("--splits", nargs="*", default=["val", "novel"],
                        help="splits scored (those of benchmarks/results/e2e_budget.json, "
                        "which the tables set the joint rows beside)")
    parser.add_argument("--samples", type=int, default=512, help="joint samples judged")
    parser.add_argument("--tag", default="", help="suffix of the result files (a variant)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    model_config = JointVAEConfig.load(args.config)
    e2e = EndToEndConfig.load(args.e2e_config)
    e2e = EndToEndConfig(**{**e2e.to_dict(), "joint": True, "splits": args.splits,
                            "joint_vae": model_config.to_dict()})
    prepare(args.work, e2e)
    summary = train_joint(args.work / "world", args.work / "e2e" / "joint", e2e,
                          progress=False)
    model = JointVAE.load(args.work / "e2e" / "joint")
    judge = AttributeRecogniser.load(args.work / "e2e" / "recogniser")
    clip = None
    if (args.work / "world_clip").is_dir():
        from modtrans.encoders import build_encoder

        clip = build_encoder(f"hf:{(args.work / 'world_clip').resolve()}")
    figures: dict[str, Any] = {
        "training": {k: v for k, v in summary.items() if k != "provenance"},
        "recogniser": read_json(args.work / "e2e" / "recogniser" / "recogniser_report.json"),
        "coherence": coherence(args.work, model, judge, args.samples)}
    logger.info("coherence: %s", figures["coherence"]["prior"])
    val, rows = world_split(args.work / "world", "val")
    val, rows = val[:args.samples], rows[:args.samples]
    figures["reconstruction"] = {
        "images": len(val), "real": truth_recall(judge, val, rows),
        "redrawn": truth_recall(judge, model.image_latents(model.posterior_images(val)[0]),
                                rows)}
    figures["cross_modal"] = {split: joint_rows(args.work / "world", split, e2e, judge, model,
                                                clip) for split in e2e.splits}
    name = f"joint_vae_{args.tag}" if args.tag else "joint_vae"
    shutil.copyfile(args.work / "e2e" / "joint_samples.png", RESULTS / f"{name}_samples.png")
    figures["grid"] = {"file": f"{name}_samples.png", "captions": read_json(
        args.work / "e2e" / "joint_samples.json")["captions"]}
    config = {"work": str(args.work), "joint_vae": model_config.to_dict(),
              "e2e": {k: e2e.to_dict()[k] for k in ("splits", "prompts_per_group", "images",
                                                     "seed")},
              "samples": args.samples, "fd": clip is not None,
              "config_file": f"benchmarks/configs/{args.config.name}"}
    logger.info("wrote %s", write_result(name, config, figures))


if __name__ == "__main__":
    main()
