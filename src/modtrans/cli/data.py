"""Data verbs: ``world`` (generate the captioned world) and ``embed`` (write a store)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from modtrans.cli.application import app

logger = logging.getLogger(__name__)

SPLIT_FORMATS = ("world", "karpathy")  # sources with splits: one store per split, OUT/<split>


def parse_holdout(text: str) -> tuple[tuple[str, str], ...]:
    """``"green star,red ring"`` → ``(("green", "star"), ("red", "ring"))``."""
    pairs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        words = item.split()
        if len(words) != 2:
            raise ValueError(
                f"--holdout item {item!r} must be '<colour> <shape>', e.g. 'green star'"
            )
        pairs.append((words[0], words[1]))
    return tuple(pairs)


@app.command()
def world(
    out: Path = typer.Argument(..., help="Folder to write the world into (must be empty)."),
    n: int = typer.Option(20_000, "--n", "-n", help="Number of images (5 captions each)."),
    seed: int = typer.Option(0, help="Seed; the same seed and size give byte-identical files."),
    holdout: str = typer.Option(
        "green star,red ring",
        help="Comma-separated 'colour shape' pairs kept out of train/val/test; images with "
        "them form the `novel` split. Pass '' for none.",
    ),
    val_fraction: float = typer.Option(0.1, help="Share of images in the val split."),
    test_fraction: float = typer.Option(0.1, help="Share of images in the test split."),
    workers: int = typer.Option(0, help="Worker processes (0: one per CPU core)."),
    overwrite: bool = typer.Option(False, help="Replace a world already in OUT."),
) -> None:
    """Generate the captioned-image world: 64x64 images, 5 captions each, ground truth.

    Writes OUT/world.json and, per split, OUT/<split>/images/*.png, captions.json (MS-COCO
    captions format) and ground_truth.parquet.
    """
    from modtrans.world.generator import WorldConfig, generate_world

    config = WorldConfig(
        n_images=n, seed=seed, holdout=parse_holdout(holdout),
        val_fraction=val_fraction, test_fraction=test_fraction,
    )
    summary = generate_world(config, out, workers=workers or None, overwrite=overwrite)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def embed(
    source: Path = typer.Argument(
        ..., help="What to embed: a world folder (every split), a COCO captions JSON "
        "(2014/2017 layout), a Karpathy-split JSON (every split), a CSV/parquet of image paths "
        "and captions, a folder of webdataset .tar shards (img2dataset), or a folder of "
        "images with .txt captions."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Store folder (one sub-folder per split "
                             "for a world or a Karpathy JSON)."),
    encoder: str = typer.Option(
        None, help="Encoder spec for both modalities, e.g. hf:runs/world_clip."
    ),
    image_encoder: str = typer.Option(None, help="Image encoder spec (overrides --encoder), "
                                      "e.g. hf:facebook/dinov2-small."),
    text_encoder: str = typer.Option(
        None, help="Text encoder spec (overrides --encoder), e.g. sbert:minilm."
    ),
    images: Path = typer.Option(
        None, help="Image folder of a COCO/Karpathy JSON or a table (default: found beside it)."
    ),
    split: str = typer.Option(None, help="Embed only this split (world, Karpathy), or name the "
                              "split of a single-split source."),
    image_column: str = typer.Option(None, help="A table's image-path column (default: "
                                     "image, image_path, filepath, ...)."),
    caption_column: str = typer.Option(None, help="A table's caption column (default: "
                                       "caption, text, title, ...)."),
    dtype: str = typer.Option("float16", help="On-disk dtype: float16 or float32."),
    model_dtype: str = typer.Option(
        "float32", help="Encoder weights dtype: float32, float16 or bfloat16 (half on GPU)."
    ),
    shard_size: int = typer.Option(10_000, help="Images per shard."),
    batch_size: int = typer.Option(256, help="Encoder batch size."),
    workers: int = typer.Option(
        2, help="DataLoader workers that read, decode and preprocess images (0: in-process); "
        "with --engine ray, the units embedded at once (each decodes in its own process)."
    ),
    engine: str = typer.Option(
        "local", help="local: one process. ray: independent work units on a Ray cluster "
        "(pip install 'modtrans[distributed]'), each its own shards, merged in order."
    ),
    units: int = typer.Option(None, help="Work units with --engine ray (default: one per "
                              "--shard-size images, at least --workers)."),
    retries: int = typer.Option(2, help="With --engine ray: how often a failed unit is run "
                                "again before the job stops."),
    ray_address: str = typer.Option(None, help="With --engine ray: a running cluster "
                                    "('auto': the one this machine joined; default: start "
                                    "a local one of --workers CPUs)."),
    device: str = typer.Option("cpu", help="Device for the encoders, e.g. cpu or cuda:0."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in OUT."),
    strict: bool = typer.Option(
        False, help="Fail on a missing/unreadable image or an empty caption instead of "
        "skipping, counting and listing it."
    ),
) -> None:
    """Encode images and captions into an embedding store (clip-retrieval layout + manifest).

    Interrupted? Run the same command with --resume: it continues after the last complete
    shard (on ray: of every unfinished unit), with no duplicate and no gap. Bad images are
    skipped and listed in manifest.json.
    """
    import torch

    from modtrans.data.embed import embed_captioned_images, load_sidecar_metadata
    from modtrans.data.sources import open_sources
    from modtrans.encoders import build_encoder

    image_spec, text_spec = image_encoder or encoder, text_encoder or encoder
    if not image_spec or not text_spec:
        raise ValueError("give --encoder SPEC, or both --image-encoder and --text-encoder")
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if engine not in ("local", "ray"):
        raise ValueError(f"--engine must be local or ray, got {engine!r}")
    if model_dtype not in dtypes:
        raise ValueError(f"--model-dtype must be one of {sorted(dtypes)}, got {model_dtype!r}")
    sources = open_sources(source, images=images, split=split, image_column=image_column,
                           caption_column=caption_column)
    kwargs = dict(device=device, dtype=dtypes[model_dtype])
    image_enc = build_encoder(image_spec, **kwargs)
    text_enc = image_enc if text_spec == image_spec else build_encoder(text_spec, **kwargs)
    for name, (data, info) in sources.items():
        captions = Path(info.get("captions", source))
        target = out / name if info["format"] in SPLIT_FORMATS else out
        common = dict(split=name, source=info, sidecar=load_sidecar_metadata(captions),
                      shard_size=shard_size, dtype=dtype, batch_size=batch_size, resume=resume,
                      strict=strict)
        if engine == "ray":
            from modtrans.data.distributed import embed_on_ray

            summary = embed_on_ray(data, image_enc, text_enc, target, units=units,
                                   workers=workers, retries=retries, address=ray_address,
                                   **common)
        else:
            summary = embed_captioned_images(data, image_enc, text_enc, target,
                                             workers=workers, **common)
        typer.echo(json.dumps(summary, indent=2))
