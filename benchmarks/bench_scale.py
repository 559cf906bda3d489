"""How cost grows with the store: streamed training, evaluation and indexing at N pairs.

Synthetic paired 512-d float16 embeddings (:mod:`modtrans.data.synthetic`) are written once
as the largest train store; the store of N pairs is its first N/shard shards (hard links and
a manifest of those shards). For every N, in fresh processes (so each peak RSS is its own):

- ``train``: ``mlp`` and ``ced`` read from disk (``train --stream``) for a fixed number of
  steps: the closed-form passes' seconds, training pairs/s and the process's peak RSS;
- ``eval``: ``evaluate_translator`` on the first 1,000 images of the store of N (the
  ``eval`` verb's default) with the trained ``mlp``: seconds and peak RSS;
- ``index``: IVF-PQ (and HNSW up to ``--hnsw-max``) built from the shards in batches: build
  seconds, index size, peak RSS, recall@10 against exact search on 1,000 held-out image
  queries (val), and queries/s against exact search's, measured in the same process.

- ``embed``: ``--embed-images`` JPEGs (200–1000 px) through a ViT-B/32-sized CLIP with
  random weights (``bench_embed.py``'s): the single-process job decoding in-process, and the
  Ray job (``embed --engine ray``) on a local cluster of 1 and of 2 workers, one thread
  each; images/s from the call's start to its end (the cluster is started before the clock,
  its start time kept beside).

Every measurement is kept in ``--work``/measurements.json as it finishes, so a rerun resumes;
``--keep-results`` starts from the measurements in ``benchmarks/results/scale.json`` and
records their commit; ``--redo`` drops kept or resumed ones to measure them again. Run at
one thread (``OMP_NUM_THREADS=1``).

Usage: ``python benchmarks/bench_scale.py [--work /tmp/bench_scale] [--sizes 1e4 1e5 1e6 5e6]
[--steps 100] [--stages train eval index embed]``; writes ``benchmarks/results/scale.json``
and ``scale.png`` (also shown in the docs as ``docs/img/scale.png``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, write_result

from modtrans.io import read_json, write_json

logger = logging.getLogger("bench_scale")

DOCS_IMAGE = Path(__file__).resolve().parents[1] / "docs" / "img" / "scale.png"
SHARD = 10_000
DIM = 512
PARAMS = {"mlp": {"width": 512}, "ced": {"mean_shrinks": []}}
EMBED = {"shard_size": 32, "batch_size": 32, "methods": ("local", "ray-1", "ray-2")}
STAGES = ("train", "eval", "index", "embed")


def substore(work: Path, n: int) -> Path:
    """The train store of the first ``n`` pairs of the largest one (hard links)."""
    full, root = work / "full" / "train", work / f"n{n}"
    if (root / "train" / "manifest.json").is_file():
        return root
    manifest = read_json(full / "manifest.json")
    shards = manifest["shards"][: n // SHARD]
    for shard in shards:
        for kind, ext in (("img_emb", "npy"), ("text_emb", "npy"), ("metadata", "parquet"),
                          ("text_metadata", "parquet")):
            target = root / "train" / kind / f"{kind}_{shard['index']}.{ext}"
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(full / kind / target.name, target)
    manifest.update(shards=shards, n_images=sum(s["n_images"] for s in shards),
                    n_captions=sum(s["n_captions"] for s in shards), complete=True)
    write_json(root / "train" / "manifest.json", manifest)
    (root / "val").symlink_to(work / "full" / "val")
    return root


def child(kind: str, root: Path, n: int, method: str, steps: int, out: Path,
          hnsw_max: int, ivfpq: dict[str, int]) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import torch

    from modtrans.retrieval import peak_rss_mb

    torch.set_num_threads(1)
    if kind == "embed":
        return embed_child(out, n, method)
    if kind == "train":
        from modtrans.data.pairs import load_pairs
        from modtrans.data.store import open_store
        from modtrans.data.stream import StorePairs
        from modtrans.training.fit import Recipe
        from modtrans.training.translator import fit_translator

        recipe = Recipe(epochs=1, max_steps=steps, batch_size=256, logger="none",
                        checkpoint_every=10**9, progress=False)
        _, info = fit_translator(method, StorePairs(open_store(root, "train"), "text2image"),
                                 load_pairs(open_store(root, "val"), "text2image"), out,
                                 params=PARAMS[method], recipe=recipe, progress=False,
                                 val_pairs=1000)
        return {"prepare_seconds": info["prepare_seconds"],
                "train_seconds": info["train_seconds"],
                "pairs_per_second": info["pairs_per_second"], "steps": info["steps"],
                "peak_rss_mb": round(peak_rss_mb(), 1)}
    if kind == "eval":
        from modtrans.data.pairs import load_pairs
        from modtrans.data.store import open_store
        from modtrans.eval.worldbench import evaluate_translator
        from modtrans.translators.base import Translator

        model = Translator.load(out)
        start = time.perf_counter()
        pairs = load_pairs(open_store(root, "train"), "text2image", 1000)
        result = evaluate_translator(model, pairs)
        return {"seconds": round(time.perf_counter() - start, 2), "sim": result["sim"],
                "peak_rss_mb": round(peak_rss_mb(), 1)}
    from modtrans.data.store import open_store
    from modtrans.retrieval import Gallery, index_store

    # held-out images: the synthetic caption space is not aligned with the image space
    queries = Gallery(open_store(root, "val"), "image").rows(range(1000))
    kinds = {"ivfpq": {**ivfpq, "nlist": min(ivfpq["nlist"], n // 39)}}
    if n <= hnsw_max:
        kinds["hnsw"] = {}
    infos = {}
    for index_kind, options in kinds.items():
        info = index_store(open_store(root, "train"), out / index_kind, kind=index_kind,
                           queries=queries, **options)
        infos[index_kind] = {key: info[key] for key in (
            "build_seconds", "index_mb", "peak_rss_mb", "recall@10_vs_exact", "qps",
            "exact_qps", "nlist", "nprobe", "pq_m", "rerank") if key in info}
    return infos


def embed_child(out: Path, n: int, method: str) -> dict[str, Any]:
    """Embed ``n`` JPEGs with ``local`` (the single-process job, decoding in-process) or
    ``ray-<k>`` (the Ray job on a local cluster of k workers)."""
    from bench_embed import save_vit_b32_clip, write_jpegs

    from modtrans.data.distributed import embed_on_ray
    from modtrans.data.embed import embed_captioned_images
    from modtrans.encoders import build_encoder

    shutil.rmtree(out, ignore_errors=True)
    data = write_jpegs(out / "jpegs", n)
    encoder = build_encoder(save_vit_b32_clip(out / "clip"))
    options = dict(split="train", source={}, shard_size=EMBED["shard_size"],
                   batch_size=EMBED["batch_size"], progress=False)
    result: dict[str, Any] = {"load_average_before": round(os.getloadavg()[0], 2)}
    if method == "local":
        start = time.perf_counter()
        summary = embed_captioned_images(data, encoder, encoder, out / "store", workers=0,
                                         **options)
    else:
        import ray

        workers = int(method.split("-")[1])
        start = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False)
        result["cluster_start_seconds"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        summary = embed_on_ray(data, encoder, encoder, out / "store", workers=workers, **options)
        result.update(units=summary["units"], retries=summary["retries"])
    seconds = time.perf_counter() - start
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    if method != "local":
        ray.shutdown()
    shutil.rmtree(out)
    return {"images": summary["images_written"], "seconds": round(seconds, 2),
            "images_per_second": round(summary["images_written"] / seconds, 2), **result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_scale"))
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 5e6])
    parser.add_argument("--steps", type=int, default=100, help="training steps at every N")
    parser.add_argument("--ced-max", type=float, default=1e6, help="largest N for ced (its "
                        "ridge pass is O(N·d²))")
    parser.add_argument("--index-max", type=float, default=1e6, help="largest N indexed")
    parser.add_argument("--hnsw-max", type=float, default=1e5, help="largest N for HNSW")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists (at most)")
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists searched")
    parser.add_argument("--rerank", type=int, default=10, help="IVF-PQ: rerank·k candidates "
                        "re-scored exactly")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--embed-images", type=int, default=256, help="JPEGs embedded")
    parser.add_argument("--keep-results", action="store_true", help="start from the "
                        "measurements in benchmarks/results/scale.json")
    parser.add_argument("--redo", nargs="*", default=[], help="kept or resumed measurements "
                        "to measure again: keys or their beginnings (eval, train/mlp)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.child:
        kind, root, n, method = args.child
        result = child(kind, Path(root), int(n), method, args.steps,
                       args.work / "out" / f"{method}_{n}", int(args.hnsw_max),
                       {key: getattr(args, key) for key in ("nlist", "nprobe", "rerank")})
        print(json.dumps(result))
        return
    sizes = sorted(int(s) for s in args.sizes)
    work = args.work
    path = work / "measurements.json"
    done: dict[str, Any] = read_json(path) if path.is_file() else {}
    kept = work / "kept_from.json"
    if args.keep_results and not done:
        previous = read_json(RESULTS / "scale.json")
        done = previous["figures"]["measurements"]
        write_json(kept, {"git_commit": previous["git_commit"], "date": previous["date"],
                          "keys": sorted(done)})
    done = {key: value for key, value in done.items()
            if not any(key.startswith(prefix) for prefix in args.redo)}
    if kept.is_file():  # what is measured again is no longer kept
        info = read_json(kept)
        write_json(kept, {**info, "keys": [key for key in info["keys"] if key in done]})
    plan = []
    for n in sizes:
        plan += [("train", n, "mlp")] + ([("train", n, "ced")] if n <= args.ced_max else [])
        plan += [("eval", n, "mlp")]
        plan += [("index", n, "index")] if n <= args.index_max else []
    plan += [("embed", args.embed_images, method) for method in EMBED["methods"]]
    plan = [(kind, n, method) for kind, n, method in plan if kind in args.stages
            and f"{kind}/{method}/{n}" not in done]
    if any(kind != "embed" for kind, _, _ in plan):
        from modtrans.data.synthetic import write_paired_store

        start = time.perf_counter()
        write_paired_store(work / "full" / "train", sizes[-1], dim=DIM, shard_size=SHARD,
                           progress=True)
        write_paired_store(work / "full" / "val", SHARD, dim=DIM, shard_size=SHARD,
                           split="val")
        logger.info("stores ready (%.0f s)", time.perf_counter() - start)
    for kind, n, method in plan:
        key = f"{kind}/{method}/{n}"
        root = substore(work, n) if kind != "embed" else work
        logger.info("measuring %s", key)
        run = subprocess.run([sys.executable, __file__, "--work", str(work), "--steps",
                              str(args.steps), "--hnsw-max", str(args.hnsw_max), "--nlist",
                              str(args.nlist), "--nprobe", str(args.nprobe), "--rerank",
                              str(args.rerank), "--child", kind, str(root), str(n), method],
                             capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"{key} failed:\n{run.stderr[-3000:]}")
        done[key] = json.loads(run.stdout.strip().splitlines()[-1])
        logger.info("%s: %s", key, done[key])
        write_json(path, done)
    figures = {"sizes": sizes, "measurements": done}
    config = {key: getattr(args, key) for key in ("steps", "ced_max", "index_max", "hnsw_max",
                                                  "nlist")}
    config.update(dim=DIM, dtype="float16", shard=SHARD, params=PARAMS, batch_size=256,
                  threads=1, queries=1000, embed={**EMBED, "images": args.embed_images,
                                                  "model": "CLIP ViT-B/32 config, random"})
    if kept.is_file():
        config["kept_from"] = read_json(kept)
    print(write_result("scale", config, figures))
    plot(done, sizes, RESULTS / "scale.png")
    shutil.copyfile(RESULTS / "scale.png", DOCS_IMAGE)


def plot(done: dict[str, Any], sizes: list[int], path: Path) -> None:
    """Log–log panels: training pairs/s and closed-form seconds, peak RSS, index figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))

    def series(key: str, field: str) -> tuple[list[int], list[float]]:
        got = [(n, done[f"{key}/{n}"][field]) for n in sizes if f"{key}/{n}" in done]
        return [n for n, _ in got], [v for _, v in got]

    for method in ("mlp", "ced"):
        axes[0].plot(*series(f"train/{method}", "pairs_per_second"), "o-",
                     label=f"{method}: training pairs/s")
        axes[0].plot(*series(f"train/{method}", "prepare_seconds"), "s--",
                     label=f"{method}: closed-form passes (s)")
        axes[1].plot(*series(f"train/{method}", "peak_rss_mb"), "o-",
                     label=f"{method}: training peak RSS (MiB)")
    axes[1].plot(*series("eval/mlp", "peak_rss_mb"), "^-", label="eval peak RSS (MiB)")
    axes[0].plot(*series("eval/mlp", "seconds"), "^-", label="eval of 1,000 pairs (s)")
    for kind in ("ivfpq", "hnsw"):
        got = [(n, done[f"index/index/{n}"][kind]) for n in sizes
               if kind in done.get(f"index/index/{n}", {})]
        if got:
            ns = [n for n, _ in got]
            axes[2].plot(ns, [g["build_seconds"] for _, g in got], "o-", label=f"{kind}: build (s)")
            axes[2].plot(ns, [g["qps"] for _, g in got], "s-", label=f"{kind}: queries/s")
            axes[1].plot(ns, [g["peak_rss_mb"] for _, g in got], "s:",
                         label=f"{kind}: build peak RSS (MiB)")
    got = [(n, done[f"index/index/{n}"]["ivfpq"]["exact_qps"]) for n in sizes
           if f"index/index/{n}" in done]
    if got:
        axes[2].plot([n for n, _ in got], [q for _, q in got], "x--", label="exact: queries/s")
    for ax, title in zip(axes, ("training and evaluation", "peak memory", "indexes"),
                         strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pairs in the store (N)")
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
