"""Tests for the WorldBench evaluation of translators, on tiny synthetic paired data (CPU)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from modtrans.data.pairs import PairedSplit
from modtrans.eval.metrics import class_embeddings_from_prompts, zero_shot_accuracy
from modtrans.eval.worldbench import (
    TABLE_COLUMNS,
    EvalOptions,
    ZeroShotTask,
    evaluate_translator,
    markdown_table,
)
from modtrans.training.fit import Recipe
from modtrans.training.translator import fit_translator
from modtrans.translators.base import Translator, TranslatorConfig

D = 16
A = torch.randn(D, D, generator=torch.Generator().manual_seed(1234))
TINY_CED = {"width": 32, "depth": 2, "emb_dim": 32, "time_dim": 16, "steps": 4}
DETERMINISTIC = ["identity", "mean-shift", "ridge", "knn", "mlp"]
METRIC_KEYS = {
    "method", "direction", "n_queries", "n_gallery", "sim", "cos_c_z", "cos_zhat_c",
    "cos_zhat_z", "cos_zhat_z_unrelated", "R@1", "R@5", "R@10", "MedR", "fd", "fd_unit",
    "fd_unit_mean", "diversity", "sim_sample", "cos_hist",
}  # fmt: skip


def linear_pairs(
    n: int, seed: int, *, noise: float = 0.1, cond_dim: int = D, direction: str = "text2image"
) -> PairedSplit:
    """n pairs, one caption per image: z = c·A + noise·ε (c: the condition)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, cond_dim, generator=g)
    z = c @ A[:cond_dim] + noise * torch.randn(n, D, generator=g)
    images, texts = (z, c) if direction == "text2image" else (c, z)
    return PairedSplit(direction, images, texts, torch.arange(n))


def captioned_images(n_images: int, per_image: int, seed: int) -> PairedSplit:
    """image2text pairs with several distinct captions per image: texts = image·A + noise."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, D, generator=g)
    owner = torch.arange(n_images).repeat_interleave(per_image)
    texts = images[owner] @ A + 4.0 * torch.randn(len(owner), D, generator=g)
    return PairedSplit("image2text", images, texts, owner)


class LookupTranslator(Translator):
    """A test oracle: the output row stored for each known condition (normalisers left at 0/1)."""

    method = "lookup"

    def __init__(self, keys: Tensor, values: Tensor, direction: str) -> None:
        super().__init__(TranslatorConfig(method=self.method, direction=direction,
                                          cond_dim=keys.shape[1], target_dim=values.shape[1]))
        self.keys, self.values = keys, values

    def _translate(self, cn: Tensor, **kwargs: Any) -> Tensor:
        return self.values[torch.cdist(cn, self.keys).argmin(1)]


@pytest.fixture(scope="module")
def data() -> tuple[PairedSplit, PairedSplit]:
    return linear_pairs(600, 1), linear_pairs(200, 2)


@pytest.fixture(scope="module")
def models(
    data: tuple[PairedSplit, PairedSplit], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Translator]:
    root = tmp_path_factory.mktemp("worldbench")
    params = {"ced": TINY_CED, "mlp": {"width": 32}}
    tc = Recipe(epochs=1, accelerator="cpu")
    return {
        method: fit_translator(method, *data, root / method, params=params.get(method),
                               recipe=tc, progress=False)[0]
        for method in [*DETERMINISTIC, "ced"]
    }


def evaluate(model: Translator, split: PairedSplit, **kwargs: Any) -> dict[str, Any]:
    options = EvalOptions(n_samples=4, diversity_conditions=64, diversity_draws=3)
    return evaluate_translator(model, split, options=options, **kwargs)


# --- the table -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ridge", "ced"])
def test_every_metric_is_reported(
    method: str, models: dict, data: tuple[PairedSplit, ...]
) -> None:
    val = data[1]
    result = evaluate(models[method], val)
    assert set(result) >= METRIC_KEYS
    assert (result["method"], result["direction"]) == (method, "text2image")
    assert result["n_queries"] == result["n_gallery"] == len(val.texts)
    assert result["sim"] == pytest.approx(result["cos_zhat_z"], abs=1e-6)
    assert 0 <= result["R@1"] <= result["R@5"] <= result["R@10"] <= 1
    assert result["MedR"] >= 1 and result["fd"] >= 0
    assert result["cos_zhat_z_unrelated"] < result["sim"] - 0.3
    hist = result["cos_hist"]
    assert len(hist["edges"]) == len(hist["counts"]) + 1 == 41
    assert sum(hist["counts"]) == len(val.texts)
    assert "zero_shot" not in result  # no task given
    for key in METRIC_KEYS - {"method", "direction", "cos_hist"}:
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]), key


def test_evaluation_is_reproducible(models: dict, data: tuple[PairedSplit, ...]) -> None:
    val = linear_pairs(60, 3)
    first, second = evaluate(models["ced"], val), evaluate(models["ced"], val)
    assert first == second
    other = evaluate_translator(models["ced"], val, options=EvalOptions(
        n_samples=4, diversity_conditions=64, diversity_draws=3, seed=1))
    assert other["sim_sample"] != first["sim_sample"]


def test_noiseless_ridge_is_an_oracle(tmp_path: Path) -> None:
    train, val = linear_pairs(600, 1, noise=0.0), linear_pairs(200, 2, noise=0.0)
    model, _ = fit_translator("ridge", train, val, tmp_path, progress=False)
    result = evaluate(model, val)
    assert result["R@1"] == 1.0 and result["MedR"] == 1.0
    assert result["sim"] > 0.999
    assert result["fd"] < 1e-3 * float(val.images.var(0).sum())


def test_unit_fd_ignores_the_scale_raw_fd_sees(data: tuple[PairedSplit, ...]) -> None:
    val = data[1]
    images = F.normalize(val.images, dim=-1)  # a store's unit vectors
    val = PairedSplit(val.direction, images, val.texts, val.owner)
    scaled = LookupTranslator(val.cond, 8 * images[val.owner], "text2image")
    result = evaluate(scaled, val)  # the right directions, 8 times too long
    assert result["sim"] > 0.999
    assert result["fd"] > 40
    assert result["fd_unit"] < 1e-3 and result["fd_unit_mean"] == result["fd_unit"]


def test_constant_output_scores_nothing(data: tuple[PairedSplit, ...]) -> None:
    val = data[1]
    constant = LookupTranslator(val.cond[:1], val.images[:1], "text2image")
    result = evaluate(constant, val)
    # Every query ranks the gallery the same way: the ranks are a permutation of 1..N.
    n = len(val.images)
    assert (result["R@1"], result["R@5"], result["R@10"]) == (1 / n, 5 / n, 10 / n)
    assert result["MedR"] == (n + 1) / 2


def test_image2text_any_caption_counts() -> None:
    split = captioned_images(50, 3, seed=0)
    first = split.texts[::3]  # each image's first caption
    result = evaluate(LookupTranslator(split.images, first, "image2text"), split)
    assert (result["n_queries"], result["n_gallery"]) == (50, 150)
    assert result["R@1"] == 1.0 and result["MedR"] == 1.0
    assert result["sim"] < 0.9  # the other two captions of an image differ from the first

    second = evaluate(LookupTranslator(split.images, split.texts[1::3], "image2text"), split)
    assert second["R@1"] == 1.0
    # Each image answered with a caption of the next image: never right.
    shifted = evaluate(LookupTranslator(split.images, first.roll(1, 0), "image2text"), split)
    assert shifted["R@1"] == 0.0


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_deterministic_methods_have_no_diversity(
    method: str, models: dict, data: tuple[PairedSplit, ...]
) -> None:
    result = evaluate(models[method], data[1])
    assert result["diversity"] == 0.0
    assert result["sim_sample"] == result["sim"]


def test_ced_has_diversity(models: dict, data: tuple[PairedSplit, ...]) -> None:
    result = evaluate(models["ced"], data[1])
    assert result["diversity"] > 1e-4
    assert result["sim_sample"] != result["sim"]


def test_direction_mismatch(models: dict) -> None:
    split = linear_pairs(50, 5, direction="image2text")
    with pytest.raises(ValueError, match=r"maps text2image .* image2text.*--direction text2image"):
        evaluate(models["ridge"], split)


def test_dim_mismatch(models: dict) -> None:
    split = linear_pairs(50, 5, cond_dim=8)
    with pytest.raises(ValueError, match=r"expects 16-d conditions .* has 8 and 16"):
        evaluate(models["ridge"], split)


# --- zero-shot -----------------------------------------------------------------------------

N_CLASSES, N_PROMPTS, N_IMAGES, N_WRONG = 3, 2, 40, 10


def _zero_shot_case(direction: str, text_dim: int = D) -> tuple[PairedSplit, ZeroShotTask]:
    """Images of three classes and prompts that a noiseless ridge maps onto their class.

    The labels of the first ``N_WRONG`` images are wrong on purpose, so the expected accuracy
    is ``1 - N_WRONG / N_IMAGES``.
    """
    g = torch.Generator().manual_seed(7)
    true = torch.arange(N_IMAGES) % N_CLASSES
    labels = true.clone()
    labels[:N_WRONG] = (true[:N_WRONG] + 1) % N_CLASSES
    if direction == "text2image":  # images = text·A
        proto = torch.randn(N_CLASSES, text_dim, generator=g)
        prompts = proto[:, None] + 0.01 * torch.randn(N_CLASSES, N_PROMPTS, text_dim, generator=g)
        images = proto[true] @ A[:text_dim] + 0.01 * torch.randn(N_IMAGES, D, generator=g)
        texts = proto[true] + 0.01 * torch.randn(N_IMAGES, text_dim, generator=g)
    else:  # texts = image·A
        proto = torch.randn(N_CLASSES, D, generator=g)
        prompts = (proto @ A)[:, None] + 0.01 * torch.randn(N_CLASSES, N_PROMPTS, D, generator=g)
        images = proto[true] + 0.01 * torch.randn(N_IMAGES, D, generator=g)
        texts = images @ A
    split = PairedSplit(direction, images, texts, torch.arange(N_IMAGES))
    return split, ZeroShotTask(["a", "b", "c"], prompts, labels)


@pytest.mark.parametrize("direction", ["text2image", "image2text"])
def test_zero_shot_accuracy_on_a_constructed_task(direction: str, tmp_path: Path) -> None:
    train = linear_pairs(600, 1, noise=0.0, direction=direction)
    val = linear_pairs(200, 2, noise=0.0, direction=direction)
    model, _ = fit_translator("ridge", train, val, tmp_path, progress=False)
    split, task = _zero_shot_case(direction)
    result = evaluate(model, split, zero_shot=task)
    assert result["zero_shot"] == pytest.approx(1 - N_WRONG / N_IMAGES)
    raw = zero_shot_accuracy(split.images, class_embeddings_from_prompts(task.prompt_emb),
                             task.labels)
    assert result["zero_shot_raw"] == pytest.approx(raw)

    correct = ZeroShotTask(task.classes, task.prompt_emb, torch.arange(N_IMAGES) % N_CLASSES)
    assert evaluate(model, split, zero_shot=correct)["zero_shot"] == 1.0


def test_zero_shot_across_dims_has_no_raw_baseline(tmp_path: Path) -> None:
    train, val = linear_pairs(600, 1, noise=0.0, cond_dim=8), linear_pairs(200, 2, noise=0.0,
                                                                          cond_dim=8)
    model, _ = fit_translator("ridge", train, val, tmp_path, progress=False)
    split, task = _zero_shot_case("text2image", text_dim=8)
    result = evaluate(model, split, zero_shot=task)
    assert result["zero_shot"] == pytest.approx(1 - N_WRONG / N_IMAGES)
    assert result["zero_shot_raw"] is None
    assert result["cos_c_z"] is None and result["cos_zhat_c"] is None
    table = markdown_table([result])
    assert table.splitlines()[2].count("–") == 3  # cos(c,z), cos(ẑ,c), zero-shot raw


# --- markdown ------------------------------------------------------------------------------


def test_markdown_table_renders_missing_values_as_dash() -> None:
    rows = [{"method": "ridge", "sim": 0.91234, "R@1": 0.5, "MedR": 2.0, "zero_shot": None},
            {"method": "identity"}]
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 4
    titles = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert titles == [title for _, title, _ in TABLE_COLUMNS]
    first = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert first[:2] == ["ridge", "0.912"]
    assert first[titles.index("R@1")] == "0.500" and first[titles.index("MedR")] == "2.0"
    assert first[titles.index("zero-shot")] == "–"
    assert first.count("–") == len(TABLE_COLUMNS) - 4
    second = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert second == ["identity"] + ["–"] * (len(TABLE_COLUMNS) - 1)
