"""Encoder verbs: ``encoders`` (list spec kinds), ``fit-encoder`` (train a small CLIP),
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
    source: Path = typer.Argument(
        ..., help="What to train on: a world folder (made by `modtrans world`), or any source "
        "`modtrans embed` reads: a COCO or Karpathy captions JSON, a CSV/parquet table, "
        "webdataset shards, a folder of images with .txt captions."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to save the model (use it as "
                             "hf:OUT)."),
    images: Path = typer.Option(None, help="Image folder of a COCO/Karpathy JSON or a table "
                                "(default: found beside it)."),
    split: str = typer.Option(None, help="The split to train on, for a source with several "
                              "(Karpathy JSON; default: train)."),
    held_out: float = typer.Option(
        0.05, help="Share of a single-split source's images held out of training for the "
        "retrieval reported at the end (a world or a Karpathy JSON holds out its val split)."),
    config: Path = typer.Option(None, help="YAML/JSON file of WorldClipConfig options."),
    epochs: int = typer.Option(None, help="Contrastive epochs (default: the config's, 3)."),
    batch_size: int = typer.Option(None, help="Pairs per step (default: the config's, 128)."),
    lr: float = typer.Option(None, help="Learning rate (default: the config's, 1e-3)."),
    image_size: int = typer.Option(None, help="Images are resized and centre-cropped to this "
                                   "square (default: the config's, 64)."),
    vision: str = typer.Option(None, help="Image tower: cnn (the default) or vit "
                               "(a plain transformers CLIPModel)."),
    warm_start_epochs: int = typer.Option(
        None, help="Epochs of training the CNN tower as the world's object detector (on the "
        "ground truth) before the contrastive epochs; 0 for none (default: 2 for a world "
        "folder with the cnn tower, else 0)."),
    pool: str = typer.Option(
        None, help="How the CNN tower's cells become the image embedding: objects (their "
        "mean weighted by the warm-started detector's object probability, beside the plain "
        "mean) or mean (default: objects when warm-started, else mean)."),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: auto, cpu, gpu."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from OUT/lightning/ "
                                "(the warm start and the contrastive epochs each from its own "
                                "checkpoint)."),
) -> None:
    """Train a small CLIP (transformers' CLIP text tower, a CNN or ViT image tower) with a
    tokenizer built from the data's own captions, then report retrieval on held-out images.

    The result is saved with save_pretrained and is loaded like any CLIP: --encoder hf:OUT.
    """
    from modtrans.config import read_mapping
    from modtrans.encoders import build_encoder
    from modtrans.eval.encoder_report import encoder_retrieval
    from modtrans.world.clip import WorldClipConfig, fit_clip_on_source

    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist; give a world folder (made by "
                                "`modtrans world DIR`) or a captioned dataset (see `modtrans "
                                "fit-encoder --help`)")
    world = (source / "world.json").is_file()
    if not world and warm_start_epochs is None and "warm_start_epochs" not in (
            read_mapping(config) if config else {}):
        warm_start_epochs = 0  # the warm start needs a world's ground truth
    cfg = WorldClipConfig.with_overrides(config, epochs=epochs, batch_size=batch_size, lr=lr,
                                         image_size=image_size, vision=vision,
                                         warm_start_epochs=warm_start_epochs, pool=pool)
    # Lightning draws its progress bar on stdout; send it to stderr so stdout is the JSON only.
    with contextlib.redirect_stdout(sys.stderr):
        summary, kept = fit_clip_on_source(source, out, cfg, images=images, split=split,
                                           held_out=held_out, accelerator=accelerator,
                                           resume=resume)
    summary["held_out"] = encoder_retrieval(build_encoder(f"hf:{out}"), kept.images,
                                            kept.captions)
    typer.echo(json.dumps(summary, indent=2))


@app.command("eval-encoder")
def eval_encoder(
    data: Path = typer.Argument(..., help="A store root with train and val splits."),
    n_items: int = typer.Option(1000, help="Val images used for retrieval."),
    probe: str = typer.Option(
        "main_shape,main_colour", help="Comma-separated image-metadata columns to probe "
        "linearly ('' for none)."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the report as JSON here."),
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
