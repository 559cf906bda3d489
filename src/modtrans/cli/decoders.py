"""Decoder verbs: ``fit-decoder`` (image VAE, token decoder or caption decoder),
``import-decoder`` (a diffusers unCLIP pipeline, published ClipCap / CapDec weights),
``generate`` (text → image), ``caption`` (image → text) and ``fit-recogniser`` (the judge of
generated world images)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import typer

from modtrans.cli.application import app


@app.command("fit-decoder")
def fit_decoder(
    kind: str = typer.Argument(..., help="image (conditional VAE or, with --kind tokens, a "
                               "token decoder) or caption (ClipCap/CapDec)."),
    data: Path = typer.Option(..., help="Store root with train and val splits."),
    out: Path = typer.Option(..., "--out", "-o", help="Decoder directory to write."),
    image_kind: str = typer.Option(
        "vae", "--kind", help="image: vae (the conditional VAE and its latent diffusion "
        "prior) or tokens (a transformer drawing the codes of --tokenizer)."),
    tokenizer: Path = typer.Option(None, help="image, --kind tokens: the AugVAE image "
                                   "tokenizer (fit-tokenizer) whose codes it draws."),
    max_images: int = typer.Option(None, help="image: train on the first N train images "
                                   "(and their captions) only."),
    condition: str = typer.Option(
        None, help="image: train on image embeddings (default; for use after a text2image "
        "translator) or text (the direct route)."
    ),
    mode: str = typer.Option(
        None, help="caption: clipcap (image embeddings, default) or capdec (text-only, noisy "
        "text embeddings; for use after an image2text translator)."
    ),
    noise_variance: float = typer.Option(
        None, help="caption: CapDec noise variance (default 0.016 with --text-input caption, "
        "0.0013 with set-mean)."
    ),
    text_input: str = typer.Option(
        None, help="caption: what CapDec trains on: caption (each caption's own text "
        "embedding, default) or set-mean (the mean over its image's captions, what a "
        "translator's mean mode estimates)."
    ),
    noise_from: Path = typer.Option(
        None, help="caption, capdec: an image2text translator; set the noise variance to its "
        "error on the train split (per dimension, against the --text-input embeddings) "
        "instead of --noise-variance."
    ),
    gpt2: Path = typer.Option(None, help="caption: a real GPT-2 directory to fine-tune."),
    epochs: int = typer.Option(None, help="Override the config's epochs."),
    config: Path = typer.Option(None, help="YAML/JSON file of the decoder's config options."),
    prior_only: bool = typer.Option(
        False, "--prior-only", help="image: --out holds a trained decoder; keep its VAE and "
        "retrain only its latent prior, with the `prior:` options of --config (e.g. "
        "{prior: {denoiser: unet, train_steps: 4800}})."
    ),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: auto, cpu, gpu."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from "
                                "OUT/lightning/ (each stage from its own checkpoint)."),
) -> None:
    """Train a decoder from embeddings back to images or captions on a store's train split."""
    from modtrans.data.store import open_store

    if prior_only and (kind != "image" or condition or epochs or image_kind != "vae"):
        raise ValueError("--prior-only applies to VAE image decoders (fit-decoder image) and "
                         "keeps their condition and the VAE's epochs")
    if image_kind not in ("vae", "tokens"):
        raise ValueError(f"--kind must be vae or tokens, got {image_kind!r}")
    if kind == "image" and (image_kind == "tokens") != (tokenizer is not None):
        raise ValueError("--kind tokens needs --tokenizer AUGVAE (train one with `modtrans "
                         "fit-tokenizer`), and --tokenizer applies to --kind tokens only")
    train, val = open_store(data, "train"), open_store(data, "val")
    with contextlib.redirect_stdout(sys.stderr):
        if prior_only:
            from modtrans.config import read_mapping
            from modtrans.decoders.image_vae import refit_latent_prior

            options = read_mapping(config) if config else {}
            unused = sorted(set(options) - {"prior"})
            if unused:
                raise ValueError(f"--prior-only retrains the prior only; {config} sets {unused}"
                                 f": keep only its `prior:` options")
            summary = refit_latent_prior(train, val, out, options.get("prior"),
                                         accelerator=accelerator, resume=resume)
        elif kind == "image" and image_kind == "tokens":
            from modtrans.decoders.token_decoder import TokenDecoderConfig, fit_token_decoder

            cfg = TokenDecoderConfig.with_overrides(config, condition=condition, epochs=epochs)
            summary = fit_token_decoder(train, val, out, cfg, tokenizer_dir=tokenizer,
                                        max_images=max_images,
                                        accelerator=accelerator, resume=resume)
        elif kind == "image":
            from modtrans.decoders.image_vae import ImageDecoderConfig, fit_image_decoder

            cfg = ImageDecoderConfig.with_overrides(config, condition=condition, epochs=epochs)
            summary = fit_image_decoder(train, val, out, cfg, accelerator=accelerator,
                                        max_images=max_images, resume=resume)
        elif kind == "caption":
            from modtrans.config import read_mapping
            from modtrans.decoders.caption import CaptionDecoderConfig, fit_caption_decoder

            cfg = CaptionDecoderConfig.with_overrides(
                config, mode=mode, epochs=epochs, noise_variance=noise_variance,
                text_input=text_input,
                gpt2=str(gpt2) if gpt2 else None)
            if noise_from is not None:
                asked = noise_variance is not None or (
                    config is not None and "noise_variance" in read_mapping(config))
                cfg.noise_variance = _matched_noise(noise_from, train, cfg, asked)
            summary = fit_caption_decoder(train, val, out, cfg, accelerator=accelerator,
                                          resume=resume)
        else:
            raise ValueError(f"decoder kind must be 'image' or 'caption', got {kind!r}")
    typer.echo(json.dumps(summary, indent=2))


def _matched_noise(translator: Path, train, cfg, noise_asked: bool) -> float:
    """CapDec's noise variance matched to ``translator`` on the train split (--noise-from)."""

    from modtrans.decoders.caption import matched_noise_variance
    from modtrans.translators.base import Translator

    if cfg.mode != "capdec":
        raise ValueError("--noise-from sets the noise of a CapDec decoder: add --mode capdec")
    if noise_asked:
        raise ValueError("give --noise-from or a noise variance (--noise-variance or "
                         "noise_variance in --config), not both")
    model = Translator.load(translator)
    tcfg = model.config
    if tcfg.direction != "image2text":
        raise ValueError(f"--noise-from needs an image2text translator ({translator} is "
                         f"{tcfg.direction})")
    if (tcfg.image_encoder, tcfg.text_encoder) != (train.image_encoder, train.text_encoder):
        raise ValueError(f"--noise-from {translator} was trained on other encoders "
                         f"({tcfg.image_encoder}/{tcfg.text_encoder}) than the store "
                         f"({train.image_encoder}/{train.text_encoder}); train them on the "
                         "same store")
    variance = matched_noise_variance(
        lambda z: model.translate(z, mode="mean", seed=cfg.seed), train, cfg.text_input)
    typer.echo(f"noise variance matched to {translator}: {variance:.5f}", err=True)
    return variance


@app.command()
def generate(
    translator: Path = typer.Argument(
        None, help="A text2image translator; omit it for the direct route (a decoder trained "
        "on text embeddings)."
    ),
    decoder: str = typer.Option(
        ..., help="Image decoder: a directory (fit-decoder image, a VAE or a token decoder, "
        "or import-decoder unclip-variation|stable-unclip), diffusers:unclip-variation:DIR or "
        "diffusers:stable-unclip:DIR (a local diffusers pipeline, fed by the translator), or "
        "with --system lverse a BiART directory (fit-biart), with --system joint a joint VAE "
        "(fit-joint)."),
    text: list[str] = typer.Option(..., help="Prompt (repeat for several rows)."),
    system: str = typer.Option(
        "translate", help="translate (a translator, or none, then an image decoder), lverse "
        "(BiART draws image tokens from the text; no translator) or joint (the joint VAE "
        "decodes a latent drawn from q(z | text); no translator)."),
    n: int = typer.Option(8, "-n", "--n", help="Images per prompt."),
    out: Path = typer.Option(Path("generated.png"), "--out", "-o", help="PNG grid to write."),
    mode: str = typer.Option("sample", help="Translator mode: sample, mean or best-of-k."),
    seed: int = typer.Option(0, help="Seed of the translator's draws and the decoder's latents."),
    steps: int = typer.Option(None, help="Sampler steps of the decoder's latent prior "
                              "(default: the decoder's own setting; 20 unless trained "
                              "otherwise), or a diffusers decoder's denoising steps."),
    guidance: float = typer.Option(None, help="Classifier-free guidance of the decoder's "
                                   "latent prior (default: the decoder's own; 5 unless "
                                   "trained otherwise), of a token decoder (default: its own; "
                                   "3), of a diffusers decoder (default: the pipeline's) or, "
                                   "with --system lverse, of BiART (default 1: none)."),
    temperature: float = typer.Option(1.0, help="--system lverse: sampling temperature."),
    top_k: int = typer.Option(0, help="--system lverse: keep the k likeliest tokens (0: all)."),
    top_p: float = typer.Option(1.0, help="--system lverse: nucleus sampling mass."),
    candidates: int = typer.Option(
        1, help="Draw this many images per image asked for and keep the one the image "
        "encoder scores closest to the prompt (a CLIP pair: the CLIP score) or, for other "
        "encoder pairs, to the translated embedding it was drawn from (DALL·E's reranking)."
    ),
) -> None:
    """Text → embedding → translator → image embedding → decoder → a PNG grid (rows: prompts)."""

    from modtrans.images import image_grid
    from modtrans.io import atomic_path
    from modtrans.pipelines import TextToImage

    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file, got {out}")
    if candidates < 1:
        raise ValueError(f"--candidates must be ≥ 1, got {candidates}")
    if system in ("lverse", "joint"):
        images = _system_images(system, Path(decoder), translator, text, n, candidates, seed,
                                {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                                 "guidance": 1.0 if guidance is None else guidance})
        with atomic_path(out) as tmp:
            image_grid(images, rows=len(text)).save(tmp, format="PNG")
        typer.echo(f"wrote {len(images)} images ({len(text)} prompts × {n}) to {out}")
        return
    if system != "translate":
        raise ValueError(f"--system must be translate, lverse or joint, got {system!r}")
    pipeline = TextToImage.load(decoder, translator)
    images, scores = pipeline(text, n=n, candidates=candidates, mode=mode, seed=seed,
                              steps=steps, guidance=guidance)
    if scores is not None:
        typer.echo(f"kept the best of {candidates} per image (mean cosine {scores.mean():.3f})")
    with atomic_path(out) as tmp:
        image_grid(images, rows=len(text)).save(tmp, format="PNG")
    typer.echo(f"wrote {len(images)} images ({len(text)} prompts × {n}) to {out}")


def _system_images(system: str, decoder: Path, translator: Path | None, text: list[str],
                   n: int, candidates: int, seed: int, sampling: dict) -> Any:
    """``n`` images per prompt, in prompt order, from BiART (``lverse``; ``sampling``: its
    options) or the joint VAE (``joint``)."""
    import torch

    if translator is not None:
        raise ValueError(f"--system {system} generates from the text itself: drop the "
                         "translator")
    if candidates != 1:
        raise ValueError(f"--candidates reranks by an image encoder, which --system {system} "
                         "does not have; draw more with -n instead")
    prompts = [t for t in text for _ in range(n)]
    generator = torch.Generator().manual_seed(seed)
    if system == "joint":
        from modtrans.decoders.joint_vae import JointVAE

        return JointVAE.load(decoder).generate_image(prompts, generator=generator)
    from modtrans.decoders.biart import BiART

    return BiART.load(decoder).generate_image(prompts, generator=generator, **sampling)


@app.command("import-decoder")
def import_decoder(
    kind: str = typer.Argument(..., help="clipcap or capdec (a published .pt weight file), "
                               "unclip-variation or stable-unclip (a diffusers pipeline "
                               "directory)."),
    source: Path = typer.Argument(..., help="The weight file (clipcap, capdec) or the local "
                                  "diffusers pipeline directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Decoder directory to write."),
    data: Path = typer.Option(
        None, help="The store (root, or one split) its translators are trained on: its "
        "encoders are recorded, its width checked, and the norm of real raw image embeddings "
        "measured on its images (needed for unclip-*, and for clipcap without --prefix-norm)."),
    gpt2: Path = typer.Option(None, help="clipcap, capdec: a local GPT-2 directory (config and "
                              "tokenizer; `huggingface-cli download gpt2 --local-dir DIR`)."),
    image_encoder: str = typer.Option(None, help="clipcap, capdec without --data: the image "
                                      "encoder spec (default hf:openai/clip-vit-base-patch32)."),
    text_encoder: str = typer.Option(None, help="clipcap, capdec without --data: the text "
                                     "encoder spec (default hf:openai/clip-vit-base-patch32)."),
    prefix_norm: float = typer.Option(None, help="clipcap, capdec: the norm embeddings are "
                                      "scaled to (default: measured on --data for clipcap, 1 "
                                      "for capdec)."),
    max_length: int = typer.Option(67, help="clipcap, capdec: caption tokens at most."),
    noise_level: int = typer.Option(0, help="stable-unclip: noise augmentation of the "
                                    "embedding (0–999)."),
    max_images: int = typer.Option(256, help="Images of --data measured for the norm."),
) -> None:
    """Make a decoder of weights trained elsewhere: Karlo / stable unCLIP image decoders from a
    diffusers directory, or ClipCap / CapDec caption decoders from their published .pt files;
    `generate` and `caption` then use --decoder OUT like any decoder."""
    from modtrans.data.store import is_store, open_store

    store = None if data is None else open_store(data, None if is_store(data) else "train")
    with contextlib.redirect_stdout(sys.stderr):
        if kind in ("clipcap", "capdec"):
            from modtrans.decoders.clipcap import import_clipcap

            if gpt2 is None:
                raise ValueError(f"import-decoder {kind} needs --gpt2 DIR, a local GPT-2 "
                                 "(`huggingface-cli download gpt2 --local-dir DIR`)")
            summary = import_clipcap(source, gpt2, out, mode=kind, store=store,
                                     image_encoder=image_encoder, text_encoder=text_encoder,
                                     prefix_norm=prefix_norm, max_images=max_images,
                                     max_length=max_length)
        elif kind in ("unclip-variation", "stable-unclip"):
            from modtrans.decoders.diffusers_unclip import import_diffusers_decoder

            if store is None:
                raise ValueError(f"import-decoder {kind} needs --data STORE: the norm of real "
                                 "image embeddings is measured on its images")
            summary = import_diffusers_decoder(kind, source, store, out, max_images=max_images,
                                               noise_level=noise_level)
        else:
            raise ValueError(f"decoder kind must be clipcap, capdec, unclip-variation or "
                             f"stable-unclip, got {kind!r}")
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def caption(
    translator: Path = typer.Argument(
        None, help="An image2text translator; omit it for the direct route (--decoder trained "
        "on image embeddings, ClipCap)."
    ),
    decoder: Path = typer.Option(..., help="Caption decoder directory (fit-decoder caption), "
                                 "or with --system lverse a BiART directory (fit-biart), with "
                                 "--system joint a joint VAE (fit-joint)."),
    image: list[Path] = typer.Option(..., help="Image file (repeat for several)."),
    system: str = typer.Option(
        "translate", help="translate (a translator, or none, then a caption decoder), "
        "lverse (BiART writes the caption from the image's tokens, greedily) or joint (the "
        "joint VAE's GPT-2 writes it from the mean of q(z | image), greedily)."),
    beams: int = typer.Option(3, help="Beam width (1: greedy)."),
    mode: str = typer.Option("mean", help="Translator mode: sample, mean or best-of-k."),
    seed: int = typer.Option(0, help="Seed of the translator's draws."),
) -> None:
    """Image → embedding → translator → text embedding → caption decoder → a caption."""
    import torch

    from modtrans.pipelines import ImageToText

    if system in ("lverse", "joint"):
        import numpy as np

        from modtrans.decoders.biart import BiART
        from modtrans.decoders.joint_vae import JointVAE
        from modtrans.pipelines import open_images

        if translator is not None:
            raise ValueError(f"--system {system} captions the image itself: drop the "
                             "translator")
        pixels = np.stack([np.asarray(im.resize((64, 64))) for im in open_images(image)])
        model = (BiART if system == "lverse" else JointVAE).load(decoder)
        captions = model.caption(torch.from_numpy(pixels))
    elif system == "translate":
        pipeline = ImageToText.load(decoder, translator)
        captions = pipeline(image, beams=beams, mode=mode, seed=seed)
    else:
        raise ValueError(f"--system must be translate, lverse or joint, got {system!r}")
    for label, text in zip(image, captions, strict=True):
        typer.echo(f"{label}\t{text}")


@app.command("fit-recogniser")
def fit_recogniser_cmd(
    world: Path = typer.Argument(..., help="A world folder made by `modtrans world`."),
    out: Path = typer.Option(..., "--out", "-o", help="Recogniser directory to write."),
    epochs: int = typer.Option(None, help="Override the config's epochs."),
    all_pairs: bool = typer.Option(
        True, "--all-pairs/--train-split",
        help="Train on images drawn like WORLD's from another seed with every colour–shape "
             "pair (so it can read the novel split), or on WORLD's own train split."),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: auto, cpu, gpu."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from "
                                "OUT/lightning/last.ckpt."),
) -> None:
    """Train the attribute recogniser (judge of generated images) and report its held-out
    accuracy on the world's test split (as it is and blurred) and novel split."""
    from modtrans.world.recogniser import RecogniserConfig, fit_recogniser

    cfg = RecogniserConfig.with_overrides(epochs=epochs, all_pairs=all_pairs)
    with contextlib.redirect_stdout(sys.stderr):
        report = fit_recogniser(world, out, cfg, accelerator=accelerator, resume=resume)
    typer.echo(json.dumps(report, indent=2))


@app.command("e2e")
def end_to_end(
    folder: Path = typer.Argument(..., help="A demo folder (world, CLIP, store, translators)."),
    config: Path = typer.Option(None, help="YAML/JSON file of EndToEndConfig options."),
) -> None:
    """Train the decoders, L-Verse and the judge in FOLDER/e2e and evaluate generation end to
    end: text → image (recogniser recall, hallucination, FD) and image → text (caption
    metrics, semantic precision/recall), through ced, ridge, the direct routes and L-Verse,
    bounded by the oracle (the prompt's own image embedding), reconstruction and real-image
    references."""
    from modtrans.eval.endtoend import EndToEndConfig, run_end_to_end
    from modtrans.eval.report import write_report

    cfg = EndToEndConfig.load(config) if config else EndToEndConfig()
    with contextlib.redirect_stdout(sys.stderr):
        results = run_end_to_end(folder, cfg)
    typer.echo(json.dumps({k: results[k] for k in ("text_to_image", "image_to_text")},
                          indent=2))
    typer.echo(f"report: {write_report(folder)}")
