"""Joint VAE verbs: ``fit-joint`` (one latent for an image and its caption, on a world) and
``sample-pairs`` (images and captions drawn together from its prior); ``generate`` and
``caption`` take ``--system joint``."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import typer

from modtrans.cli.application import app


@app.command("fit-joint")
def fit_joint(
    data: Path = typer.Option(..., help="A world folder made by `modtrans world`."),
    out: Path = typer.Option(..., "--out", "-o", help="Joint VAE directory to write."),
    fusion: str = typer.Option(None, help="mopoe (mixture of products of experts) or mvae "
                               "(product of experts, sub-sampled ELBOs); default the config's."),
    epochs: int = typer.Option(None, help="Override the config's epochs."),
    prior_components: int = typer.Option(
        None, help="Fit a Gaussian mixture of this many components to the train pairs' joint "
        "posterior means after training, and draw joint samples from it (0: N(0, I))."),
    prior_only: bool = typer.Option(
        False, "--prior-only", help="--out holds a trained joint VAE: keep it and (re)fit "
        "only its prior mixture of --prior-components."),
    config: Path = typer.Option(None, help="YAML/JSON file of JointVAEConfig options."),
    max_images: int = typer.Option(None, help="Train on the first N train images only."),
    max_val_images: int = typer.Option(200, help="Val images whose pairs measure the loss."),
    judge: Path = typer.Option(
        None, help="A recogniser (fit-recogniser): report the coherence of 256 joint samples "
        "(the judge on the image against the parser on the caption) and of random pairings."),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: auto, cpu, gpu."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from "
                                "OUT/lightning/last.ckpt."),
) -> None:
    """Train the joint image–caption VAE on a world's captioned train images: both unimodal
    encoders, the shared latent (MoPoE or MVAE), the image decoder and the GPT-2 caption
    decoder."""
    from modtrans.artefacts import write_summary
    from modtrans.cli.lverse import captioned
    from modtrans.decoders.joint_vae import (
        JointVAE,
        JointVAEConfig,
        fit_joint_vae,
        refit_joint_prior,
    )

    if prior_only and (prior_components is None or config or epochs or fusion or resume):
        raise ValueError("--prior-only refits the prior of the joint VAE in --out: give "
                         "--prior-components K and no --config, --epochs, --fusion or --resume")
    images, captions = captioned(data, "train", max_images)
    with contextlib.redirect_stdout(sys.stderr):
        if prior_only:
            summary = refit_joint_prior(out, images, captions, prior_components)
        else:
            cfg = JointVAEConfig.with_overrides(config, epochs=epochs, fusion=fusion,
                                                prior_components=prior_components)
            val_images, val_captions = captioned(data, "val", max_val_images)
            summary = fit_joint_vae(images, captions, val_images, val_captions, out, cfg,
                                    accelerator=accelerator, resume=resume)
        if judge is not None:
            import torch

            from modtrans.world.recogniser import AttributeRecogniser
            from modtrans.world.semantic import joint_coherence

            samples, texts = JointVAE.load(out).sample_pairs(
                256, generator=torch.Generator().manual_seed(0))
            summary = write_summary(out, {**summary, "coherence": joint_coherence(
                AttributeRecogniser.load(judge), samples, texts)})
    typer.echo(json.dumps(summary, indent=2))


@app.command("sample-pairs")
def sample_pairs(
    model: Path = typer.Option(..., "--model", help="A joint VAE directory (fit-joint)."),
    system: str = typer.Option("joint", help="joint: the one system that draws pairs."),
    n: int = typer.Option(16, "-n", "--n", help="Pairs to draw."),
    prior: str = typer.Option(None, help="standard (N(0, I)) or fitted (the mixture of a "
                              "model fitted with --prior-components); default fitted if it "
                              "has one."),
    out: Path = typer.Option(Path("pairs.png"), "--out", "-o",
                             help="PNG grid to write; the captions go beside it as JSON."),
    temperature: float = typer.Option(0.0, help="Caption sampling temperature (0: greedy)."),
    seed: int = typer.Option(0, help="Seed of the prior draws."),
) -> None:
    """Joint generation: latents from the prior, each decoded into an image and its caption
    (a PNG grid, row-major, and OUT.json with the captions in the same order)."""
    import torch

    from modtrans.decoders.joint_vae import JointVAE
    from modtrans.images import image_grid
    from modtrans.io import atomic_path, write_json

    if system != "joint":
        raise ValueError(f"--system must be joint (the one system that draws pairs), got "
                         f"{system!r}")
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file, got {out}")
    images, captions = JointVAE.load(model).sample_pairs(
        n, prior=prior, temperature=temperature,
        generator=torch.Generator().manual_seed(seed))
    rows = max(d for d in range(1, int(n ** 0.5) + 1) if n % d == 0)
    with atomic_path(out) as tmp:
        image_grid(images, rows=rows).save(tmp, format="PNG")
    write_json(out.with_suffix(".json"), {"captions": captions, "rows": rows})
    for i, text in enumerate(captions):
        typer.echo(f"{i}\t{text}")
    typer.echo(f"wrote {n} images to {out} and their captions to {out.with_suffix('.json')}")
