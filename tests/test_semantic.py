"""Caption metrics (pycocoevalcap), semantic scores of generated outputs, image FD."""

from __future__ import annotations

import gc
import shutil
from typing import Any

import pytest
import torch

from modtrans.world.captions import SHAPES
from modtrans.world.recogniser import COLOUR_NAMES, PAIRS, AttributeRecogniser, RecogniserConfig
from modtrans.world.semantic import caption_semantic_scores, image_fd, image_semantic_scores

needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="pycocoevalcap's tokenizer and METEOR need Java")


@needs_java
def test_caption_metrics_reward_matching_captions() -> None:
    from modtrans.eval.captioning import caption_metrics

    refs = [["a red circle on a gray background", "one red disc"],
            ["two blue squares", "a pair of blue boxes"]]
    perfect = caption_metrics(["a red circle on a gray background", "two blue squares"], refs)
    wrong = caption_metrics(["a green star", "three yellow hearts"], refs)
    assert perfect["BLEU-1"] == pytest.approx(1.0)
    assert set(perfect) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    for key in perfect:
        assert perfect[key] > wrong[key]
    with pytest.raises(ValueError, match="one reference list per prediction"):
        caption_metrics(["x"], [])


@needs_java
def test_a_dead_meteor_process_is_an_error_not_a_hang() -> None:
    """pycocoevalcap keeps METEOR's lock when its Java process dies, and its ``__del__`` then
    waits for the lock forever; the wrapper raises and leaves the object collectable."""
    from pycocoevalcap.meteor.meteor import Meteor

    from modtrans.eval.captioning import _meteor

    meteor = Meteor()
    meteor.meteor_p.kill()
    meteor.meteor_p.wait()
    with pytest.raises(RuntimeError, match="METEOR's Java process failed"):
        _meteor(meteor, {0: ["a red circle"]}, {0: ["a red disc"]})
    assert not meteor.lock.locked()
    del meteor
    gc.collect()  # its __del__ takes the lock: this returns only because the lock is free


def _row(*objects: tuple[str, str, float]) -> dict[str, Any]:
    return {"objects": [{"colour": c, "shape": s, "area": a} for c, s, a in objects]}


def test_caption_semantics_precision_and_recall() -> None:
    rows = [_row(("red", "circle", 100), ("blue", "square", 80)),
            _row(("green", "star", 90), ("pink", "heart", 2))]  # the heart is hidden
    captions = ["a red circle and a yellow square", "a green star"]
    s = caption_semantic_scores(captions, rows)
    assert s["pairs_precision"] == pytest.approx(2 / 3)  # red circle, green star of 3 named
    assert s["pairs_recall"] == pytest.approx(2 / 3)  # of red circle, blue square, green star
    assert s["shapes_precision"] == pytest.approx(1.0)
    assert s["colours_recall"] == pytest.approx(2 / 3)


class _FixedJudge(AttributeRecogniser):
    """A recogniser whose answers are set by the test (the scoring logic is under test)."""

    def __init__(self, pairs: list[set[tuple[str, str]]]) -> None:
        super().__init__(RecogniserConfig(channels=(4,)))
        self.answers = pairs

    def predict(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        n = len(self.answers)
        found = {"pairs": torch.zeros(n, len(PAIRS), dtype=torch.bool),
                 "shapes": torch.zeros(n, len(SHAPES), dtype=torch.bool),
                 "colours": torch.zeros(n, len(COLOUR_NAMES), dtype=torch.bool)}
        for i, pairs in enumerate(self.answers):
            for colour, shape in pairs:
                found["pairs"][i, PAIRS.index((colour, shape))] = True
                found["shapes"][i, SHAPES.index(shape)] = True
                found["colours"][i, COLOUR_NAMES.index(colour)] = True
        return found


def test_image_semantics_recall_and_hallucination() -> None:
    judge = _FixedJudge([{("red", "circle"), ("blue", "star")}, {("green", "ring")}])
    prompts = ["a red circle", "a green ring and a white cross"]
    scores = image_semantic_scores(judge, torch.zeros(2, 64, 64, 3, dtype=torch.uint8), prompts,
                                   exhaustive=[True, True])
    assert scores["recall"] == scores["pairs_recall"] == pytest.approx(2 / 3)
    assert scores["hallucination"] == pytest.approx(1 / 3)  # the blue star, of 3 found
    assert scores["colours_recall"] == pytest.approx(2 / 3)  # red, green of red, green, white
    assert scores["shapes_hallucination"] == pytest.approx(1 / 3)  # the star
    not_exhaustive = image_semantic_scores(judge, torch.zeros(2, 64, 64, 3, dtype=torch.uint8),
                                           prompts, exhaustive=[False, True])
    assert not_exhaustive["hallucination"] == 0.0


def test_image_fd_is_small_for_the_same_distribution(clip_encoder: Any) -> None:
    g = torch.Generator().manual_seed(0)
    dark = torch.randint(0, 100, (40, 64, 64, 3), dtype=torch.uint8, generator=g)
    dark2 = torch.randint(0, 100, (40, 64, 64, 3), dtype=torch.uint8, generator=g)
    bright = torch.randint(150, 256, (40, 64, 64, 3), dtype=torch.uint8, generator=g)
    same, different = image_fd(clip_encoder, dark, dark2), image_fd(clip_encoder, dark, bright)
    assert 0 <= same < different
