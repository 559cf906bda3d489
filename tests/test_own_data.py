"""The hidden-data check: a captioned dataset in COCO format with other shapes, colours,
backgrounds and caption grammar than the world's goes all the way through the CLI —
fit-encoder → embed → eval-encoder → train → eval — with no manual step, and retrieval
lands far above chance."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from modtrans.cli import main

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from foreign_data import COLOURS, SHAPES, write_foreign_coco

SPLITS = ("train", "val", "test")


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, (out, err)
    return json.loads(out)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("foreign") / "data"
    counts = write_foreign_coco(root, 600, seed=1)
    assert counts == {"train": 480, "val": 60, "test": 60}
    return root


def test_own_data_all_the_way(foreign: Path, tmp_path: Path, tiny_clip: Any,
                              capsys: pytest.CaptureFixture[str]) -> None:
    captions = {s: foreign / "annotations" / f"captions_{s}2017.json" for s in SPLITS}
    clip, store = tmp_path / "clip", tmp_path / "store"
    summary = _json(capsys, ["fit-encoder", str(captions["train"]), "--out", str(clip),
                             "--epochs", "8", "--batch-size", "64", "--accelerator", "cpu"])
    assert summary["warm_start_epochs"] == 0 and summary["images_left_out"] == 0
    vocabulary = set(json.loads((clip / "tokenizer.json").read_text())["model"]["vocab"])
    assert set(SHAPES) | set(COLOURS) <= vocabulary  # built from this data's own captions
    held = summary["held_out"]
    assert held["n_images"] == 24  # 5% of the train file
    assert held["text_to_image"]["R@5"] >= 3 * held["chance_text_to_image_R@5"]

    for split in SPLITS:
        (embedded,) = [_json(capsys, ["embed", str(captions[split]), "--split", split,
                                      "--out", str(store / split), "--encoder", f"hf:{clip}",
                                      "--workers", "0"])]
        assert embedded["images_written"] == {"train": 480}.get(split, 60)
        assert embedded["unknown_token_share"] < 0.01, embedded  # its own vocabulary
    report = _json(capsys, ["eval-encoder", str(store), "--probe", ""])
    assert report["text_to_image"]["R@5"] >= 5 * report["chance_text_to_image_R@5"], report

    _json(capsys, ["train", "--data", str(store), "--direction", "text2image", "--method",
                   "ridge", "--out", str(tmp_path / "ridge")])
    scored = _json(capsys, ["eval", str(tmp_path / "ridge"), "--data", str(store), "--split",
                            "test"])
    assert scored["R@5"] >= 3 * 5 / 60, scored

    # The world's CLIP on the same data: most words unknown, counted and warned about.
    (world_clip,) = [_json(capsys, ["embed", str(captions["val"]), "--split", "val", "--out",
                                    str(tmp_path / "world_store"), "--encoder", tiny_clip.spec,
                                    "--workers", "0"])]
    assert world_clip["unknown_token_share"] > 0.3


def test_fit_encoder_errors_name_what_to_change(foreign: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from cli_helpers import assert_cli_error

    train = str(foreign / "annotations" / "captions_train2017.json")
    out = ["--out", str(tmp_path / "clip")]
    assert_cli_error(capsys, ["fit-encoder", train, *out, "--warm-start-epochs", "2"],
                     "is not a world folder", "--warm-start-epochs 0")
    assert_cli_error(capsys, ["fit-encoder", train, *out, "--images", str(tmp_path)],
                     "no readable image with a caption", "--images")
    assert_cli_error(capsys, ["fit-encoder", train, *out, "--held-out", "1.5"],
                     "held-out fraction must be in (0, 1)")
    assert not (tmp_path / "clip").exists()
