"""Bad input files give one-line errors that name the file, what was wrong and the fix."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from modtrans.data.coco import read_coco_captions
from modtrans.data.folder import read_image_folder
from tests.cli_helpers import assert_cli_error


@pytest.mark.parametrize(("section", "key"), [("annotations", "image_id"),
                                              ("annotations", "caption"),
                                              ("images", "file_name")])
def test_a_coco_entry_without_a_key_names_the_file_entry_and_key(
    tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str,
    key: str,
) -> None:
    data = json.loads((tiny_world / "val" / "captions.json").read_text())
    del data[section][2][key]
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(data))
    images = tiny_world / "val" / "images"
    where = "annotation 2" if section == "annotations" else "image 2"
    with pytest.raises(ValueError, match=f"{where} has no '{key}'"):
        read_coco_captions(captions, images)
    assert_cli_error(capsys, ["embed", str(captions), "--images", str(images), "--out",
                              str(tmp_path / "store"), "--encoder", "sbert:minilm"],
                     str(captions), where, repr(key))


def _photo_folder(tiny_world: Path, root: Path, n: int) -> Path:
    """A folder of ``n`` world images, each with a one-line caption file beside it."""
    root.mkdir()
    for i, image in enumerate(sorted((tiny_world / "val" / "images").iterdir())[:n]):
        shutil.copy(image, root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"caption {i}\n")
    return root


def test_a_sidecar_that_is_not_utf8_skips_only_its_image(
    tiny_world: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _photo_folder(tiny_world, tmp_path / "photos", 3)
    (root / "1.txt").write_bytes(b"caf\xff\xfe\n")
    with caplog.at_level(logging.WARNING):
        data = read_image_folder(root)
    assert data.image_ids == ["0.png", "2.png"]
    assert "1.txt (byte 3 is not UTF-8)" in caplog.text


def test_world_into_a_non_empty_folder_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert_cli_error(capsys, ["world", str(tmp_path), "--n", "10", "--workers", "1"],
                     "--overwrite")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_translate_a_file_that_is_not_an_image(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modtrans.cli import main

    assert main(["train", "--data", str(tiny_store), "--direction", "image2text", "--method",
                 "ridge", "--out", str(tmp_path / "ridge")]) == 0
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    capsys.readouterr()
    assert_cli_error(capsys, ["translate", str(tmp_path / "ridge"), "--image", str(notes)],
                     str(notes), "not an image")


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\x93NUMPY\x00junk" * 9)


@pytest.mark.parametrize(("part", "how"), [
    ("manifest.json", "truncated"), ("img_emb/img_emb_0.npy", "truncated"),
    ("img_emb/img_emb_0.npy", "random"), ("text_metadata/text_metadata_0.parquet", "truncated"),
    ("text_metadata/text_metadata_0.parquet", "random")])
def test_a_damaged_store_file_is_named(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], part: str, how: str
) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    _damage(store / "train" / part, how)
    assert_cli_error(capsys, ["train", "--data", str(store), "--direction", "text2image",
                              "--method", "ridge", "--out", str(tmp_path / "ridge")],
                     str(store / "train" / part))
    assert not (tmp_path / "ridge" / "model.safetensors").exists()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_damaged_caption_table_is_named(
    tiny_clip, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    table = tmp_path / f"pairs{suffix}"
    table.write_bytes(b"image,caption\na.png,one\nb.png,two,three\n" if suffix == ".csv"
                      else b"PAR1 not really")
    assert_cli_error(capsys, ["embed", str(table), "--out", str(tmp_path / "store"),
                              "--encoder", tiny_clip.spec], str(table))


def test_a_caption_longer_than_the_context_is_flagged_and_counted(
    tiny_world: Path, clip_encoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 10,000-character caption is stored whole, embedded from its start (as the encoder
    truncates it), flagged in text_metadata and counted in the manifest, with one warning."""
    from modtrans.data.embed import embed_captioned_images
    from modtrans.data.store import EmbeddingStore

    data = read_coco_captions(tiny_world / "val" / "captions.json")
    long = "a red circle " * 770
    data.captions[1][2] = long
    with caplog.at_level(logging.WARNING):
        embed_captioned_images(data, clip_encoder, clip_encoder, tmp_path / "store",
                               split="val", source={}, dtype="float32", shard_size=3,
                               progress=False)
    store = EmbeddingStore(tmp_path / "store")
    rows = store.text_metadata().to_pylist()
    flagged = [r["caption"] for r in rows if r["truncated"]]
    assert flagged == [long] and store.manifest["captions_truncated"] == 1
    assert [s.get("n_truncated") for s in store.manifest["shards"]][:2] == [1, 0]
    warnings = [r.message for r in caplog.records if "context" in r.message]
    assert len(warnings) == 1 and f"{clip_encoder.text_context} tokens" in warnings[0]
    index = next(i for i, r in enumerate(rows) if r["truncated"])
    start = clip_encoder.encode_texts([long[:400]]).numpy()[0]
    np.testing.assert_allclose(store.text_embeddings[index], start, atol=1e-5)


def test_embed_strict_on_a_bad_image_names_it_and_nothing_misleading(
    tiny_world: Path, tiny_clip, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _photo_folder(tiny_world, tmp_path / "photos", 2)
    (root / "1.png").write_bytes(b"not a png at all")
    last = assert_cli_error(capsys, ["embed", str(root), "--out", str(tmp_path / "store"),
                                     "--encoder", tiny_clip.spec, "--strict", "--workers", "0"],
                            str(root / "1.png"), "--strict")
    assert "--resume" not in last
