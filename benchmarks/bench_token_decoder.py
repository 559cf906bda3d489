"""The token decoder's own figures: its sampling speed, and the ceiling study.

- ``speed``: seconds per image of the token decoder's sampling (codes with the KV cache and
  guidance, then the tokenizer's decoder), one image a call and 16, and without the cache;
  beside it the VAE + latent prior's ``generate`` in the same run (the ratio is the figure to
  compare). With ``--work``, the decoders trained there (``e2e/token_image``,
  ``e2e/vae_image``); else random weights at the default sizes (the cost does not depend on
  what was learnt).
- ``ceiling`` (with ``--work`` and the end-to-end result ``--result``, written by
  ``bench_e2e.py --tag tokens``): how much of the embedding's shape information each decoder
  recovers, per object count: the val accuracy of a linear probe of the main shape in the
  image embeddings of images with n objects, beside the ``oracle`` route's shape recall
  (decoding the prompt's own image embedding) of each decoder, what each decoder can draw at
  all (``reconstruction``: the VAE's posterior; ``tokens-reconstruction``: the tokenizer) and
  the real images.

Usage: ``python benchmarks/bench_token_decoder.py [--work benchmarks/work/worldbench]
[--parts speed ceiling]``; writes ``benchmarks/results/token_decoder_cpu.json``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, write_result

from modtrans.io import read_json

logger = logging.getLogger("bench_token_decoder")


def _timed(draw: Any, rows: int, repeats: int) -> float:
    """Seconds per image of ``draw(rows)``, after one warm-up call."""
    draw(1)
    start = time.perf_counter()
    for _ in range(repeats):
        draw(rows)
    return round((time.perf_counter() - start) / (repeats * rows), 4)


def speed(work: Path | None, repeats: int, batches: tuple[int, ...] = (1, 16)) -> dict[str, Any]:
    from modtrans.decoders.augvae import AugVAEConfig
    from modtrans.decoders.image_vae import ConditionalVAE, ImageDecoderConfig
    from modtrans.decoders.token_decoder import TokenDecoder, TokenDecoderConfig
    from modtrans.eval.endtoend import EndToEndConfig

    if work is not None:
        tokens = TokenDecoder.load(work / "e2e" / "token_image")
        vae = ConditionalVAE.load(work / "e2e" / "vae_image")
    else:
        tokenizer = AugVAEConfig(**EndToEndConfig().tokenizer)
        tokens = TokenDecoder(TokenDecoderConfig(embed_dim=64, augvae=tokenizer)).eval()
        vae = ConditionalVAE(ImageDecoderConfig(embed_dim=64)).eval()
    dim = tokens.config.embed_dim
    out: dict[str, Any] = {"trained": work is not None, "tokens": tokens.config.tokens,
                           "width": tokens.config.width, "layers": tokens.config.layers,
                           "guidance": tokens.config.guidance,
                           "prior_steps": vae.config.prior.steps}

    def token_draw(use_cache: bool):
        return lambda n: tokens.generate(torch.randn(n, dim), use_cache=use_cache,
                                         generator=torch.Generator().manual_seed(0))

    for batch in batches:
        figures = {"tokens_cache": _timed(token_draw(True), batch, repeats),
                   "tokens_no_cache": _timed(token_draw(False), batch, repeats),
                   "vae_prior": _timed(lambda n: vae.generate(
                       torch.randn(n, dim), generator=torch.Generator().manual_seed(0)),
                       batch, repeats)}
        figures["cache_speedup"] = round(figures["tokens_no_cache"] / figures["tokens_cache"], 2)
        figures["tokens_over_vae"] = round(figures["tokens_cache"] / figures["vae_prior"], 2)
        out[f"batch_{batch}"] = figures
        logger.info("batch %d: %s (seconds per image)", batch, figures)
    return out


def ceiling(work: Path, result: Path) -> dict[str, Any]:
    from modtrans.data.store import open_store
    from modtrans.eval.encoder_report import linear_probe

    train, val = open_store(work / "store", "train"), open_store(work / "store", "val")
    probes = {f"{n}_objects": round(linear_probe(train, val, "main_shape",
                                                 where=("n_objects", n))["accuracy"], 4)
              for n in (1, 2, 3)}
    routes = ("real", "reconstruction", "oracle", "tokens-reconstruction", "tokens-oracle")
    t2i = read_json(result)["figures"]["text_to_image"]
    out: dict[str, Any] = {"probe_main_shape_val": probes}
    for split, by_route in t2i.items():
        out[split] = {group: {route: round(by_route[route]["by_objects"][group]
                                           ["shapes_recall"], 4)
                              for route in routes if route in by_route}
                      for group in probes}
    logger.info("ceiling: %s", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="a folder bench_e2e.py trained in")
    parser.add_argument("--result", type=Path, default=RESULTS / "e2e_tokens.json",
                        help="the end-to-end result the ceiling study reads")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per setting")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--parts", nargs="*", default=["speed", "ceiling"],
                        help="what to measure (each replaces its own figures in the result "
                        "file, the others are kept)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    path = RESULTS / "token_decoder_cpu.json"
    figures: dict[str, Any] = read_json(path)["figures"] if path.is_file() else {}
    if "speed" in args.parts:
        figures["speed"] = speed(args.work, args.repeats)
    if "ceiling" in args.parts:
        if args.work is None or not args.result.is_file():
            parser.error("the ceiling study needs --work and the end-to-end --result")
        figures["ceiling"] = ceiling(args.work, args.result)
    config = {"repeats": args.repeats, "threads": args.threads,
              "work": str(args.work) if args.work else None, "result": str(args.result)}
    logger.info("wrote %s", write_result("token_decoder_cpu", config, figures))


if __name__ == "__main__":
    main()
