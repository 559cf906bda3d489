"""The world's caption grammar, its vocabulary, and a parser that reads captions back.

Every caption is lowercase, without a trailing period, and built only from the words in
:data:`VOCABULARY`. Five *kinds* of caption exist (:data:`CAPTION_KINDS`):

- ``full``: every object, grouped and counted ("two red circles and a blue box");
- ``salient``: only the main (largest visible) object;
- ``spatial``: a relation between two objects, computed from their true positions;
- ``count``: how many objects there are ("three shapes on a gray background");
- ``background``: the background together with one object or all of them.

:func:`parse_caption` inverts the grammar: it returns the attributes a caption names, so it
can judge generated captions against the ground truth.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from modtrans.world.generator import Scene, SceneObject

RGB = tuple[int, int, int]

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring",
)  # fmt: skip
#: Object colours and their RGB values (mutually distinct, all visible on every background).
COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 90, 240),
    "yellow": (250, 220, 30),
    "purple": (150, 50, 200),
    "orange": (255, 140, 0),
    "pink": (255, 125, 205),
    "white": (250, 250, 250),
}
#: Background colours: muted or dark, never an object colour.
BACKGROUND_COLOURS: dict[str, RGB] = {
    "gray": (118, 118, 118),
    "black": (18, 18, 18),
    "beige": (190, 170, 130),
    "brown": (95, 60, 35),
    "navy": (22, 30, 78),
}
#: Background kinds: a plain fill and four textures.
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "dotted", "gradient", "checkered")
SIZES: tuple[str, ...] = ("small", "medium", "large")
CAPTION_KINDS: tuple[str, ...] = ("full", "salient", "spatial", "count", "background")
#: Spatial relations, read as "<first object> <relation> <second object>".
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

#: Words for each shape; the first is the canonical name.
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "disk"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "heart": ("heart",),
    "cross": ("cross", "plus"),
    "diamond": ("diamond", "rhombus"),
    "ring": ("ring", "donut", "hoop"),
}
PLURALS: dict[str, str] = {
    word: word + ("es" if word.endswith(("s", "x")) else "s")
    for words in SHAPE_SYNONYMS.values()
    for word in words
}
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLOURS} | {
    "purple": ("purple", "violet"),
}
BACKGROUND_COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {c: (c,) for c in BACKGROUND_COLOURS} | {
    "gray": ("gray", "grey"),
}
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized"),
    "large": ("large", "big"),
}
BACKGROUND_SYNONYMS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "solid"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted"),
    "gradient": ("gradient", "shaded"),
    "checkered": ("checkered", "checked", "chequered"),
}
RELATION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under", "beneath"),
}
NUMBER_WORDS: dict[int, tuple[str, ...]] = {
    1: ("one", "a single"),
    2: ("two",),
    3: ("three",),
    4: ("four",),
}
#: Nouns for "an object of any shape", used by ``count`` captions.
COUNT_NOUNS: tuple[str, ...] = ("shape", "object", "thing", "item")
OPENINGS: tuple[str, ...] = (
    "", "a photo of ", "a picture of ", "an image showing ", "an image of ", "a drawing of ",
    "there is ",
)  # fmt: skip
_BACKGROUND_TEMPLATES = (
    "on {} background", "against {} backdrop", "on {} backdrop", "in front of {} background",
)  # fmt: skip
_BACKGROUND_FIRST_TEMPLATES = ("{} background with {}", "{} backdrop with {}")
_OTHERS = (" among other shapes", " and some other objects", " with a few other things")

_WORD = re.compile(r"[a-z]+")
_SPATIAL_MARGIN = 0.15  # positions (frame fractions) must differ this much for a relation


def tokenize(text: str) -> list[str]:
    """Split a caption into lowercase words (hyphenated words become several words).

    Args:
        text: any caption.

    Returns:
        The words, in order; punctuation is dropped.
    """
    return _WORD.findall(text.lower())


def _all_phrases() -> list[str]:
    phrases: list[str] = [*OPENINGS, *_BACKGROUND_TEMPLATES, *_BACKGROUND_FIRST_TEMPLATES,
                          *_OTHERS, "a an and there are is in total", *PLURALS, *PLURALS.values()]
    for table in (COLOUR_SYNONYMS, BACKGROUND_COLOUR_SYNONYMS, SIZE_SYNONYMS,
                  BACKGROUND_SYNONYMS, RELATION_SYNONYMS, NUMBER_WORDS):
        phrases += [w for words in table.values() for w in words]
    phrases += [w for n in COUNT_NOUNS for w in (n, n + "s")]
    return phrases


#: Every word the grammar can emit (as split by :func:`tokenize`), sorted.
VOCABULARY: tuple[str, ...] = tuple(sorted({w for p in _all_phrases() for w in tokenize(p)}))


@dataclasses.dataclass(frozen=True)
class Caption:
    """One caption and the kind of sentence it is (one of :data:`CAPTION_KINDS`)."""

    kind: str
    text: str


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _pick_synonym(rng: np.random.Generator, words: Sequence[str], p_canonical: float) -> str:
    """The canonical (first) word with probability ``p_canonical``, else another at random."""
    if len(words) == 1 or rng.random() < p_canonical:
        return words[0]
    return _pick(rng, words[1:])


def object_phrase(
    shape: str, colour: str | None = None, size: str | None = None, number: int = 1,
    *, shape_word: str | None = None, colour_word: str | None = None,
    size_word: str | None = None,
) -> str:
    """A noun phrase for ``number`` objects, e.g. "a large red circle", "two blue boxes".

    Args:
        shape: canonical shape (in :data:`SHAPES`).
        colour: canonical object colour, or None to leave it out.
        size: canonical size, or None to leave it out.
        number: how many objects the phrase names (1–4).
        shape_word, colour_word, size_word: synonyms to use instead of the canonical words.

    Returns:
        The phrase, with an article ("a"/"an") for one object and a number word otherwise.
    """
    noun = shape_word or shape
    if number > 1:
        noun = PLURALS[noun]
    words = [w for w in (size and (size_word or size), colour and (colour_word or colour)) if w]
    words.append(noun)
    head = _article(words[0]) if number == 1 else NUMBER_WORDS[number][0]
    return " ".join([head, *words])


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Writer:
    """Writes the captions of one scene, choosing words with one RNG."""

    def __init__(self, scene: Scene, main: int, rng: np.random.Generator):
        self.scene = scene
        self.main = main
        self.rng = rng
        self.pairs = self._spatial_pairs()

    def _spatial_pairs(self) -> list[tuple[int, str, int]]:
        """All (i, relation, j) that hold clearly between objects of distinct colour/shape."""
        objs = self.scene.objects
        out = []
        for i, a in enumerate(objs):
            for j, b in enumerate(objs):
                if i == j or (a.colour, a.shape) == (b.colour, b.shape):
                    continue
                if b.x - a.x >= _SPATIAL_MARGIN:
                    out.append((i, "left of", j))
                if a.x - b.x >= _SPATIAL_MARGIN:
                    out.append((i, "right of", j))
                if b.y - a.y >= _SPATIAL_MARGIN:  # image y grows downwards
                    out.append((i, "above", j))
                if a.y - b.y >= _SPATIAL_MARGIN:
                    out.append((i, "below", j))
        return out

    def _phrase(self, obj: SceneObject, number: int = 1, with_size: bool = False) -> str:
        rng = self.rng
        return object_phrase(
            obj.shape, obj.colour, obj.size if with_size else None, number,
            shape_word=_pick_synonym(rng, SHAPE_SYNONYMS[obj.shape], 0.6),
            colour_word=_pick_synonym(rng, COLOUR_SYNONYMS[obj.colour], 0.7),
            size_word=_pick_synonym(rng, SIZE_SYNONYMS[obj.size], 0.6),
        )

    def _opening(self, plural: bool) -> str:
        opening = _pick(self.rng, OPENINGS)
        return "there are " if plural and opening == "there is " else opening

    def _all_objects(self) -> tuple[str, bool]:
        """Every object, grouped by (colour, shape); also whether the first group is plural."""
        groups: dict[tuple[str, str], list[SceneObject]] = {}
        for obj in self.scene.objects:
            groups.setdefault((obj.colour, obj.shape), []).append(obj)
        order = self.rng.permutation(len(groups))
        members = list(groups.values())
        with_sizes = self.rng.random() < 0.35
        items = []
        for k in order:
            group = members[int(k)]
            same_size = len({o.size for o in group}) == 1
            items.append(self._phrase(group[0], len(group), with_sizes and same_size))
        first = members[int(order[0])]
        return _join(items), len(first) > 1

    def _background(self) -> str:
        """The background's description without article or noun, e.g. "striped gray"."""
        scene = self.scene
        colour = _pick_synonym(self.rng, BACKGROUND_COLOUR_SYNONYMS[scene.background_colour], 0.7)
        texture = _pick_synonym(self.rng, BACKGROUND_SYNONYMS[scene.background], 0.6)
        mode = self.rng.choice(3, p=[0.4, 0.2, 0.4])  # colour only, texture only, both
        if mode == 0 or (mode == 2 and scene.background == "plain" and self.rng.random() < 0.5):
            return colour
        if mode == 1:
            return texture
        return f"{colour} {texture}" if scene.background == "gradient" else f"{texture} {colour}"

    def _background_phrase(self) -> str:
        desc = self._background()
        return _pick(self.rng, _BACKGROUND_TEMPLATES).format(f"{_article(desc)} {desc}")

    def full(self) -> str:
        phrase, plural = self._all_objects()
        text = self._opening(plural) + phrase
        if self.rng.random() < 0.3:
            text += " " + self._background_phrase()
        return text

    def salient(self) -> str:
        text = self._opening(False) + self._phrase(self.scene.objects[self.main], 1,
                                                   self.rng.random() < 0.5)
        if len(self.scene.objects) > 1 and self.rng.random() < 0.3:
            text += _pick(self.rng, _OTHERS)
        return text

    def spatial(self) -> str:
        i, relation, j = self.pairs[int(self.rng.integers(len(self.pairs)))]
        objs = self.scene.objects
        words = _pick(self.rng, RELATION_SYNONYMS[relation])
        return f"{self._opening(False)}{self._phrase(objs[i])} {words} {self._phrase(objs[j])}"

    def count(self) -> str:
        n = len(self.scene.objects)
        noun = _pick(self.rng, COUNT_NOUNS) + ("s" if n > 1 else "")
        number = _pick(self.rng, NUMBER_WORDS[n])
        text = f"{self._opening(n > 1)}{number} {noun}"
        if self.rng.random() < 0.6:
            text += " " + self._background_phrase()
        elif n > 1 and self.rng.random() < 0.3:
            text += " in total"
        return text

    def background(self) -> str:
        if self.rng.random() < 0.6:
            subject = self._phrase(self.scene.objects[self.main], 1, self.rng.random() < 0.4)
            plural = False
        else:
            subject, plural = self._all_objects()
        if self.rng.random() < 0.3:
            desc = self._background()
            template = _pick(self.rng, _BACKGROUND_FIRST_TEMPLATES)
            return self._opening(False) + template.format(f"{_article(desc)} {desc}", subject)
        return f"{self._opening(plural)}{subject} {self._background_phrase()}"


_KIND_WEIGHTS = {"full": 0.15, "salient": 0.2, "spatial": 0.3, "count": 0.15, "background": 0.2}


def make_captions(
    scene: Scene, main: int, rng: np.random.Generator, n: int = 5
) -> list[Caption]:
    """Write ``n`` distinct captions for a scene, at least one of kind ``full``.

    The kinds besides the first ``full`` are drawn at random (``spatial`` only when two
    objects of different colour or shape are clearly apart), and the order is shuffled.

    Args:
        scene: the scene (its objects and background).
        main: index of the main (largest visible) object, named by ``salient`` captions.
        rng: the generator that chooses kinds and words.
        n: number of captions.

    Returns:
        ``n`` captions in random order.
    """
    writer = _Writer(scene, main, rng)
    kinds = [k for k in CAPTION_KINDS if k != "spatial" or writer.pairs]
    weights = np.array([_KIND_WEIGHTS[k] for k in kinds])
    weights /= weights.sum()
    captions: list[Caption] = []
    seen: set[str] = set()
    for slot in range(n):
        for _ in range(20):  # retry a few times for a caption not written yet
            kind = "full" if slot == 0 else kinds[int(rng.choice(len(kinds), p=weights))]
            text = getattr(writer, kind)()
            if text not in seen:
                break
        seen.add(text)
        captions.append(Caption(kind, text))
    return [captions[int(k)] for k in rng.permutation(n)]


def _lookup(table: dict[Any, tuple[str, ...]]) -> dict[str, Any]:
    return {w: key for key, words in table.items() for w in words}


_SHAPE_WORDS = _lookup(SHAPE_SYNONYMS) | {PLURALS[w]: s for w, s in _lookup(SHAPE_SYNONYMS).items()}
_COLOUR_WORDS = _lookup(COLOUR_SYNONYMS)
_BACKGROUND_COLOUR_WORDS = _lookup(BACKGROUND_COLOUR_SYNONYMS)
_SIZE_WORDS = {w: s for w, s in _lookup(SIZE_SYNONYMS).items() if "-" not in w}
_BACKGROUND_WORDS = _lookup(BACKGROUND_SYNONYMS)
_NUMBERS = {"a": 1, "an": 1, "single": 1} | {
    w: n for n, words in NUMBER_WORDS.items() for w in words if " " not in w
}
_RELATION_WORDS = {"left": "left of", "right": "right of"} | {
    w: r for r, words in RELATION_SYNONYMS.items() for w in words if " " not in w
}
_COUNT_WORDS = {w for n in COUNT_NOUNS for w in (n, n + "s")}
_FILLERS = {"sized"}  # words inside a noun phrase that change nothing ("medium-sized")


def parse_caption(text: str) -> dict[str, Any]:
    """Read the attributes a caption names (the inverse of the grammar).

    Args:
        text: a caption (any case; synonyms, plurals and number words are understood).

    Returns:
        A dict with:

        - ``objects``: one dict per object phrase: ``shape``, ``colour``, ``size`` (None when
          not named) and ``number`` (1 unless a number word says otherwise);
        - ``pairs``: set of (colour, shape) named together; ``shapes``, ``colours``,
          ``sizes``: sets of canonical names;
        - ``n_mentioned``: the number of objects the phrases name, summed;
        - ``count``: the number stated by "N shapes/objects/things/items", else None;
        - ``background``, ``background_colour``: canonical names, or None when not named;
        - ``relation``: ((colour, shape), relation, (colour, shape)) or None.
    """
    objects: list[dict[str, Any]] = []
    count = background = background_colour = None
    relation_at: tuple[str, int] | None = None
    number = size = colour = None
    for word in tokenize(text):
        if word in _NUMBERS:
            number = _NUMBERS[word]
        elif word in _SIZE_WORDS:
            size = _SIZE_WORDS[word]
        elif word in _COLOUR_WORDS:
            colour = _COLOUR_WORDS[word]
        elif word in _FILLERS:
            continue
        else:
            if word in _SHAPE_WORDS:
                objects.append({"shape": _SHAPE_WORDS[word], "colour": colour, "size": size,
                                "number": number or 1})
            elif word in _COUNT_WORDS and number is not None and count is None:
                count = number
            elif word in _BACKGROUND_WORDS:
                background = _BACKGROUND_WORDS[word]
                continue  # "a striped gray background": keep reading the same phrase
            elif word in _BACKGROUND_COLOUR_WORDS:
                background_colour = _BACKGROUND_COLOUR_WORDS[word]
                continue
            elif word in _RELATION_WORDS:
                relation_at = (_RELATION_WORDS[word], len(objects))
            number = size = colour = None
    relation = None
    if relation_at is not None and 0 < relation_at[1] < len(objects):
        a, b = objects[relation_at[1] - 1], objects[relation_at[1]]
        relation = ((a["colour"], a["shape"]), relation_at[0], (b["colour"], b["shape"]))
    return {
        "objects": objects,
        "pairs": {(o["colour"], o["shape"]) for o in objects if o["colour"]},
        "shapes": {o["shape"] for o in objects},
        "colours": {o["colour"] for o in objects if o["colour"]},
        "sizes": {o["size"] for o in objects if o["size"]},
        "n_mentioned": sum(o["number"] for o in objects),
        "count": count,
        "background": background,
        "background_colour": background_colour,
        "relation": relation,
    }
