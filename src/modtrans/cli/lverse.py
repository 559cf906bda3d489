"""L-Verse verbs on a world: ``fit-tokenizer`` (AugVAE, the image tokenizer) and
``fit-biart`` (the bidirectional transformer over text and image tokens)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import typer

from modtrans.cli.application import app


@app.command("fit-tokenizer")
def fit_tokenizer(
    data: Path = typer.Option(..., help="A world folder made by `modtrans world`."),
    out: Path = typer.Option(..., "--out", "-o", help="Tokenizer directory to write."),
    variant: str = typer.Option(
        "ml", help="ml (16×16 and 8×8 grids, one codebook) or sl (one 16×16 grid, fine-tuned "
        "from an ml tokenizer given by --init)."),
    init: Path = typer.Option(None, help="sl: the ml tokenizer to start from."),
    epochs: int = typer.Option(None, help="Override the config's epochs."),
    config: Path = typer.Option(None, help="YAML/JSON file of AugVAEConfig options."),
    max_images: int = typer.Option(None, help="Train on the first N train images only."),
    max_val_images: int = typer.Option(500, help="Val images to measure reconstructions on."),
    judge: Path = typer.Option(
        None, help="A recogniser (fit-recogniser): report the share of the val images' shapes, "
        "colours and pairs it finds in their reconstructions (and in the images themselves)."),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: auto, cpu, gpu."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from "
                                "OUT/lightning/last.ckpt."),
) -> None:
    """Train AugVAE, L-Verse's image tokenizer, on a world's train split; report PSNR, codebook
    usage and perplexity (and with --judge the judge's recall) on val reconstructions."""
    from modtrans.artefacts import write_summary
    from modtrans.decoders.augvae import AugVAE, AugVAEConfig, fit_augvae
    from modtrans.world.recogniser import AttributeRecogniser, world_split
    from modtrans.world.semantic import truth_recall

    cfg = AugVAEConfig.with_overrides(
        config, variant=variant, epochs=epochs,
        levels=(16,) if variant == "sl" else None)
    images, _ = world_split(data, "train")
    val_images, val_rows = world_split(data, "val")
    val_images, val_rows = val_images[:max_val_images], val_rows[:max_val_images]
    with contextlib.redirect_stdout(sys.stderr):
        summary = fit_augvae(images[:max_images], val_images, out, cfg, init=init,
                             accelerator=accelerator, resume=resume)
        if judge is not None:
            recogniser = AttributeRecogniser.load(judge)
            rebuilt = AugVAE.load(out).reconstruct(val_images)
            summary = write_summary(out, {**summary, "judge": {
                "reconstructions": truth_recall(recogniser, rebuilt, val_rows),
                "real": truth_recall(recogniser, val_images, val_rows)}})
    typer.echo(json.dumps(summary, indent=2))


@app.command("fit-biart")
def fit_biart_cmd(
    data: Path = typer.Option(..., help="A world folder made by `modtrans world`."),
    tokenizer: Path = typer.Option(..., help="The AugVAE image tokenizer (fit-tokenizer)."),
    out: Path = typer.Option(..., "--out", "-o", help="BiART directory to write."),
    epochs: int = typer.Option(None, help="Override the config's epochs."),
    config: Path = typer.Option(None, help="YAML/JSON file of BiARTConfig options."),
    max_images: int = typer.Option(None, help="Train on the first N train images only."),
    max_val_images: int = typer.Option(200, help="Val images whose pairs measure the loss."),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: auto, cpu, gpu."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from "
                                "OUT/lightning/last.ckpt."),
) -> None:
    """Train BiART, L-Verse's bidirectional transformer, on a world's captioned train images:
    every pair both ways (text → image tokens, image tokens → text)."""
    from modtrans.decoders.biart import BiARTConfig, fit_biart

    cfg = BiARTConfig.with_overrides(config, epochs=epochs)
    images, captions = captioned(data, "train", max_images)
    val_images, val_captions = captioned(data, "val", max_val_images)
    with contextlib.redirect_stdout(sys.stderr):
        summary = fit_biart(images, captions, val_images, val_captions, tokenizer, out, cfg,
                            accelerator=accelerator, resume=resume)
    typer.echo(json.dumps(summary, indent=2))


def captioned(world: Path, split: str, n: int | None):
    """The first ``n`` images of a world split (uint8) and their captions."""
    from modtrans.data.coco import read_coco_captions
    from modtrans.world.recogniser import world_split

    images, _ = world_split(world, split)
    return images[:n], read_coco_captions(world / split / "captions.json").captions[:n]
