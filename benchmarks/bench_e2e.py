"""End-to-end generation on the world: text → image and image → text, judged semantically.

Runs :func:`modtrans.eval.endtoend.run_end_to_end` in the demo folder that
``bench_worldbench.py`` fills (same world, CLIP, store and translators), resuming the models
already trained there, and copies what it measured to ``benchmarks/results/e2e.json`` with
the example grid ``e2e_text2image.png`` and captions ``e2e_image2text.json``.

Usage: ``python benchmarks/bench_e2e.py [--work benchmarks/work/worldbench]
[--config e2e.yaml]`` (EndToEndConfig options).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from _common import RESULTS, write_result

from modtrans.eval.endtoend import EndToEndConfig, run_end_to_end

logger = logging.getLogger("bench_e2e")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/worldbench"))
    parser.add_argument("--config", type=Path, help="EndToEndConfig YAML/JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = EndToEndConfig.load(args.config) if args.config else EndToEndConfig()
    results = run_end_to_end(args.work, config, progress=False)
    shutil.copyfile(args.work / "e2e" / "text2image.png", RESULTS / "e2e_text2image.png")
    shutil.copyfile(args.work / "e2e" / "image2text.json", RESULTS / "e2e_image2text.json")
    path = write_result("e2e", config.to_dict() | {"work": str(args.work)}, results)
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
