"""End-to-end generation on the world: text → image and image → text, judged semantically.

Runs :func:`modtrans.eval.endtoend.run_end_to_end` in the demo folder that
``bench_worldbench.py`` fills (same world, CLIP, store and translators), resuming the models
already trained there, and copies what it measured to ``benchmarks/results/e2e.json`` with
the example grid ``e2e_text2image.png`` and captions ``e2e_image2text.json``.

Usage: ``python benchmarks/bench_e2e.py [--work benchmarks/work/worldbench]
[--config e2e.yaml]`` (EndToEndConfig options). With ``--demo-config`` (DemoConfig options)
it first runs (or resumes) that demo in ``--work``, so that one command makes a smaller
benchmark whose routes all share its world, encoder, judge and prompts; ``--tag`` names its
result files (``e2e_<tag>.json``)::

    python benchmarks/bench_e2e.py --work benchmarks/work/e2e_budget \
        --demo-config benchmarks/configs/e2e_budget_demo.yaml \
        --config benchmarks/configs/e2e_budget.yaml --tag budget

The token decoder beside the VAE + latent prior, on the WorldBench folder, sized for about
45 minutes at one thread (``bench_token_decoder.py`` then reads it for the ceiling study)::

    python benchmarks/bench_e2e.py --work benchmarks/work/worldbench \
        --config benchmarks/configs/e2e_tokens.yaml --tag tokens
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from _common import RESULTS, write_result

from modtrans.demo import DemoConfig, run_demo
from modtrans.eval.endtoend import EndToEndConfig, run_end_to_end

logger = logging.getLogger("bench_e2e")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/worldbench"))
    parser.add_argument("--config", type=Path, help="EndToEndConfig YAML/JSON")
    parser.add_argument("--demo-config", type=Path,
                        help="DemoConfig YAML/JSON: run (or resume) this demo in --work first")
    parser.add_argument("--tag", default="", help="suffix of the result files (a variant)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    demo = DemoConfig.load(args.demo_config) if args.demo_config else None
    if demo is not None:
        run_demo(args.work, demo, progress=False)
    config = EndToEndConfig.load(args.config) if args.config else EndToEndConfig()
    results = run_end_to_end(args.work, config, progress=False)
    name = f"e2e_{args.tag}" if args.tag else "e2e"
    shutil.copyfile(args.work / "e2e" / "text2image.png", RESULTS / f"{name}_text2image.png")
    if config.captions:
        shutil.copyfile(args.work / "e2e" / "image2text.json",
                        RESULTS / f"{name}_image2text.json")
    setup = {"work": str(args.work)} | ({"demo": demo.to_dict()} if demo else {})
    path = write_result(name, config.to_dict() | setup, results)
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
