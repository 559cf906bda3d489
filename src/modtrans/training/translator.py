"""Fitting any registered translator: closed-form parts, then Lightning for trainable ones."""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from torch.utils.data import DataLoader, TensorDataset

from modtrans.config import Config
from modtrans.data.pairs import PairedSplit
from modtrans.io import atomic_open
from modtrans.translators.base import Translator, TranslatorConfig, translator_class

logger = logging.getLogger(__name__)


#: Lightning precisions that keep float32 weights.
PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed")


@dataclasses.dataclass
class TrainConfig(Config):
    """How a trainable translator is optimised (ignored by closed-form methods).

    Attributes:
        epochs: passes over the training pairs.
        max_time: wall-clock budget ``"DD:HH:MM:SS"`` (None: none); training stops there.
        batch_size: pairs per step.
        precision: Lightning precision, one of :data:`PRECISIONS` (``bf16-mixed`` on GPU):
            the weights stay float32, which translation and saving expect.
        accelerator, devices, strategy: Lightning's (``strategy="ddp"`` for several GPUs).
        logger: ``csv`` or ``tensorboard``.
        val_pairs: val pairs used for the per-epoch Sim.
        seed: seeds Lightning (weights, shuffling, noise).
    """

    epochs: int = 20
    max_time: str | None = None
    batch_size: int = 256
    precision: str = "32"
    accelerator: str = "auto"
    devices: int = 1
    strategy: str = "auto"
    logger: str = "csv"
    val_pairs: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if str(self.precision) not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}; "
                             "bf16-mixed trains in bfloat16 on a GPU")
        if self.logger not in ("csv", "tensorboard"):
            raise ValueError(f"logger must be 'csv' or 'tensorboard', got {self.logger!r}")


class WarmupEMA:
    """EMA update with warm-up: decay_n = min(decay, (1 + n) / (10 + n)) after n updates.

    Without the warm-up the average lags far behind short runs (it starts at the random
    initialisation and forgets it at rate 1 − decay).
    """

    def __init__(self, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor,
                 num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        decay = min(self.decay, (1 + n) / (10 + n))
        return decay * averaged + (1 - decay) * current


class TranslatorModule(L.LightningModule):
    """Wraps a translator: its ``training_loss``, AdamW, and Sim on val every epoch."""

    def __init__(self, translator: Translator, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.translator = translator
        self.lr, self.weight_decay = lr, weight_decay

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        loss = self.translator.training_loss(*batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        cn, zn = batch
        pred = self.translator._translate(cn, mode="mean", n_samples=2, generator=None)
        self.log("val/sim", self.translator.val_similarity(pred, zn), prog_bar=True,
                 batch_size=len(cn))

    def configure_optimizers(self):
        params = [p for p in self.translator.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


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
    train_config: TrainConfig | None = None,
    image_encoder: str = "unknown",
    text_encoder: str = "unknown",
    resume: bool = False,
    progress: bool = True,
) -> tuple[Translator, dict[str, Any]]:
    """Fit a translator and save it to ``out_dir``.

    Closed-form parts (normalisers, ridge, kNN tables) are fitted first; trainable methods
    are then optimised with Lightning, logging the loss and val Sim, with EMA where the
    method asks for it, and finished in closed form (e.g. γ of an MLP-mapped ``ced``).
    ``resume`` continues from ``out_dir/lightning/last.ckpt``.

    Returns:
        The fitted translator and a summary (what was chosen, steps, seconds, pairs/s).
    """
    tc = train_config or TrainConfig()
    out_dir = Path(out_dir)
    L.seed_everything(tc.seed, verbose=False)
    translator = build_translator(method, train.direction, train, params=params,
                                  image_encoder=image_encoder, text_encoder=text_encoder)
    cn, zn = translator.cond_norm(train.cond), translator.target_norm(train.target)
    val_cn = translator.cond_norm(val.cond)[: tc.val_pairs]
    val_zn = translator.target_norm(val.target)[: tc.val_pairs]
    start = time.perf_counter()
    info: dict[str, Any] = {"method": method, "direction": train.direction,
                            "train_pairs": len(cn), "chosen": translator.prepare(cn, zn, val_cn,
                                                                                 val_zn)}
    if translator.trainable:
        info.update(_train(translator, cn, zn, val_cn, val_zn, out_dir, tc, resume, progress))
        with torch.no_grad():
            info["chosen"].update(translator.eval().finish(cn, zn, val_cn, val_zn))
    info["seconds"] = round(time.perf_counter() - start, 2)
    translator.save(out_dir, summary={**info, "train_config": tc.to_dict()})
    return translator.eval(), info


def _train(translator: Translator, cn, zn, val_cn, val_zn, out_dir: Path, tc: TrainConfig,
           resume: bool, progress: bool) -> dict[str, Any]:
    options = translator.options
    train_loader = DataLoader(TensorDataset(cn, zn), batch_size=tc.batch_size, shuffle=True,
                              drop_last=len(cn) > tc.batch_size)
    val_loader = DataLoader(TensorDataset(val_cn, val_zn), batch_size=4096)
    ckpt_dir = out_dir / "lightning"
    callbacks: list[L.Callback] = [ModelCheckpoint(dirpath=ckpt_dir, save_last=True,
                                                   save_top_k=0)]
    ema_decay = getattr(options, "ema_decay", None)  # methods without the option: no EMA
    if ema_decay:
        callbacks.append(WeightAveraging(avg_fn=WarmupEMA(ema_decay)))
    logger_cls = (L.pytorch.loggers.CSVLogger if tc.logger == "csv"
                  else L.pytorch.loggers.TensorBoardLogger)
    trainer = L.Trainer(
        max_epochs=tc.epochs, max_time=tc.max_time, accelerator=tc.accelerator,
        devices=tc.devices, strategy=tc.strategy, precision=tc.precision,
        logger=logger_cls(out_dir, name="logs", version=""), callbacks=callbacks,
        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=10,
    )
    module = TranslatorModule(translator, lr=options.lr, weight_decay=options.weight_decay)
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {last}; train without --resume")
    log_file = out_dir / "logs" / "metrics.csv"
    earlier = _read_csv(log_file) if resume and tc.logger == "csv" else []
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=last if resume else None,
                weights_only=True)
    seconds = time.perf_counter() - start
    if earlier:
        _restore_earlier_rows(log_file, earlier)
    steps = trainer.global_step
    return {
        "steps": steps,
        "epochs": trainer.current_epoch,
        "train_seconds": round(seconds, 2),
        "pairs_per_second": round(steps * tc.batch_size / max(seconds, 1e-9), 1),
        "val_sim": float(trainer.callback_metrics.get("val/sim", float("nan"))),
    }


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _restore_earlier_rows(path: Path, earlier: list[dict[str, str]]) -> None:
    """Put the resumed run's log rows back in front: Lightning's CSV logger deletes them.

    Rows logged after the checkpoint (by an interrupted epoch) are dropped, since the resumed
    run logs those steps again.
    """
    later = _read_csv(path)
    first = min((float(r["step"]) for r in later if r.get("step")), default=float("inf"))
    rows = [r for r in earlier if r.get("step") and float(r["step"]) < first] + later
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_open(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
