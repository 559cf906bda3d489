"""Translator verbs: ``train``, ``eval``, ``translate``."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

import typer
import yaml

from modtrans.cli.application import app

logger = logging.getLogger(__name__)

#: The sampler settings ``eval`` and ``translate`` take; unset, the checkpoint's are used.
SAMPLER = typer.Option(None, help="Sampler of a stochastic translator: ddim or dpm "
                       "(default: the checkpoint's).")
STEPS = typer.Option(None, help="Sampling steps (default: the checkpoint's).")
GUIDANCE = typer.Option(None, help="Classifier-free guidance scale, >= 0 (default: the "
                        "checkpoint's).")
ETA = typer.Option(None, help="Sampler noise η, >= 0; dpm takes 0 or 1 (default: the "
                   "checkpoint's).")
SKIP_BAD_ROWS_HELP = ("Leave out (and list) store rows with NaN or infinite embeddings "
                      "instead of stopping.")


def parse_params(items: list[str] | None) -> dict:
    """``["steps=20", "ks=[1, 5]"]`` → ``{"steps": 20, "ks": [1, 5]}`` (values read as YAML)."""
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r} must be KEY=VALUE, e.g. --param steps=20")
        params[key.strip()] = yaml.safe_load(value)
    return params


@app.command()
def train(
    data: Path = typer.Option(..., help="Store root (with train and val splits) or a store."),
    direction: str = typer.Option(..., help="text2image or image2text."),
    method: str = typer.Option("ced", help="ced, ced-paper, ridge, mlp, knn, mean-shift, "
                               "identity (`modtrans methods` lists them)."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint directory to write."),
    param: list[str] = typer.Option(None, help="Method option KEY=VALUE, the value read as "
                                    "YAML (repeatable; `modtrans methods` lists each method's "
                                    "options), e.g. --param width=1024 --param steps=20."),
    config: Path = typer.Option(None, help="YAML/JSON file of Recipe options; the flags below "
                                "override it, and unset ones take its values or the defaults."),
    epochs: int = typer.Option(None, help="Training epochs of a trainable method (default: "
                               "the method's own, as the demo and the docs' tables use: "
                               "ced 2, ced-paper 1, mlp 3)."),
    batch_size: int = typer.Option(None, help="Pairs per step (default: 256)."),
    max_time: str = typer.Option(None, help="Wall-clock budget DD:HH:MM:SS (default: none)."),
    precision: str = typer.Option(
        None, help="Lightning precision: 32, 32-true, bf16-mixed (GPU) or 16-mixed (default: "
        "32)."),
    accelerator: str = typer.Option(None, help="auto, cpu or gpu (default: auto)."),
    devices: int = typer.Option(None, help="Devices (processes) per node (default: 1)."),
    num_nodes: int = typer.Option(None, help="Machines taking part under DDP (default: 1; "
                                  "see the scaling guide for torchrun and SLURM)."),
    strategy: str = typer.Option(None, help="Lightning strategy, e.g. ddp: the batch is then "
                                 "split among the processes (default: auto)."),
    logger: str = typer.Option(None, help="csv, tensorboard or none (default: csv)."),
    seed: int = typer.Option(None, help="Random seed (default: 0)."),
    checkpoint_every: int = typer.Option(None, help="Steps between resume checkpoints "
                                         "(one is also written at every epoch's end; default: "
                                         "200)."),
    resume: bool = typer.Option(False, help="Continue from OUT/lightning/last.ckpt, with the "
                                "weights an uninterrupted run would have reached."),
    skip_bad_rows: bool = typer.Option(False, help=SKIP_BAD_ROWS_HELP),
    stream: bool = typer.Option(False, help="Read the train split from its memory-mapped "
                                "shards in shuffled batches instead of into memory (splits "
                                "larger than memory; not knn)."),
    workers: int = typer.Option(0, help="DataLoader processes reading batches with --stream "
                                "(0: in the training process)."),
) -> None:
    """Train a translator on the train split (validation Sim on val each epoch).

    Killed or stopped with Ctrl-C? Run the same command with --resume.
    """
    from modtrans.config import read_mapping
    from modtrans.data.pairs import load_pairs
    from modtrans.data.store import open_store
    from modtrans.data.stream import StorePairs
    from modtrans.training.fit import Recipe, is_global_zero
    from modtrans.training.translator import fit_translator
    from modtrans.translators.base import translator_class

    if epochs is None and "epochs" not in (read_mapping(config) if config else {}):
        epochs = translator_class(method).default_epochs
    tc = Recipe.with_overrides(
        config, epochs=epochs, batch_size=batch_size, max_time=max_time, precision=precision,
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
        logger=logger, seed=seed, checkpoint_every=checkpoint_every)
    train_store, val_store = (open_store(data, split, skip_bad_rows=skip_bad_rows)
                              for split in ("train", "val"))
    pairs = (StorePairs(train_store, direction) if stream
             else load_pairs(train_store, direction))
    # Lightning draws its progress bar on stdout; send it to stderr so stdout is the JSON only.
    with contextlib.redirect_stdout(sys.stderr):
        _, info = fit_translator(
            method, pairs, load_pairs(val_store, direction), out,
            params=parse_params(param), recipe=tc, image_encoder=train_store.image_encoder,
            text_encoder=train_store.text_encoder, resume=resume, workers=workers,
        )
    if is_global_zero():  # under DDP the other ranks have nothing to say
        typer.echo(json.dumps(info, indent=2, default=str))


@app.command("methods")
def methods() -> None:
    """List the translator methods and their options (name: type = default), which `train`
    takes as --param NAME=VALUE."""
    import dataclasses

    from modtrans.translators.base import list_translators, translator_class

    for name in list_translators():
        options_class = translator_class(name).options_class
        defaults = options_class().to_dict()
        typer.echo(f"{name}:" if defaults else f"{name}: (no options)")
        for field in dataclasses.fields(options_class):
            typer.echo(f"  {field.name}: {field.type} = {json.dumps(defaults[field.name])}")


@app.command("eval")
def evaluate(
    translator: str = typer.Argument(..., help="A checkpoint directory, or the name of a "
                                     "closed-form method (identity, mean-shift, ridge, knn) "
                                     "to fit on train first."),
    data: Path = typer.Option(..., help="Store root or store."),
    split: str = typer.Option("test", help="Split to evaluate on: test or novel (val chose the "
                              "translator's λ and γ, so its figures are not held out)."),
    direction: str = typer.Option(None, help="Needed with a method name."),
    max_images: int = typer.Option(1000, help="Evaluate on the first N images (0: all)."),
    n_samples: int = typer.Option(8, help="Draws averaged in mean mode."),
    sampler: str = SAMPLER,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    eta: float = ETA,
    zero_shot: bool = typer.Option(True, help="Zero-shot shape classification (world stores)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the results here (.json; a .md "
                             "table beside)."),
    skip_bad_rows: bool = typer.Option(False, help=SKIP_BAD_ROWS_HELP),
) -> None:
    """Evaluate a translator: Sim, cosine suite, R@1/5/10, MedR, FD, diversity, zero-shot."""
    from modtrans.artefacts import read_summary
    from modtrans.data.pairs import load_pairs
    from modtrans.data.store import open_store
    from modtrans.encoders import build_encoder
    from modtrans.eval.worldbench import (
        EvalOptions,
        evaluate_translator,
        markdown_table,
        world_shape_task,
    )
    from modtrans.io import atomic_open, write_json
    from modtrans.pipelines import check_encoders, translator_or_method
    from modtrans.translators.samplers import SamplerOptions

    sampling = SamplerOptions(sampler=sampler, steps=steps, guidance=guidance, eta=eta)
    store = open_store(data, split, skip_bad_rows=skip_bad_rows)
    model = translator_or_method(translator, data, direction)
    selected = read_summary(translator).get("selected_on") if Path(translator).is_dir() \
        else "val"
    if split == selected:
        logger.warning("%s chose this translator's hyperparameters (ridge λ, γ), so these "
                       "figures are not held out; report --split test (or novel)", split)
    check_encoders(model.config, store)
    pairs = load_pairs(store, model.config.direction, max_images or None)
    task = None
    if zero_shot and "main_shape" in store.image_metadata().column_names:
        task = world_shape_task(store, build_encoder(store.text_encoder))
    result = evaluate_translator(model, pairs, zero_shot=task, options=EvalOptions(
        n_samples=n_samples, sampling=sampling))
    result["split"] = split
    if out:
        write_json(out, result)
        with atomic_open(Path(out).with_suffix(".md")) as f:
            f.write(markdown_table([result]) + "\n")
    typer.echo(json.dumps(result, indent=2))


@app.command()
def translate(
    checkpoint: Path = typer.Argument(..., help="Translator checkpoint directory."),
    text: list[str] = typer.Option(None, help="Text(s) to translate (text2image)."),
    image: list[Path] = typer.Option(None, help="Image file(s) to translate (image2text)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the translated embeddings here "
                             "(.npy)."),
    gallery: Path = typer.Option(None, help="Store root or store to search for neighbours."),
    split: str = typer.Option("val", help="Gallery split."),
    k: int = typer.Option(5, "-k", "--k", help="Neighbours to show."),
    mode: str = typer.Option("mean", help="sample, mean or best-of-k."),
    n_samples: int = typer.Option(8, help="Draws for mean and best-of-k."),
    seed: int = typer.Option(0, help="Seed of the draws."),
    sampler: str = SAMPLER,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    eta: float = ETA,
) -> None:
    """Translate texts or images into the other space; save them and show neighbours."""
    import numpy as np

    from modtrans.data.store import open_store
    from modtrans.io import save_npy
    from modtrans.pipelines import check_encoders, encode_queries, nearest_in_store
    from modtrans.translators.base import Translator
    from modtrans.translators.samplers import SamplerOptions

    sampling = SamplerOptions(sampler=sampler, steps=steps, guidance=guidance, eta=eta)
    model = Translator.load(checkpoint)
    cfg = model.config
    wrong = image if cfg.cond_modality == "text" else text
    if wrong:
        flag = "--text" if cfg.cond_modality == "text" else "--image"
        raise ValueError(f"{checkpoint} translates {cfg.cond_modality} to "
                         f"{cfg.target_modality}: give {flag}")
    _, c, labels = encode_queries(text, image, image_spec=cfg.image_encoder,
                                  text_spec=cfg.text_encoder)
    z = model.translate(c, mode=mode, n_samples=n_samples, seed=seed, sampling=sampling)
    if out:
        save_npy(out, z.numpy().astype(np.float32))
        typer.echo(f"wrote {tuple(z.shape)} embeddings to {out}")
    if gallery:
        store = open_store(gallery, split)
        check_encoders(cfg, store)
        for result in nearest_in_store(z, labels, store, cfg.target_modality, k):
            typer.echo(f"{result['query']}:")
            for hit in result["results"]:
                typer.echo(f"  {hit['score']:.3f}  {hit['item']}")


@app.command()
def demo(
    out: Path = typer.Option(Path("modtrans_demo"), "--out", "-o", help="Output folder."),
    preset: str = typer.Option("default", help="default (20,000 images), tiny (a smoke test "
                               "of about a minute) or tiny-generation (tiny with the end-to-end "
                               "stage)."),
    config: Path = typer.Option(None, help="YAML/JSON file of DemoConfig options."),
    generation: bool = typer.Option(
        None, "--generation/--no-generation", help="Also train decoders and the judge and "
        "evaluate generation end to end (adds about 1.5 hours to the default preset on a "
        "2-core CPU; default: the preset's choice, on for tiny-generation only)."
    ),
) -> None:
    """The embedded default end to end: world → world CLIP → embed → train every translator
    in both directions → evaluate → OUT/report.html. Resumes if interrupted."""
    import dataclasses

    from modtrans.demo import GENERATION, PRESETS, DemoConfig, run_demo

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = DemoConfig.load(config) if config else PRESETS[preset]
    if generation is not None:
        cfg = dataclasses.replace(cfg, generation=(
            cfg.generation or GENERATION.get(preset, {})) if generation else None)
    report = run_demo(out, cfg)
    typer.echo(f"report: {report}")


@app.command()
def report(folder: Path = typer.Argument(..., help="A demo output folder.")) -> None:
    """Regenerate FOLDER/report.html from the results the demo wrote."""
    from modtrans.eval.report import write_report

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; run `modtrans demo --out {folder}`")
    typer.echo(f"report: {write_report(folder)}")
