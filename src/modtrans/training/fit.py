"""Fit a LightningModule with per-epoch validation, save its model, write ``summary.json``.

Shared by the decoders: the caption decoder is one stage (:func:`fit_and_save`); the image
VAE two, the VAE then its latent prior (:func:`fit_module` twice, then :func:`save_trained`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from modtrans.artefacts import Artefact, write_summary

logger = logging.getLogger(__name__)


def fit_module(module: L.LightningModule, loader: DataLoader, val_loader: DataLoader,
               out_dir: str | Path, *, epochs: int, max_steps: int = -1,
               accelerator: str = "auto", progress: bool = True, log_name: str = "logs",
               callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Train ``module`` with validation every epoch, CSV logs in ``out_dir/log_name``.

    Returns:
        ``seconds`` and the last logged metrics (``train/*``, ``val/*``), rounded.
    """
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, max_epochs=epochs, max_steps=max_steps,
        logger=L.pytorch.loggers.CSVLogger(out_dir, name=log_name, version=""),
        callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=progress,
        enable_model_summary=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, loader, val_loader)
    metrics = {k: round(float(v), 3) for k, v in trainer.callback_metrics.items()}
    return {"seconds": round(time.perf_counter() - start, 1), **metrics}


def save_trained(model: Artefact, out_dir: str | Path, summary: dict[str, Any]
                 ) -> dict[str, Any]:
    """Save a trained artefact (on the CPU, in eval mode) with its ``summary.json``; returns
    the summary as written (provenance included)."""
    model.cpu().eval()  # type: ignore[attr-defined]
    model.save(out_dir)
    written = write_summary(out_dir, summary)
    logger.info("%s trained: %s", type(model).__name__, summary)
    return written


def fit_and_save(model: Artefact, module: L.LightningModule, loader: DataLoader,
                 val_loader: DataLoader, out_dir: str | Path, *, epochs: int,
                 accelerator: str = "auto", progress: bool = True,
                 info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``module`` (which wraps ``model``), then ``model.save(out_dir)``.

    Args:
        model: the trained object; it has ``save(out_dir)``.
        module: the LightningModule that trains it (logging ``train/*`` and ``val/*``).
        loader, val_loader: training and validation batches.
        out_dir: where the model, the CSV logs and ``summary.json`` go.
        epochs, accelerator, progress: Lightning's.
        info: extra summary fields (pairs, mode, ...).

    Returns:
        The summary: ``info``, seconds, and the last logged metrics.
    """
    metrics = fit_module(module, loader, val_loader, out_dir, epochs=epochs,
                         accelerator=accelerator, progress=progress)
    return save_trained(model, out_dir, {**(info or {}), **metrics})
