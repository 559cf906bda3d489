"""Encoder verbs: ``encoders`` (list spec kinds), ``fit-encoder`` (train the world CLIP),
``eval-encoder`` (retrieval, modality gap and probes of the pair behind a store)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import typer

from modtrans.cli.application import app


@app.command("encoders")
def list_encoder_kinds() -> None:
    """List the encoder spec kinds that can be used with --encoder."""
    from modtrans.encoders import list_encoders

    for kind, help in list_encoders().items():
        typer.echo(f"{kind + ':':<11} {help}")


@app.command("fit-encoder")
def fit_encoder(
    world: Path = typer.Argument(..., help="A world folder made by `modtrans world`."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to save the model (use it as "
                             "hf:OUT)."),
    config: Path = typer.Option(None, help="YAML/JSON file of WorldClipConfig options."),
    epochs: int = typer.Option(None, help="Override the config's number of epochs."),
    batch_size: int = typer.Option(None, help="Override the config's batch size."),
    lr: float = typer.Option(None, help="Override the config's learning rate."),
    vision: str = typer.Option(None, help="Image tower: cnn (the default) or vit "
                               "(a plain transformers CLIPModel)."),
    warm_start_epochs: int = typer.Option(
        None, help="Epochs of training the CNN tower as the world's object detector (on the "
        "ground truth) before the contrastive epochs; 0 for none (default: 2 for cnn, "
        "0 for vit)."),
    pool: str = typer.Option(
        None, help="How the CNN tower's cells become the image embedding: objects (their "
        "mean weighted by the warm-started detector's object probability, beside the plain "
        "mean) or mean (default: objects when warm-started, else mean)."),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: auto, cpu, gpu."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from OUT/lightning/ "
                                "(the warm start and the contrastive epochs each from its own "
                                "checkpoint)."),
) -> None:
    """Train the world CLIP (transformers' CLIP text tower, a CNN or ViT image tower) on the
    world's train split.

    The result is saved with save_pretrained and is loaded like any CLIP: --encoder hf:OUT.
    """
    from modtrans.world.clip import WorldClipConfig, fit_world_clip_from_world

    cfg = WorldClipConfig.with_overrides(config, epochs=epochs, batch_size=batch_size, lr=lr,
                                         vision=vision, warm_start_epochs=warm_start_epochs,
                                         pool=pool)
    # Lightning draws its progress bar on stdout; send it to stderr so stdout is the JSON only.
    with contextlib.redirect_stdout(sys.stderr):
        summary = fit_world_clip_from_world(world, out, config=cfg, accelerator=accelerator,
                                            resume=resume)
    typer.echo(json.dumps(summary, indent=2))


@app.command("eval-encoder")
def eval_encoder(
    data: Path = typer.Argument(..., help="A store root with train and val splits."),
    n_items: int = typer.Option(1000, help="Val images used for retrieval."),
    probe: str = typer.Option(
        "main_shape,main_colour", help="Comma-separated image-metadata columns to probe "
        "linearly ('' for none)."
    ),
    out: Path = typer.Option(None, help="Also write the report as JSON here."),
) -> None:
    """Report the encoder pair behind a store: retrieval R@K, modality gap, linear probes."""
    from modtrans.data.store import open_store
    from modtrans.eval.encoder_report import cross_modal_report, linear_probe
    from modtrans.io import write_json

    val = open_store(data, "val")
    report = cross_modal_report(val, n_items)
    columns = [c for c in probe.split(",") if c]
    if columns:
        train = open_store(data, "train")
        report["probes"] = {c: linear_probe(train, val, c) for c in columns}
    if out:
        write_json(out, report)
    typer.echo(json.dumps(report, indent=2))
