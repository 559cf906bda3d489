"""Semantic scores of generated outputs on the world, where the truth is known.

- text → image: the colour–shape pairs a prompt names, looked for by the attribute
  recogniser in the generated image (recall), and pairs it finds that the prompt does not
  name (hallucination; only for prompts that describe the whole scene, so that anything else
  is excluded);
- image → text: the pairs, shapes and colours a generated caption names, against the image's
  ground truth (precision and recall);
- reconstructions: the shapes, colours and pairs of an image's ground truth that the judge
  finds in its reconstruction (recall).

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
