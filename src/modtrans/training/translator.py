"""Fitting any registered translator: closed-form parts, then :func:`~modtrans.training.fit.fit`
for trainable ones."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from modtrans.data.pairs import PairedSplit
from modtrans.data.stream import PairBatches, StorePairs, pair_statistics, ridge_moments
from modtrans.training.fit import Recipe, fit, is_global_zero, rank_and_world
from modtrans.translators.base import (
    Translator,
    TranslatorConfig,
    row_generators,
    row_seeds,
    translator_class,
)

logger = logging.getLogger(__name__)

#: Pairs of a split read from disk on which γ (a mean over pairs) is measured.
SAMPLE_PAIRS = 65_536


def build_translator(
    method: str,
    direction: str,
    train: PairedSplit | StorePairs,
    *,
    params: dict[str, Any] | None = None,
    image_encoder: str = "unknown",
    text_encoder: str = "unknown",
    fit_normalisers: bool = True,
    progress: bool = False,
) -> Translator:
    """A fresh translator with its options (defaults updated by ``params``) and, unless
    ``fit_normalisers`` is off, its normalisers fitted on ``train`` (in memory, or in one
    pass over the shards of a :class:`StorePairs`)."""
    cls = translator_class(method)
    params = dict(params or {})
    names = sorted(f.name for f in dataclasses.fields(cls.options_class))
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method {method!r}; valid options: {names}"
        )
    streamed = isinstance(train, StorePairs)
    config = TranslatorConfig(
        method=method, direction=direction,
        cond_dim=train.cond_dim if streamed else train.cond.shape[1],
        target_dim=train.target_dim if streamed else train.target.shape[1],
        image_encoder=image_encoder, text_encoder=text_encoder, params=params,
    )  # fmt: skip
    translator = cls(config)
    if fit_normalisers and streamed:
        pair_statistics(train, translator.cond_norm, translator.target_norm, progress)
    elif fit_normalisers:
        translator.cond_norm.fit(train.cond)
        translator.target_norm.fit(train.target)
    return translator


def fit_translator(
    method: str,
    train: PairedSplit | StorePairs,
    val: PairedSplit,
    out_dir: str | Path,
    *,
    params: dict[str, Any] | None = None,
    recipe: Recipe | None = None,
    image_encoder: str = "unknown",
    text_encoder: str = "unknown",
    val_pairs: int = 2000,
    selection_split: str = "val",
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[L.Callback] = (),
    workers: int = 0,
    sample_pairs: int = SAMPLE_PAIRS,
) -> tuple[Translator, dict[str, Any]]:
    """Fit a translator and save it to ``out_dir``.

    Closed-form parts (normalisers, ridge, kNN tables) are fitted first; trainable methods
    are then optimised by ``recipe`` with the method's own ``lr``, ``weight_decay``,
    ``ema_decay`` and ``grad_clip``, logging the loss and val Sim (on the first ``val_pairs``
    val pairs), and finished in closed form (e.g. γ of an MLP-mapped ``ced``). ``resume``
    continues from ``out_dir/lightning/last.ckpt``. The summary records ``val``'s split as
    ``selected_on`` (``selection_split``): figures on it are not held out. ``callbacks``
    join the gradient training's (e.g. a benchmark's learning curve).

    ``train`` is a split in memory or a :class:`StorePairs` read from disk: then the
    normalisers and ridge moments are sums over passes of its shards, γ is measured on
    ``sample_pairs`` of its pairs, and training reads shuffled batches from the shards with
    ``workers`` DataLoader processes (:class:`PairBatches`).

    Under DDP (``recipe.strategy="ddp"``) the closed-form parts are fitted once, on global
    rank 0, and broadcast to the other ranks as training starts; rank 0 alone finishes
    and saves the translator (the others return theirs unsaved).

    Without a ``recipe`` the method's own number of epochs
    (:attr:`~modtrans.translators.base.Translator.default_epochs`) is run.

    Returns:
        The fitted translator and a summary (what was chosen, steps, seconds, pairs/s).
    """
    recipe = recipe or Recipe(epochs=translator_class(method).default_epochs)
    recipe = dataclasses.replace(recipe, resume=resume, progress=progress)
    out_dir = Path(out_dir)
    L.seed_everything(recipe.seed, verbose=False)
    lead = is_global_zero()
    streamed = isinstance(train, StorePairs)
    start = time.perf_counter()
    translator = build_translator(method, train.direction, train, params=params,
                                  image_encoder=image_encoder, text_encoder=text_encoder,
                                  fit_normalisers=lead, progress=progress)
    val_c, val_z = val.cond[:val_pairs], val.target[:val_pairs]
    info: dict[str, Any] = {"method": method, "direction": train.direction,
                            "train_pairs": len(train) if streamed else len(train.cond),
                            "selected_on": selection_split, "streamed": streamed}
    val_cn, val_zn = translator.cond_norm(val_c), translator.target_norm(val_z)
    if not lead:
        chosen: dict[str, Any] = {}
        logger.debug("rank %d: the closed-form parts come from rank 0", rank_and_world()[0])
    elif streamed:
        moments = (ridge_moments(train, translator.cond_norm, translator.target_norm, progress)
                   if translator.needs_moments else None)
        c, z = train.sample(sample_pairs, recipe.seed)
        fit_sample = translator.cond_norm(c), translator.target_norm(z)
        chosen = translator.prepare_streamed(moments, fit_sample, val_cn, val_zn)
    else:
        fit_sample = translator.cond_norm(train.cond), translator.target_norm(train.target)
        chosen = translator.prepare(*fit_sample, val_cn, val_zn)
    info["chosen"] = chosen
    info["prepare_seconds"] = round(time.perf_counter() - start, 2)
    if translator.trainable:
        options = translator.options
        recipe = dataclasses.replace(recipe, lr=options.lr, weight_decay=options.weight_decay,
                                     ema_decay=getattr(options, "ema_decay", None),
                                     gradient_clip=getattr(options, "grad_clip", None))
        loader = (recipe.batch_loader(PairBatches(train, recipe.batch_size, recipe.seed),
                                      workers=workers)
                  if streamed else recipe.loader(TensorDataset(train.cond, train.target)))
        info.update(_train(translator, loader, (val_c, val_z), out_dir, recipe, callbacks))
        if not is_global_zero():
            return translator.eval(), info
        val_cn, val_zn = translator.cond_norm(val_c), translator.target_norm(val_z)
        with torch.no_grad():
            info["chosen"].update(translator.eval().finish(*fit_sample, val_cn, val_zn))
    elif not lead:
        return translator.eval(), info
    info["seconds"] = round(time.perf_counter() - start, 2)
    translator.save(out_dir, summary={**info, "train_config": recipe.to_dict()})
    return translator.eval(), info


def _train(translator: Translator, loader: DataLoader, val: tuple[torch.Tensor, torch.Tensor],
           out_dir: Path, recipe: Recipe, callbacks: Sequence[L.Callback]) -> dict[str, Any]:
    """Gradient training in normalised space (each batch normalised by the translator's
    normalisers, which every rank shares): the translator's loss, Sim on val."""
    def normalised(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        c, z = batch
        return translator.cond_norm(c), translator.target_norm(z)

    def val_sim(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        cn, zn = normalised(batch)
        pred = translator._translate(cn, mode="mean", n_samples=2,
                                     generators=row_generators(row_seeds(0, len(cn)), len(cn)))
        return {"sim": torch.tensor(translator.val_similarity(pred, zn))}

    result = fit(translator, lambda batch: {"loss": translator.training_loss(*normalised(batch))},
                 loader, DataLoader(TensorDataset(*val), batch_size=4096), recipe, out_dir,
                 val_step=val_sim, callbacks=callbacks)
    seconds = result["seconds"]
    return {
        "steps": result["steps"],
        "epochs": result["epochs"],
        "train_seconds": seconds,
        "pairs_per_second": round(result["steps"] * recipe.batch_size / max(seconds, 1e-9), 1),
        "val_sim": result.get("val/sim", float("nan")),
    }
