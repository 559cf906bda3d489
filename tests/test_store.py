"""Tests for the embedding store: writing, resuming, reading, clip-retrieval folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modtrans.data import store as store_mod
from modtrans.data.store import EmbeddingStore, ShardedArray, StoreWriter, open_store

D_IMG, D_TXT = 8, 6
SETTINGS: dict[str, Any] = {
    "split": "train",
    "image_encoder": "world-clip:enc",
    "text_encoder": "world-clip:enc",
    "image_dim": D_IMG,
    "text_dim": D_TXT,
}


class Dataset:
    """A tiny deterministic dataset: image ``k`` has ``1 + k % 3`` captions."""

    def __init__(self, n_images: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n_captions = [1 + k % 3 for k in range(n_images)]
        self.img = rng.standard_normal((n_images, D_IMG)).astype(np.float32)
        self.txt = [rng.standard_normal((c, D_TXT)).astype(np.float32) for c in self.n_captions]

    def shard(self, ids: list[int], seed: int = 0) -> tuple[Any, ...]:
        """Arguments of ``write_shard`` for images ``ids``, captions in shuffled order."""
        captions = [(local, k, j) for local, k in enumerate(ids) for j in range(self.n_captions[k])]
        order = np.random.default_rng(seed).permutation(len(captions))
        captions = [captions[i] for i in order]
        text_emb = np.stack([self.txt[k][j] for _, k, j in captions])
        image_meta = [
            {"image_id": k, "image_path": f"images/{k}.png", "caption": f"image {k} caption 0"}
            for k in ids
        ]
        text_meta = pa.table({
            "image_index": [local for local, _, _ in captions],
            "caption": [f"image {k} caption {j}" for _, k, j in captions],
            "caption_id": [k * 10 + j for _, k, j in captions],
        })  # fmt: skip
        return self.img[ids], text_emb, image_meta, text_meta


def write_store(root: Path, data: Dataset, sizes: list[int], **kwargs: Any) -> None:
    settings = {**SETTINGS, **kwargs}
    with StoreWriter(root, source={"captions": "caps.json"}, **settings) as writer:
        start = 0
        for i, size in enumerate(sizes):
            writer.write_shard(*data.shard(list(range(start, start + size)), seed=i))
            start += size


def check_store(store: EmbeddingStore, data: Dataset, dtype: str = "float16") -> None:
    """Every image once, in id order; every caption paired with its own image."""
    ids = store.image_metadata().column("image_id").to_pylist()
    assert ids == list(range(len(data.img)))
    np.testing.assert_array_equal(store.image_embeddings[:], data.img.astype(dtype))
    text_meta = store.text_metadata()
    index = store.caption_image_index
    assert index.dtype == np.int64
    np.testing.assert_array_equal(index, text_meta.column("image_index").to_numpy())
    text = store.text_embeddings[:]
    for row, (image_row, caption_id) in enumerate(
        zip(index, text_meta.column("caption_id").to_pylist(), strict=True)
    ):
        k, j = divmod(caption_id, 10)
        assert ids[image_row] == k
        np.testing.assert_array_equal(text[row], data.txt[k][j].astype(dtype))
    assert store.n_captions == sum(data.n_captions) == len(text)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(tmp_path: Path, dtype: str) -> None:
    data = Dataset(12)
    write_store(tmp_path / "s", data, [5, 3, 4], dtype=dtype)
    store = EmbeddingStore(tmp_path / "s")
    m = store.manifest
    assert m["format"] == "modtrans-store" and m["version"] == 1 and m["complete"] is True
    assert m["pairing"] == "text_metadata.image_index"
    assert m["source"] == {"captions": "caps.json"}
    assert (m["dtype"], store.dtype) == (dtype, np.dtype(dtype))
    assert [(s["n_images"], s["first_image_row"]) for s in m["shards"]] == [(5, 0), (3, 5), (4, 8)]
    assert [s["first_caption_row"] for s in m["shards"]] == [0, 9, 15]
    assert (store.split, store.image_dim, store.text_dim, store.n_images) == ("train", 8, 6, 12)
    assert store.image_embeddings.dtype == dtype
    check_store(store, data, dtype)
    assert store.image_metadata().column("image_path").to_pylist()[7] == "images/7.png"

    caption_rows_of = store.image_caption_rows()
    indptr, rows = caption_rows_of
    assert len(rows) == indptr[-1] == store.n_captions and len(indptr) == store.n_images + 1
    assert sorted(rows) == list(range(store.n_captions))
    for image_row in range(store.n_images):
        caption_rows = caption_rows_of.of(image_row)
        assert len(caption_rows) == data.n_captions[image_row]
        assert (store.caption_image_index[caption_rows] == image_row).all()


def test_sharded_array_indexing_matches_concatenate(tmp_path: Path) -> None:
    write_store(tmp_path / "s", Dataset(12), [5, 3, 4])
    array = EmbeddingStore(tmp_path / "s").image_embeddings
    assert all(isinstance(s, np.memmap) for s in array.shards)
    ref = np.concatenate([np.asarray(s) for s in array.shards])
    assert (len(array), array.shape, array.dtype) == (12, (12, D_IMG), np.float16)
    keys: list[Any] = [
        0, 4, 5, 11, -1, np.int64(8),
        slice(None), slice(3, 9), slice(5, 8), slice(-4, None), slice(1, 11, 3),
        slice(None, None, -1), slice(9, 2),
        [7, 0, 4, 5, 11, 4], np.array([-1, -12, 6]), np.array([[0, 9], [5, 4]]), [],
        np.arange(12) % 2 == 0,
    ]  # fmt: skip
    for key in keys:
        got = array[key]
        assert type(got) is np.ndarray
        np.testing.assert_array_equal(got, ref[key])
    np.testing.assert_array_equal(array.to_numpy(), ref)
    assert array.to_numpy(np.float64).dtype == np.float64
    np.testing.assert_array_equal(np.asarray(array), ref)
    for bad in (12, -13, [0, 12]):
        with pytest.raises(IndexError):
            array[bad]
    with pytest.raises(TypeError):
        array[0, 1]
    with pytest.raises(ValueError, match="one width"):
        ShardedArray([np.zeros((2, 3)), np.zeros((2, 4))])


def test_resume_after_crash_mid_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, data, size = tmp_path / "s", Dataset(18), 4

    def crash(path: Path, table: pa.Table) -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"), StoreWriter(root, **SETTINGS) as writer:
        writer.write_shard(*data.shard([0, 1, 2, 3]))
        writer.record_skipped("images/broken.png", "unreadable")
        writer.write_shard(*data.shard([4, 5, 6, 7]))
        monkeypatch.setattr(store_mod, "_write_table", crash)  # after shard 2's npy files
        writer.write_shard(*data.shard([8, 9, 10, 11]))
    monkeypatch.undo()
    assert (root / "img_emb" / "img_emb_2.npy").is_file()  # the half-written shard's files
    (root / "img_emb" / ".img_emb_2.npy.x.tmp").write_bytes(b"partial")  # as after a kill

    store = EmbeddingStore(root)
    assert len(store.manifest["shards"]) == 2 and store.manifest["complete"] is False
    assert store.n_images == 8 and len(store.image_embeddings) == 8
    assert store.manifest["skipped"] == [{"item": "images/broken.png", "reason": "unreadable"}]

    with StoreWriter(root, resume=True, **SETTINGS) as writer:
        assert (writer.n_images_done, writer.n_shards) == (8, 2)
        assert set(writer.done_image_ids) == set(range(8))
        writer.record_skipped("images/broken.png", "still unreadable")  # retried after resume
        writer.record_skipped(Path("images/gone.png"), "missing")
        assert writer.skipped == [
            {"item": "images/broken.png", "reason": "still unreadable"},
            {"item": "images/gone.png", "reason": "missing"},
        ]
        assert not (root / "img_emb" / "img_emb_2.npy").exists()
        assert not (root / "img_emb" / ".img_emb_2.npy.x.tmp").exists()
        todo = [k for k in range(18) if k not in writer.done_image_ids]
        for i in range(0, len(todo), size):
            writer.write_shard(*data.shard(todo[i : i + size]))
        with pytest.raises(ValueError, match="already in the store"):
            writer.write_shard(*data.shard([3]))
    store = EmbeddingStore(root)
    assert store.manifest["complete"] is True and len(store.manifest["shards"]) == 5
    assert [e["item"] for e in store.manifest["skipped"]] == [
        "images/broken.png",
        "images/gone.png",
    ]
    check_store(store, data)


def test_crash_leaves_store_incomplete_and_resumable(tmp_path: Path) -> None:
    root, data = tmp_path / "s", Dataset(6)
    with pytest.raises(KeyboardInterrupt), StoreWriter(root, **SETTINGS) as writer:
        writer.write_shard(*data.shard([0, 1, 2]))
        raise KeyboardInterrupt
    store = EmbeddingStore(root)
    assert store.manifest["complete"] is False and store.n_images == 3
    with StoreWriter(root, resume=True, **SETTINGS) as writer:
        writer.write_shard(*data.shard([3, 4, 5]))
    check_store(EmbeddingStore(root), data)


def test_resume_rejects_other_settings(tmp_path: Path) -> None:
    write_store(tmp_path / "s", Dataset(3), [3])
    with pytest.raises(ValueError, match="image_encoder is 'world-clip:enc' in the store"):
        StoreWriter(tmp_path / "s", resume=True, **{**SETTINGS, "image_encoder": "hf:other"})
    with pytest.raises(ValueError, match="dtype"):
        StoreWriter(tmp_path / "s", resume=True, **SETTINGS, dtype="float32")


def test_existing_store_needs_resume(tmp_path: Path) -> None:
    write_store(tmp_path / "s", Dataset(3), [3])
    with pytest.raises(FileExistsError, match="resume"):
        StoreWriter(tmp_path / "s", **SETTINGS)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="no manifest"):
        StoreWriter(tmp_path / "other", resume=True, **SETTINGS)
    with StoreWriter(tmp_path / "fresh", resume=True, **SETTINGS) as writer:  # nothing to resume
        assert writer.n_images_done == 0


def test_invalid_shards_rejected(tmp_path: Path) -> None:
    data = Dataset(4)
    img, txt, image_meta, text_meta = data.shard([0, 1])
    with StoreWriter(tmp_path / "s", **SETTINGS) as writer:
        for bad_img, match in [
            (np.where(np.arange(D_IMG) == 2, np.nan, img), "NaN or inf in 2 row"),
            (np.full_like(img, np.inf), "NaN or inf"),
            (img[:, :4], r"shape \(n, 8\)"),
            (img.astype(np.int64), "floating-point"),
        ]:
            with pytest.raises(ValueError, match=match):
                writer.write_shard(bad_img, txt, image_meta, text_meta)
        for index, match in [([0, 2, 1], "spans 0..2"), ([-1, 0, 1], "spans -1..1")]:
            bad_meta = text_meta.set_column(0, "image_index", pa.array(index))
            with pytest.raises(ValueError, match=match):
                writer.write_shard(img, txt, image_meta, bad_meta)
        with pytest.raises(ValueError, match="3 rows for 2 images"):
            writer.write_shard(img, txt, [*image_meta, {"image_id": 9}], text_meta)
        with pytest.raises(ValueError, match="caption"):
            writer.write_shard(img, txt, image_meta, text_meta.drop_columns(["caption"]))
        writer.write_shard(img, txt, image_meta, text_meta)
        with pytest.raises(ValueError, match="columns"):
            writer.write_shard(*data.shard([2])[:3], data.shard([2])[3].drop_columns("caption_id"))
    with (
        StoreWriter(tmp_path / "h", **SETTINGS, dtype="float16") as writer,
        pytest.raises(ValueError, match="overflows float16"),
    ):
        writer.write_shard(img * 1e6, txt, image_meta, text_meta)
    assert EmbeddingStore(tmp_path / "s").n_images == 2


def test_missing_and_empty_stores(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="modtrans embed"):
        EmbeddingStore(tmp_path / "nope")
    with StoreWriter(tmp_path / "empty", **SETTINGS):
        pass
    with pytest.raises(FileNotFoundError, match=r"no complete shard.*modtrans embed"):
        EmbeddingStore(tmp_path / "empty")
    (tmp_path / "blank").mkdir()
    with pytest.raises(FileNotFoundError, match="modtrans embed"):
        EmbeddingStore(tmp_path / "blank")


def test_damaged_store_is_reported(tmp_path: Path) -> None:
    write_store(tmp_path / "s", Dataset(6), [3, 3])
    store = EmbeddingStore(tmp_path / "s")
    assert not store.caption_image_index.flags.writeable
    np.save(tmp_path / "s" / "img_emb" / "img_emb_1.npy", np.zeros((2, D_IMG), np.float16))
    with pytest.raises(ValueError, match=r"img_emb_1.npy has shape \(2, 8\).*damaged"):
        _ = EmbeddingStore(tmp_path / "s").image_embeddings
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["n_images"] = 7
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="n_images disagrees"):
        EmbeddingStore(tmp_path / "s")


def write_clip_retrieval(root: Path, sizes: dict[int, int], text: bool = True) -> np.ndarray:
    """A clip-retrieval output folder; returns the image embeddings in integer shard order."""
    rng = np.random.default_rng(1)
    images = []
    for i, n in sizes.items():
        img = rng.standard_normal((n, D_IMG)).astype(np.float16)
        (root / "img_emb").mkdir(parents=True, exist_ok=True)
        np.save(root / "img_emb" / f"img_emb_{i}.npy", img)
        if text:
            (root / "text_emb").mkdir(exist_ok=True)
            np.save(root / "text_emb" / f"text_emb_{i}.npy", img[:, :D_TXT] * 2)
        (root / "metadata").mkdir(exist_ok=True)
        names = [f"{i}_{k}.jpg" for k in range(n)]
        meta = pa.table({"image_path": names, "caption": [f"caption of {x}" for x in names]})
        pq.write_table(meta, root / "metadata" / f"metadata_{i}.parquet")
        images.append(img)
    return np.concatenate([images[j] for j in np.argsort(list(sizes))])


def test_clip_retrieval_folder(tmp_path: Path) -> None:
    root = tmp_path / "cr"
    img = write_clip_retrieval(root, {10: 2, 0: 3, 2: 4})  # sorted as 0, 2, 10, not 0, 10, 2
    store = EmbeddingStore(root)
    assert (store.split, store.image_encoder, store.text_encoder) == ("all", "unknown", "unknown")
    assert (store.n_images, store.n_captions, store.image_dim, store.text_dim) == (9, 9, 8, 6)
    np.testing.assert_array_equal(store.image_embeddings.to_numpy(None), img)
    np.testing.assert_array_equal(store.text_embeddings[:], img[:, :D_TXT] * 2)
    np.testing.assert_array_equal(store.caption_image_index, np.arange(9))
    paths = store.image_metadata().column("image_path").to_pylist()
    assert paths[:3] == ["0_0.jpg", "0_1.jpg", "0_2.jpg"] and paths[-1] == "10_1.jpg"
    text_meta = store.text_metadata()
    assert text_meta.column("caption").to_pylist()[4] == "caption of 2_1.jpg"
    indptr, rows = store.image_caption_rows()
    np.testing.assert_array_equal(indptr, np.arange(10))
    np.testing.assert_array_equal(rows, np.arange(9))
    assert open_store(root).split == "all"

    image_only = tmp_path / "image_only"
    write_clip_retrieval(image_only, {0: 3}, text=False)
    store = EmbeddingStore(image_only)
    assert not store.has_text and len(store.image_embeddings) == 3
    with pytest.raises(FileNotFoundError, match="image-only"):
        _ = store.text_embeddings


def test_open_store_dataset_root(tmp_path: Path) -> None:
    data = Dataset(4)
    for split in ("train", "val"):
        write_store(tmp_path / "ds" / split, data, [4], split=split)
    (tmp_path / "ds" / "notes").mkdir()
    assert open_store(tmp_path / "ds", "val").split == "val"
    assert open_store(tmp_path / "ds" / "train").split == "train"
    assert open_store(tmp_path / "ds" / "train", "train").root == tmp_path / "ds" / "train"
    with pytest.raises(FileNotFoundError, match=r"split 'test'.*\['train', 'val'\]"):
        open_store(tmp_path / "ds", "test")
    with pytest.raises(FileNotFoundError, match=r"\['train', 'val'\]"):
        open_store(tmp_path / "ds")
    with pytest.raises(FileNotFoundError, match=r"\['train'\]"):
        open_store(tmp_path / "ds" / "train", "val")
    with pytest.raises(FileNotFoundError, match="modtrans embed"):
        open_store(tmp_path / "ds" / "notes")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_store(tmp_path / "missing", "train")
