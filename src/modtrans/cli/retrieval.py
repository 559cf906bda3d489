"""Downstream verbs: ``index`` (faiss over a store), ``retrieve`` (search it), ``zeroshot``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from modtrans.cli.application import app


@app.command()
def index(
    data: Path = typer.Argument(..., help="A store, or a store root with --split."),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory to write."),
    split: str = typer.Option("val", help="Split of a store root."),
    modality: str = typer.Option("image", help="Which embeddings to index: image or text."),
    kind: str = typer.Option(
        "auto", help="flat (exact), hnsw, ivf, ivfpq (compressed codes, for millions), or "
        "auto: exact up to 50,000 vectors, HNSW up to 2 million, IVF-PQ beyond."
    ),
    n_queries: int = typer.Option(1000, help="Queries used to measure recall against exact."),
    k: int = typer.Option(10, "-k", "--k", help="k of the reported recall@k against exact "
                          "search."),
    nlist: int = typer.Option(None, help="IVF lists (default: about 4·√n, at most 4096)."),
    nprobe: int = typer.Option(16, help="IVF lists searched per query."),
    pq_m: int = typer.Option(64, help="IVF-PQ bytes per vector (sub-vectors)."),
    rerank: int = typer.Option(10, help="IVF-PQ re-scores its best rerank·k candidates "
                               "exactly from the store (1: off)."),
) -> None:
    """Build a faiss cosine index from a store's shards, in batches; report build time,
    size, peak memory, recall@k against exact search and queries/s (vs exact)."""
    from modtrans.data.store import open_store
    from modtrans.retrieval import index_store

    info = index_store(open_store(data, split), out, modality=modality, kind=kind,
                       n_queries=n_queries, k=k, nlist=nlist, nprobe=nprobe, pq_m=pq_m,
                       rerank=rerank, progress=True)
    typer.echo(json.dumps(info, indent=2))


@app.command()
def retrieve(
    index_dir: Path = typer.Argument(..., help="An index directory made by `modtrans index`."),
    text: list[str] = typer.Option(None, help="Text query (repeat for several)."),
    image: list[Path] = typer.Option(None, help="Image file query (repeat for several)."),
    translator: Path = typer.Option(
        None, help="Translate the queries first (its direction must go from the query's "
        "modality to the index's). Without it the raw embeddings are searched, which needs a "
        "shared space (one CLIP for both modalities)."
    ),
    k: int = typer.Option(10, "-k", "--k", help="Results per query."),
    mode: str = typer.Option("mean", help="Translator mode: sample, mean or best-of-k."),
    n_samples: int = typer.Option(8, help="Translator draws for mean and best-of-k."),
    seed: int = typer.Option(0, help="Seed of the translator's draws."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Find the items of an index nearest to text or image queries, raw or translated."""
    from modtrans.pipelines import Search
    from modtrans.retrieval import load_index
    from modtrans.translators.base import Translator

    pipeline = Search(load_index(index_dir),
                      None if translator is None else Translator.load(translator))
    modality, queries, labels = pipeline.encode(text, image)
    results = pipeline(modality, queries, labels, k, mode=mode, n_samples=n_samples, seed=seed)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for result in results:
        typer.echo(f"{result['query']}:")
        for hit in result["results"]:
            typer.echo(f"  {hit['rank']:>3}  {hit['score']:.3f}  {hit['item']}")


@app.command()
def zeroshot(
    folder: Path = typer.Argument(..., help="Labelled images: one sub-folder per class."),
    encoder: str = typer.Option(None, help="Encoder spec for both modalities (a CLIP)."),
    image_encoder: str = typer.Option(None, help="Image encoder spec (overrides --encoder)."),
    text_encoder: str = typer.Option(None, help="Text encoder spec (overrides --encoder)."),
    classes: str = typer.Option(
        None, help="Comma-separated class sub-folders to use (default: all); underscores "
        "read as spaces in the prompts."
    ),
    template: list[str] = typer.Option(
        None, help="Prompt template with {} for the class (repeat; default: 5 CLIP templates)."
    ),
    translator: list[Path] = typer.Option(
        None, help="Also classify through this translator (repeat for several)."
    ),
    n_samples: int = typer.Option(8, help="Draws averaged by stochastic translators."),
    batch_size: int = typer.Option(64, help="Image encoder batch size."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the result as JSON here."),
) -> None:
    """Zero-shot classification of an image folder through raw CLIP and through translators."""
    from modtrans.encoders import build_encoder
    from modtrans.eval.zeroshot import DEFAULT_TEMPLATES, zeroshot_folder
    from modtrans.io import write_json
    from modtrans.translators.base import Translator

    models = {str(p): Translator.load(p) for p in translator or []}
    first = next(iter(models.values()), None)
    image_spec = image_encoder or encoder or (first.config.image_encoder if first else None)
    text_spec = text_encoder or encoder or (first.config.text_encoder if first else None)
    if not image_spec or not text_spec:
        raise ValueError("give --encoder SPEC (or --image-encoder and --text-encoder), or a "
                         "--translator whose encoders are used")
    image_enc = build_encoder(image_spec)
    text_enc = image_enc if text_spec == image_spec else build_encoder(text_spec)
    result = zeroshot_folder(
        folder, image_enc, text_enc,
        classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
        templates=tuple(template) if template else DEFAULT_TEMPLATES,
        translators=models, n_samples=n_samples, batch_size=batch_size,
    )  # fmt: skip
    if out:
        write_json(out, result)
    typer.echo(json.dumps({"n_images": result["n_images"], "accuracy": result["accuracy"]},
                          indent=2))
