"""Fitting any registered translator: closed-form parts, then :func:`~modtrans.training.fit.fit`
for trainable ones."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from modtrans.data.pairs import PairedSplit
from modtrans.training.fit import Recipe, fit
from modtrans.translators.base import (
    Translator,
    TranslatorConfig,
    row_generators,
    row_seeds,
    translator_class,
)


def build_translator(
    method: str,
    direction: str,
    train: PairedSplit,
    *,
    params: dict[str, Any] | None = None,
    image_encoder: str = "unknown",
    text_encoder: str = "unknown",
) -> Translator:
    """A fresh translator with its options (defaults updated by ``params``) and normalisers."""
    cls = translator_class(method)
    params = dict(params or {})
    names = sorted(f.name for f in dataclasses.fields(cls.options_class))
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method {method!r}; valid options: {names}"
        )
    config = TranslatorConfig(
        method=method, direction=direction, cond_dim=train.cond.shape[1],
        target_dim=train.target.shape[1], image_encoder=image_encoder,
        text_encoder=text_encoder, params=params,
    )
    translator = cls(config)
    translator.cond_norm.fit(train.cond)
    translator.target_norm.fit(train.target)
    return translator


def fit_translator(
    method: str,
    train: PairedSplit,
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
) -> tuple[Translator, dict[str, Any]]:
    """Fit a translator and save it to ``out_dir``.

    Closed-form parts (normalisers, ridge, kNN tables) are fitted first; trainable methods
    are then optimised by ``recipe`` with the method's own ``lr``, ``weight_decay``,
    ``ema_decay`` and ``grad_clip``, logging the loss and val Sim (on the first ``val_pairs``
    val pairs), and finished in closed form (e.g. γ of an MLP-mapped ``ced``). ``resume``
    continues from ``out_dir/lightning/last.ckpt``. The summary records ``val``'s split as
    ``selected_on`` (``selection_split``): figures on it are not held out. ``callbacks``
    join the gradient training's (e.g. a benchmark's learning curve).

    Without a ``recipe`` the method's own number of epochs
    (:attr:`~modtrans.translators.base.Translator.default_epochs`) is run.

    Returns:
        The fitted translator and a summary (what was chosen, steps, seconds, pairs/s).
    """
    recipe = recipe or Recipe(epochs=translator_class(method).default_epochs)
    recipe = dataclasses.replace(recipe, resume=resume, progress=progress)
    out_dir = Path(out_dir)
    L.seed_everything(recipe.seed, verbose=False)
    translator = build_translator(method, train.direction, train, params=params,
                                  image_encoder=image_encoder, text_encoder=text_encoder)
    cn, zn = translator.cond_norm(train.cond), translator.target_norm(train.target)
    val_cn = translator.cond_norm(val.cond)[:val_pairs]
    val_zn = translator.target_norm(val.target)[:val_pairs]
    start = time.perf_counter()
    info: dict[str, Any] = {"method": method, "direction": train.direction,
                            "train_pairs": len(cn), "selected_on": selection_split,
                            "chosen": translator.prepare(cn, zn, val_cn, val_zn)}
    if translator.trainable:
        options = translator.options
        recipe = dataclasses.replace(recipe, lr=options.lr, weight_decay=options.weight_decay,
                                     ema_decay=getattr(options, "ema_decay", None),
                                     gradient_clip=getattr(options, "grad_clip", None))
        info.update(_train(translator, (cn, zn), (val_cn, val_zn), out_dir, recipe,
                           callbacks))
        with torch.no_grad():
            info["chosen"].update(translator.eval().finish(cn, zn, val_cn, val_zn))
    info["seconds"] = round(time.perf_counter() - start, 2)
    translator.save(out_dir, summary={**info, "train_config": recipe.to_dict()})
    return translator.eval(), info


def _train(translator: Translator, train: tuple[torch.Tensor, torch.Tensor],
           val: tuple[torch.Tensor, torch.Tensor], out_dir: Path, recipe: Recipe,
           callbacks: Sequence[L.Callback]) -> dict[str, Any]:
    """Gradient training in normalised space: the translator's loss, Sim on val."""
    def val_sim(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        cn, zn = batch
        pred = translator._translate(cn, mode="mean", n_samples=2,
                                     generators=row_generators(row_seeds(0, len(cn)), len(cn)))
        return {"sim": torch.tensor(translator.val_similarity(pred, zn))}

    result = fit(translator, lambda batch: {"loss": translator.training_loss(*batch)},
                 recipe.loader(TensorDataset(*train)),
                 DataLoader(TensorDataset(*val), batch_size=4096), recipe, out_dir,
                 val_step=val_sim, callbacks=callbacks)
    seconds = result["seconds"]
    return {
        "steps": result["steps"],
        "epochs": result["epochs"],
        "train_seconds": seconds,
        "pairs_per_second": round(result["steps"] * recipe.batch_size / max(seconds, 1e-9), 1),
        "val_sim": result.get("val/sim", float("nan")),
    }
