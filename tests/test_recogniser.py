"""The attribute recogniser: targets from ground truth, training, held-out report, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modtrans.data.captions import SHAPES
from modtrans.eval.recogniser import (
    COLOUR_NAMES,
    IGNORE,
    PAIRS,
    AttributeRecogniser,
    RecogniserConfig,
    attribute_targets,
    fit_recogniser,
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


def test_load_missing_says_how_to_train(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="fit-recogniser"):
        AttributeRecogniser.load(tmp_path)


def test_fit_needs_a_world(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="modtrans world"):
        fit_recogniser(tmp_path, tmp_path / "out", TINY, progress=False)
