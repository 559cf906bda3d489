"""Sampling speed of the CED denoiser against its FLOP roofline (meant for the GPU machine).

Measures, in one run: the device's dense matmul rate in the chosen dtype, and embeddings per
second of the guided sampler (two rows per sample, conditional and null) at a large batch for
10 and 50 steps. The samplers fix the condition once per call
(``ConditionalMLP.with_condition``); the same sampling through the full forward at every
step is timed beside it, and the ratio reported. The roofline is
``rate / (2 · sampling_flops_per_sample)``; the figure of merit is the fraction of it
reached.

Usage: ``python benchmarks/bench_sampling.py --device cuda --dtype bfloat16 [--batch 4096]
[--width 2048 --depth 10 --dim 512]``; writes ``benchmarks/results/sampling_<device>.json``.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from _common import write_result

from modtrans.translators.denoisers import (
    ConditionalMLP,
    DenoiserConfig,
    flops_per_sample,
    sampling_flops_per_sample,
)
from modtrans.translators.samplers import get_sampler
from modtrans.translators.schedules import NoiseSchedule

logger = logging.getLogger("bench_sampling")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 20) -> float:
    """Dense (n × n) @ (n × n) FLOP/s."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


class _FullForward(torch.nn.Module):
    """The denoiser without ``with_condition``: the sampler runs its whole forward per step."""

    def __init__(self, model: ConditionalMLP) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, x, t, cond, cond_mask=None):
        return self.model(x, t, cond, cond_mask)


def sampling_rate(model, schedule, cond, steps: int, sampler: str, guidance: float,
                  device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """Embeddings per second of ``repeats`` guided samplings of the whole batch."""
    noise = torch.randn(cond.shape[0], model.config.dim, device=device)
    sample = get_sampler(sampler)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype,
                                         enabled=dtype != torch.float32):
        sample(model, noise, schedule, cond, steps=steps, guidance=guidance)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            sample(model, noise, schedule, cond, steps=steps, guidance=guidance)
        _sync(device)
    return repeats * cond.shape[0] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-n", type=int, default=8192)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    config = DenoiserConfig(dim=args.dim, cond_dim=args.dim, width=args.width, depth=args.depth)
    model = ConditionalMLP(config).to(device).eval()
    schedule = NoiseSchedule.from_name("cosine", 1000).to(device)
    cond = torch.randn(args.batch, args.dim, device=device)
    rate = matmul_rate(device, dtype, args.matmul_n)
    figures: dict = {"matmul_flops_per_s": rate,
                     "denoiser_flops_per_sample": flops_per_sample(config)}
    for steps in (10, 50):
        eps, full = (sampling_rate(m, schedule, cond, steps, args.sampler, args.guidance,
                                   device, dtype, args.repeats)
                     for m in (model, _FullForward(model)))
        roofline = rate / (2 * sampling_flops_per_sample(config, steps))  # 2 rows per sample
        figures[f"steps_{steps}"] = {
            "embeddings_per_s": eps, "roofline_per_s": roofline,
            "fraction_of_roofline": eps / roofline,
            "full_forward_embeddings_per_s": full, "speedup_of_fixed_condition": eps / full}
        logger.info("%d steps: %.0f emb/s (%.2f× the full forward), %.1f%% of the roofline",
                    steps, eps, eps / full, 100 * eps / roofline)
    write_result(f"sampling_{device.type}", vars(args), figures)


if __name__ == "__main__":
    main()
