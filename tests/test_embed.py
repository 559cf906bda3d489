"""Tests for embed_captioned_images: pairing, sidecar metadata, resume, bad inputs, dtypes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from modtrans.data import store as store_mod
from modtrans.data.coco import CaptionedImages, read_coco_captions
from modtrans.data.embed import BadInputError, embed_captioned_images, load_sidecar_metadata
from modtrans.data.store import EmbeddingStore
from modtrans.world.generator import CAPTIONS_PER_IMAGE, load_world_info

ATOL = 1e-5


@pytest.fixture(scope="module")
def train_data(tiny_world: Path) -> CaptionedImages:
    return read_coco_captions(tiny_world / "train" / "captions.json")


@pytest.fixture(scope="module")
def val_data(tiny_world: Path) -> CaptionedImages:
    return read_coco_captions(tiny_world / "val" / "captions.json")


def _embed(data: CaptionedImages, encoder: Any, out: Path, **kwargs: Any) -> dict:
    options: dict[str, Any] = {
        "split": "train", "source": {"captions": "test"}, "dtype": "float32", "progress": False,
    }  # fmt: skip
    options.update(kwargs)
    return embed_captioned_images(data, encoder, encoder, out, **options)


def _copy(data: CaptionedImages) -> CaptionedImages:
    """A copy whose lists can be edited without touching the shared fixture."""
    return dataclasses.replace(
        data,
        image_ids=list(data.image_ids),
        image_paths=list(data.image_paths),
        captions=[list(c) for c in data.captions],
        caption_ids=[list(c) for c in data.caption_ids],
        extra=[list(e) for e in data.extra],
    )


# --- a world split -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_store(
    train_data: CaptionedImages, clip_encoder: Any, tiny_world: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[EmbeddingStore, dict]:  # fmt: skip
    out = tmp_path_factory.mktemp("embed") / "train"
    sidecar = load_sidecar_metadata(tiny_world / "train" / "captions.json")
    summary = _embed(train_data, clip_encoder, out, sidecar=sidecar, shard_size=16)
    return EmbeddingStore(out), summary


def test_counts_match_the_world(
    train_store: tuple[EmbeddingStore, dict], train_data: CaptionedImages, tiny_world: Path
) -> None:
    store, summary = train_store
    n_train = load_world_info(tiny_world)["counts"]["train"]
    assert store.n_images == len(train_data) == n_train == summary["images_written"]
    assert store.n_captions == CAPTIONS_PER_IMAGE * n_train == summary["captions_written"]
    assert summary["skipped"] == []
    assert store.manifest["complete"]
    assert len(store.manifest["shards"]) == -(-n_train // 16)
    assert store.image_embeddings.shape == (n_train, 16)
    assert store.text_embeddings.shape == (CAPTIONS_PER_IMAGE * n_train, 16)
    rows = store.image_caption_rows()
    assert (np.diff(rows.indptr) == CAPTIONS_PER_IMAGE).all()


def test_captions_pair_with_their_images(
    train_store: tuple[EmbeddingStore, dict], train_data: CaptionedImages, clip_encoder: Any
) -> None:
    store, _ = train_store
    image_meta = store.image_metadata().to_pylist()
    text_meta = store.text_metadata().to_pylist()
    index = store.caption_image_index
    by_id = {image_id: k for k, image_id in enumerate(train_data.image_ids)}
    for k, row in enumerate(text_meta):
        assert row["image_index"] == index[k]
        image_row = by_id[image_meta[index[k]]["image_id"]]
        j = train_data.caption_ids[image_row].index(row["caption_id"])
        assert train_data.captions[image_row][j] == row["caption"]
    # the stored text rows are the encodings of those captions
    captions = [row["caption"] for row in text_meta]
    np.testing.assert_allclose(
        store.text_embeddings[:], clip_encoder.encode_texts(captions).numpy(), atol=ATOL
    )
    for k in (0, len(captions) // 2, len(captions) - 1):
        direct = clip_encoder.encode_texts([captions[k]])[0].numpy()
        np.testing.assert_allclose(store.text_embeddings[k], direct, atol=ATOL)
    # the stored image rows are the encodings of those images
    paths = [row["image_path"] for row in image_meta]
    assert paths == [str(p) for p in train_data.image_paths]
    images = [Image.open(p) for p in paths]
    np.testing.assert_allclose(
        store.image_embeddings[:], clip_encoder.encode_images(images).numpy(), atol=ATOL
    )
    # the image metadata's caption is the image's first caption
    assert [row["caption"] for row in image_meta] == [c[0] for c in train_data.captions]


def test_sidecar_ground_truth_in_image_metadata(
    train_store: tuple[EmbeddingStore, dict], tiny_world: Path
) -> None:
    store, _ = train_store
    meta = store.image_metadata()
    assert {"main_shape", "main_colour", "n_objects", "objects"} <= set(meta.column_names)
    truth = {
        r["image_id"]: r for r in pq.read_table(tiny_world / "train" / "ground_truth.parquet")
        .to_pylist()
    }  # fmt: skip
    for row in meta.to_pylist():
        assert row["main_shape"] == truth[row["image_id"]]["main_shape"]
        assert row["main_colour"] == truth[row["image_id"]]["main_colour"]
        assert row["n_objects"] == len(row["objects"])


def test_no_sidecar_without_ground_truth(tmp_path: Path) -> None:
    assert load_sidecar_metadata(tmp_path / "captions.json") == {}


# --- resume ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(
    train_data: CaptionedImages, clip_encoder: Any, tmp_path_factory: pytest.TempPathFactory
) -> EmbeddingStore:
    out = tmp_path_factory.mktemp("embed") / "whole"
    _embed(train_data, clip_encoder, out, shard_size=10)
    return EmbeddingStore(out)


class Interrupted(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["encode", "write"])
def test_resume_after_interruption(
    where: str, train_data: CaptionedImages, clip_encoder: Any, uninterrupted: EmbeddingStore,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    out = tmp_path / "store"
    calls = {"n": 0}
    if where == "encode":
        # batches of 5, shards of 10: the 3rd batch's captions fail to encode, after its
        # images were encoded and the first shard was written
        real = clip_encoder.encode_texts

        def flaky(texts: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 3:
                raise Interrupted("killed while encoding")
            return real(texts, **kwargs)

        monkeypatch.setattr(clip_encoder, "encode_texts", flaky)
    else:
        # the 2nd shard dies after its embeddings and image metadata reached the disk
        real_write = store_mod._write_table

        def flaky_write(path: Path, table: Any) -> None:
            if path.name.startswith("text_metadata_"):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise Interrupted("killed while writing")
            real_write(path, table)

        monkeypatch.setattr(store_mod, "_write_table", flaky_write)
    with pytest.raises(Interrupted):
        _embed(train_data, clip_encoder, out, shard_size=10, batch_size=5)
    monkeypatch.undo()

    partial = json.loads((out / "manifest.json").read_text())
    assert not partial["complete"]
    assert partial["n_images"] == 10 and len(partial["shards"]) == 1
    if where == "write":
        assert (out / "img_emb" / "img_emb_1.npy").is_file()  # debris of the broken shard

    with pytest.raises(FileExistsError, match="--resume"):
        _embed(train_data, clip_encoder, out, shard_size=10)
    summary = _embed(train_data, clip_encoder, out, shard_size=10, resume=True)
    assert summary["images_written"] == len(train_data) - 10

    store = EmbeddingStore(out)
    assert store.manifest["complete"]
    ids = store.image_metadata().column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(train_data)
    assert ids == uninterrupted.image_metadata().column("image_id").to_pylist()
    assert set(ids) == set(train_data.image_ids)
    assert store.n_captions == uninterrupted.n_captions
    assert store.text_metadata().to_pylist() == uninterrupted.text_metadata().to_pylist()
    np.testing.assert_allclose(
        store.image_embeddings[:], uninterrupted.image_embeddings[:], atol=1e-6
    )
    np.testing.assert_allclose(
        store.text_embeddings[:], uninterrupted.text_embeddings[:], atol=1e-6
    )
    shard_files = sorted(p.name for p in (out / "img_emb").iterdir())
    assert shard_files == sorted(p.name for p in (uninterrupted.root / "img_emb").iterdir())

    # resuming a complete store writes nothing more
    again = _embed(train_data, clip_encoder, out, shard_size=10, resume=True)
    assert again["images_written"] == 0
    assert EmbeddingStore(out).n_images == len(train_data)


# --- bad inputs --------------------------------------------------------------------------------


def _bad_inputs(data: CaptionedImages, folder: Path) -> tuple[CaptionedImages, dict[str, Any]]:
    """Image 0 missing, image 1 corrupt, one empty caption of image 2, image 3 all empty."""
    bad = _copy(data)
    folder.mkdir(parents=True, exist_ok=True)
    missing = folder / "missing.png"
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"this is not a png" * 10)
    bad.image_paths[0], bad.image_paths[1] = missing, corrupt
    bad.captions[2][1] = ""
    bad.captions[3] = ["   "] * len(bad.captions[3])
    return bad, {
        "missing": str(missing), "corrupt": str(corrupt),
        "empty_caption": bad.caption_ids[2][1], "all_empty": str(bad.image_paths[3]),
    }  # fmt: skip


def test_bad_inputs_are_skipped_counted_and_listed(
    val_data: CaptionedImages, clip_encoder: Any, tmp_path: Path
) -> None:
    assert len(val_data) >= 5
    bad, where = _bad_inputs(val_data, tmp_path / "bad")
    summary = _embed(bad, clip_encoder, tmp_path / "store", split="val")
    n_good = len(bad) - 3
    assert summary["images_written"] == n_good
    assert summary["captions_written"] == CAPTIONS_PER_IMAGE * n_good - 1
    reasons = {e["item"]: e["reason"] for e in summary["skipped"]}
    assert reasons[where["missing"]] == "missing"
    assert reasons[where["corrupt"]].startswith("unreadable")
    assert reasons[f"caption:{where['empty_caption']}"] == "empty caption"
    assert reasons[where["all_empty"]] == "no non-empty caption"
    assert len(summary["skipped"]) == 4 + CAPTIONS_PER_IMAGE  # image 3's captions each listed

    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["skipped"] == summary["skipped"]
    store = EmbeddingStore(tmp_path / "store")
    assert store.n_images == n_good
    kept_ids = store.image_metadata().column("image_id").to_pylist()
    assert kept_ids == bad.image_ids[2:3] + bad.image_ids[4:]
    captions = store.text_metadata().column("caption").to_pylist()
    assert "" not in captions and len(captions) == CAPTIONS_PER_IMAGE * n_good - 1


@pytest.mark.parametrize("case", ["missing", "corrupt", "empty_caption"])
def test_strict_names_the_bad_input(
    case: str, val_data: CaptionedImages, clip_encoder: Any, tmp_path: Path
) -> None:
    bad, where = _bad_inputs(val_data, tmp_path / "bad")
    keep = {"missing": 0, "corrupt": 1, "empty_caption": 2}[case]
    only = dataclasses.replace(
        bad, image_ids=[bad.image_ids[keep]], image_paths=[bad.image_paths[keep]],
        captions=[bad.captions[keep]], caption_ids=[bad.caption_ids[keep]],
        extra=[bad.extra[keep]],
    )  # fmt: skip
    with pytest.raises(BadInputError) as info:
        _embed(only, clip_encoder, tmp_path / "store", split="val", strict=True)
    message = str(info.value)
    if case == "empty_caption":
        assert str(where["empty_caption"]) in message and str(bad.image_paths[2]) in message
    else:
        assert where[case] in message
    assert "--strict" in message
    store_files = list((tmp_path / "store" / "img_emb").glob("*.npy"))
    assert store_files == []


# --- words outside the text encoder's vocabulary ------------------------------------------------


def test_unknown_words_are_counted_skipped_when_alone_and_warned_about(
    val_data: CaptionedImages, clip_encoder: Any, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The world CLIP's word-level tokenizer knows the world's words only: a caption of
    foreign words alone is skipped and listed, a partly foreign one is kept with its count,
    and the store's share of unknown tokens is recorded and warned about."""
    data = _copy(val_data)
    data.captions[0][0] = "Zyzzyva quokka"  # no word the world knows
    data.captions[1][0] = "a zyzzyva circle"  # one of three
    for row in range(2, len(data)):  # plenty more, past the warning threshold
        data.captions[row][1:3] = ["quokka", "quokka"]
    with caplog.at_level("WARNING", logger="modtrans.data.embed"):
        summary = _embed(data, clip_encoder, tmp_path / "store", split="val")
    reasons = {e["item"]: e["reason"] for e in summary["skipped"]}
    n_quokkas = 2 * (len(data) - 2)
    assert [e["unknown_tokens"] for e in summary["skipped"]] == [2] + [1] * n_quokkas
    assert reasons == {
        f"caption:{data.caption_ids[0][0]}":
            "only unknown tokens ('Zyzzyva', 'quokka'): the text encoder's vocabulary has none "
            "of its words",
        **{f"caption:{data.caption_ids[r][j]}": "only unknown tokens ('quokka'): the text "
           "encoder's vocabulary has none of its words" for r in range(2, len(data))
           for j in (1, 2)},
    }
    store = EmbeddingStore(tmp_path / "store")
    meta = store.text_metadata().to_pylist()
    partial = next(r for r in meta if r["caption"] == "a zyzzyva circle")
    assert (partial["tokens"], partial["unknown_tokens"]) == (3, 1)
    unknown, tokens = (sum(r[k] for r in meta) for k in ("unknown_tokens", "tokens"))
    assert tokens > 100 and 1 <= unknown < 0.05 * tokens  # the world's own words are known
    left_out = 2 + n_quokkas  # the skipped captions' tokens, every one unknown
    assert store.manifest["unknown_token_share"] == pytest.approx(
        (unknown + left_out) / (tokens + left_out), abs=1e-6)
    assert summary["unknown_token_share"] == store.manifest["unknown_token_share"] > 0.05
    (warning,) = [r.message for r in caplog.records if "unknown to" in r.message]
    assert f"'quokka' ({n_quokkas + 1})" in warning and "'zyzzyva' (2)" in warning
    assert "fit-encoder" in warning
    only = dataclasses.replace(data, image_ids=data.image_ids[:1],
                               image_paths=data.image_paths[:1], captions=data.captions[:1],
                               caption_ids=data.caption_ids[:1], extra=data.extra[:1])
    with pytest.raises(BadInputError, match=r"only unknown tokens.*--strict"):
        _embed(only, clip_encoder, tmp_path / "strict", split="val", strict=True)


def test_a_query_of_unknown_words_is_warned_about(
    clip_encoder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from modtrans.pipelines import warn_unknown_words

    with caplog.at_level("WARNING", logger="modtrans.pipelines"):
        warn_unknown_words(clip_encoder, ["Lime pentagon", "a red circle", "a teal circle"])
    assert [r.message for r in caplog.records] == [
        f"query 'Lime pentagon': every word is unknown to {clip_encoder.spec} ('Lime', "
        "'pentagon'), so the embedding does not see them",
        f"query 'a teal circle': 1 of 3 tokens are unknown to {clip_encoder.spec} ('teal'), so "
        "the embedding does not see them",
    ]


# --- dtypes ------------------------------------------------------------------------------------


def test_float16_and_float32(val_data: CaptionedImages, clip_encoder: Any, tmp_path: Path) -> None:
    stores = {}
    for dtype in ("float32", "float16"):
        _embed(val_data, clip_encoder, tmp_path / dtype, split="val", dtype=dtype)
        stores[dtype] = EmbeddingStore(tmp_path / dtype)
        assert stores[dtype].dtype == np.dtype(dtype)
        assert stores[dtype].manifest["dtype"] == dtype
        assert np.load(tmp_path / dtype / "img_emb" / "img_emb_0.npy").dtype == np.dtype(dtype)
    for kind in ("image_embeddings", "text_embeddings"):
        full = getattr(stores["float32"], kind)[:]
        half = getattr(stores["float16"], kind)[:]
        assert half.dtype == np.float16
        np.testing.assert_allclose(half.astype(np.float32), full, atol=1e-3)
        assert not np.array_equal(half.astype(np.float32), full)  # really rounded
    with pytest.raises(ValueError, match="dtype"):
        _embed(val_data, clip_encoder, tmp_path / "float64", split="val", dtype="float64")


def test_shard_size_must_be_positive(
    val_data: CaptionedImages, clip_encoder: Any, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="shard_size"):
        _embed(val_data, clip_encoder, tmp_path / "store", shard_size=0)
