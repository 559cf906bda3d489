"""Trains translators on 2 CPU processes under DDP, for tests/test_scale.py (run as a script:
Lightning starts the second process by running this file again).

Usage: python tests/ddp_script.py STORE_ROOT OUT_ROOT
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

from modtrans.data.pairs import load_pairs
from modtrans.data.store import open_store
from modtrans.data.stream import StorePairs
from modtrans.training.fit import Recipe
from modtrans.training.translator import fit_translator

#: Tiny models: the test compares 1 and 2 processes, not the methods.
PARAMS = {"ced": {"steps": 2, "width": 32, "depth": 1, "mean_shrinks": []},
          "ced-paper": {"steps": 2, "width": 32, "depth": 1, "lr": 3e-3, "guidance": 1.0},
          "mlp": {"width": 32}}
RECIPE = Recipe(epochs=2, batch_size=32, progress=False, logger="none", checkpoint_every=1000)
DDP = dataclasses.replace(RECIPE, accelerator="cpu", devices=2, strategy="ddp")


def main(store: Path, out: Path) -> None:
    logging.basicConfig(level=logging.INFO, force=True)
    val = load_pairs(open_store(store, "val"), "text2image")
    memory = load_pairs(open_store(store, "train"), "text2image")
    streamed = StorePairs(open_store(store, "train"), "text2image")
    for method in ("ced", "ced-paper"):
        fit_translator(method, memory, val, out / method, params=PARAMS[method], recipe=DDP,
                       progress=False)
    # mlp read from the shards; then resumed under DDP: one epoch, continued to two
    fit_translator("mlp", streamed, val, out / "mlp", params=PARAMS["mlp"], recipe=DDP,
                   progress=False)
    fit_translator("mlp", streamed, val, out / "mlp-resumed", params=PARAMS["mlp"],
                   recipe=dataclasses.replace(DDP, epochs=1), progress=False)
    fit_translator("mlp", streamed, val, out / "mlp-resumed", params=PARAMS["mlp"],
                   recipe=DDP, progress=False, resume=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
