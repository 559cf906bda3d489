"""Semantic scores of generated outputs on the world, where the truth is known.

- text → image: the colour–shape pairs a prompt names, looked for by the attribute
  recogniser in the generated image (recall), and pairs it finds that the prompt does not
  name (hallucination; only for prompts that describe the whole scene, so that anything else
  is excluded);
- image → text: the pairs, shapes and colours a generated caption names, against the image's
  ground truth (precision and recall);
- reconstructions: the shapes, colours and pairs of an image's ground truth that the judge
  finds in its reconstruction (recall);
- joint samples (an image and a caption drawn together): whether what the caption names is
  what the judge sees in the image (coherence), beside the same captions paired with other
  images of the batch at random.

And the Fréchet distance of generated images to real ones in an image encoder's feature
space (torchmetrics' FID with that encoder as the feature extractor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from modtrans.world.captions import SHAPES, parse_caption
from modtrans.world.recogniser import (
    COLOUR_NAMES,
    PAIRS,
    AttributeRecogniser,
    attribute_targets,
)


def _visible_pairs(row: dict[str, Any], min_area: float) -> set[tuple[str, str]]:
    return {(o["colour"], o["shape"]) for o in row["objects"] if o["area"] >= min_area}


def image_semantic_scores(recogniser: AttributeRecogniser, images: torch.Tensor,
                          prompts: Sequence[str], exhaustive: Sequence[bool]) -> dict[str, float]:
    """Recall and hallucination of what each image's prompt names, as the judge sees it.

    Args:
        recogniser: the judge.
        images: uint8 (N, 64, 64, 3), image i generated from ``prompts[i]``.
        prompts: the prompts.
        exhaustive: whether prompt i describes every object (then anything else found is a
            hallucination); other prompts count towards recall only.

    Returns:
        For ``pairs`` (colour–shape), ``shapes`` and ``colours``: ``<key>_recall`` (named and
        found / named) and ``<key>_hallucination`` (found but not named / found, exhaustive
        prompts); ``recall``/``hallucination`` are the pairs' (binding included); ``n_prompts``.
    """
    found = recogniser.predict(images)
    names = {"pairs": PAIRS, "shapes": SHAPES, "colours": COLOUR_NAMES}
    out: dict[str, float] = {"n_prompts": len(prompts)}
    parsed = [parse_caption(p) for p in prompts]
    for key, vocabulary in names.items():
        named_total = named_found = extra = found_total = 0
        for i, attributes in enumerate(parsed):
            named = {vocabulary.index(a) for a in attributes[key] if a in vocabulary}
            seen = set(found[key][i].nonzero().flatten().tolist())
            named_total += len(named)
            named_found += len(named & seen)
            if exhaustive[i]:
                extra += len(seen - named)
                found_total += len(seen)
        out[f"{key}_recall"] = named_found / named_total if named_total else float("nan")
        out[f"{key}_hallucination"] = extra / found_total if found_total else 0.0
    out["recall"], out["hallucination"] = out["pairs_recall"], out["pairs_hallucination"]
    return out


def truth_recall(recogniser: AttributeRecogniser, images: torch.Tensor,
                 rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Share of the visible shapes, colours and colour–shape pairs of each image's ground
    truth that the judge finds in uint8 ``images`` (e.g. reconstructions of those images),
    micro-averaged: ``shapes_recall``, ``colours_recall``, ``pairs_recall``."""
    truth = attribute_targets(list(rows), recogniser.config.min_area)
    found = recogniser.predict(images)
    return {f"{key}_recall": round(float((found[key] & truth[key].bool()).sum()
                                         / truth[key].sum().clamp_min(1)), 4)
            for key in ("shapes", "colours", "pairs")}


def caption_semantic_scores(captions: Sequence[str], rows: Sequence[dict[str, Any]],
                            min_area: float = 12.0) -> dict[str, float]:
    """Precision and recall of what captions name against their images' ground truth.

    Micro-averaged over captions for colour–shape ``pairs``, ``shapes`` and ``colours``.
    """
    if len(captions) != len(rows):
        raise ValueError(f"{len(captions)} captions for {len(rows)} ground-truth rows")
    out: dict[str, float] = {}
    for key in ("pairs", "shapes", "colours"):
        named_total = named_true = true_total = true_named = 0
        for caption, row in zip(captions, rows, strict=True):
            pairs = _visible_pairs(row, min_area)
            truth = {"pairs": pairs, "shapes": {s for _, s in pairs},
                     "colours": {c for c, _ in pairs}}[key]
            named = parse_caption(caption)[key]
            named_total += len(named)
            named_true += len(named & truth)
            true_total += len(truth)
            true_named += len(truth & named)
        out[f"{key}_precision"] = named_true / named_total if named_total else 0.0
        out[f"{key}_recall"] = true_named / true_total if true_total else float("nan")
    return out


def joint_coherence(recogniser: AttributeRecogniser, images: torch.Tensor,
                    captions: Sequence[str], seed: int = 0) -> dict[str, dict[str, float]]:
    """Agreement of each caption with the image drawn with it, as the judge reads the image
    and the caption parser the caption; ``random_pairing`` scores the same captions against
    the images of a random derangement (the agreement chance alone gives).

    Returns:
        ``joint`` and ``random_pairing``, each with, for ``colours``, ``shapes`` and
        ``pairs``: the share of the captions naming any that name only ones the judge finds
        (``<key>``), the share of all named the judge finds (``<key>_found``) and how many
        captions name any (``<key>_n``); ``count``: the share of captions stating a number of
        objects ("three shapes") whose number the judge counts (``count_n`` of them).
    """
    if len(images) != len(captions) or len(captions) < 2:
        raise ValueError(f"joint coherence needs one caption per image and at least 2 pairs, "
                         f"got {len(images)} images and {len(captions)} captions")
    found = recogniser.predict(images)
    parsed = [parse_caption(c) for c in captions]
    order = torch.randperm(len(captions), generator=torch.Generator().manual_seed(seed))
    other = torch.empty_like(order)
    other[order] = order.roll(1)  # caption i meets image other[i] ≠ i
    return {"joint": _agreement(found, parsed, torch.arange(len(captions))),
            "random_pairing": _agreement(found, parsed, other)}


def _agreement(found: dict[str, torch.Tensor], parsed: list[dict[str, Any]],
               image_of: torch.Tensor) -> dict[str, float]:
    names = {"pairs": PAIRS, "shapes": SHAPES, "colours": COLOUR_NAMES}
    out: dict[str, float] = {}
    for key, vocabulary in names.items():
        agree = naming = named = seen = 0
        for attributes, j in zip(parsed, image_of.tolist(), strict=True):
            wanted = {vocabulary.index(a) for a in attributes[key] if a in vocabulary}
            if not wanted:
                continue
            hits = len(wanted & set(found[key][j].nonzero().flatten().tolist()))
            naming, named, seen = naming + 1, named + len(wanted), seen + hits
            agree += hits == len(wanted)
        out[key] = round(agree / naming, 4) if naming else float("nan")
        out[f"{key}_found"] = round(seen / named, 4) if named else float("nan")
        out[f"{key}_n"] = naming
    stated = [(a["count"], j) for a, j in zip(parsed, image_of.tolist(), strict=True)
              if a["count"] is not None]
    out["count"] = round(sum(int(found["count"][j]) == c for c, j in stated) / len(stated),
                         4) if stated else float("nan")
    out["count_n"] = len(stated)
    return out


class EncoderFeatures(nn.Module):
    """An image encoder as torchmetrics' FID feature extractor: uint8 (N, 3, H, W) → (N, D)."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_features = encoder.dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_images(images.permute(0, 2, 3, 1).contiguous()).double()


def image_fd(encoder: Any, real: torch.Tensor, generated: torch.Tensor) -> float:
    """Fréchet distance between real and generated uint8 (N, H, W, 3) images in the
    encoder's embedding space (torchmetrics' FID with the encoder as feature extractor)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if min(len(real), len(generated)) < 2:
        raise ValueError("the Fréchet distance needs at least 2 real and 2 generated images")
    fid = FrechetInceptionDistance(feature=EncoderFeatures(encoder), normalize=False)
    for images, is_real in ((real, True), (generated, False)):
        for chunk in images.split(512):
            fid.update(chunk.permute(0, 3, 1, 2).contiguous(), real=is_real)
    return float(np.float64(fid.compute()))
