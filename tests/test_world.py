"""The generated world: determinism, layout, splits and hold-out, rendering, validation."""

from __future__ import annotations

import collections
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modtrans.world.captions import (
    BACKGROUND_COLOURS,
    BACKGROUNDS,
    CAPTION_KINDS,
    COLOURS,
    PLURALS,
    SHAPES,
    SIZES,
    tokenize,
)
from modtrans.world.generator import (
    SPLITS,
    Scene,
    SceneObject,
    WorldConfig,
    assign_splits,
    generate_world,
    load_ground_truth,
    load_world_info,
    make_example,
    render_scene,
    sample_scene,
)

N = 150
HOLDOUT = (("green", "star"), ("red", "ring"))


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    summary = generate_world(WorldConfig(n_images=N, seed=0), out, workers=1, progress=False)
    assert summary["n_images"] == N and sum(summary["counts"].values()) == N
    return out


def test_identical_whatever_the_workers(world: Path, tmp_path: Path) -> None:
    generate_world(WorldConfig(n_images=N, seed=0), tmp_path / "w2", workers=2, progress=False)
    assert _tree_hashes(world) == _tree_hashes(tmp_path / "w2")


def test_other_seed_differs(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate_world(WorldConfig(n_images=20, seed=1), a, workers=1, progress=False)
    generate_world(WorldConfig(n_images=20, seed=2), b, workers=1, progress=False)
    pngs_a = {k: v for k, v in _tree_hashes(a).items() if k.endswith(".png")}
    pngs_b = {k: v for k, v in _tree_hashes(b).items() if k.endswith(".png")}
    assert not set(pngs_a.values()) & set(pngs_b.values())


def test_layout_and_coco_format(world: Path) -> None:
    info = load_world_info(world)
    assert info["format_version"] == 1 and info["config"]["n_images"] == N
    assert set(info["counts"]) <= set(SPLITS) and sum(info["counts"].values()) == N
    assert info["vocabulary"]["shapes"] == list(SHAPES)
    seen_ids: set[int] = set()
    for split, count in info["counts"].items():
        coco = json.loads((world / split / "captions.json").read_text())
        assert set(coco) == {"info", "images", "annotations"} and coco["info"]["split"] == split
        ids = [img["id"] for img in coco["images"]]
        assert len(ids) == count and ids == sorted(ids) and not seen_ids & set(ids)
        seen_ids |= set(ids)
        for img in coco["images"]:
            assert img["file_name"] == f"{img['id']:06d}.png"
            assert (img["width"], img["height"]) == (64, 64)
            with Image.open(world / split / "images" / img["file_name"]) as im:
                assert im.size == (64, 64) and im.mode == "RGB"
        assert len(list((world / split / "images").iterdir())) == count
        per_image = collections.Counter(a["image_id"] for a in coco["annotations"])
        assert set(per_image) == set(ids) and set(per_image.values()) == {5}
        ann_ids = [a["id"] for a in coco["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for ann in coco["annotations"]:
            assert ann["kind"] in CAPTION_KINDS and isinstance(ann["caption"], str)
    assert seen_ids == set(range(N))
    assert not [p.name for p in world.iterdir() if p.name not in {*SPLITS, "world.json"}]


def test_ground_truth(world: Path) -> None:
    info = load_world_info(world)
    for split in info["counts"]:
        rows = load_ground_truth(world / split)
        coco = json.loads((world / split / "captions.json").read_text())
        assert [r["image_id"] for r in rows] == [img["id"] for img in coco["images"]]
        for row in rows:
            objs = row["objects"]
            assert row["n_objects"] == len(objs) and 1 <= len(objs) <= 4
            assert row["background"] in BACKGROUNDS
            assert row["background_colour"] in BACKGROUND_COLOURS
            main = max(objs, key=lambda o: o["area"])
            assert (row["main_shape"], row["main_colour"]) == (main["shape"], main["colour"])
            for o in objs:
                assert o["shape"] in SHAPES and o["colour"] in COLOURS and o["size"] in SIZES
                assert 0 < o["x"] < 1 and 0 < o["y"] < 1 and o["area"] > 0


def test_holdout_only_in_novel(world: Path) -> None:
    novel = 0
    for split in load_world_info(world)["counts"]:
        for row in load_ground_truth(world / split):
            held = any((o["colour"], o["shape"]) in HOLDOUT for o in row["objects"])
            assert held == (split == "novel"), (split, row)
            novel += held
    assert novel > 0


def test_ground_truth_matches_captions(world: Path) -> None:
    """The captions written to disk name the objects the ground truth lists."""
    from modtrans.world.captions import parse_caption

    rows = {r["image_id"]: r for r in load_ground_truth(world / "train")}
    coco = json.loads((world / "train" / "captions.json").read_text())
    for ann in coco["annotations"]:
        if ann["kind"] == "full":
            row = rows[ann["image_id"]]
            truth = {(o["colour"], o["shape"]) for o in row["objects"]}
            assert parse_caption(ann["caption"])["pairs"] == truth


def test_caption_mix_and_variety() -> None:
    config = WorldConfig(n_images=200, seed=3)
    kinds: collections.Counter[str] = collections.Counter()
    words: set[str] = set()
    mixes = set()
    for i in range(200):
        ex = make_example(config, i)
        texts = [c.text for c in ex.captions]
        assert len(texts) == 5 and len(set(texts)) == 5
        assert any(c.kind == "full" for c in ex.captions)
        if len(ex.scene.objects) < 2:
            assert all(c.kind != "spatial" for c in ex.captions)
        kinds.update(c.kind for c in ex.captions)
        mixes.add(tuple(sorted(c.kind for c in ex.captions)))
        words |= {w for t in texts for w in tokenize(t)}
    assert set(kinds) == set(CAPTION_KINDS)
    assert len(mixes) > 10
    # synonyms, plurals, openings and number words all occur
    assert {"box", "disc", "donut", "square", "circle", "ring", "violet", "grey", "big"} <= words
    assert {"photo", "picture", "showing", "there", "are"} <= words
    assert {"two", "three", "four"} <= words
    assert len(words & set(PLURALS.values())) >= 3


def test_assign_splits() -> None:
    config = WorldConfig(n_images=1000, seed=5, val_fraction=0.1, test_fraction=0.2)
    labels = assign_splits(config)
    assert np.bincount(labels).tolist() == [700, 100, 200]
    assert np.array_equal(labels, assign_splits(config))
    assert not np.array_equal(labels, assign_splits(WorldConfig(n_images=1000, seed=6)))


def test_no_holdout_means_no_novel(tmp_path: Path) -> None:
    config = WorldConfig(n_images=40, holdout=(), val_fraction=0.0, test_fraction=0.25)
    summary = generate_world(config, tmp_path / "w", workers=1, progress=False)
    assert summary["counts"] == {"train": 30, "test": 10}
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["test", "train", "world.json"]


def test_refuses_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "w"
    generate_world(WorldConfig(n_images=10, seed=1), out, workers=1, progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_world(WorldConfig(n_images=10), out, workers=1, progress=False)
    generate_world(WorldConfig(n_images=5, holdout=()), out, workers=1, progress=False,
                   overwrite=True)
    assert sum(load_world_info(out)["counts"].values()) == 5
    assert "novel" not in {p.name for p in out.iterdir()}


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"n_images": 0}, "n_images"),
        ({"seed": -1}, "seed"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "test_fraction"),
        ({"holdout": [("teal", "star")]}, "holdout"),
        ({"holdout": [("red", "hexagon")]}, "holdout"),
        ({"holdout": [("red",)]}, "holdout"),
        ({"max_objects": 5}, "max_objects"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"image_size": 8}, "image_size"),
        ({"supersample": 0}, "supersample"),
    ],
)
def test_config_validation(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        WorldConfig(**kwargs)


def test_config_round_trip(tmp_path: Path) -> None:
    config = WorldConfig(n_images=7, holdout=[["pink", "heart"]])
    assert config.holdout == (("pink", "heart"),)
    config.save(tmp_path / "world.yaml")
    assert WorldConfig.load(tmp_path / "world.yaml") == config
    assert WorldConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown option"):
        WorldConfig.from_dict({"n_image": 3})


def test_render_scene_is_anti_aliased() -> None:
    obj = SceneObject("circle", "red", "large", 0.5, 0.5, 0.25)
    image = render_scene(Scene("plain", "gray", (obj,)))
    assert image.size == (64, 64) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert tuple(pixels[32, 32]) == COLOURS["red"]
    assert tuple(pixels[2, 2]) == BACKGROUND_COLOURS["gray"]
    assert len({tuple(p) for p in pixels.reshape(-1, 3)}) > 5  # blended edge pixels


def test_render_every_shape_and_background() -> None:
    for i, shape in enumerate(SHAPES):
        background = BACKGROUNDS[i % len(BACKGROUNDS)]
        obj = SceneObject(shape, "white", "large", 0.5, 0.5, 0.3, 10.0)
        scene = Scene(background, "navy", (obj,), (30.0, 0.1, 0.5))
        pixels = np.asarray(render_scene(scene)).astype(int)
        white = (np.abs(pixels - COLOURS["white"]).sum(-1) < 10).mean()
        assert 0.05 < white < 0.5, shape  # the shape covers a sensible part of the frame
        if shape == "ring":  # hollow: the centre shows the background
            assert tuple(pixels[32, 32]) != COLOURS["white"]


def test_sample_scene() -> None:
    rng = np.random.default_rng(0)
    counts: collections.Counter[int] = collections.Counter()
    for _ in range(300):
        scene = sample_scene(rng)
        counts[len(scene.objects)] += 1
        for i, a in enumerate(scene.objects):
            for v in (a.x, a.y):  # centres are rounded to 4 decimals
                assert 0.8 * a.radius - 1e-4 <= v <= 1 - 0.8 * a.radius + 1e-4
            for b in scene.objects[:i]:
                if a.colour == b.colour:  # same colour never overlaps
                    assert math.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius
    assert set(counts) == {1, 2, 3, 4} and min(counts.values()) > 40


def test_make_example_is_deterministic() -> None:
    config = WorldConfig(n_images=10, seed=4)
    a, b = make_example(config, 3), make_example(config, 3)
    assert a.scene == b.scene and a.captions == b.captions
    assert a.image.tobytes() == b.image.tobytes()
    assert make_example(config, 4).scene != a.scene
