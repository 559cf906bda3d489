"""Your own data, all the way: a 6,000-image COCO-format dataset modtrans was never tuned to
(``foreign_data.py``: other shapes, colours, backgrounds and caption grammar) goes through
the CLI exactly as a new user would run it, with no manual step:

    modtrans fit-encoder annotations/captions_train2017.json --out clip
    modtrans embed annotations/captions_{train,val,test}2017.json --split S --out store/S
    modtrans eval-encoder store                 (raw retrieval on val)
    modtrans train --data store --direction D --method M --out translators/D/M
    modtrans eval translators/D/M --data store --split test

Every command's JSON and wall-clock time is kept; a rerun skips the stages whose outputs
exist (``--work``, default ``benchmarks/work/own_data``). Writes
``benchmarks/results/own_data.json``. Run::

    python benchmarks/bench_own_data.py [--n 6000] [--methods ridge mlp ced]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import write_result
from foreign_data import write_foreign_coco

logger = logging.getLogger("bench_own_data")
SPLITS = ("train", "val", "test")
DIRECTIONS = ("text2image", "image2text")


def _modtrans(args: list[str], record: Path) -> dict[str, Any]:
    """Run one CLI command (once: its JSON is kept in ``record``) and time it."""
    if record.is_file():
        return json.loads(record.read_text())
    logger.info("modtrans %s", " ".join(args))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "modtrans", *args], capture_output=True,
                          text=True)
    if done.returncode:
        raise RuntimeError(f"modtrans {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    result = {"seconds": round(time.perf_counter() - start, 1),
              "output": json.loads(done.stdout)}
    record.write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6000, help="Images in the dataset.")
    parser.add_argument("--methods", nargs="+", default=["ridge", "mlp", "ced"])
    parser.add_argument("--work", type=Path,
                        default=Path(__file__).parent / "work" / "own_data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = args.work
    data, runs = work / "data", work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    if not (data / "annotations" / "captions_test2017.json").is_file():
        write_foreign_coco(data, args.n)
    captions = {s: data / "annotations" / f"captions_{s}2017.json" for s in SPLITS}
    clip, store = work / "clip", work / "store"
    figures: dict[str, Any] = {}
    fitted = _modtrans(["fit-encoder", str(captions["train"]), "--out", str(clip)],
                       runs / "fit_encoder.json")
    figures["fit_encoder"] = fitted
    figures["embed"] = {
        s: _modtrans(["embed", str(captions[s]), "--split", s, "--out", str(store / s),
                      "--encoder", f"hf:{clip}"], runs / f"embed_{s}.json") for s in SPLITS}
    report = _modtrans(["eval-encoder", str(store), "--probe", ""], runs / "eval_encoder.json")
    figures["eval_encoder_val"] = report
    r5, chance = (report["output"]["text_to_image"]["R@5"],
                  report["output"]["chance_text_to_image_R@5"])
    figures["raw_r5_over_chance"] = round(r5 / chance, 1)
    figures["translators"] = {}
    for direction in DIRECTIONS:
        for method in args.methods:
            ckpt = work / "translators" / direction / method
            trained = _modtrans(["train", "--data", str(store), "--direction", direction,
                                 "--method", method, "--out", str(ckpt)],
                                runs / f"train_{direction}_{method}.json")
            scored = _modtrans(["eval", str(ckpt), "--data", str(store), "--split", "test"],
                               runs / f"eval_{direction}_{method}.json")
            figures["translators"][f"{direction}/{method}"] = {
                "train_seconds": trained["seconds"], "test": scored["output"]}
    config = {"n_images": args.n, "methods": args.methods,
              "fit_encoder": "defaults (WorldClipConfig; no warm start off a world)",
              "train": "defaults (each method's own epochs)", "eval_split": "test"}
    path = write_result("own_data", config, figures)
    logger.info("wrote %s (raw text→image R@5 %.3f, %.1f× chance)", path, r5,
                figures["raw_r5_over_chance"])


if __name__ == "__main__":
    main()
