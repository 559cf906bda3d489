"""A captioned-image dataset modtrans was never tuned to, in MS-COCO 2017 layout: other
shapes, colours and backgrounds than the world's, non-square images, and captions in another
grammar (capitalised, punctuated, terse or wordy).

It stands in for a user's own data: ``bench_own_data.py`` and the hidden-data test train an
encoder on it from scratch and go all the way to an evaluated translator.

    root/annotations/captions_{train,val,test}2017.json
    root/{train,val,test}2017/<id>.png
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("pentagon", "hexagon", "crescent", "arrow", "trapezoid", "octagon")
COLOURS = {
    "lime": (50, 205, 50), "teal": (0, 128, 128), "maroon": (128, 0, 0),
    "olive": (128, 128, 0), "coral": (255, 127, 80), "violet": (148, 0, 211),
    "turquoise": (64, 224, 208), "amber": (255, 191, 0),
}
SIZE = (80, 64)  # width, height: not square, so the reader's crop is exercised
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}


def _polygon(n: int, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(turn + 2 * math.pi * k / n),
             cy + r * math.sin(turn + 2 * math.pi * k / n)) for k in range(n)]


def _draw(draw: ImageDraw.ImageDraw, shape: str, colour: tuple[int, int, int], cx: float,
          cy: float, r: float, background: tuple[int, int, int],
          rng: np.random.Generator) -> None:
    turn = float(rng.uniform(0, 2 * math.pi))
    if shape in ("pentagon", "hexagon", "octagon"):
        sides = {"pentagon": 5, "hexagon": 6, "octagon": 8}[shape]
        draw.polygon(_polygon(sides, cx, cy, r, turn), fill=colour)
    elif shape == "crescent":  # a disc with an offset disc carved out in the background
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        dx, dy = 0.55 * r * math.cos(turn), 0.55 * r * math.sin(turn)
        draw.ellipse([cx + dx - r, cy + dy - r, cx + dx + r, cy + dy + r], fill=background)
    elif shape == "arrow":
        draw.polygon([(cx - r, cy - 0.3 * r), (cx + 0.2 * r, cy - 0.3 * r),
                      (cx + 0.2 * r, cy - 0.8 * r), (cx + r, cy), (cx + 0.2 * r, cy + 0.8 * r),
                      (cx + 0.2 * r, cy + 0.3 * r), (cx - r, cy + 0.3 * r)], fill=colour)
    else:  # trapezoid
        draw.polygon([(cx - r, cy + 0.6 * r), (cx + r, cy + 0.6 * r),
                      (cx + 0.5 * r, cy - 0.6 * r), (cx - 0.5 * r, cy - 0.6 * r)], fill=colour)


def _background(rng: np.random.Generator) -> tuple[Image.Image, tuple[int, int, int]]:
    """A two-tone vertical gradient with a little noise; returns the image and its mean."""
    w, h = SIZE
    top, bottom = rng.integers(0, 90, 3), rng.integers(0, 90, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    pixels = top * (1 - t) + bottom * t + rng.normal(0, 6, (h, w, 3))
    pixels = np.clip(pixels, 0, 255).astype(np.uint8) * np.ones((1, w, 1), np.uint8)
    return Image.fromarray(pixels), tuple(int(v) for v in pixels.mean((0, 1)))


_ONE = ("{C} {s}.", "A {c} {s}.", "There is one {c} {s} here.", "Picture of a {c} {s}",
        "{C} {s} on a dark gradient.")
_TWO = ("{C1} {s1} and {c2} {s2}.", "A {c1} {s1} next to a {c2} {s2}.",
        "Two things: a {c1} {s1}, a {c2} {s2}.", "{C2} {s2} beside {c1} {s1}",
        "This shows a {c1} {s1} together with a {c2} {s2}.")


def _captions(objects: list[tuple[str, str]], rng: np.random.Generator) -> list[str]:
    if len(objects) == 1:
        (c, s), templates = objects[0], _ONE
        fields = {"c": c, "C": c.capitalize(), "s": s}
    else:
        ((c1, s1), (c2, s2)), templates = objects, _TWO
        fields = {"c1": c1, "C1": c1.capitalize(), "s1": s1, "c2": c2, "C2": c2.capitalize(),
                  "s2": s2}
    picked = rng.choice(len(templates), size=3, replace=False)
    return [templates[i].format(**fields) for i in picked]


def write_foreign_coco(root: str | Path, n_images: int, seed: int = 0) -> dict[str, int]:
    """Write ``n_images`` images with 3 captions each, split 80/10/10 into train/val/test.

    Returns:
        Images per split.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    names, colours = list(SHAPES), list(COLOURS)
    order = rng.permutation(n_images)
    bounds = np.cumsum([round(f * n_images) for f in SPLITS.values()])[:-1]
    counts = {}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, ids in zip(SPLITS, np.split(order, bounds), strict=True):
        folder = root / f"{split}2017"
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        for image_id in sorted(int(i) for i in ids):
            image, mean = _background(rng)
            draw = ImageDraw.Draw(image)
            k = int(rng.integers(1, 3))
            objects = [(colours[int(rng.integers(len(colours)))],
                        names[int(rng.integers(len(names)))]) for _ in range(k)]
            slots = [(24, 32), (56, 32)] if k == 2 else [(40, 32)]
            for (colour, shape), (cx, cy) in zip(objects, slots, strict=True):
                r = float(rng.uniform(10, 14))
                _draw(draw, shape, COLOURS[colour], cx + rng.uniform(-3, 3),
                      cy + rng.uniform(-6, 6), r, mean, rng)
            file_name = f"{image_id:06d}.png"
            image.save(folder / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": SIZE[0],
                           "height": SIZE[1]})
            annotations += [{"id": 10 * image_id + j, "image_id": image_id, "caption": text}
                            for j, text in enumerate(_captions(objects, rng))]
        (root / "annotations" / f"captions_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": annotations}))
        counts[split] = len(images)
    return counts
