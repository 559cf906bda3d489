"""WorldBench quality: every translator, both directions, val and the `novel` hold-out.

Runs the demo pipeline (the same code, data and splits as ``modtrans demo``) in a work folder
— resuming whatever is already there — and collects what it measured into
``benchmarks/results/worldbench.json`` (translators), ``world_clip.json`` (the encoder) and
the stage timings. ``python benchmarks/make_tables.py`` then renders the README tables.

Usage: ``python benchmarks/bench_worldbench.py [--work benchmarks/work/worldbench]
[--preset default] [--config demo.yaml] [--tag NAME]``; ``--tag cnn`` writes
``worldbench_cnn.json`` and ``world_clip_cnn.json`` (a variant beside the default's).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from _common import write_result

from modtrans.artefacts import read_summary
from modtrans.demo import PRESETS, DemoConfig, run_demo
from modtrans.world.clip import WorldClip

logger = logging.getLogger("bench_worldbench")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/worldbench"))
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--config", type=Path, help="DemoConfig YAML/JSON (overrides preset)")
    parser.add_argument("--tag", default="", help="suffix of the result files (a variant)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = DemoConfig.load(args.config) if args.config else PRESETS[args.preset]
    run_demo(args.work, config, progress=False)
    results = [json.loads(p.read_text()) for p in sorted((args.work / "results").glob("*.json"))]
    timings = json.loads((args.work / "timings.json").read_text())
    train_info = {
        f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
        for p in sorted(args.work.glob("translators/*/*/summary.json"))
    }
    for res in results:
        for row in res["rows"]:
            row.pop("cos_hist", None)
    suffix = f"_{args.tag}" if args.tag else ""
    write_result(f"worldbench{suffix}", config.to_dict(),
                 {"tables": results, "train": train_info, "timings_s": timings})
    clip = args.work / "world_clip"
    clip_config = WorldClip.read_config(clip).to_dict()
    write_result(f"world_clip{suffix}", clip_config | {"n_images": config.n_images},
                 {"report": json.loads((args.work / "encoder_report.json").read_text()),
                  "training": read_summary(clip)})
    logger.info("wrote worldbench%s.json and world_clip%s.json", suffix, suffix)


if __name__ == "__main__":
    main()
