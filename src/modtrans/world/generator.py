"""The procedurally generated captioned-image world (WorldBench's data).

Each image is a background (plain or textured) and 1–4 coloured shapes, drawn anti-aliased
(at ``supersample`` times the size, then box-filtered down), with five captions from
:mod:`modtrans.world.captions` and its full ground truth. Image ``i`` depends only on
``(seed, i)``, so the output is byte-identical whatever the number of worker processes.

Layout written by :func:`generate_world`::

    world.json                        config, counts per split, vocabulary, format version
    <split>/images/<id:06d>.png       id = global image index
    <split>/captions.json             MS-COCO captions format, plus a "kind" per annotation
    <split>/ground_truth.parquet      one row per image: background, objects, main object

Splits are ``train``/``val``/``test`` plus ``novel``: every image that holds a held-out
(colour, shape) pair goes to ``novel`` and to no other split. Empty splits are omitted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw
from tqdm import tqdm

from modtrans.config import Config
from modtrans.io import atomic_open, atomic_path, read_json, read_parquet, write_json
from modtrans.world.captions import (
    BACKGROUND_COLOUR_SYNONYMS,
    BACKGROUND_COLOURS,
    BACKGROUND_SYNONYMS,
    BACKGROUNDS,
    CAPTION_KINDS,
    COLOUR_SYNONYMS,
    COLOURS,
    RELATIONS,
    SHAPE_SYNONYMS,
    SHAPES,
    SIZE_SYNONYMS,
    SIZES,
    VOCABULARY,
    Caption,
    make_captions,
)

logger = logging.getLogger(__name__)

FORMAT = "modtrans-world"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test", "novel")
CAPTIONS_PER_IMAGE = 5

#: Nominal object radius (fraction of the frame width) per size, jittered by ±10 %.
SIZE_RADIUS: dict[str, float] = {"small": 0.10, "medium": 0.145, "large": 0.20}
#: Rotation is drawn uniformly in ±this many degrees (a shape's symmetry makes more redundant;
#: squares and diamonds stay upright enough to be told apart).
MAX_ROTATION: dict[str, float] = {
    "circle": 0.0, "ring": 0.0, "square": 20.0, "diamond": 20.0, "heart": 25.0,
    "triangle": 60.0, "star": 36.0, "cross": 45.0,
}  # fmt: skip
_BACKGROUND_P = np.array([0.3, 0.175, 0.175, 0.175, 0.175])  # plain, then the four textures
_PLACEMENT_TRIES = 30
_RING_WIDTH = 0.38  # ring thickness as a fraction of its radius
# seed-sequence tags; non-zero, because SeedSequence pads entropy with zeros
_SCENE_TAG, _CAPTION_TAG, _SPLIT_TAG = 1, 2, 3
_GT_SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("file_name", pa.string()),
    ("background", pa.string()),
    ("background_colour", pa.string()),
    ("n_objects", pa.int32()),
    ("main_shape", pa.string()),
    ("main_colour", pa.string()),
    ("objects", pa.list_(pa.struct([
        ("shape", pa.string()),
        ("colour", pa.string()),
        ("size", pa.string()),
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("rotation", pa.float64()),
        ("area", pa.float64()),
    ]))),
])  # fmt: skip


@dataclasses.dataclass
class WorldConfig(Config):
    """What world to generate. Same config → byte-identical files.

    Attributes:
        n_images: number of images (global ids ``0 .. n_images-1``).
        seed: non-negative seed; image ``i`` is drawn from ``(seed, i)`` alone.
        val_fraction, test_fraction: share of image ids assigned to val and test (before
            the hold-out moves images to ``novel``).
        holdout: (colour, shape) pairs never shown in train/val/test; their images form
            the ``novel`` split.
        min_objects, max_objects: objects per image (1–4).
        image_size: output width and height in pixels.
        supersample: drawing scale before the box-filter downsample (anti-aliasing).
    """

    n_images: int = 20_000
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    holdout: tuple[tuple[str, str], ...] = (("green", "star"), ("red", "ring"))
    min_objects: int = 1
    max_objects: int = 4
    image_size: int = 64
    supersample: int = 4

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.n_images, int) or self.n_images < 1:
            raise ValueError(f"{name}.n_images must be a positive integer, got {self.n_images!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"{name}.seed must be a non-negative integer, got {self.seed!r}")
        for option in ("val_fraction", "test_fraction"):
            value = getattr(self, option)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}.{option} must be in [0, 1), got {value!r}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"{name}.val_fraction + test_fraction must be below 1 to leave a train split, "
                f"got {self.val_fraction} + {self.test_fraction}; lower one of them"
            )
        pairs = []
        for pair in self.holdout:
            if len(pair) != 2:
                raise ValueError(
                    f"{name}.holdout entries must be (colour, shape) pairs, got {pair!r}"
                )
            colour, shape = pair
            if colour not in COLOURS:
                raise ValueError(
                    f"{name}.holdout: unknown colour {colour!r} in {list(pair)}; "
                    f"choose from {list(COLOURS)}"
                )
            if shape not in SHAPES:
                raise ValueError(
                    f"{name}.holdout: unknown shape {shape!r} in {list(pair)}; "
                    f"choose from {list(SHAPES)}"
                )
            pairs.append((colour, shape))
        self.holdout = tuple(pairs)
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise ValueError(
                f"{name}.min_objects and max_objects must satisfy 1 <= min_objects <= "
                f"max_objects <= 4, got {self.min_objects} and {self.max_objects}"
            )
        if self.image_size < 16:
            raise ValueError(f"{name}.image_size must be at least 16, got {self.image_size}")
        if not 1 <= self.supersample <= 8:
            raise ValueError(f"{name}.supersample must be in 1..8, got {self.supersample}")


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One shape in a scene.

    Attributes:
        shape, colour, size: canonical names (see :mod:`modtrans.world.captions`).
        x, y: centre as fractions of the frame (0,0 is the top-left corner; y grows down).
        radius: circumradius as a fraction of the frame width.
        rotation: degrees, counter-clockwise.
    """

    shape: str
    colour: str
    size: str
    x: float
    y: float
    radius: float
    rotation: float = 0.0


@dataclasses.dataclass(frozen=True)
class Scene:
    """A background and the objects drawn on it, in drawing order (later on top).

    Attributes:
        background: kind, one of :data:`BACKGROUNDS`.
        background_colour: one of :data:`BACKGROUND_COLOURS`.
        objects: the objects.
        texture: (angle in degrees, period as a fraction of the frame, phase in [0, 1)) of a
            textured background; ignored by ``plain``.
    """

    background: str
    background_colour: str
    objects: tuple[SceneObject, ...]
    texture: tuple[float, float, float] = (0.0, 0.1, 0.0)


@dataclasses.dataclass
class Example:
    """One generated image with everything known about it.

    Attributes:
        index: global image id.
        scene: what was drawn.
        image: the rendered RGB image.
        areas: visible area of each object in output pixels (after occlusion).
        main: index of the main object (largest visible area).
        captions: the captions, in order.
    """

    index: int
    scene: Scene
    image: Image.Image
    areas: tuple[float, ...]
    main: int
    captions: list[Caption]

    def ground_truth(self) -> dict[str, Any]:
        """The ground-truth row of this image (see ``ground_truth.parquet``)."""
        main = self.scene.objects[self.main]
        return {
            "image_id": self.index,
            "file_name": image_file_name(self.index),
            "background": self.scene.background,
            "background_colour": self.scene.background_colour,
            "n_objects": len(self.scene.objects),
            "main_shape": main.shape,
            "main_colour": main.colour,
            "objects": [
                {"shape": o.shape, "colour": o.colour, "size": o.size, "x": o.x, "y": o.y,
                 "rotation": o.rotation, "area": area}
                for o, area in zip(self.scene.objects, self.areas, strict=True)
            ],
        }


def image_file_name(index: int) -> str:
    """File name of image ``index`` inside ``<split>/images``."""
    return f"{index:06d}.png"


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _sample_texture(rng: np.random.Generator, background: str) -> tuple[float, float, float]:
    """(angle, period, phase) of a background; the ranges depend on its kind."""
    max_angle = {"striped": 180.0, "gradient": 360.0, "checkered": 90.0}.get(background, 0.0)
    low, high = {"striped": (0.06, 0.12), "dotted": (0.11, 0.17),
                 "checkered": (0.09, 0.15)}.get(background, (0.1, 0.1))
    angle, period, phase = rng.uniform(0, max_angle), rng.uniform(low, high), rng.random()
    return round(float(angle), 2), round(float(period), 4), round(float(phase), 4)


def _min_distance(radius: float, colour: str, other: SceneObject) -> float:
    """Closest allowed centre distance: objects of one colour never touch (they would merge)."""
    if colour == other.colour:
        return radius + other.radius
    return max(radius, other.radius) + 0.3 * min(radius, other.radius)


def sample_scene(
    rng: np.random.Generator, *, min_objects: int = 1, max_objects: int = 4
) -> Scene:
    """Draw a random scene.

    Objects may overlap, but each new object keeps its centre at least
    ``max(r_i, r_j) + 0.3 * min(r_i, r_j)`` away from every earlier one, so that no object is
    mostly hidden, and objects of the same colour do not overlap at all (they would merge
    into one blob). An object that finds no such place after a few tries is left out (the
    first one always fits).

    Args:
        rng: the generator (its state advances).
        min_objects, max_objects: range of the number of objects to try to place.

    Returns:
        The scene; positions are rounded to 4 decimals and rotations to 2, so the stored
        ground truth is exactly what was drawn.
    """
    background = BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=_BACKGROUND_P))]
    background_colour = _choice(rng, tuple(BACKGROUND_COLOURS))
    texture = _sample_texture(rng, background)
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        shape = _choice(rng, SHAPES)
        colour = _choice(rng, tuple(COLOURS))
        size = _choice(rng, SIZES)
        radius = round(SIZE_RADIUS[size] * float(rng.uniform(0.9, 1.1)), 4)
        rotation = round(float(rng.uniform(-1, 1)) * MAX_ROTATION[shape], 2) + 0.0  # no -0.0
        for _ in range(_PLACEMENT_TRIES):
            x, y = (round(float(v), 4) for v in rng.uniform(0.8 * radius, 1 - 0.8 * radius, 2))
            if all(math.hypot(x - o.x, y - o.y) >= _min_distance(radius, colour, o)
                   for o in objects):
                objects.append(SceneObject(shape, colour, size, x, y, radius, rotation))
                break
    return Scene(background, background_colour, tuple(objects), texture)


@functools.cache
def _unit_outline(shape: str) -> np.ndarray:
    """Polygon of a shape with circumradius about 1, y up, unrotated, as (k, 2)."""
    if shape == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if shape == "diamond":
        return np.array([[0.0, 1.1], [0.66, 0.0], [0.0, -1.1], [-0.66, 0.0]])
    if shape == "triangle":
        a = np.deg2rad([90.0, 210.0, 330.0])
        return 1.15 * np.stack([np.cos(a), np.sin(a) - 0.1], axis=1)
    if shape == "star":
        a = np.deg2rad(90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.12, 0.48)
        return np.stack([r * np.cos(a), r * np.sin(a) - 0.05], axis=1)
    if shape == "heart":
        t = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([x, y + 2.5], axis=1) / 15.0
    if shape == "cross":
        a, b = 0.34, 1.0
        return np.array([[-a, b], [a, b], [a, a], [b, a], [b, -a], [a, -a], [a, -b], [-a, -b],
                         [-a, -a], [-b, -a], [-b, a], [-a, a]])
    raise ValueError(f"no outline for shape {shape!r}")


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, width: int, fill: Any) -> None:
    cx, cy, r = obj.x * width, obj.y * width, obj.radius * width
    if obj.shape in ("circle", "ring"):
        box = (cx - r, cy - r, cx + r, cy + r)
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        else:
            draw.ellipse(box, outline=fill, width=max(1, round(_RING_WIDTH * r)))
        return
    theta = math.radians(obj.rotation)
    c, s = math.cos(theta), math.sin(theta)
    pts = _unit_outline(obj.shape)
    xs = cx + r * (c * pts[:, 0] - s * pts[:, 1])
    ys = cy - r * (s * pts[:, 0] + c * pts[:, 1])
    draw.polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=fill)


def _texture_colour(rgb: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    """``rgb`` moved towards white (dark colours) or black (light ones) by ``amount``."""
    target = 255 if sum(rgb) < 3 * 128 else 0
    r, g, b = (round(c + amount * (target - c)) for c in rgb)
    return r, g, b


@functools.cache
def _gradient_palette(rgb: tuple[int, int, int]) -> list[int]:
    """256 colours from ``rgb`` to its texture colour, flattened as a PIL palette."""
    end = _texture_colour(rgb, 0.45)
    return [round(c + (e - c) * k / 255) for k in range(256) for c, e in zip(rgb, end, strict=True)]


@functools.lru_cache(maxsize=4)
def _grid(width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as fractions of the frame, each (width, width) float32."""
    v = (np.arange(width, dtype=np.float32) + 0.5) / width
    return np.meshgrid(v, v)


def _render_background(scene: Scene, width: int) -> Image.Image:
    rgb = BACKGROUND_COLOURS[scene.background_colour]
    if scene.background == "plain":
        return Image.new("RGB", (width, width), rgb)
    angle, period, phase = scene.texture
    xs, ys = _grid(width)
    theta = math.radians(angle)
    u = xs * math.cos(theta) + ys * math.sin(theta)
    # Float ``%`` is slow in numpy: band parities use integer casts, offset to stay positive.
    offset = phase + 64.0
    if scene.background == "gradient":
        corners = [0.0, math.cos(theta), math.sin(theta), math.cos(theta) + math.sin(theta)]
        index = np.rint((u - min(corners)) * (255.0 / (max(corners) - min(corners))))
        palette = _gradient_palette(rgb)
    else:
        if scene.background == "striped":
            index = (u * (1.0 / period) + offset).astype(np.int32) & 1
        elif scene.background == "dotted":  # separable: distance to the nearest lattice point
            cells = xs[0] * (1.0 / period) + offset
            d2 = (cells - np.floor(cells) - 0.5) ** 2
            index = (d2[None, :] + d2[:, None]) < 0.27**2
        else:  # checkered
            v = ys * math.cos(theta) - xs * math.sin(theta)
            a = (u * (1.0 / period) + offset).astype(np.int32)
            b = (v * (1.0 / period) + offset).astype(np.int32)
            index = (a + b) & 1
        palette = [*rgb, *_texture_colour(rgb, 0.28)]
    image = Image.fromarray(index.astype(np.uint8), "P")
    image.putpalette(palette)
    return image.convert("RGB")


def _render(scene: Scene, image_size: int, supersample: int) -> tuple[Image.Image, np.ndarray]:
    """Render a scene; also return each object's visible area in output pixels."""
    width = image_size * supersample
    canvas = _render_background(scene, width)
    labels = Image.new("L", (width, width), 0)
    draw, draw_labels = ImageDraw.Draw(canvas), ImageDraw.Draw(labels)
    for i, obj in enumerate(scene.objects):
        _draw_object(draw, obj, width, COLOURS[obj.colour])
        _draw_object(draw_labels, obj, width, i + 1)
    areas = np.array(labels.histogram()[1:len(scene.objects) + 1]) / supersample**2
    image = canvas.reduce(supersample) if supersample > 1 else canvas
    return image, areas


def render_scene(scene: Scene, image_size: int = 64, supersample: int = 4) -> Image.Image:
    """Draw a scene, anti-aliased.

    Args:
        scene: what to draw.
        image_size: output width and height in pixels.
        supersample: drawing scale before the box-filter downsample.

    Returns:
        An RGB image of ``image_size`` × ``image_size``.
    """
    return _render(scene, image_size, supersample)[0]


def make_example(config: WorldConfig, index: int) -> Example:
    """Generate image ``index`` of the world ``config`` describes (independent of the others).

    Args:
        config: the world (seed, objects per image, image size).
        index: global image id, ``0 <= index < config.n_images`` for images that are written.

    Returns:
        The example: scene, image, visible areas, main object and captions.
    """
    scene_rng = np.random.default_rng([config.seed, index, _SCENE_TAG])
    scene = sample_scene(scene_rng, min_objects=config.min_objects,
                         max_objects=config.max_objects)
    image, areas = _render(scene, config.image_size, config.supersample)
    main = int(np.argmax(areas))
    caption_rng = np.random.default_rng([config.seed, index, _CAPTION_TAG])
    captions = make_captions(scene, main, caption_rng, CAPTIONS_PER_IMAGE)
    return Example(index, scene, image, tuple(float(a) for a in areas), main, captions)


def assign_splits(config: WorldConfig) -> np.ndarray:
    """Split of each image id *before* the hold-out: 0 train, 1 val, 2 test.

    A seeded permutation gives ``round(val_fraction * n)`` ids to val and
    ``round(test_fraction * n)`` to test, so the assignment depends only on seed and size.

    Args:
        config: the world.

    Returns:
        int8 array of length ``config.n_images``.
    """
    n = config.n_images
    order = np.random.default_rng([config.seed, n, _SPLIT_TAG, _SPLIT_TAG]).permutation(n)
    n_val, n_test = round(config.val_fraction * n), round(config.test_fraction * n)
    labels = np.zeros(n, dtype=np.int8)
    labels[order[:n_val]] = 1
    labels[order[n_val:n_val + n_test]] = 2
    return labels


def _render_chunk(task: tuple[dict[str, Any], str, int, np.ndarray]) -> list[dict[str, Any]]:
    """Worker: render images ``start ..`` of a chunk, write their PNGs, return their records."""
    config_dict, out_dir, start, labels = task
    config = WorldConfig.from_dict(config_dict)
    holdout = set(config.holdout)
    made: set[Path] = set()
    records = []
    for offset, label in enumerate(labels.tolist()):
        example = make_example(config, start + offset)
        novel = any((o.colour, o.shape) in holdout for o in example.scene.objects)
        split = "novel" if novel else SPLITS[label]
        folder = Path(out_dir) / split / "images"
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        example.image.save(folder / image_file_name(example.index), format="PNG")
        records.append({
            "split": split,
            "ground_truth": example.ground_truth(),
            "captions": [(c.kind, c.text) for c in example.captions],
        })
    return records


def _run_chunks(tasks: list[Any], workers: int) -> Iterator[list[dict[str, Any]]]:
    """Results of :func:`_render_chunk` in task order, in-process or from a spawn pool."""
    if workers == 1:
        yield from map(_render_chunk, tasks)
        return
    # An executor (unlike multiprocessing.Pool) fails instead of hanging if a worker dies.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(_render_chunk, tasks)


def _coco(split: str, config: WorldConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    images, annotations = [], []
    for rec in records:
        gt = rec["ground_truth"]
        images.append({"id": gt["image_id"], "file_name": gt["file_name"],
                       "width": config.image_size, "height": config.image_size})
        for j, (kind, text) in enumerate(rec["captions"]):
            annotations.append({"id": gt["image_id"] * CAPTIONS_PER_IMAGE + j,
                                "image_id": gt["image_id"], "caption": text, "kind": kind})
    info = {"description": "modtrans procedurally generated world", "format": FORMAT,
            "version": FORMAT_VERSION, "split": split, "seed": config.seed}
    return {"info": info, "images": images, "annotations": annotations}


def _write_split(folder: Path, split: str, config: WorldConfig,
                 records: list[dict[str, Any]]) -> None:
    # compact, as COCO's own files are; json.dumps (unlike json.dump) uses the C encoder
    text = json.dumps(_coco(split, config, records), separators=(",", ":"))
    with atomic_open(folder / "captions.json") as f:
        f.write(text)
    table = pa.Table.from_pylist([r["ground_truth"] for r in records], schema=_GT_SCHEMA)
    with atomic_path(folder / "ground_truth.parquet") as tmp:
        pq.write_table(table, tmp)


def vocabulary() -> dict[str, Any]:
    """The world's vocabulary, as recorded in ``world.json``."""
    return {
        "shapes": list(SHAPES),
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "sizes": list(SIZES),
        "backgrounds": list(BACKGROUNDS),
        "background_colours": {k: list(v) for k, v in BACKGROUND_COLOURS.items()},
        "caption_kinds": list(CAPTION_KINDS),
        "relations": list(RELATIONS),
        "shape_synonyms": {k: list(v) for k, v in SHAPE_SYNONYMS.items()},
        "colour_synonyms": {k: list(v) for k, v in COLOUR_SYNONYMS.items()},
        "size_synonyms": {k: list(v) for k, v in SIZE_SYNONYMS.items()},
        "background_synonyms": {k: list(v) for k, v in BACKGROUND_SYNONYMS.items()},
        "background_colour_synonyms": {
            k: list(v) for k, v in BACKGROUND_COLOUR_SYNONYMS.items()
        },
        "words": list(VOCABULARY),
    }


def _prepare(out: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier world unless ``overwrite``; then clear the old one."""
    if not out.exists():
        return
    ours = [out / "world.json", *(out / s for s in SPLITS)]
    if not overwrite:
        if any(out.iterdir()):
            raise FileExistsError(
                f"{out} is not empty; choose an empty folder or pass --overwrite "
                "(overwrite=True in Python; it deletes a previous world's world.json and "
                "split folders there)"
            )
        return
    for path in ours:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def generate_world(
    config: WorldConfig,
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate the world and write it under ``out_dir`` (layout in the module docstring).

    Args:
        config: what to generate.
        out_dir: output folder; it must be empty or absent unless ``overwrite``.
        workers: worker processes (default ``os.cpu_count()``); 1 renders in-process.
            The files do not depend on it.
        progress: show a progress bar over images.
        overwrite: delete a previous world's ``world.json`` and split folders first.

    Returns:
        Summary: ``out_dir``, ``n_images``, ``counts`` per non-empty split, ``seconds`` and
        ``images_per_s``.
    """
    start_time = time.perf_counter()
    out = Path(out_dir)
    _prepare(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    n = config.n_images
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    chunk = max(1, min(500, math.ceil(n / (4 * workers))))
    labels = assign_splits(config)
    config_dict = config.to_dict()
    tasks = [(config_dict, str(out), s, labels[s:s + chunk]) for s in range(0, n, chunk)]
    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    with tqdm(total=n, unit="img", desc="world", disable=not progress) as bar:
        for records in _run_chunks(tasks, workers):
            for record in records:
                by_split[record["split"]].append(record)
            bar.update(len(records))
    counts = {s: len(r) for s, r in by_split.items() if r}
    for split in counts:
        _write_split(out / split, split, config, by_split[split])
    write_json(out / "world.json", {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_dict,
        "counts": counts,
        "captions_per_image": CAPTIONS_PER_IMAGE,
        "vocabulary": vocabulary(),
    })
    seconds = time.perf_counter() - start_time
    logger.info("generated %d images in %.1f s (%.0f images/s) with %d workers: %s",
                n, seconds, n / seconds, workers, counts)
    return {"out_dir": str(out), "n_images": n, "counts": counts, "seconds": seconds,
            "images_per_s": n / seconds}


def load_ground_truth(split_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a split's ``ground_truth.parquet``.

    Args:
        split_dir: e.g. ``<world>/val``.

    Returns:
        One dict per image (columns as keys; ``objects`` a list of dicts), in id order.
    """
    path = Path(split_dir) / "ground_truth.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; pass a split folder of a world made by generate_world "
            "(e.g. <world>/train)"
        )
    return read_parquet(path).to_pylist()


def load_world_info(world_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``world.json`` (config, counts per split, vocabulary) of a generated world.

    Args:
        world_dir: the folder given to :func:`generate_world`.

    Returns:
        The parsed ``world.json``.
    """
    info = read_json(Path(world_dir) / "world.json")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{world_dir}/world.json is not a {FORMAT} description")
    return info

