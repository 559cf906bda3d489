"""The caption grammar and its parser: every generated caption reads back as the truth."""

from __future__ import annotations

import numpy as np
import pytest

from modtrans.world.captions import (
    BACKGROUND_COLOURS,
    CAPTION_KINDS,
    COLOURS,
    SHAPE_SYNONYMS,
    SHAPES,
    VOCABULARY,
    make_captions,
    object_phrase,
    parse_caption,
    tokenize,
)
from modtrans.world.generator import Example, WorldConfig, make_example

N_EXAMPLES = 300


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    config = WorldConfig(n_images=N_EXAMPLES, seed=7)
    return [make_example(config, i) for i in range(N_EXAMPLES)]


def _pairs(example: Example) -> set[tuple[str, str]]:
    return {(o.colour, o.shape) for o in example.scene.objects}


def _holds(example: Example, relation: tuple) -> bool:
    """Whether some two objects with the named attributes stand in the named relation."""
    a, rel, b = relation
    objs = example.scene.objects
    for p in objs:
        for q in objs:
            if p is q or (p.colour, p.shape) != a or (q.colour, q.shape) != b:
                continue
            dx, dy = q.x - p.x, q.y - p.y  # image y grows downwards
            if {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[rel] > 0:
                return True
    return False


def test_full_captions_round_trip(examples: list[Example]) -> None:
    n_full = 0
    for ex in examples:
        for caption in ex.captions:
            if caption.kind != "full":
                continue
            n_full += 1
            parsed = parse_caption(caption.text)
            assert parsed["pairs"] == _pairs(ex), caption.text
            assert parsed["n_mentioned"] == len(ex.scene.objects), caption.text
            assert parsed["count"] is None
    assert n_full >= N_EXAMPLES


def test_other_kinds_read_back_true(examples: list[Example]) -> None:
    for ex in examples:
        main = ex.scene.objects[ex.main]
        for caption in ex.captions:
            parsed = parse_caption(caption.text)
            if caption.kind == "salient":
                assert parsed["pairs"] == {(main.colour, main.shape)}, caption.text
            elif caption.kind == "count":
                assert parsed["count"] == len(ex.scene.objects), caption.text
                assert not parsed["shapes"]
            elif caption.kind == "background":
                assert parsed["background"] or parsed["background_colour"], caption.text
                assert parsed["background"] in (None, ex.scene.background), caption.text
                assert parsed["background_colour"] in (None, ex.scene.background_colour)
                assert parsed["pairs"] and parsed["pairs"] <= _pairs(ex)
            elif caption.kind == "spatial":
                assert parsed["relation"] is not None, caption.text
                assert _holds(ex, parsed["relation"]), (caption.text, ex.scene)
            if parsed["background"] or parsed["background_colour"]:
                assert parsed["background"] in (None, ex.scene.background), caption.text
                assert parsed["background_colour"] in (None, ex.scene.background_colour)


def test_words_are_in_the_vocabulary(examples: list[Example]) -> None:
    used = {w for ex in examples for c in ex.captions for w in tokenize(c.text)}
    assert used <= set(VOCABULARY)
    for text in (c.text for ex in examples for c in ex.captions):
        assert text == text.lower() and text == text.strip() and not text.endswith(".")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("two red circles and a blue box",
         {"pairs": {("red", "circle"), ("blue", "square")}, "n_mentioned": 3, "count": None}),
        ("a photo of a violet disk, a white plus and an orange donut",
         {"pairs": {("purple", "circle"), ("white", "cross"), ("orange", "ring")}}),
        ("there are three yellow hoops", {"pairs": {("yellow", "ring")}, "n_mentioned": 3}),
        ("a big pink rhombus", {"pairs": {("pink", "diamond")}, "sizes": {"large"}}),
        ("a medium-sized green block", {"pairs": {("green", "square")}, "sizes": {"medium"}}),
        ("a single shape on a striped grey background",
         {"count": 1, "background": "striped", "background_colour": "gray", "pairs": set()}),
        ("four objects in total", {"count": 4, "background": None}),
        ("there are two things against a navy backdrop",
         {"count": 2, "background_colour": "navy", "background": None}),
        ("a spotted beige background with a tiny red heart",
         {"background": "dotted", "background_colour": "beige", "pairs": {("red", "heart")},
          "sizes": {"small"}}),
        ("a brown gradient background with a blue star", {"background": "gradient"}),
        ("a red circle to the left of a blue square",
         {"relation": (("red", "circle"), "left of", ("blue", "square"))}),
        ("an image of a white star beneath a green triangle",
         {"relation": (("white", "star"), "below", ("green", "triangle"))}),
        ("a purple heart and some other objects",
         {"pairs": {("purple", "heart")}, "count": None, "n_mentioned": 1}),
        ("a triangle", {"shapes": {"triangle"}, "pairs": set(), "colours": set()}),
        ("a cat on a sofa", {"shapes": set(), "count": None, "background": None}),
    ],
)
def test_parse_examples(text: str, expected: dict) -> None:
    parsed = parse_caption(text)
    for key, value in expected.items():
        assert parsed[key] == value, (key, parsed)


def test_every_synonym_parses_to_its_shape() -> None:
    for shape, words in SHAPE_SYNONYMS.items():
        for word in words:
            assert parse_caption(object_phrase(shape, "red", shape_word=word))["pairs"] == {
                ("red", shape)
            }
            assert parse_caption(object_phrase(shape, "red", number=2, shape_word=word))[
                "objects"
            ] == [{"shape": shape, "colour": "red", "size": None, "number": 2}]


def test_object_phrase() -> None:
    assert object_phrase("circle", "orange") == "an orange circle"
    assert object_phrase("square", "blue", number=2, shape_word="box") == "two blue boxes"
    assert object_phrase("cross", "red", "large", 3) == "three large red crosses"
    assert object_phrase("star", size="small", size_word="tiny") == "a tiny star"


def test_vocabulary_constants() -> None:
    assert len(SHAPES) == 8 and len(COLOURS) >= 8
    assert not set(COLOURS) & set(BACKGROUND_COLOURS)
    assert set(CAPTION_KINDS) >= {"full", "salient", "spatial", "count", "background"}
    # object colours stand out from every background colour
    for rgb in COLOURS.values():
        for bg in BACKGROUND_COLOURS.values():
            assert np.linalg.norm(np.subtract(rgb, bg)) > 90, (rgb, bg)


def test_make_captions_is_deterministic(examples: list[Example]) -> None:
    ex = examples[0]
    first = make_captions(ex.scene, ex.main, np.random.default_rng(3))
    again = make_captions(ex.scene, ex.main, np.random.default_rng(3))
    assert first == again and len(first) == 5
