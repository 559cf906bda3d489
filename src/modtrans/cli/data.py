"""Data verbs: ``world`` (generate the captioned world) and ``embed`` (write a store)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from modtrans.cli import app

logger = logging.getLogger(__name__)


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
    from modtrans.data.world import WorldConfig, generate_world

    config = WorldConfig(
        n_images=n, seed=seed, holdout=parse_holdout(holdout),
        val_fraction=val_fraction, test_fraction=test_fraction,
    )
    summary = generate_world(config, out, workers=workers or None, overwrite=overwrite)
    typer.echo(json.dumps(summary, indent=2))


def _captions_files(source: Path, split: str | None) -> dict[str, Path]:
    """Map split name → captions file for a COCO captions file or a world folder."""
    if source.is_file():
        return {split or source.stem: source}
    if (source / "world.json").is_file():
        found = {p.parent.name: p for p in sorted(source.glob("*/captions.json"))}
        if split:
            if split not in found:
                raise FileNotFoundError(
                    f"world {source} has no split {split!r}; it has {sorted(found)}"
                )
            return {split: found[split]}
        return found
    raise FileNotFoundError(
        f"{source} is neither a COCO captions JSON file nor a world folder (with world.json); "
        "pass e.g. annotations/captions_val2017.json --images val2017/, or a folder made by "
        "`modtrans world`"
    )


@app.command()
def embed(
    source: Path = typer.Argument(
        ..., help="A COCO captions JSON file, or a world folder (every split is embedded)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Store folder (one sub-folder per split "
                             "when SOURCE is a world)."),
    encoder: str = typer.Option(
        None, help="Encoder spec for both modalities, e.g. hf:runs/world_clip."
    ),
    image_encoder: str = typer.Option(None, help="Image encoder spec (overrides --encoder)."),
    text_encoder: str = typer.Option(
        None, help="Text encoder spec (overrides --encoder), e.g. sbert:minilm."
    ),
    images: Path = typer.Option(
        None, help="Image folder of a COCO captions file (default: beside the file)."
    ),
    split: str = typer.Option(None, help="Split name (default: from the file or every split)."),
    dtype: str = typer.Option("float16", help="On-disk dtype: float16 or float32."),
    shard_size: int = typer.Option(10_000, help="Images per shard."),
    batch_size: int = typer.Option(256, help="Encoder batch size."),
    device: str = typer.Option("cpu", help="Device for the encoders, e.g. cpu or cuda:0."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in OUT."),
    strict: bool = typer.Option(
        False, help="Fail on a missing/unreadable image or an empty caption instead of "
        "skipping, counting and listing it."
    ),
) -> None:
    """Encode images and captions into an embedding store (clip-retrieval layout + manifest)."""
    from modtrans.data.coco import read_coco_captions
    from modtrans.data.embed import embed_captioned_images, load_sidecar_metadata
    from modtrans.encoders import build_encoder

    image_spec, text_spec = image_encoder or encoder, text_encoder or encoder
    if not image_spec or not text_spec:
        raise ValueError("give --encoder SPEC, or both --image-encoder and --text-encoder")
    files = _captions_files(source, split)
    image_enc = build_encoder(image_spec, device=device)
    text_enc = image_enc if text_spec == image_spec else build_encoder(text_spec, device=device)
    world_source = source.is_dir()
    for name, captions in files.items():
        data = read_coco_captions(captions, None if world_source else images)
        summary = embed_captioned_images(
            data, image_enc, text_enc, out / name if world_source else out,
            split=name, source={"captions": str(captions.resolve())},
            sidecar=load_sidecar_metadata(captions), shard_size=shard_size, dtype=dtype,
            batch_size=batch_size, resume=resume, strict=strict,
        )
        typer.echo(json.dumps(summary, indent=2))
