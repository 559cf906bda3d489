"""faiss indexes, `modtrans index/retrieve/zeroshot`, and the real-data path on a COCO fixture."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import assert_cli_error
from PIL import Image

from modtrans.cli import main
from modtrans.data.coco import read_coco_captions
from modtrans.data.store import EmbeddingStore, open_store
from modtrans.retrieval import (
    Gallery,
    _normalised,
    build_index,
    choose_kind,
    exact_search,
    index_store,
    load_index,
    recall_against_exact,
    search,
)


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


# --- the index -------------------------------------------------------------------------------


def test_choose_kind_by_size() -> None:
    assert choose_kind(1000) == "flat"
    assert choose_kind(100_000) == "hnsw"
    assert choose_kind(5_000_000) == "ivfpq"
    assert choose_kind(10, "hnsw") == "hnsw"
    with pytest.raises(ValueError, match="flat"):
        choose_kind(10, "lsh")


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """4,000 gallery vectors in 40 clusters, and 200 queries near them."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    gallery = centres[rng.integers(40, size=4000)] + 0.5 * rng.normal(size=(4000, 32))
    queries = centres[rng.integers(40, size=200)] + 0.5 * rng.normal(size=(200, 32))
    return gallery.astype(np.float32), queries.astype(np.float32)


def test_flat_index_is_exact_cosine(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    gallery, queries = clustered
    index, params = build_index(gallery, "flat")
    assert params == {"kind": "flat", "n": 4000, "dim": 32}
    scores, rows = search(index, queries[:5], 3)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries[:5] / np.linalg.norm(queries[:5], axis=1, keepdims=True)
    want = np.argsort(-(q @ g.T), axis=1)[:, :3]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ g.T, want, axis=1), atol=1e-5)
    assert recall_against_exact(index, gallery, queries) == 1.0


@pytest.mark.parametrize(("kind", "floor"), [("hnsw", 0.95), ("ivf", 0.8)])
def test_approximate_indexes_recall_most_of_exact(
    clustered: tuple[np.ndarray, np.ndarray], kind: str, floor: float
) -> None:
    gallery, queries = clustered
    index, params = build_index(gallery, kind)
    assert params["kind"] == kind
    recall = recall_against_exact(index, gallery, queries, k=10)
    assert floor <= recall <= 1.0


def test_ivfpq_from_a_stores_shards_rescored_recalls_exact(tmp_path: Path) -> None:
    from modtrans.data.synthetic import write_paired_store

    store = open_store(write_paired_store(tmp_path / "s", 20_000, dim=32, shard_size=3000))
    queries = Gallery(open_store(write_paired_store(tmp_path / "q", 300, dim=32,
                                                    split="val")), "image").rows(range(300))
    gallery = Gallery(store, "image")
    whole = _normalised(store.image_embeddings.to_numpy())
    np.testing.assert_array_equal(np.concatenate(list(gallery.batches(4096))), whole)
    exact, _ = build_index(whole, "flat")
    want_scores, want_rows = search(exact, queries, 10)
    got_scores, got_rows = exact_search(gallery, queries, 10)
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    info = index_store(store, tmp_path / "ix", kind="ivfpq", nlist=64, queries=queries)
    assert info["kind"] == "ivfpq" and info["pq_m"] == 32 and info["rerank"] == 10
    assert info["recall@10_vs_exact"] >= 0.9 and info["qps"] > 0 and info["exact_qps"] > 0
    assert 0 < info["index_mb"] < whole.nbytes / 2**20 and info["peak_rss_mb"] > 0
    loaded = load_index(tmp_path / "ix")  # searches re-score from the store, as measured
    _, rows = loaded.search(queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, want_rows, strict=True)]) \
        == pytest.approx(info["recall@10_vs_exact"], abs=1e-4)
    with pytest.raises(ValueError, match="at least 10000"):
        build_index(whole[:500], "ivfpq")


def test_empty_gallery_and_bad_k() -> None:
    with pytest.raises(ValueError, match="empty"):
        build_index(np.zeros((0, 4), np.float32))
    index, _ = build_index(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="k must be"):
        search(index, np.eye(4, dtype=np.float32), 0)


# --- index and retrieve on a store --------------------------------------------------------------


@pytest.fixture(scope="module")
def world_store(tiny_store: Path) -> Path:
    return tiny_store


def test_index_store_writes_info_and_reloads(world_store: Path, tmp_path: Path) -> None:
    store = EmbeddingStore(world_store / "val")
    info = index_store(store, tmp_path / "ix", modality="text", kind="hnsw", n_queries=50)
    assert info["kind"] == "hnsw" and info["n"] == store.n_captions
    assert 0.0 <= info["recall@10_vs_exact"] <= 1.0
    assert info["recall_queries"] == min(50, store.n_images)  # image queries (shared space)
    loaded = load_index(tmp_path / "ix")
    assert loaded.modality == "text" and loaded.index.ntotal == store.n_captions
    assert loaded.labels() == store.text_metadata().column("caption").to_pylist()
    with pytest.raises(ValueError, match="16-d"):
        loaded.search(np.zeros((1, 3), np.float32), 1)
    with pytest.raises(FileNotFoundError, match="modtrans index"):
        load_index(tmp_path)


def test_retrieve_a_caption_finds_itself(world_store: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _run(capsys, ["index", str(world_store), "--split", "val", "--modality", "text",
                  "--out", str(tmp_path / "ix")])
    caption = EmbeddingStore(world_store / "val").text_metadata().column("caption")[7].as_py()
    out = _run(capsys, ["retrieve", str(tmp_path / "ix"), "--text", caption, "-k", "3",
                        "--json"])
    hits = json.loads(out)[0]["results"]
    assert len(hits) == 3 and hits[0]["item"] == caption and hits[0]["score"] > 0.999


def test_retrieve_images_raw_and_through_a_translator(
    world_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(capsys, ["index", str(world_store), "--split", "val", "--out", str(tmp_path / "ix")])
    raw = json.loads(_run(capsys, ["retrieve", str(tmp_path / "ix"), "--text", "a red circle",
                                   "--text", "two blue stars", "-k", "4", "--json"]))
    paths = EmbeddingStore(world_store / "val").image_metadata().column("image_path").to_pylist()
    assert [len(r["results"]) for r in raw] == [4, 4]
    assert all(hit["item"] in paths for r in raw for hit in r["results"])
    _run(capsys, ["train", "--data", str(world_store), "--direction", "text2image", "--method",
                  "ridge", "--out", str(tmp_path / "ridge")])
    translated = json.loads(_run(capsys, [
        "retrieve", str(tmp_path / "ix"), "--text", "a red circle", "--translator",
        str(tmp_path / "ridge"), "--json"]))  # fmt: skip
    assert len(translated[0]["results"]) == min(10, len(paths))
    assert_cli_error(capsys, ["retrieve", str(tmp_path / "ix"), "--image",
                              paths[0], "--translator", str(tmp_path / "ridge")],
                     "maps text to image", "queries are image")
    assert_cli_error(capsys, ["retrieve", str(tmp_path / "ix")], "--text or --image")


def test_retrieve_across_unshared_spaces_needs_a_translator(
    tiny_world: Path, tiny_clip: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "mixed"
    _run(capsys, ["embed", str(tiny_world), "--split", "val", "--out", str(store),
                  "--image-encoder", tiny_clip.spec, "--text-encoder", "sbert:minilm",
                  "--workers", "0"])
    _run(capsys, ["index", str(store), "--split", "val", "--out", str(tmp_path / "ix")])
    assert_cli_error(capsys, ["retrieve", str(tmp_path / "ix"), "--text", "a red circle"],
                     "do not share a space", "--translator")


# --- zero-shot ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shape_folder(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """World images sorted into sub-folders by their main shape."""
    from modtrans.world.generator import load_ground_truth

    root = tmp_path_factory.mktemp("zeroshot") / "shapes"
    for split in ("train", "val"):
        for row in load_ground_truth(tiny_world / split):
            dest = root / row["main_shape"] / f"{split}_{row['file_name']}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tiny_world / split / "images" / row["file_name"], dest)
    return root


def test_zeroshot_raw_matches_a_manual_computation(
    shape_folder: Path, tiny_clip: Any, clip_encoder: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from modtrans.data.folder import read_labelled_folder

    _run(capsys, ["zeroshot", str(shape_folder), "--encoder", tiny_clip.spec, "--template",
                  "a {}", "--out", str(tmp_path / "zs.json")])
    result = json.loads((tmp_path / "zs.json").read_text())
    paths, labels = read_labelled_folder(shape_folder)
    classes = sorted(set(labels))
    assert result["classes"] == classes and result["n_images"] == len(paths)
    images = clip_encoder.encode_images([Image.open(p) for p in paths]).numpy()
    prompts = clip_encoder.encode_texts([f"a {c}" for c in classes]).numpy()
    predicted = np.argmax(images @ prompts.T, axis=1)
    want = float(np.mean(predicted == np.array([classes.index(x) for x in labels])))
    assert result["accuracy"]["raw"] == pytest.approx(want)


def test_zeroshot_through_translators(
    shape_folder: Path, world_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for direction in ("text2image", "image2text"):
        _run(capsys, ["train", "--data", str(world_store), "--direction", direction,
                      "--method", "ridge", "--out", str(tmp_path / direction)])
    classes = sorted(p.name for p in shape_folder.iterdir())[:3]
    _run(capsys, ["zeroshot", str(shape_folder), "--classes", ",".join(classes),
                  "--translator", str(tmp_path / "text2image"),
                  "--translator", str(tmp_path / "image2text"),
                  "--out", str(tmp_path / "zs.json")])  # fmt: skip
    result = json.loads((tmp_path / "zs.json").read_text())
    assert result["classes"] == classes
    assert set(result["accuracy"]) == {"raw", str(tmp_path / "text2image"),
                                       str(tmp_path / "image2text")}
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"].values())
    assert set(result["per_class"]["raw"]) == set(classes)


def test_zeroshot_errors(shape_folder: Path, tiny_clip: Any,
                         capsys: pytest.CaptureFixture[str]) -> None:
    base = ["zeroshot", str(shape_folder)]
    assert_cli_error(capsys, base, "--encoder")
    assert_cli_error(capsys, [*base, "--encoder", tiny_clip.spec, "--classes", "cat"],
                     "no sub-folder", "cat")
    assert_cli_error(capsys, [*base, "--encoder", tiny_clip.spec, "--template", "a photo"],
                     "exactly one '{}'")
    assert_cli_error(capsys, [*base, "--image-encoder", tiny_clip.spec, "--text-encoder",
                              "sbert:minilm"], "do not share a space")


# --- the real-data path: COCO layout, JPEGs, embed → train → eval → retrieve ------------------


def _coco_fixture(tiny_world: Path, root: Path) -> Path:
    """The world's train and val splits as MS-COCO 2017: annotations/ + train2017/ + val2017/
    of JPEGs (so nothing about the world's PNGs is assumed)."""
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        coco = json.loads((tiny_world / split / "captions.json").read_text())
        (root / f"{split}2017").mkdir()
        for image in coco["images"]:
            jpg = Path(image["file_name"]).with_suffix(".jpg").name
            buffer = io.BytesIO()
            Image.open(tiny_world / split / "images" / image["file_name"]).save(buffer, "JPEG")
            (root / f"{split}2017" / jpg).write_bytes(buffer.getvalue())
            image["file_name"] = jpg
        (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(coco))
    return root


def test_coco_embed_train_eval_retrieve(tiny_world: Path, tiny_clip: Any, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    coco = _coco_fixture(tiny_world, tmp_path / "coco")
    store = tmp_path / "store"
    for split in ("train", "val"):
        _run(capsys, ["embed", str(coco / "annotations" / f"captions_{split}2017.json"),
                      "--split", split, "--out", str(store / split), "--encoder",
                      tiny_clip.spec, "--workers", "2", "--batch-size", "8"])
    val = EmbeddingStore(store / "val")
    assert val.n_images == len(read_coco_captions(tiny_world / "val" / "captions.json"))
    assert val.manifest["source"]["format"] == "coco"
    _run(capsys, ["train", "--data", str(store), "--direction", "text2image", "--method",
                  "ridge", "--out", str(tmp_path / "ridge")])
    _run(capsys, ["eval", str(tmp_path / "ridge"), "--data", str(store), "--split", "val",
                  "--out", str(tmp_path / "eval.json")])
    row = json.loads((tmp_path / "eval.json").read_text())
    assert row["n_gallery"] == val.n_images and 0.0 <= row["R@1"] <= 1.0
    assert row.get("zero_shot") is None  # COCO has no shape labels: skipped, not failed
    _run(capsys, ["index", str(store), "--split", "val", "--out", str(tmp_path / "ix")])
    hits = json.loads(_run(capsys, [
        "retrieve", str(tmp_path / "ix"), "--text", "a red circle", "--translator",
        str(tmp_path / "ridge"), "-k", "2", "--json"]))[0]["results"]  # fmt: skip
    assert len(hits) == 2 and all(h["item"].endswith(".jpg") for h in hits)
    assert all(str(coco / "val2017") in h["item"] for h in hits)
