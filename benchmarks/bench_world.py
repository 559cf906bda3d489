"""Throughput of the world generator: images per second, rendering and writing everything.

Usage: ``python benchmarks/bench_world.py [--n 20000] [--workers N] [--seed 0]``; writes
``benchmarks/results/world_throughput.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
from pathlib import Path

from _common import write_result

from modtrans.world.generator import WorldConfig, generate_world

logger = logging.getLogger("bench_world")


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the workers)."""
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    """Generate a world into a temporary folder and record its throughput.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="images to generate")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: os.cpu_count())")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = WorldConfig(n_images=args.n, seed=args.seed)
    workers = args.workers or os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="modtrans-world-") as tmp:
        summary = generate_world(config, tmp, workers=workers, progress=False)
        cpu = _cpu_seconds() - cpu_before
        size = _disk_bytes(Path(tmp))
    figures = {
        "n_images": summary["n_images"],
        "seconds": round(summary["seconds"], 3),
        "images_per_s": round(summary["images_per_s"], 1),
        "images_per_s_per_worker": round(summary["images_per_s"] / workers, 1),
        # CPU time shows the cost on a busy machine: images/s also depends on other load
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_image": round(1000 * cpu / summary["n_images"], 3),
        "load_average_1min_before": round(load_before, 2),
        "counts": summary["counts"],
        "bytes_on_disk": size,
        "bytes_per_image": round(size / summary["n_images"], 1),
    }
    path = write_result("world_throughput", {"world": config.to_dict(), "workers": workers},
                        figures)
    logger.info("%d images in %.1f s: %.0f images/s with %d workers -> %s",
                summary["n_images"], summary["seconds"], summary["images_per_s"], workers, path)


if __name__ == "__main__":
    main()
