"""The seed's method at a fair budget: learning curves, equal budgets and the frontier.

On the WorldBench store (``bench_worldbench.py`` builds it), in both directions:

1. *curves* — ``ced-paper`` (the seed's method as its code runs it, at the size this CPU
   trains in the budget), ``ced`` and ``mlp`` are trained with a time budget. At fixed
   marks of training time (evaluation time excluded) the current weights' val Sim (the mean
   of 4 draws, 500 val pairs) is recorded against seconds and pairs seen, and the weights at
   the equal budgets (1, 5, 20 minutes) are kept. Time is the process's CPU time at one
   torch thread — the wall-clock of a dedicated core — so that other jobs on a shared
   machine do not move the budgets; the wall-clock is recorded beside it. ``ced`` and
   ``mlp`` stop once val Sim has stopped rising (their last figure then holds for every
   larger budget).
2. *budgets* — every kept snapshot, the final models and ridge are scored by
   ``evaluate_translator`` (the WorldBench code) on test, the final ones on novel too.
3. *frontier* — text → image: the final ``ced`` and ``ced-paper`` at K ∈ {1, 4, 8, 16, 64}
   draws and several guidance scales: mean-mode Sim, one-draw Sim, R@1, FD (unit) of the
   mean and of one draw, diversity; ridge and mlp as points.

Every stage keeps its results in the work folder, so a rerun resumes. Writes
``benchmarks/results/ced_budget.json``; ``make_tables.py`` draws its plots and tables.

Usage: ``python benchmarks/bench_ced_budget.py [--work benchmarks/work/worldbench]
[--budget-minutes 20 10] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from _common import write_result

from modtrans.data.pairs import PairedSplit, load_pairs
from modtrans.data.store import open_store
from modtrans.eval.metrics import mean_cosine
from modtrans.eval.worldbench import EvalOptions, evaluate_translator
from modtrans.io import write_json
from modtrans.training.fit import Recipe
from modtrans.training.translator import fit_translator
from modtrans.translators.base import Translator, row_seeds
from modtrans.translators.samplers import SamplerOptions

logger = logging.getLogger("bench_ced_budget")

DIRECTIONS = ("text2image", "image2text")
#: The seed's method at the demo's shrunk size: 5 layers (4 hidden + output) × 512 and 10
#: DDIM steps, against its 10 × 2048 and 50 (one training step of that size takes minutes
#: here). Everything else is the seed's (CEDPaperOptions' defaults).
CED_PAPER = {"width": 512, "depth": 4, "emb_dim": 512, "steps": 10}
METHODS = {"ced-paper": CED_PAPER, "ced": {}, "mlp": {}}
MARKS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800)
BUDGETS = (60, 300, 1200)
KEPT = ("sim", "sim_sample", "R@1", "R@5", "fd_unit", "fd_unit_mean", "diversity")
VAL_PAIRS, EVAL_IMAGES, FRONTIER_IMAGES = 500, 250, 100
KS = (1, 4, 8, 16, 64)
GUIDANCE = {"ced": (1.0, 2.0, 3.0), "ced-paper": (1.0, 3.0, 6.0)}


class LearningCurve(L.Callback):
    """Val Sim of the current weights at marks of training time (CPU seconds of this process;
    validation and this callback's own time excluded); keeps the weights at each budget;
    stops at the budget or, with ``plateau``, once the last three marks gained under 0.001
    over the best before."""

    def __init__(self, val: PairedSplit, budget: float, plateau: bool) -> None:
        self.val, self.budget, self.plateau = val, budget, plateau
        self.marks = [m for m in MARKS if m < budget] + [budget]
        self.points: list[dict[str, Any]] = []
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.start = self.paused = self.pause_start = self.wall_start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.translator: Translator = pl_module.model  # the FitModule's translator
        self.start, self.paused, self.wall_start = time.process_time(), 0.0, time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pause_start = time.process_time()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.paused += time.process_time() - self.pause_start

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        seconds = time.process_time() - self.start - self.paused
        if not self.marks or seconds < self.marks[0]:
            return
        begin = time.process_time()
        while self.marks and seconds >= self.marks[0]:
            self.marks.pop(0)
        steps = trainer.global_step
        point = {"seconds": round(seconds, 1), "steps": steps,
                 "wall_seconds": round(time.perf_counter() - self.wall_start, 1),
                 "pairs": steps * len(batch[0]), "val_sim": round(self._val_sim(), 5)}
        self.points.append(point)
        logger.info("%s %s", self.translator.config.method, point)
        stop = seconds >= self.budget or (self.plateau and self._plateaued())
        for b in BUDGETS:  # a budget past the end is the final model's
            if b not in self.snapshots and seconds >= b and not stop:
                self.snapshots[b] = {**point, "state": copy.deepcopy(
                    self.translator.state_dict())}
        trainer.should_stop = stop
        self.paused += time.process_time() - begin

    def _val_sim(self) -> float:
        c = self.val.cond
        pred = self.translator.translate(c, mode="mean", n_samples=4, seed=row_seeds(0, len(c)))
        return mean_cosine(pred, self.val.target)

    def _plateaued(self) -> bool:
        sims = [p["val_sim"] for p in self.points]
        return (self.points[-1]["seconds"] >= 60 and len(sims) >= 5
                and max(sims[-3:]) - max(sims[:-3]) < 1e-3)


def _pairs(work: Path, split: str, direction: str, images: int | None = None) -> PairedSplit:
    return load_pairs(open_store(work / "store", split), direction, images)


def _first(split: PairedSplit, n: int) -> PairedSplit:
    """The first ``n`` (caption, image) pairs, one image row per pair."""
    return PairedSplit(split.direction, split.images[split.owner[:n]], split.texts[:n],
                       torch.arange(n))


def _scores(model: Translator, split: PairedSplit, options: EvalOptions | None = None
            ) -> dict[str, Any]:
    row = evaluate_translator(model, split, options=options)
    return {k: round(float(row[k]), 5) for k in KEPT}


def curves(work: Path, out: Path, direction: str, method: str, budget: float) -> dict[str, Any]:
    """Stages 1–2 for one method: its curve, then its snapshots and final model scored."""
    part = out / f"{direction}_{method}.json"
    if part.is_file():
        return json.loads(part.read_text())
    train, val = _pairs(work, "train", direction), _pairs(work, "val", direction)
    test = _pairs(work, "test", direction, EVAL_IMAGES)
    ckpt = out / "translators" / direction / method
    if method == "ridge":
        start = time.perf_counter()
        model, info = fit_translator("ridge", train, val, ckpt, progress=False)
        result: dict[str, Any] = {"seconds": round(time.perf_counter() - start, 1),
                                  "final": {"test": _scores(model, test)}}
    else:
        curve = LearningCurve(_first(val, VAL_PAIRS), budget, plateau=method != "ced-paper")
        recipe = Recipe(epochs=10_000, accelerator="cpu", checkpoint_every=10**9)
        model, info = fit_translator(method, train, val, ckpt, params=METHODS[method],
                                     recipe=recipe, progress=False, callbacks=[curve])
        result = {"budget_s": budget, "train": {k: info[k] for k in (
            "steps", "epochs", "train_seconds", "pairs_per_second")},
            "chosen": info["chosen"], "curve": curve.points, "budgets": {}}
        cn, zn = model.cond_norm(train.cond), model.target_norm(train.target)
        val_cn, val_zn = model.cond_norm(val.cond)[:2000], model.target_norm(val.target)[:2000]
        for b, snap in sorted(curve.snapshots.items()):
            copy_ = Translator.load(ckpt)
            copy_.load_state_dict(snap["state"])
            with torch.no_grad():
                copy_.finish(cn, zn, val_cn, val_zn)
            result["budgets"][str(b)] = {k: snap[k] for k in ("seconds", "pairs")} | {
                "test": _scores(copy_, test)}
        last = curve.points[-1]
        result["final"] = {"seconds": last["seconds"], "pairs": last["pairs"],
                           "test": _scores(model, test)}
    result["final"]["novel"] = _scores(model, _pairs(work, "novel", direction, EVAL_IMAGES))
    write_json(part, result)
    return result


#: The frontier's rows: (label, method, options changed). ``ced`` keeps the mean-mode shrink
#: val chose (0 here: the map alone, whatever K); ``ced, s=1`` averages its K draws as they are.
FRONTIER = (("ridge", "ridge", {}), ("mlp", "mlp", {}), ("ced", "ced", {}),
            ("ced, s=1", "ced", {"mean_shrink": 1.0}), ("ced-paper", "ced-paper", {}))


def frontier(work: Path, out: Path) -> list[dict[str, Any]]:
    """Stage 3: text → image, K and guidance for ced and ced-paper; ridge and mlp points.
    Kept after each variant, so a rerun computes only what is missing."""
    part = out / "frontier.json"
    rows = json.loads(part.read_text()) if part.is_file() else []
    done = {row["method"] for row in rows}
    test = _pairs(work, "test", "text2image", FRONTIER_IMAGES)
    for label, method, changes in FRONTIER:
        if label in done:
            continue
        model = Translator.load(out / "translators" / "text2image" / method)
        model.set_options(**changes)
        if not model.stochastic:
            rows.append({"method": label, **_scores(model, test)})
        for g in GUIDANCE.get(method, ()):
            for k in KS:
                options = EvalOptions(n_samples=k, sampling=SamplerOptions(guidance=g))
                rows.append({"method": label, "guidance": g, "K": k,
                             **_scores(model, test, options)})
                logger.info("frontier %s", rows[-1])
        write_json(part, rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/worldbench"),
                        help="the WorldBench work folder (its store/)")
    parser.add_argument("--budget-minutes", type=float, nargs=2, default=(20.0, 10.0),
                        metavar=("T2I", "I2T"),
                        help="ced-paper's training budget per direction (ced and mlp stop "
                             "earlier once val Sim stops rising)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    out = args.work / "ced_budget"
    figures: dict[str, Any] = {}
    for direction, minutes in zip(DIRECTIONS, args.budget_minutes, strict=True):
        figures[direction] = {m: curves(args.work, out, direction, m, 60 * minutes)
                              for m in ("ridge", *METHODS)}
    figures["frontier"] = frontier(args.work, out)
    config = {"ced_paper": CED_PAPER, "budget_minutes": list(args.budget_minutes),
              "threads": args.threads, "val_pairs": VAL_PAIRS, "eval_images": EVAL_IMAGES,
              "frontier_images": FRONTIER_IMAGES, "marks_s": list(MARKS),
              "budgets_s": list(BUDGETS)}
    write_result("ced_budget", config, figures)
    logger.info("wrote ced_budget.json")


if __name__ == "__main__":
    main()
