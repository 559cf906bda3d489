"""The attribute recogniser: targets from ground truth, training, held-out report, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from artefact_helpers import saved_options

from modtrans.world.captions import SHAPES
from modtrans.world.generator import load_ground_truth, load_world_info
from modtrans.world.recogniser import (
    COLOUR_NAMES,
    IGNORE,
    JUDGE_SEED_OFFSET,
    PAIRS,
    AttributeRecogniser,
    RecogniserConfig,
    attribute_targets,
    blurred,
    degrade,
    describe_report,
    fit_recogniser,
    gaussian_blur,
    judge_training_world,
    object_grid,
)

TINY = RecogniserConfig(channels=(8, 16), epochs=1, batch_size=16)


def _obj(shape: str, colour: str, area: float, x: float = 0.5, y: float = 0.5) -> dict:
    return {"shape": shape, "colour": colour, "size": "small", "x": x, "y": y,
            "rotation": 0.0, "area": area}


def test_targets_mark_visible_objects_only() -> None:
    rows = [
        {"n_objects": 2, "objects": [_obj("star", "red", 100.0), _obj("ring", "blue", 50.0)]},
        {"n_objects": 2, "objects": [_obj("star", "red", 100.0), _obj("heart", "pink", 3.0)]},
    ]
    t = attribute_targets(rows, min_area=12.0)
    assert t["count"].tolist() == [1, 1]
    star, ring, heart = (SHAPES.index(s) for s in ("star", "ring", "heart"))
    assert t["shapes"][0, star] == t["shapes"][0, ring] == 1 and t["shapes"][0].sum() == 2
    assert t["shapes"][1, heart] == 0 and t["shapes"][1].sum() == 1  # 3 px: hidden
    assert t["colours"][0, COLOUR_NAMES.index("blue")] == 1
    assert t["pairs"][0, PAIRS.index(("red", "star"))] == 1
    assert t["pairs"][0, PAIRS.index(("red", "ring"))] == 0  # binding, not bag of words
    assert t["pairs"][0].sum() == 2


def test_object_grid_puts_each_visible_object_in_its_centre_cell() -> None:
    rows = [{"n_objects": 4, "objects": [
        _obj("star", "red", 100.0, x=0.1, y=0.9),  # column 0, row 7 (y grows downwards)
        _obj("ring", "blue", 50.0, x=0.55, y=0.55),
        _obj("heart", "pink", 80.0, x=0.6, y=0.6),  # same cell as the ring, larger: wins
        _obj("cross", "green", 3.0, x=0.99, y=0.0),  # hidden: neither object nor empty
    ]}]
    shape, colour = object_grid(rows, grid=8, min_area=12.0)
    assert shape.shape == colour.shape == (1, 8, 8)
    assert shape[0, 7, 0] == SHAPES.index("star") + 1
    assert colour[0, 7, 0] == COLOUR_NAMES.index("red") + 1
    assert shape[0, 4, 4] == SHAPES.index("heart") + 1
    assert colour[0, 4, 4] == COLOUR_NAMES.index("pink") + 1
    assert shape[0, 0, 7] == colour[0, 0, 7] == IGNORE
    assert int((shape[0] > 0).sum()) == 2 and int((shape[0] == 0).sum()) == 61


def test_predict_reads_objects_from_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    model = AttributeRecogniser(RecogniserConfig(channels=(4, 4, 4, 4)))
    assert model.grid == 8
    shape = torch.full((2, 9, 8, 8), -5.0)
    shape[:, 0] = 5.0  # every cell empty ...
    colour = torch.zeros(2, 9, 8, 8)
    star, ring = SHAPES.index("star") + 1, SHAPES.index("ring") + 1
    red, blue = COLOUR_NAMES.index("red") + 1, COLOUR_NAMES.index("blue") + 1
    shape[0, star, 1, 2], colour[0, red, 1, 2] = 10.0, 3.0  # ... but a red star
    shape[0, ring, 5, 5], colour[0, blue, 5, 5] = 10.0, 3.0  # and a blue ring in image 0
    colour[1, red, 3, 3] = 9.0  # a colour in an empty cell names no object
    count = torch.tensor([[0.0, 4.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    monkeypatch.setattr(model, "forward",
                        lambda pixels: {"shape": shape, "colour": colour, "count": count})
    found = model.predict(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
    assert found["pairs"][0].nonzero().flatten().tolist() == sorted(
        [PAIRS.index(("red", "star")), PAIRS.index(("blue", "ring"))])
    assert found["shapes"][0].sum() == 2 and found["colours"][0].sum() == 2
    assert not found["pairs"][1].any() and not found["colours"][1].any()
    assert found["count"].tolist() == [2, 1]


@pytest.fixture(scope="module")
def trained(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("recogniser") / "judge"
    report = fit_recogniser(tiny_world, out, TINY, accelerator="cpu", progress=False)
    return out, report


def test_fit_reports_held_out_accuracy(trained: tuple[Path, dict]) -> None:
    out, report = trained
    assert report["split"] == "test" and report["n_images"] > 0
    for key in ("shapes_presence_accuracy", "colours_presence_accuracy",
                "pairs_presence_accuracy", "shapes_set_exact", "count_accuracy"):
        assert 0.0 <= report[key] <= 1.0
    assert (out / "recogniser_report.json").is_file()
    soft = report["blurred_1px"]  # the same held-out images, blurred
    assert soft["n_images"] == report["n_images"]
    assert 0.0 <= soft["shapes_presence_accuracy"] <= 1.0
    text = describe_report(report)
    assert f"{report['n_images']} held-out test images" in text
    assert f"shape presence {report['shapes_presence_accuracy']:.3f}" in text
    assert f"blurred (σ = 1 px): shape presence {soft['shapes_presence_accuracy']:.3f}" in text
    novel = report["novel"]  # the world's held-out pairs, which the judge trained on
    assert novel["n_images"] > 0 and 0.0 <= novel["pairs_set_exact"] <= 1.0
    assert f"on the {novel['n_images']} novel images" in text
    older = {k: v for k, v in report.items() if k not in ("blurred_1px", "novel")}
    assert "blurred" not in describe_report(older) and "novel" not in describe_report(older)


def test_the_judge_trains_on_a_world_with_every_pair(tiny_world: Path, tmp_path: Path) -> None:
    source = load_world_info(tiny_world)
    out = judge_training_world(tiny_world, tmp_path / "judge_world", progress=False)
    info = load_world_info(out)
    assert info["config"]["holdout"] == [] and source["config"]["holdout"]
    assert info["config"]["seed"] == source["config"]["seed"] + JUDGE_SEED_OFFSET
    assert info["counts"] == {"train": source["counts"]["train"]}  # as many, all to train
    mine = {r["file_name"]: r["objects"] for r in load_ground_truth(out / "train")}
    theirs = {r["file_name"]: r["objects"] for r in load_ground_truth(tiny_world / "train")}
    shared = mine.keys() & theirs.keys()  # file names repeat, scenes must not
    assert shared and all(mine[n] != theirs[n] for n in shared)


def test_save_load_round_trip(trained: tuple[Path, dict], tiny_world: Path) -> None:
    out, _ = trained
    model = AttributeRecogniser.load(out)
    assert model.config == TINY
    images = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8)
    again = AttributeRecogniser.load(out).predict(images)
    first = model.predict(images)
    for key in ("shapes", "colours", "pairs", "count"):
        assert torch.equal(first[key], again[key])
    assert first["pairs"].shape == (5, 64) and first["count"].min() >= 1


def test_gaussian_blur_keeps_flat_images_and_blurs_each_image_with_its_own_sigma() -> None:
    flat = torch.full((2, 3, 16, 16), 0.25)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 2.0])), flat)
    pixels = torch.rand(2, 3, 32, 32)
    both = gaussian_blur(pixels, torch.tensor([0.5, 1.5]))
    one = gaussian_blur(pixels[1:], torch.tensor([1.5]))
    assert torch.allclose(both[1], one[0], atol=1e-6)
    assert both[1].std() < both[0].std() < pixels[0].std()


def test_degrade_touches_the_configured_share_and_repeats_with_a_seed() -> None:
    images = torch.randint(0, 256, (64, 64, 64, 3), dtype=torch.uint8)
    config = RecogniserConfig(degrade=0.5)

    def run() -> torch.Tensor:
        return degrade(images, config, torch.Generator().manual_seed(3))

    out = run()
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, run())
    changed = (out != images).flatten(1).any(dim=1)
    assert 16 < int(changed.sum()) < 48
    assert torch.equal(degrade(images, RecogniserConfig(degrade=0.0)), images)
    assert (degrade(images, RecogniserConfig(degrade=1.0)) != images).flatten(1).any(1).all()
    assert torch.equal(blurred(images, 1.0)[:1], blurred(images[:1], 1.0))


@pytest.mark.parametrize(("options", "message"), [
    ({"degrade": 1.5}, "share of images"), ({"max_blur": 0.1}, "max_blur"),
    ({"max_noise": -0.1}, "max_noise")])
def test_bad_degradation_options_say_what_is_wrong(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RecogniserConfig(**options)


def test_a_recogniser_saved_before_degradation_reads_as_trained_on_crisp_images(
        trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = trained
    options = saved_options(out)
    del options["degrade"], options["all_pairs"]
    (tmp_path / "recogniser_config.json").write_text(json.dumps(options))
    older = AttributeRecogniser.read_config(tmp_path)
    assert older.degrade == 0.0 and older.all_pairs is False
    assert AttributeRecogniser.read_config(out) == TINY


def test_load_missing_says_how_to_train(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="fit-recogniser"):
        AttributeRecogniser.load(tmp_path)


def test_fit_needs_a_world(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="modtrans world"):
        fit_recogniser(tmp_path, tmp_path / "out", TINY, progress=False)
