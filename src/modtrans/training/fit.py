"""The one fit loop: every trained model optimises through :func:`fit` and one :class:`Recipe`.

A model brings only its loss (a ``step`` function from a batch to named tensors, ``loss``
among them) and its data (loaders); :func:`fit` builds the optimiser, schedule, EMA,
checkpoints, logger and the Lightning ``Trainer``, so that precision, devices, strategy and
``resume`` work the same for all of them.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import pickle
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from modtrans.artefacts import Artefact, write_summary
from modtrans.config import Config
from modtrans.errors import Interrupted, NonFiniteError, StopOnSignal
from modtrans.io import atomic_open

logger = logging.getLogger(__name__)


class _NoCloudLoggerTip(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger, printed by every fit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoCloudLoggerTip())

#: Lightning precisions that keep float32 weights.
PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed")
OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("constant", "cosine", "warmup-cosine", "one-cycle")
LOGGERS = ("csv", "tensorboard", "none")

Step = Callable[[Any], dict[str, torch.Tensor]]


@dataclasses.dataclass
class Recipe(Config):
    """How a model is optimised and where it runs.

    Attributes:
        epochs: passes over the training data.
        max_steps: stop after this many optimiser steps (-1: none).
        max_time: wall-clock budget ``"DD:HH:MM:SS"`` (None: none).
        batch_size: examples per step.
        optimizer: ``adamw`` or ``adam``.
        lr, betas, weight_decay: the optimiser's.
        decay_filter: no weight decay on biases, norms and embeddings (CLIP's recipe).
        schedule: ``constant``, ``cosine`` (to 0 over the run), ``warmup-cosine`` (linear
            warm-up over ``warmup_fraction`` of the run, then cosine) or ``one-cycle``.
        warmup_fraction: share of the run spent warming up (``warmup-cosine``).
        ema_decay: EMA of the weights with warm-up (None: none).
        gradient_clip: the gradient norm is clipped to this (None: no clipping).
        seed: seeds Lightning where the model is built (weights, shuffling, noise).
        precision: Lightning precision, one of :data:`PRECISIONS` (``bf16-mixed`` on GPU):
            the weights stay float32, which saving expects.
        accelerator, devices, num_nodes, strategy: Lightning's (``strategy="ddp"`` for
            several processes: ``batch_size`` is then the global batch, each step's batch
            split among the ranks, so that the steps are those of one process).
        logger: ``csv``, ``tensorboard`` or ``none``.
        log_every_n_steps: how often training metrics are logged.
        resume: continue each stage from its ``lightning/`` checkpoint (a later stage
            without one starts from the beginning).
        checkpoint_every: write the resume checkpoint every this many steps (and at the end
            of every epoch).
        progress: show Lightning's progress bar.
    """

    epochs: int = 20
    max_steps: int = -1
    max_time: str | None = None
    batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    decay_filter: bool = False
    schedule: str = "constant"
    warmup_fraction: float = 0.0
    ema_decay: float | None = None
    gradient_clip: float | None = None
    seed: int = 0
    precision: str = "32"
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    logger: str = "csv"
    log_every_n_steps: int = 10
    resume: bool = False
    checkpoint_every: int = 200
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.precision = str(self.precision)
        if min(self.epochs, self.batch_size, self.checkpoint_every, self.num_nodes) < 1:
            raise ValueError("epochs, batch_size, checkpoint_every and num_nodes must be at "
                             "least 1")
        for name, value, allowed in (("precision", self.precision, PRECISIONS),
                                     ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("schedule", self.schedule, SCHEDULES),
                                     ("logger", self.logger, LOGGERS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}"
                                 + ("; bf16-mixed trains in bfloat16 on a GPU"
                                    if name == "precision" else ""))
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.warmup_fraction < 1:
            raise ValueError("lr must be > 0, weight_decay ≥ 0 and warmup_fraction in [0, 1)")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")

    def loader(self, dataset: Dataset, *, shuffle: bool = True, drop_last: bool | None = None,
               collate_fn: Callable | None = None) -> ResumableLoader:
        """A training loader of ``batch_size`` that a resumed run continues where it stopped;
        by default the last partial batch is dropped when there is more than one batch.
        Under DDP each rank gets its share of every batch (:class:`RankBatches`)."""
        size = len(dataset)  # type: ignore[arg-type]
        if drop_last is None:
            drop_last = size > self.batch_size
        sampler = EpochSampler(size, self.seed, shuffle, self.batch_size,
                               getattr(dataset, "set_epoch", None))
        return ResumableLoader(dataset, collate_fn=collate_fn,
                               batch_sampler=RankBatches(sampler, self.batch_size, drop_last))


    def batch_loader(self, batches: Dataset, *, workers: int = 0) -> ResumableLoader:
        """A training loader over a dataset of whole batches, indexed by
        ``(epoch, batch, rank, world)`` (e.g. :class:`~modtrans.data.stream.PairBatches`),
        read by ``workers`` processes; resumable like :meth:`loader`."""
        return ResumableLoader(batches, batch_size=None, num_workers=workers,
                               sampler=BatchOrder(len(batches), self.seed, False, 1),  # type: ignore[arg-type]
                               persistent_workers=False)


class EpochSampler(Sampler[int]):
    """The row order of an epoch drawn from ``(seed, epoch)`` alone, able to start an epoch
    after its first batches: a resumed run sees the batches an uninterrupted one would.
    ``on_epoch(epoch)``, if given, runs as an epoch starts (a dataset's per-epoch draws)."""

    def __init__(self, size: int, seed: int, shuffle: bool, batch_size: int,
                 on_epoch: Callable[[int], None] | None = None) -> None:
        self.size, self.seed, self.shuffle, self.batch_size = size, seed, shuffle, batch_size
        self.on_epoch = on_epoch
        self.epoch = self.skip = self.batches_done = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; a new epoch starts from its first batch."""
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        if self.on_epoch is not None:
            self.on_epoch(self.epoch)
        if self.shuffle:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        start, self.batches_done, self.skip = self.skip * self.batch_size, self.skip, 0
        return iter(order[start:])


class BatchOrder(EpochSampler):
    """The keys ``(epoch, batch, rank, world)`` of an epoch's batches in order (from the
    first not yet trained): the dataset draws the epoch's order itself."""

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:  # type: ignore[override]
        rank, world = rank_and_world()
        epoch = self.epoch
        return ((epoch, b, rank, world) for b in super().__iter__())


def rank_and_world() -> tuple[int, int]:
    """This process's global rank and the number of processes (0 and 1 outside DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_global_zero() -> bool:
    """Whether this process is global rank 0, the one that writes (Lightning's view: set from
    the launcher's environment at import, and by the strategy once training starts)."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


class RankBatches(BatchSampler):
    """The batches of an :class:`EpochSampler`, each split among the DDP ranks (rows
    ``rank::world``), read when iteration starts: every rank steps through the same global
    batches, so ``n`` processes take the steps one process would."""

    sampler: EpochSampler

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = rank_and_world()
        for batch in super().__iter__():
            if len(batch) < world:
                raise ValueError(f"a batch of {len(batch)} rows cannot be split among {world} "
                                 "processes; use a larger batch_size or fewer devices")
            yield batch[rank::world]


class ResumableLoader(DataLoader):
    """A training loader whose state (epoch, batches trained) Lightning saves in the resume
    checkpoint; :class:`ResumePoint` counts a batch as trained when its step is done. Its
    position is kept by its :class:`EpochSampler` (the batch sampler's, or its own sampler
    when the dataset returns whole batches)."""

    @property
    def position(self) -> EpochSampler:
        if isinstance(self.batch_sampler, RankBatches):
            return self.batch_sampler.sampler
        return self.sampler  # type: ignore[return-value]

    def batch_trained(self) -> None:
        self.position.batches_done += 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.position.epoch, "batches": self.position.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = state["epoch"], state["batches"]
        if batches >= len(self):  # saved as that epoch ended: resume at the next one's start
            epoch, batches = epoch + 1, 0
        self.position.epoch, self.position.skip = epoch, batches


def derived_seed(*parts: int) -> int:
    """One 63-bit seed from several non-negative integers (SeedSequence's mixing)."""
    return int(np.random.SeedSequence(parts).generate_state(1, np.uint64)[0] >> 1)


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


class FitModule(L.LightningModule):
    """Lightning's view of one model: its ``step`` as the training (and by default the
    validation) step, logged as ``train/<prefix><name>`` and ``val/<prefix><name>``, and the
    recipe's optimiser and schedule.

    The random numbers of step ``n`` (noise, dropout) are drawn from a generator seeded by
    ``(seed, n)``, and validation's by ``(seed, epoch)``, so a resumed run draws what an
    uninterrupted one would without saving any generator state.
    """

    def __init__(self, model: nn.Module, step: Step, recipe: Recipe, total_steps: int, *,
                 val_step: Step | None = None, after_step: Callable[[], None] | None = None,
                 log_prefix: str = "") -> None:
        super().__init__()
        self.model = model
        self.step, self.val_step, self.after_step = step, val_step or step, after_step
        self.recipe, self.total_steps, self.log_prefix = recipe, total_steps, log_prefix

    def _log(self, stage: str, metrics: dict[str, torch.Tensor], batch: Any) -> None:
        n = len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch[0])
        for key, value in metrics.items():  # averaged over the ranks' batches under DDP
            self.log(f"{stage}/{self.log_prefix}{key}", value, prog_bar=key == "loss",
                     batch_size=n, sync_dist=self.trainer.world_size > 1)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(derived_seed(self.recipe.seed, self.global_step, self.global_rank))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        metrics = self.step(batch)
        loss = metrics["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"the training loss became {loss.item()} at step {self.global_step} (epoch "
                f"{self.current_epoch}); nothing from this step was saved. Check the data "
                "for NaN or infinite values, or lower the learning rate")
        self._log("train", metrics, batch)
        return loss

    def on_validation_epoch_start(self) -> None:
        torch.manual_seed(derived_seed(self.recipe.seed, 1 << 32, self.current_epoch))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._log("val", self.val_step(batch), batch)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.after_step is not None:  # before any callback (a checkpoint) sees the weights
            self.after_step()

    def configure_optimizers(self):
        r = self.recipe
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if r.decay_filter:
            no_decay = [p for n, p in named if p.ndim < 2 or "embedding" in n]
            decay = [p for n, p in named if not (p.ndim < 2 or "embedding" in n)]
            params: Any = [{"params": decay, "weight_decay": r.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}]
        else:
            params = [p for _, p in named]
        cls = torch.optim.AdamW if r.optimizer == "adamw" else torch.optim.Adam
        optimizer = cls(params, lr=r.lr, betas=r.betas, weight_decay=r.weight_decay)
        if r.schedule == "constant":
            return optimizer
        if r.schedule == "cosine":
            schedule: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                                       self.total_steps)
        elif r.schedule == "one-cycle":
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=r.lr,
                                                           total_steps=self.total_steps)
        else:
            from transformers import get_cosine_schedule_with_warmup

            schedule = get_cosine_schedule_with_warmup(
                optimizer, math.ceil(r.warmup_fraction * self.total_steps), self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule,
                                                         "interval": "step"}}


def fit(model: nn.Module, step: Step, train: DataLoader, val: DataLoader | None,
        recipe: Recipe, out_dir: str | Path | None, *, stage: str = "",
        val_step: Step | None = None, after_step: Callable[[], None] | None = None,
        log_prefix: str = "", callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Optimise ``model`` by ``step`` on ``train`` with ``recipe``, validating every epoch on
    ``val``; the caller seeds (``L.seed_everything(recipe.seed)``) where it builds the model.

    Args:
        model: the module whose parameters are trained (in place).
        step: batch → named tensors; ``loss`` is minimised, every entry is logged.
        train, val: the loaders (``val`` may be None).
        recipe: optimiser, schedule, EMA, length, precision, devices, resume.
        out_dir: where CSV logs (``logs/``, ``<stage>_logs/``) and the resume checkpoint
            (``lightning/``, ``lightning/<stage>/``) go; None: neither.
        stage: the name of this stage of a model trained in several.
        val_step: the validation metrics (default: ``step``).
        after_step: called after every optimiser step (e.g. clamping a temperature).
        log_prefix: prefix of the logged metric names.
        callbacks: more Lightning callbacks (e.g. a benchmark's learning curve).

    Returns:
        ``seconds``, ``steps``, ``epochs`` and the last logged metrics, rounded.
    """
    total = recipe.max_steps if recipe.max_steps > 0 else recipe.epochs * len(train)
    module = FitModule(model, step, recipe, total, val_step=val_step, after_step=after_step,
                       log_prefix=log_prefix)
    callbacks = [ShareRankZero(), *callbacks]
    if recipe.ema_decay:
        callbacks.append(WeightAveraging(avg_fn=WarmupEMA(recipe.ema_decay)))
    last = log_file = None
    if out_dir is not None:
        last = Path(out_dir) / "lightning" / stage / "last.ckpt"
        callbacks.append(ResumePoint(last, recipe.checkpoint_every))
        log_name = f"{stage}_logs" if stage else "logs"
        log_file = Path(out_dir) / log_name / "metrics.csv"
    resume_from = last if recipe.resume and last is not None and last.is_file() else None
    if recipe.resume and resume_from is None:
        if out_dir is None:
            raise ValueError("resume needs an out_dir to find the checkpoint in")
        # a run killed before its first checkpoint (even before it made its folder) left
        # nothing to continue: it starts from the beginning, which is what resuming it means
        logger.warning("--resume: no checkpoint at %s yet (%s): this stage starts from the "
                       "beginning", last, "the run stopped before its first, or this stage "
                       "had not begun" if Path(out_dir).is_dir() else "no earlier run there")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(
        max_epochs=recipe.epochs, max_steps=recipe.max_steps, max_time=recipe.max_time,
        accelerator=recipe.accelerator, devices=recipe.devices, num_nodes=recipe.num_nodes,
        strategy=recipe.strategy, use_distributed_sampler=False,  # RankBatches splits batches
        precision=recipe.precision, logger=_logger(recipe, out_dir, stage),
        callbacks=callbacks, enable_checkpointing=False,
        enable_progress_bar=recipe.progress, enable_model_summary=False,
        log_every_n_steps=recipe.log_every_n_steps, gradient_clip_val=recipe.gradient_clip,
    )  # fmt: skip
    earlier = _read_csv(log_file) if resume_from and recipe.logger == "csv" else []
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # torch deprecates a class Lightning still uses
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`",
                                    category=FutureWarning)
            trainer.fit(module, train, val, ckpt_path=resume_from, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:
        if resume_from is None or isinstance(e, Interrupted) or trainer.global_step:
            raise
        raise ValueError(f"--resume: {resume_from} is not a checkpoint modtrans can read "
                         f"({_first_line(e)}); delete it and train without --resume") from e
    seconds = time.perf_counter() - start
    if earlier and is_global_zero():  # the CSV is rank 0's
        _restore_earlier_rows(log_file, earlier)
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
    return {"seconds": round(seconds, 2), "steps": trainer.global_step,
            "epochs": trainer.current_epoch, **metrics}


class ShareRankZero(L.Callback):
    """Under DDP, gives every rank global rank 0's weights and buffers as training is set
    up, before anything copies them (the EMA, DDP itself): closed-form parts (normalisers,
    ridge, γ) are fitted on rank 0 alone and shared from there."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            state = trainer.strategy.broadcast(pl_module.state_dict(), src=0)
            pl_module.load_state_dict(state)


class ResumePoint(L.Callback):
    """Writes the resume checkpoint every ``every`` steps and at each epoch's end: atomically,
    never with non-finite weights, and once more when SIGINT or SIGTERM asks training to
    stop (after the step in progress), which then raises :class:`Interrupted`."""

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = path, every
        self._stop = StopOnSignal()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if isinstance(trainer.train_dataloader, ResumableLoader):
            trainer.train_dataloader.batch_trained()
        if self._stop.received:
            self.save(trainer)
            raise Interrupted(f"{self._stop.received} received: stopped at step "
                              f"{trainer.global_step} with a checkpoint at {self.path}; rerun "
                              "with --resume to continue")
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if last_batch or trainer.global_step % self.every == 0:
            self.save(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop.__exit__()

    def save(self, trainer: L.Trainer) -> None:
        """Write the checkpoint beside its final path, then rename it into place."""
        bad = [name for name, p in trainer.lightning_module.named_parameters()
               if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteError(
                f"weights became NaN or infinite at step {trainer.global_step} ({bad[:3]}); "
                f"the last good checkpoint at {self.path} was kept. Lower the learning rate")
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, self.path)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _logger(recipe: Recipe, out_dir: str | Path | None, stage: str) -> Any:
    if out_dir is None or recipe.logger == "none":
        return False
    cls = (L.pytorch.loggers.CSVLogger if recipe.logger == "csv"
           else L.pytorch.loggers.TensorBoardLogger)
    return cls(out_dir, name=f"{stage}_logs" if stage else "logs", version="")


def save_trained(model: Artefact, out_dir: str | Path, summary: dict[str, Any]
                 ) -> dict[str, Any]:
    """Save a trained artefact (on the CPU, in eval mode) with its ``summary.json``; returns
    the summary as written (provenance included)."""
    model.cpu().eval()  # type: ignore[attr-defined]
    model.save(out_dir)
    written = write_summary(out_dir, summary)
    logger.info("%s trained: %s", type(model).__name__, summary)
    return written


def stage_metrics(metrics: dict[str, Any], stage: str,
                  keys: Sequence[str] = ("seconds", "steps", "epochs")) -> dict[str, Any]:
    """A stage's :func:`fit` result for a summary of several: its ``seconds``, ``steps``
    and ``epochs`` named after the stage, the logged metrics as they are."""
    return {(f"{stage}_{k}" if k in keys else k): v for k, v in metrics.items()}


def _read_csv(path: Path | None) -> list[dict[str, str]]:
    if path is None or not path.is_file():
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
