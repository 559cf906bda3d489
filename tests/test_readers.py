"""Dataset readers (COCO layouts, Karpathy, folders, tables, webdataset) and embedding them."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from modtrans.data.coco import read_coco_captions
from modtrans.data.embed import embed_captioned_images
from modtrans.data.folder import read_image_folder, read_labelled_folder
from modtrans.data.sources import open_sources
from modtrans.data.store import EmbeddingStore
from modtrans.data.table import read_caption_table
from modtrans.data.webdataset import WebDatasetShards


@pytest.fixture(scope="module")
def val(tiny_world: Path) -> Any:
    return read_coco_captions(tiny_world / "val" / "captions.json")


def _embed(data: Any, encoder: Any, out: Path, **options: Any) -> dict:
    options = {"split": "x", "source": {}, "dtype": "float32", "progress": False, **options}
    return embed_captioned_images(data, encoder, encoder, out, **options)


def _jpeg(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


# --- COCO layouts and Karpathy -----------------------------------------------------------------


def test_coco_2017_layout_finds_its_image_folder(tiny_world: Path, tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    shutil.copy(tiny_world / "val" / "captions.json",
                tmp_path / "annotations" / "captions_val2017.json")
    shutil.copytree(tiny_world / "val" / "images", tmp_path / "val2017")
    data = read_coco_captions(tmp_path / "annotations" / "captions_val2017.json")
    assert all(p.parent == (tmp_path / "val2017").resolve() for p in data.image_paths)
    assert all(p.is_file() for p in data.image_paths)


def _karpathy(tiny_world: Path, root: Path) -> Path:
    """A dataset_coco.json over the world's train and val images; 2 train images as restval."""
    images = []
    for world_split, split_name in (("train", "train"), ("val", "val")):
        data = read_coco_captions(tiny_world / world_split / "captions.json")
        shutil.copytree(tiny_world / world_split / "images", root / f"{world_split}2014")
        for i, (image_id, path, caps) in enumerate(
            zip(data.image_ids, data.image_paths, data.captions, strict=True)
        ):
            images.append({
                "filepath": f"{world_split}2014", "filename": path.name, "cocoid": image_id,
                "split": "restval" if world_split == "train" and i < 2 else split_name,
                "sentences": [{"raw": c, "sentid": image_id * 10 + k} for k, c in enumerate(caps)],
            })  # fmt: skip
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_karpathy_splits_with_restval_in_train(tiny_world: Path, tmp_path: Path) -> None:
    path = _karpathy(tiny_world, tmp_path)
    sources = open_sources(path)
    assert set(sources) == {"train", "val"}
    train, info = sources["train"]
    world_train = read_coco_captions(tiny_world / "train" / "captions.json")
    assert train.image_ids == world_train.image_ids
    assert train.captions == world_train.captions
    assert info["format"] == "karpathy"
    assert all(p.is_file() for p in train.image_paths)
    only_val = open_sources(path, split="val")
    assert list(only_val) == ["val"]
    with pytest.raises(ValueError, match="Karpathy splits"):
        open_sources(path, split="restval")


# --- folders and tables ------------------------------------------------------------------------


def _captioned_folder(val: Any, root: Path, uncaptioned: int = 1) -> Path:
    """The val images as nested JPEGs with .txt sidecars; the last ``uncaptioned`` have none."""
    for i, (path, caps) in enumerate(zip(val.image_paths, val.captions, strict=True)):
        dest = root / f"part{i % 2}" / f"{path.stem}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(_jpeg(path))
        if i < len(val) - uncaptioned:
            dest.with_suffix(".txt").write_text("\n".join(caps) + "\n\n")
    return root


def test_image_folder_with_sidecar_captions(val: Any, clip_encoder: Any, tmp_path: Path) -> None:
    root = _captioned_folder(val, tmp_path / "photos")
    data = read_image_folder(root)
    assert len(data) == len(val)
    assert sorted(c for cs in data.captions for c in cs) == sorted(
        c for cs in val.captions[:-1] for c in cs)
    assert all(isinstance(i, str) and "/" in i for i in data.image_ids)
    summary = _embed(data, clip_encoder, tmp_path / "store")
    assert summary["images_written"] == len(val) - 1
    assert [e["reason"] for e in summary["skipped"]] == ["no non-empty caption"]


def test_labelled_folder(val: Any, tmp_path: Path) -> None:
    for i, path in enumerate(val.image_paths[:6]):
        dest = tmp_path / ("cat" if i % 2 else "dog") / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    paths, labels = read_labelled_folder(tmp_path)
    assert labels == ["cat"] * 3 + ["dog"] * 3
    assert [p.parent.name for p in paths] == labels
    with pytest.raises(ValueError, match="one sub-folder per class"):
        read_labelled_folder(tmp_path / "cat")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_caption_table_groups_rows_by_image(val: Any, tmp_path: Path, suffix: str) -> None:
    rows = [
        {"filepath": f"images/{p.name}", "text": c}
        for p, caps in zip(val.image_paths, val.captions, strict=True)
        for c in caps
    ]
    shutil.copytree(val.image_paths[0].parent, tmp_path / "images")
    table = pa.Table.from_pylist(rows)
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".csv":
        import pyarrow.csv as pa_csv

        pa_csv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    data = read_caption_table(path)
    assert data.captions == val.captions
    assert [p.name for p in data.image_paths] == [p.name for p in val.image_paths]
    assert all(p.is_file() for p in data.image_paths)
    with pytest.raises(ValueError, match="no column 'url'"):
        read_caption_table(path, image_column="url")


def test_table_without_known_columns_says_which_flag(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\nx.jpg,hello\n")
    with pytest.raises(ValueError, match="--image-column"):
        read_caption_table(path)


# --- webdataset --------------------------------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_shards(val: Any, root: Path, per_shard: int = 4) -> dict[str, Any]:
    """img2dataset-style shards of the val images: sample 1 corrupt, sample 2 without a
    caption, and the last shard truncated in the middle of a member."""
    root.mkdir(parents=True)
    keys = [f"{i:09d}" for i in range(len(val))]
    chunks = [range(s, min(s + per_shard, len(val))) for s in range(0, len(val), per_shard)]
    for n, chunk in enumerate(chunks):
        tar_path = root / f"{n:05d}.tar"
        with tarfile.open(tar_path, "w") as tar:
            for i in chunk:
                image = b"\xff\xd8 not really a jpeg" if i == 1 else _jpeg(val.image_paths[i])
                _add(tar, f"{keys[i]}.jpg", image)
                if i != 2:
                    _add(tar, f"{keys[i]}.txt", val.captions[i][0].encode())
                _add(tar, f"{keys[i]}.json", json.dumps({"url": f"http://x/{i}"}).encode())
        rows = [{"key": keys[i], "status": "success"} for i in chunk]
        pq.write_table(pa.Table.from_pylist(rows), tar_path.with_suffix(".parquet"))
    last = root / f"{len(chunks) - 1:05d}.tar"
    with tarfile.open(last) as tar:
        members = tar.getmembers()
    cut = members[len(members) // 2]  # cut half-way through this member's data
    last.write_bytes(last.read_bytes()[: cut.offset_data + cut.size // 2])
    return {"keys": keys, "last_chunk": chunks[-1]}


def test_webdataset_streams_and_skips_what_is_broken(val: Any, clip_encoder: Any,
                                                     tmp_path: Path) -> None:
    layout = write_shards(val, tmp_path / "shards")
    shards = WebDatasetShards(tmp_path / "shards")
    assert len(shards) == len(val)  # from the parquet files
    summary = _embed(shards, clip_encoder, tmp_path / "store", workers=2, batch_size=4)
    reasons = {e["item"]: e["reason"] for e in summary["skipped"]}
    keys = layout["keys"]
    assert reasons[f"{tmp_path / 'shards' / '00000.tar'}:{keys[1]}"].startswith("unreadable")
    assert reasons[f"caption:{keys[2]}"] == "empty caption"
    damaged = [r for item, r in reasons.items() if item.endswith(".tar")]
    assert len(damaged) == 1 and damaged[0].startswith("damaged shard")
    store = EmbeddingStore(tmp_path / "store")
    ids = store.image_metadata().column("image_id").to_pylist()
    assert len(ids) == len(set(ids))
    whole = [k for i, k in enumerate(keys) if i not in (1, 2) and i not in layout["last_chunk"]]
    assert set(whole) <= set(ids)  # every sample of an intact shard made it
    assert set(ids) - set(whole) <= {keys[i] for i in layout["last_chunk"]}
    urls = dict(zip(ids, store.image_metadata().column("url").to_pylist(), strict=True))
    assert urls[keys[0]] == "http://x/0"
    row = ids.index(keys[0])
    np.testing.assert_allclose(
        store.image_embeddings[row],
        clip_encoder.encode_images([Image.open(io.BytesIO(_jpeg(val.image_paths[0])))])[0],
        atol=1e-5,
    )


def test_workers_give_the_same_store_as_in_process(val: Any, clip_encoder: Any,
                                                   tmp_path: Path) -> None:
    stores = {}
    for workers in (0, 2):
        _embed(val, clip_encoder, tmp_path / str(workers), workers=workers, batch_size=3)
        stores[workers] = EmbeddingStore(tmp_path / str(workers))
    by_id = {}
    for workers, store in stores.items():
        ids = store.image_metadata().column("image_id").to_pylist()
        by_id[workers] = dict(zip(ids, store.image_embeddings[:], strict=True))
    assert by_id[0].keys() == by_id[2].keys() == set(val.image_ids)
    for image_id, vec in by_id[0].items():
        np.testing.assert_allclose(by_id[2][image_id], vec, atol=1e-5)


def test_webdataset_resume_has_no_duplicate_and_no_gap(
    val: Any, clip_encoder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_shards(val, tmp_path / "shards", per_shard=4)
    shards = WebDatasetShards(tmp_path / "shards")
    assert len(val) >= 8
    complete = _embed(shards, clip_encoder, tmp_path / "whole", shard_size=3, batch_size=2)
    real, calls = clip_encoder.encode_pixels, {"n": 0}

    def dies(pixels: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # after 4 images, one shard of 3 written
            raise KeyboardInterrupt
        return real(pixels)

    monkeypatch.setattr(clip_encoder, "encode_pixels", dies)
    with pytest.raises(KeyboardInterrupt):
        _embed(shards, clip_encoder, tmp_path / "store", shard_size=3, batch_size=2, workers=2)
    monkeypatch.undo()
    assert 0 < EmbeddingStore(tmp_path / "store").n_images < complete["images_written"]
    _embed(shards, clip_encoder, tmp_path / "store", shard_size=3, batch_size=2, workers=2,
           resume=True)
    store = EmbeddingStore(tmp_path / "store")
    ids = store.image_metadata().column("image_id").to_pylist()
    whole_ids = EmbeddingStore(tmp_path / "whole").image_metadata().column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == set(whole_ids)
    assert store.n_captions == EmbeddingStore(tmp_path / "whole").n_captions


def test_open_sources_picks_the_reader(val: Any, tiny_world: Path, tmp_path: Path) -> None:
    write_shards(val, tmp_path / "shards")
    _captioned_folder(val, tmp_path / "photos")
    assert set(open_sources(tiny_world)) == {"train", "val", "test", "novel"}
    assert open_sources(tmp_path / "shards")["shards"][1]["format"] == "webdataset"
    assert open_sources(tmp_path / "shards" / "00000.tar")["00000"][1]["format"] == "webdataset"
    assert open_sources(tmp_path / "photos", split="val")["val"][1]["format"] == "folder"
    coco = open_sources(tiny_world / "val" / "captions.json")
    assert coco["captions"][1]["format"] == "coco"
