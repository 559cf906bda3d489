"""Training speed of ``ced`` against ``ced-paper``: pairs per second, same batch and net.

Both translators are built with the same denoiser and trained on the same random pairs for
the same number of optimiser steps in one process, so the ratio is measured in one run.

Usage: ``python benchmarks/bench_train_speed.py [--dim 128] [--width 512] [--depth 4]
[--batch 256] [--steps 20] [--device cpu]``; writes ``benchmarks/results/train_speed.json``
(``train_speed_<device type>.json`` for a non-CPU device).
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from _common import write_result

from modtrans.data.pairs import PairedSplit
from modtrans.training.translator import build_translator

logger = logging.getLogger("bench_train_speed")


def pairs_per_second(method: str, split: PairedSplit, params: dict, batch: int, steps: int,
                     device: torch.device) -> float:
    """Optimiser steps of ``method`` on ``split``: pairs per second after one warm-up step."""
    translator = build_translator(method, split.direction, split, params=params).to(device)
    cn = translator.cond_norm(split.cond.to(device))
    zn = translator.target_norm(split.target.to(device))
    translator.prepare(cn, zn, cn[:512], zn[:512])
    optimiser = torch.optim.AdamW([p for p in translator.parameters() if p.requires_grad],
                                  lr=1e-4)
    translator.train()
    for i in range(steps + 1):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        rows = torch.randint(len(cn), (batch,), device=device)
        loss = translator.training_loss(cn[rows], zn[rows])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128, help="embedding size (both spaces)")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of ced")
    parser.add_argument("--paper-steps", type=int, default=3, help="timed steps of ced-paper")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n = 4096
    images, texts = torch.randn(n, args.dim, generator=g), torch.randn(n, args.dim, generator=g)
    split = PairedSplit("text2image", images, texts, torch.arange(n))
    net = {"width": args.width, "depth": args.depth, "emb_dim": 256}
    figures = {}
    for method, steps in (("ced", args.steps), ("ced-paper", args.paper_steps)):
        figures[f"{method}_pairs_per_s"] = round(
            pairs_per_second(method, split, net, args.batch, steps, device), 1)
        logger.info("%s: %.1f pairs/s", method, figures[f"{method}_pairs_per_s"])
    figures["speedup_ced_over_ced_paper"] = round(
        figures["ced_pairs_per_s"] / figures["ced-paper_pairs_per_s"], 1)
    name = "train_speed" if device.type == "cpu" else f"train_speed_{device.type}"
    path = write_result(name, vars(args) | {"net": net, "ced_paper_sampler":
                                            "ddim 50 steps, guidance 5 (seed defaults)"},
                        figures)
    logger.info("speed-up %.1fx; wrote %s", figures["speedup_ced_over_ced_paper"], path)


if __name__ == "__main__":
    main()
