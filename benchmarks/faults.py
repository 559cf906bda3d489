"""Randomized kill -9 of real ``modtrans embed`` and ``modtrans train`` processes.

Each job is started, killed at a random moment, resumed with ``--resume`` and killed again
until it finishes; the finished result is compared with an uninterrupted run's, and every
state left behind by a kill is checked (a store's complete shards, a checkpoint's weights).
Writes ``benchmarks/results/faults.json``: kills, rounds, rows lost and duplicated, stores
that differ, checkpoints unreadable or non-finite, models that differ. Run::

    python benchmarks/faults.py --kills 50

Every stage is kept in ``--work`` (default ``benchmarks/work/faults``), so a rerun reuses the
world, the encoder and the uninterrupted references.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_result
from safetensors.torch import load_file

from modtrans.data.store import EmbeddingStore

logger = logging.getLogger("faults")

TINY_CLIP = {"vision": "vit", "vision_width": 32, "text_width": 32, "heads": 2,
             "vision_layers": 1, "text_layers": 1, "projection_dim": 16, "epochs": 1,
             "batch_size": 32}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def modtrans(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "modtrans", "--quiet", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)


def run(*argv: str) -> float:
    """Run to completion; returns seconds."""
    start = time.perf_counter()
    process = modtrans(*argv)
    _, err = process.communicate()
    if process.returncode:
        raise RuntimeError(f"modtrans {' '.join(argv)} failed: {err.decode()[-2000:]}")
    return time.perf_counter() - start


def setup(work: Path, images: int) -> dict[str, Any]:
    """The world, a tiny encoder and the uninterrupted references (each made once)."""
    world, clip = work / "world", work / "clip"
    if not (world / "world.json").is_file():
        run("world", str(world), "--n", str(images), "--workers", "1", "--overwrite")
    if not (clip / "config.json").is_file():
        config = work / "clip.json"
        config.write_text(json.dumps(TINY_CLIP))
        run("fit-encoder", str(world), "--out", str(clip), "--config", str(config),
            "--accelerator", "cpu")
    times = work / "reference_seconds.json"
    if not times.is_file():
        shutil.rmtree(work / "ref_store", ignore_errors=True)
        shutil.rmtree(work / "ref_model", ignore_errors=True)
        seconds = {"embed": run(*embed_argv(work, work / "ref_store"))}
        val = embed_argv(work, work / "ref_store")
        run(*val[:val.index("--split") + 1], "val", *val[val.index("--split") + 2:])
        seconds["train"] = run(*train_argv(work, work / "ref_model"))
        times.write_text(json.dumps(seconds))
    return json.loads(times.read_text())


def embed_argv(work: Path, out: Path) -> list[str]:
    return ["embed", str(work / "world"), "--split", "train", "--encoder",
            f"hf:{work / 'clip'}", "--out", str(out), "--shard-size", "16", "--batch-size",
            "8", "--workers", "1"]


def train_argv(work: Path, out: Path) -> list[str]:
    return ["train", "--data", str(work / "ref_store"), "--direction", "text2image",
            "--method", "mlp", "--param", "width=32", "--epochs", "30", "--batch-size", "8",
            "--checkpoint-every", "3", "--logger", "none", "--out", str(out)]


def kill_until_done(argv: list[str], finished: Path, seconds: float, rng: random.Random,
                    check: Any, counts: dict[str, int]) -> None:
    """Start ``argv``, kill it at a random moment and resume, until ``finished`` exists;
    ``check()`` inspects what each kill left behind. The kill moment is drawn from up to the
    uninterrupted run's ``seconds``, half as long again after each kill, so that a run slowed
    by a busy machine still finishes."""
    resume: list[str] = []
    for attempt in itertools.count():
        process, started = modtrans(*argv, *resume), time.perf_counter()
        try:
            process.wait(timeout=rng.uniform(0.2, seconds * 1.5 ** attempt))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            counts["kills"] += 1
            logger.info("killed %s after %.1f s", argv[0], time.perf_counter() - started)
            check()
            resume = ["--resume"]
            continue
        if process.returncode:
            raise RuntimeError(f"modtrans {' '.join(argv + resume)} failed: "
                               f"{process.stderr.read().decode()[-2000:]}")
        if finished.exists():
            return


def store_rows(root: Path) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """The image ids of a store's complete shards, with its image and text embeddings."""
    store = EmbeddingStore(root)
    ids = store.image_metadata().column("image_id").to_pylist()
    return ids, np.asarray(store.image_embeddings[:]), np.asarray(store.text_embeddings[:])


def embed_rounds(work: Path, kills: int, seconds: float, rng: random.Random
                 ) -> dict[str, Any]:
    ref_ids, ref_img, ref_txt = store_rows(work / "ref_store" / "train")
    counts = {"kills": 0, "rounds": 0, "partial_stores_checked": 0, "rows_duplicated": 0,
              "rows_lost": 0, "stores_differing": 0}
    diff, out = 0.0, work / "cut_store"
    while counts["kills"] < kills:
        shutil.rmtree(out, ignore_errors=True)

        def check_partial() -> None:
            manifest = out / "train" / "manifest.json"
            if not manifest.is_file() or not json.loads(manifest.read_text())["shards"]:
                return  # killed before its first shard: nothing to check
            ids, _, _ = store_rows(out / "train")
            counts["partial_stores_checked"] += 1
            counts["rows_duplicated"] += len(ids) - len(set(ids))
            counts["rows_lost"] += len(set(ids) - set(ref_ids))  # rows that do not belong

        kill_until_done(embed_argv(work, out), out / "train" / "manifest.json", seconds, rng,
                        check_partial, counts)
        ids, img, txt = store_rows(out / "train")
        counts["rounds"] += 1
        counts["rows_duplicated"] += len(ids) - len(set(ids))
        counts["rows_lost"] += len(set(ref_ids) - set(ids))
        same_order = ids == ref_ids and img.shape == ref_img.shape and txt.shape == ref_txt.shape
        if same_order:
            diff = max(diff, float(np.abs(img.astype(np.float32) - ref_img).max()),
                       float(np.abs(txt.astype(np.float32) - ref_txt).max()))
        counts["stores_differing"] += not same_order
        logger.info("embed round %d: %d kills so far", counts["rounds"], counts["kills"])
    return {**counts, "max_abs_embedding_difference": diff}


def train_rounds(work: Path, kills: int, seconds: float, rng: random.Random
                 ) -> dict[str, Any]:
    reference = load_file(work / "ref_model" / "model.safetensors")
    counts = {"kills": 0, "rounds": 0, "checkpoints_checked": 0, "checkpoints_unreadable": 0,
              "checkpoints_non_finite": 0, "models_differing": 0}
    out = work / "cut_model"
    while counts["kills"] < kills:
        shutil.rmtree(out, ignore_errors=True)

        def check_checkpoint() -> None:
            path = out / "lightning" / "last.ckpt"
            if not path.is_file():
                return
            counts["checkpoints_checked"] += 1
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
            except Exception:
                counts["checkpoints_unreadable"] += 1
                return
            counts["checkpoints_non_finite"] += not all(torch.isfinite(t).all()
                                                        for t in state.values())

        kill_until_done(train_argv(work, out), out / "model.safetensors", seconds, rng,
                        check_checkpoint, counts)
        weights = load_file(out / "model.safetensors")
        counts["rounds"] += 1
        counts["models_differing"] += weights.keys() != reference.keys() or any(
            not torch.equal(weights[k], reference[k]) for k in reference)
        logger.info("train round %d: %d kills so far", counts["rounds"], counts["kills"])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="kills in all, half per job")
    parser.add_argument("--images", type=int, default=240, help="images in the world")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/faults"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seconds = setup(args.work, args.images)
    logger.info("uninterrupted runs: %s s", seconds)
    rng = random.Random(args.seed)
    figures = {"reference_seconds": seconds,
               "embed": embed_rounds(args.work, args.kills // 2, seconds["embed"], rng),
               "train": train_rounds(args.work, args.kills - args.kills // 2,
                                     seconds["train"], rng)}
    figures["seconds"] = round(time.perf_counter() - start, 1)
    path = write_result("faults", vars(args) | {"work": str(args.work)}, figures)
    print(json.dumps(figures, indent=2))
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
