"""Zero-shot classification of a labelled image folder (the seed's CIFAR-10 table).

Each class is embedded through prompt templates ("a photo of a {}.") and averaged (CLIP's
prompt ensembling). An image takes the class whose embedding is most cosine-similar:

- ``raw``: image embeddings against prompt embeddings, when both come from one encoder pair
  sharing a space (a CLIP);
- through a ``text2image`` translator: prompts translated into the image space;
- through an ``image2text`` translator: images translated into the text space.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from modtrans.data.folder import read_labelled_folder
from modtrans.encoders.base import Encoder, batches
from modtrans.eval.metrics import class_embeddings_from_prompts, zero_shot_predict
from modtrans.translators.base import Translator

logger = logging.getLogger(__name__)

#: A few of CLIP's ImageNet templates.
DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.",
                     "a photo of the {}.", "a close-up photo of a {}.")


def class_prompt_embeddings(text_encoder: Encoder, classes: Sequence[str],
                            templates: Sequence[str]) -> torch.Tensor:
    """(C, P, D) embeddings of every template filled with every class name."""
    bad = [t for t in templates if t.count("{}") != 1]
    if bad or not templates:
        raise ValueError(f"each template needs exactly one '{{}}' for the class name; got {bad}")
    prompts = [t.format(name) for name in classes for t in templates]
    return text_encoder.encode_texts(prompts).view(len(classes), len(templates), -1)


def _embed_images(encoder: Encoder, paths: Sequence[Path], batch_size: int,
                  progress: bool) -> torch.Tensor:
    out = []
    for chunk in tqdm(list(batches(list(paths), batch_size)), desc="embed images", unit="batch",
                      disable=not progress):
        images = []
        for path in chunk:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        out.append(encoder.encode_images(images, batch_size=batch_size))
    return torch.cat(out)


def _check_translator(name: str, translator: Translator, image_spec: str, text_spec: str) -> None:
    cfg = translator.config
    if (cfg.image_encoder, cfg.text_encoder) != (image_spec, text_spec):
        raise ValueError(
            f"translator {name} was trained on {cfg.image_encoder} images and "
            f"{cfg.text_encoder} texts, not {image_spec} and {text_spec}; pass the encoders "
            "it was trained with"
        )


def zeroshot_folder(
    folder: str | Path,
    image_encoder: Encoder,
    text_encoder: Encoder,
    *,
    classes: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    translators: dict[str, Translator] | None = None,
    n_samples: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Zero-shot accuracy on ``folder/<class>/<images>``, raw and through translators.

    Args:
        folder: one sub-folder per class.
        image_encoder, text_encoder: the pair (a translator must have been trained on it).
        classes: the sub-folders to use (default: all); underscores read as spaces in prompts.
        templates: prompt templates with one ``{}``.
        translators: name → translator; each adds an accuracy.
        n_samples, seed: draws averaged by stochastic translators (mean mode), and their seed.
        batch_size: images per encoder batch.
        progress: show a progress bar.

    Returns:
        ``{"classes", "n_images", "accuracy": {method: acc}, "per_class": {method: {class: acc}}}``;
        ``raw`` is present when the two encoders share a space.
    """
    paths, labels = read_labelled_folder(folder)
    names = sorted(set(labels))
    if classes:
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise ValueError(f"{folder} has no sub-folder for class(es) {unknown}; it has {names}")
        names = list(classes)
        keep = [i for i, label in enumerate(labels) if label in names]
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    target = torch.tensor([names.index(label) for label in labels])
    images = _embed_images(image_encoder, paths, batch_size, progress)
    prompts = class_prompt_embeddings(text_encoder, [n.replace("_", " ") for n in names],
                                      templates)
    scores: dict[str, torch.Tensor] = {}
    if image_encoder.spec == text_encoder.spec and images.shape[1] == prompts.shape[-1]:
        scores["raw"] = zero_shot_predict(images, class_embeddings_from_prompts(prompts))
    for name, translator in (translators or {}).items():
        _check_translator(name, translator, image_encoder.spec, text_encoder.spec)
        if translator.config.direction == "text2image":
            c, p, d = prompts.shape
            moved = translator.translate(prompts.reshape(c * p, d), n_samples=n_samples,
                                         seed=seed).view(c, p, -1)
            scores[name] = zero_shot_predict(images, class_embeddings_from_prompts(moved))
        else:
            moved = translator.translate(images, n_samples=n_samples, seed=seed)
            scores[name] = zero_shot_predict(moved, class_embeddings_from_prompts(prompts))
    if not scores:
        raise ValueError(
            f"{image_encoder.spec} and {text_encoder.spec} do not share a space; give a "
            "translator (--translator) to classify through"
        )
    accuracy = {m: float((pred == target).float().mean()) for m, pred in scores.items()}
    per_class = {
        m: {n: float((pred[target == i] == i).float().mean()) for i, n in enumerate(names)}
        for m, pred in scores.items()
    }
    return {"classes": names, "n_images": len(paths), "templates": list(templates),
            "accuracy": accuracy, "per_class": per_class}
