"""The WorldBench table for one translator on one split: every method, the same code.

Mean mode (the average of several draws) is used for Sim, the cosine suite and retrieval;
sample mode (one draw) for the Fréchet distance and diversity. Deterministic translators give
the same output in both modes and a diversity of 0.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from modtrans.data.pairs import PairedSplit
from modtrans.eval.metrics import (
    class_embeddings_from_prompts,
    cosine_suite,
    diversity,
    frechet_distance,
    mean_cosine,
    retrieval_metrics,
    zero_shot_accuracy,
)
from modtrans.translators.base import Translator, row_seeds
from modtrans.translators.samplers import SamplerOptions

logger = logging.getLogger(__name__)

#: Prompt templates for zero-shot classification of the world's shapes.
PROMPT_TEMPLATES = ("a {}", "a photo of a {}", "there is a {}", "an image showing a {}",
                    "a picture of a {}")


@dataclasses.dataclass
class ZeroShotTask:
    """Zero-shot classification of the split's images.

    Attributes:
        classes: class names (e.g. the world's shapes).
        prompt_emb: (C, P, D_txt) text embeddings of P prompts per class.
        labels: (n_images,) class index of every image of the split.
    """

    classes: list[str]
    prompt_emb: Tensor
    labels: Tensor


@dataclasses.dataclass
class EvalOptions:
    """Sampling settings of the evaluation.

    Attributes:
        n_samples: draws averaged in mean mode.
        diversity_conditions, diversity_draws: conditions and draws per condition for the
            diversity metric.
        seed: seeds every draw, so a table is reproducible.
        sampling: sampler settings passed to ``translate`` (None: the saved ones).
    """

    n_samples: int = 8
    diversity_conditions: int = 256
    diversity_draws: int = 4
    seed: int = 0
    sampling: SamplerOptions | None = None


def _translate(translator: Translator, c: Tensor, mode: str, n: int, seed: int,
               sampling: SamplerOptions | None) -> Tensor:
    return translator.translate(c, mode=mode, n_samples=n, seed=row_seeds(seed, len(c)),
                                sampling=sampling)


def evaluate_translator(
    translator: Translator,
    split: PairedSplit,
    *,
    options: EvalOptions | None = None,
    zero_shot: ZeroShotTask | None = None,
) -> dict[str, Any]:
    """Every WorldBench metric of ``translator`` on ``split``.

    Args:
        translator: any registered translator, in the split's direction.
        split: the evaluation pairs (see :func:`modtrans.data.pairs.load_pairs`).
        options: sampling settings.
        zero_shot: optional zero-shot task on the split's images.

    Returns:
        A flat dict of metrics (see the keys in the module's table writer).
    """
    options = options or EvalOptions()
    cfg = translator.config
    if cfg.direction != split.direction:
        raise ValueError(
            f"the translator maps {cfg.direction} but the evaluation split is arranged "
            f"for {split.direction}; pass --direction {cfg.direction}"
        )
    if split.cond.shape[1] != cfg.cond_dim or split.target.shape[1] != cfg.target_dim:
        raise ValueError(
            f"the translator expects {cfg.cond_dim}-d conditions and {cfg.target_dim}-d "
            f"targets, the store has {split.cond.shape[1]} and {split.target.shape[1]}: it "
            "was trained on other encoders"
        )
    sampling, seed = options.sampling, options.seed
    t2i = split.direction == "text2image"
    queries = split.queries
    z_mean = _translate(translator, queries, "mean", options.n_samples, seed, sampling)
    z_pair = z_mean if t2i else z_mean[split.owner]
    positives = {"target_index": split.owner} if t2i else {"gallery_owner": split.owner}
    result: dict[str, Any] = {
        "method": cfg.method,
        "direction": split.direction,
        "n_queries": len(queries),
        "n_gallery": len(split.gallery),
        "sim": mean_cosine(z_pair, split.target),
        **cosine_suite(split.cond, z_pair, split.target,
                       generator=torch.Generator().manual_seed(seed)),
        **retrieval_metrics(z_mean, split.gallery, **positives),
    }
    if translator.stochastic:
        z_sample = _translate(translator, queries, "sample", 1, seed + 1, sampling)
        m, k = min(options.diversity_conditions, len(queries)), options.diversity_draws
        draws = _translate(translator, queries[:m].repeat(k, 1), "sample", 1, seed + 2, sampling)
        result["diversity"] = diversity(draws.view(k, m, -1))
        result["sim_sample"] = mean_cosine(z_sample if t2i else z_sample[split.owner],
                                           split.target)
    else:
        z_sample = z_mean
        result["diversity"] = 0.0
        result["sim_sample"] = result["sim"]
    result["fd"] = frechet_distance(z_sample, split.gallery)
    # The same on unit vectors: a translator whose outputs have the right directions but
    # another scale (an MLP trained on cosine) is far off in raw FD, not in this one.
    result["fd_unit"] = frechet_distance(F.normalize(z_sample, dim=-1),
                                         F.normalize(split.gallery, dim=-1))
    # The mean mode's outputs gather toward the conditional mean as K grows: what a better
    # Sim costs in distribution (the frontier of Sim against FD).
    result["fd_unit_mean"] = frechet_distance(F.normalize(z_mean, dim=-1),
                                              F.normalize(split.gallery, dim=-1))
    cos = F.cosine_similarity(z_pair, split.target, dim=-1)
    counts, edges = torch.histogram(cos.double(), bins=40, range=(-1.0, 1.0))
    result["cos_hist"] = {"edges": edges.tolist(), "counts": counts.long().tolist()}
    if zero_shot is not None:
        result.update(_zero_shot(translator, split, zero_shot, options))
    return result


def raw_zero_shot(split: PairedSplit, task: ZeroShotTask) -> float | None:
    """Zero-shot accuracy of the raw cross-modal embeddings (None if the dims differ)."""
    if task.prompt_emb.shape[-1] != split.images.shape[1]:
        return None
    return zero_shot_accuracy(split.images, class_embeddings_from_prompts(task.prompt_emb),
                              task.labels[: len(split.images)])


def _zero_shot(translator: Translator, split: PairedSplit, task: ZeroShotTask,
               options: EvalOptions) -> dict[str, Any]:
    """Classify images through the translator: prompts → image space, or images → text."""
    c, p, d = task.prompt_emb.shape
    sampling, seed = options.sampling, options.seed
    labels = task.labels[: len(split.images)]
    if split.direction == "text2image":
        prompts = _translate(translator, task.prompt_emb.reshape(c * p, d), "mean",
                             options.n_samples, seed, sampling)
        classes = class_embeddings_from_prompts(prompts.view(c, p, -1))
        acc = zero_shot_accuracy(split.images, classes, labels)
    else:
        images = _translate(translator, split.images, "mean", options.n_samples, seed, sampling)
        acc = zero_shot_accuracy(images, class_embeddings_from_prompts(task.prompt_emb), labels)
    return {"zero_shot": acc, "zero_shot_raw": raw_zero_shot(split, task)}


TABLE_COLUMNS = (
    ("method", "method", "{}"),
    ("sim", "Sim", "{:.3f}"),
    ("cos_c_z", "cos(c,z)", "{:.3f}"),
    ("cos_zhat_c", "cos(ẑ,c)", "{:.3f}"),
    ("cos_zhat_z_unrelated", "cos(ẑ,z') unrel.", "{:.3f}"),
    ("R@1", "R@1", "{:.3f}"),
    ("R@5", "R@5", "{:.3f}"),
    ("R@10", "R@10", "{:.3f}"),
    ("MedR", "MedR", "{:.1f}"),
    ("fd", "FD", "{:.2f}"),
    ("fd_unit", "FD (unit)", "{:.3f}"),
    ("sim_sample", "Sim (1 draw)", "{:.3f}"),
    ("diversity", "diversity", "{:.3f}"),
    ("zero_shot", "zero-shot", "{:.3f}"),
    ("zero_shot_raw", "zero-shot raw", "{:.3f}"),
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of evaluation results, one row per method (missing values: –)."""
    header = "| " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "–"
                 for key, _, fmt in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def world_shape_task(
    store, text_encoder, column: str = "main_shape", classes: list[str] | None = None
) -> ZeroShotTask:
    """Zero-shot task "which shape is the main object" over a world split's images.

    Args:
        store: the split's :class:`~modtrans.data.store.EmbeddingStore` (its image metadata
            must hold ``column``).
        text_encoder: the store's text encoder, to embed the prompts.
        column: the label column.
        classes: class names (default: the world's shapes).

    Returns:
        The task, prompts embedded with :data:`PROMPT_TEMPLATES`.
    """
    from modtrans.world.captions import SHAPES

    classes = list(classes or SHAPES)
    meta = store.image_metadata()
    if column not in meta.column_names:
        raise ValueError(f"the store's image metadata has no {column!r} column; zero-shot "
                         "needs the world's ground truth (embed a world split)")
    index = {name: i for i, name in enumerate(classes)}
    labels = torch.tensor([index[v] for v in meta.column(column).to_pylist()])
    prompts = [t.format(name) for name in classes for t in PROMPT_TEMPLATES]
    emb = text_encoder.encode_texts(prompts)
    return ZeroShotTask(classes, emb.view(len(classes), len(PROMPT_TEMPLATES), -1), labels)
