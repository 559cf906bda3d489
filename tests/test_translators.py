"""Tests for the translators and their fitting, on tiny synthetic paired data (CPU, seconds).

The data are z = c·A + noise with a fixed random A (text2image: the texts are the conditions,
the images the targets), so that the right answer of the linear methods is known.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from artefact_helpers import saved_options, write_options
from safetensors import safe_open

from modtrans.artefacts import read_summary
from modtrans.data.pairs import PairedSplit
from modtrans.training.fit import Recipe
from modtrans.training.translator import build_translator, fit_translator
from modtrans.translators.base import (
    MODES,
    Translator,
    TranslatorConfig,
    list_translators,
    row_generators,
    row_seeds,
    translator_class,
)
from modtrans.translators.baselines import KNNOptions, MLPOptions, RidgeOptions
from modtrans.translators.ced import CEDOptions, CEDPaperOptions
from modtrans.translators.samplers import SamplerOptions

D = 16
N_TRAIN, N_VAL = 600, 200
BATCH = 256  # Recipe's default batch size
A = torch.randn(D, D, generator=torch.Generator().manual_seed(1234))
B = torch.randn(D, D, generator=torch.Generator().manual_seed(4321)) / math.sqrt(D)
METHODS = list_translators()
TINY: dict[str, dict[str, Any]] = {
    "ced": {"width": 32, "depth": 2, "emb_dim": 32, "time_dim": 16, "steps": 4},
    "ced-paper": {"width": 32, "depth": 2, "emb_dim": 32, "time_dim": 16, "steps": 4},
    "mlp": {"width": 32},
}


def linear_pairs(
    n: int,
    seed: int,
    *,
    noise: float = 0.1,
    nonlinear: float = 0.0,
    cond_dim: int = D,
    direction: str = "text2image",
) -> PairedSplit:
    """n pairs, one caption per image: z = c·A (+ nonlinear·|c|·B) + noise·ε."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, cond_dim, generator=g)
    z = c @ A[:cond_dim] + nonlinear * c.abs() @ B[:cond_dim]
    z = z + noise * torch.randn(n, D, generator=g)
    images, texts = (z, c) if direction == "text2image" else (c, z)
    return PairedSplit(direction, images, texts, torch.arange(n))


def train_config(epochs: int = 2, **kwargs: Any) -> Recipe:
    return Recipe(epochs=epochs, accelerator="cpu", **kwargs)


def sim(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(F.cosine_similarity(pred, target, dim=-1).mean())


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def option_names(method: str) -> set[str]:
    return {f.name for f in dataclasses.fields(translator_class(method).options_class)}


@pytest.fixture(scope="module")
def data() -> tuple[PairedSplit, PairedSplit]:
    return linear_pairs(N_TRAIN, 1), linear_pairs(N_VAL, 2)


@pytest.fixture(scope="module")
def fitted(
    data: tuple[PairedSplit, PairedSplit], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Translator, dict[str, Any], Path]]:
    """Every registered method fitted once on ``data``: method → (model, info, checkpoint)."""
    root = tmp_path_factory.mktemp("translators")
    out = {}
    for method in METHODS:
        model, info = fit_translator(
            method, *data, root / method, params=TINY.get(method),
            recipe=train_config(), progress=False,
        )  # fmt: skip
        out[method] = (model, info, root / method)
    return out


# --- fitting, checkpoints ------------------------------------------------------------------


def test_registry_lists_every_builtin_method() -> None:
    assert set(METHODS) == {"identity", "mean-shift", "ridge", "knn", "mlp", "ced", "ced-paper"}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_fits(method: str, fitted: dict, data: tuple[PairedSplit, ...]) -> None:
    model, info, ckpt = fitted[method]
    _, val = data
    assert info["method"] == method and info["direction"] == "text2image"
    assert info["train_pairs"] == N_TRAIN
    z = model.translate(val.cond, seed=0)
    assert z.shape == (N_VAL, D) and z.dtype == torch.float32
    assert torch.isfinite(z).all()
    saved = json.loads((ckpt / "summary.json").read_text())
    assert saved["method"] == method and saved["train_config"]["epochs"] == 2
    if model.trainable:
        assert info["steps"] == 2 * (N_TRAIN // BATCH) and info["epochs"] == 2
        assert (ckpt / "lightning" / "last.ckpt").is_file()
        assert math.isfinite(info["val_sim"])
    else:
        assert "steps" not in info and not (ckpt / "lightning").exists()


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(
    method: str, fitted: dict, data: tuple[PairedSplit, ...], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    model, _, ckpt = fitted[method]
    _, val = data
    top = {p.name for p in ckpt.iterdir() if p.is_file()}
    assert top == {"model.safetensors", "config.json", "summary.json"}
    # The only pickle is Lightning's resume state, which loading never reads (checked below).
    others = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*")
              if p.is_file() and p.suffix not in (".json", ".safetensors", ".csv", ".yaml")}
    assert others == ({"lightning/last.ckpt"} if model.trainable else set())

    config = saved_options(ckpt)
    assert config["method"] == method and config["direction"] == "text2image"
    assert (config["cond_dim"], config["target_dim"]) == (D, D)
    assert set(config["params"]) == option_names(method)
    for key, value in TINY.get(method, {}).items():
        assert config["params"][key] == value
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        assert {"cond_norm.mean", "cond_norm.std", "target_norm.mean"} <= set(f.keys())

    # Only the two files are needed, and nothing is unpickled on load.
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy(ckpt / name, alone / name)

    def no_unpickling(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load called while loading a translator")

    monkeypatch.setattr(torch, "load", no_unpickling)
    loaded = Translator.load(alone)
    assert type(loaded) is type(model) and loaded.config == model.config
    for mode in MODES:
        expected = model.translate(val.cond, mode=mode, n_samples=3, seed=7)
        got = loaded.translate(val.cond, mode=mode, n_samples=3, seed=7)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_load_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing.*modtrans train"):
        Translator.load(tmp_path)


# --- baselines -----------------------------------------------------------------------------


def test_ridge_recovers_linear_map(tmp_path: Path) -> None:
    train, val = linear_pairs(N_TRAIN, 1, noise=0.0), linear_pairs(N_VAL, 2, noise=0.0)
    model, info = fit_translator("ridge", train, val, tmp_path, progress=False)
    pred = model.translate(val.cond)
    assert sim(pred, val.target) > 0.999
    torch.testing.assert_close(pred, val.cond @ A, atol=0.02, rtol=0.01)
    chosen = info["chosen"]
    grid = model.options.lambdas
    assert chosen["lambda"] in grid
    by_lambda = chosen["val_sim_by_lambda"]
    assert list(by_lambda) == grid
    assert chosen["lambda"] == max(by_lambda, key=by_lambda.__getitem__)
    assert chosen["lambda"] == min(grid)  # noiseless: the least shrinkage wins


def test_ridge_picks_lambda_from_a_custom_grid(tmp_path: Path) -> None:
    train, val = linear_pairs(N_TRAIN, 1, noise=0.0), linear_pairs(N_VAL, 2, noise=0.0)
    grid = [100.0, 1e-3, 10.0]
    model, info = fit_translator("ridge", train, val, tmp_path, params={"lambdas": grid},
                                 progress=False)
    assert info["chosen"]["lambda"] == 1e-3
    assert saved_options(tmp_path)["params"]["lambdas"] == grid
    heavy, _ = fit_translator("ridge", train, val, tmp_path / "heavy",
                              params={"lambdas": [100.0]}, progress=False)
    assert sim(heavy.translate(val.cond), val.target) < sim(model.translate(val.cond),
                                                            val.target)


@pytest.mark.parametrize("method", ["identity", "mean-shift"])
def test_same_space_methods_reject_mismatched_dims(method: str, tmp_path: Path) -> None:
    train, val = linear_pairs(N_TRAIN, 1, cond_dim=8), linear_pairs(N_VAL, 2, cond_dim=8)
    with pytest.raises(ValueError, match=r"same size; got 8 and 16.*ridge"):
        fit_translator(method, train, val, tmp_path, progress=False)
    ridge, _ = fit_translator("ridge", train, val, tmp_path / "ridge", progress=False)
    assert ridge.translate(val.cond).shape == (N_VAL, D)


def test_identity_and_mean_shift_by_hand(fitted: dict, data: tuple[PairedSplit, ...]) -> None:
    train, val = data
    c = val.cond
    torch.testing.assert_close(fitted["identity"][0].translate(c), c)
    shifted = c - train.cond.mean(0) + train.target.mean(0)
    torch.testing.assert_close(fitted["mean-shift"][0].translate(c), shifted, atol=1e-4,
                               rtol=1e-4)


def test_knn_k1_returns_training_targets(data: tuple[PairedSplit, ...], tmp_path: Path) -> None:
    train, val = data
    model, info = fit_translator("knn", train, val, tmp_path, params={"ks": [1]},
                                 progress=False)
    assert info["chosen"]["k"] == 1
    torch.testing.assert_close(model.translate(train.cond), train.target, atol=1e-4, rtol=1e-4)
    loaded = Translator.load(tmp_path)
    assert loaded.options.n_train == N_TRAIN
    torch.testing.assert_close(loaded.translate(train.cond[:20]), train.target[:20], atol=1e-4,
                               rtol=1e-4)


# --- CED -----------------------------------------------------------------------------------


def test_ced_combine_by_hand(fitted: dict) -> None:
    model = fitted["ced"][0]
    g = seeded(3)
    cn, residual = torch.randn(5, D, generator=g), torch.randn(5, D, generator=g)
    expected = cn @ model.mapping + model.gamma * residual / residual.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(model.combine(cn, residual), expected)
    assert float(model.gamma) > 0


def test_ced_gamma_is_mean_residual_norm(fitted: dict, data: tuple[PairedSplit, ...]) -> None:
    model, info, _ = fitted["ced"]
    train, _ = data
    cn, zn = model.cond_norm(train.cond), model.target_norm(train.target)
    residual = zn - cn @ model.mapping
    assert float(model.gamma) == pytest.approx(float(residual.norm(dim=-1).mean()), rel=1e-5)
    assert info["chosen"]["gamma"] == pytest.approx(float(model.gamma))


def test_ced_mapping_is_the_ridge_solution(
    fitted: dict, data: tuple[PairedSplit, ...], tmp_path: Path
) -> None:
    ced, ced_info, _ = fitted["ced"]
    lambdas = CEDOptions().ridge_lambdas
    ridge, ridge_info = fit_translator("ridge", *data, tmp_path, params={"lambdas": lambdas},
                                       progress=False)
    assert ced_info["chosen"]["ridge_lambda"] == ridge_info["chosen"]["lambda"]
    torch.testing.assert_close(ced.mapping, ridge.weight)
    assert ced.mapping.abs().sum() > 0


def test_ced_sample_differs_across_seeds(fitted: dict, data: tuple[PairedSplit, ...]) -> None:
    model = fitted["ced"][0]
    c = data[1].cond[:50]
    a = model.translate(c, mode="sample", seed=0)
    b = model.translate(c, mode="sample", seed=1)
    assert (a - b).norm(dim=-1).min() > 1e-3


@pytest.mark.parametrize("sampling", [None, SamplerOptions(sampler="ddim", eta=1.0),
                                      SamplerOptions(sampler="dpm", eta=1.0)],
                         ids=["saved", "ddim-eta1", "dpm-sde"])
@pytest.mark.parametrize("method", ["ced", "ced-paper"])
@pytest.mark.parametrize("mode", MODES)
def test_a_rows_translation_does_not_depend_on_its_batch(
    method: str, mode: str, sampling: SamplerOptions | None, fitted: dict,
    data: tuple[PairedSplit, ...]
) -> None:
    """The same query and seed give the same translation alone, among other queries, in
    another order or batch size: with one seed for all rows, or one seed per row. The
    samplers' own per-step noise (η = 1) is drawn per row too. (The seed's batch Normalize
    depends on the batch by design: ``ced-paper`` is checked with the per-row one.)"""
    model = fitted[method][0]
    if method == "ced-paper":
        model = Translator.load(fitted[method][2])
        model.set_options(normalize="row")
    c = data[1].cond[:12]
    options = {"mode": mode, "n_samples": 3, "sampling": sampling}
    batch = model.translate(c, seed=4, **options)
    alone = torch.cat([model.translate(c[i:i + 1], seed=4, **options) for i in (0, 7)])
    torch.testing.assert_close(alone, batch[[0, 7]], atol=1e-5, rtol=1e-5)
    perm = torch.randperm(len(c), generator=seeded(0))
    torch.testing.assert_close(model.translate(c[perm], seed=4, batch_size=5, **options),
                               batch[perm], atol=1e-5, rtol=1e-5)
    seeds = row_seeds(9, len(c))
    own = model.translate(c, seed=seeds, **options)
    torch.testing.assert_close(
        model.translate(c[perm], seed=[seeds[i] for i in perm], **options), own[perm],
        atol=1e-5, rtol=1e-5)
    assert not torch.allclose(own, batch, atol=1e-3)  # the seeds do matter


def test_one_seed_per_row_is_checked(fitted: dict, data: tuple[PairedSplit, ...]) -> None:
    with pytest.raises(ValueError, match="one seed per row: 2 seeds for 3 rows"):
        fitted["ced"][0].translate(data[1].cond[:3], seed=[1, 2])


@pytest.mark.parametrize("method", ["ced", "ced-paper"])
@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_output(
    method: str, mode: str, fitted: dict, data: tuple[PairedSplit, ...]
) -> None:
    model = fitted[method][0]
    c = data[1].cond[:30]
    a = model.translate(c, mode=mode, n_samples=3, seed=5)
    b = model.translate(c, mode=mode, n_samples=3, seed=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, model.translate(c, mode=mode, n_samples=3, seed=6))


def test_ced_mean_mode_has_lower_spread(fitted: dict, data: tuple[PairedSplit, ...]) -> None:
    model = fitted["ced"][0]
    c = data[1].cond[:50]
    k = 8

    def spread(mode: str) -> float:
        outs = torch.stack([model.translate(c, mode=mode, n_samples=k, seed=s)
                            for s in range(6)])  # (seeds, N, D)
        return float(outs.std(0).mean())

    one, mean = spread("sample"), spread("mean")
    assert one > 0
    assert mean < 0.6 * one  # ~1/√k for independent draws


def test_ced_best_of_k_returns_the_draw_closest_to_the_mapping(
    fitted: dict, data: tuple[PairedSplit, ...]
) -> None:
    model = fitted["ced"][0]
    c, k = data[1].cond[:40], 5
    best = model.translate(c, mode="best-of-k", n_samples=k, seed=11)
    mean = model.translate(c, mode="mean", n_samples=k, seed=11)
    # The same draws by hand: K copies of the batch, one residual each.
    with torch.no_grad():
        cn = model.cond_norm(c)
        residual = model.sample_residual(cn.repeat(k, 1), noise=_row_noise(11, len(c), k))
        z_hat = model.combine(cn.repeat(k, 1), residual).view(k, len(c), D)  # (K, N, D)
        score = F.cosine_similarity(z_hat, model.mapped(cn).unsqueeze(0), dim=-1)  # (K, N)
        draws = model.target_norm.inverse(z_hat)
    distance = (draws - best.unsqueeze(0)).norm(dim=-1)  # (K, N)
    assert distance.min(0).values.max() < 1e-4  # every row is one of the draws...
    assert torch.equal(distance.argmin(0), score.argmax(0))  # ...the one closest to c·M
    assert len(set(score.argmax(0).tolist())) > 1  # not always the same draw index
    assert not torch.allclose(mean, model.target_norm.inverse(z_hat.mean(0)), atol=1e-4)


def _row_noise(seed: int, n: int, k: int) -> torch.Tensor:
    """The K draws' initial noise of n rows seeded ``seed``, (K·N, D), draw-major: each row's
    K·D values from its own generator."""
    rows = [torch.randn(k, D, generator=g) for g in row_generators(seed, n)]
    return torch.stack(rows, dim=1).reshape(k * n, D)


def _antithetic_mean_by_hand(model, c: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    with torch.no_grad():
        cn = model.cond_norm(c)
        noise = _row_noise(seed, len(c), k).view(k, len(c), D)
        half = (k + 1) // 2
        noise = torch.cat([noise[:half], -noise[:half]])[:k].reshape(k * len(c), D)
        residual = model.sample_residual(cn.repeat(k, 1), noise=noise)
        z_hat = model.combine(cn.repeat(k, 1), residual).view(k, len(c), D)
        mapped = model.mapped(cn)  # the mean of the draws, shrunk toward the map
        return model.target_norm.inverse(mapped + model.mean_shrink * (z_hat.mean(0) - mapped))


@pytest.mark.parametrize("k", [4, 5])
def test_ced_mean_averages_antithetic_draws(fitted: dict, data: tuple[PairedSplit, ...],
                                            k: int) -> None:
    model = fitted["ced"][0]
    c = data[1].cond[:30]
    mean = model.translate(c, mode="mean", n_samples=k, seed=3)
    torch.testing.assert_close(mean, _antithetic_mean_by_hand(model, c, k, 3))


def test_mean_shrink_is_chosen_on_val_by_the_mean_modes_sim(
    fitted: dict, data: tuple[PairedSplit, ...]
) -> None:
    """The shrink kept is the grid value whose mean mode scores best on val, and 0 gives
    the map alone."""
    model, info, _ = fitted["ced"]
    grid = info["chosen"]["mean_shrink_val_sim"]
    assert set(grid) == {str(s) for s in CEDOptions().mean_shrinks}
    assert info["chosen"]["mean_shrink"] == model.mean_shrink
    assert grid[str(model.mean_shrink)] == max(grid.values())
    c = data[1].cond[:20]
    shrunk = dataclasses.replace(model.options, mean_shrink=0.0)
    model.options, kept = shrunk, model.options
    try:
        with torch.no_grad():
            mapped = model.target_norm.inverse(model.mapped(model.cond_norm(c)))
        torch.testing.assert_close(model.translate(c, mode="mean", n_samples=2), mapped)
    finally:
        model.options = kept


def test_antithetic_mean_varies_less_than_independent_draws(
    fitted: dict, data: tuple[PairedSplit, ...]
) -> None:
    """Across seeds, the antithetic mean of 4 draws moves less than the mean of 4 independent
    draws: the variance reduction the mean mode relies on."""
    model = fitted["ced"][0]
    c, k = data[1].cond[:50], 4
    antithetic = torch.stack([model.translate(c, mode="mean", n_samples=k,
                                              seed=s) for s in range(6)])
    with torch.no_grad():
        cn = model.cond_norm(c)
        independent = []
        for s in range(6):
            residual = model.sample_residual(cn.repeat(k, 1), generator=seeded(100 + s))
            z_hat = model.combine(cn.repeat(k, 1), residual).view(k, len(c), D)
            independent.append(model.target_norm.inverse(z_hat.mean(0)))
    spread = antithetic.var(dim=0).mean()
    assert spread < 0.8 * torch.stack(independent).var(dim=0).mean()


def test_ced_sampler_options_override_the_defaults(
    fitted: dict, data: tuple[PairedSplit, ...]
) -> None:
    model = fitted["ced"][0]
    c = data[1].cond[:20]
    default = model.translate(c, mode="sample", seed=0)
    explicit = model.options.sampling
    assert torch.equal(model.translate(c, mode="sample", seed=0, sampling=explicit),
                       default)
    for override in ({"steps": 2}, {"sampler": "ddim"}, {"guidance": 0.0}):
        other = model.translate(c, mode="sample", seed=0,
                                sampling=SamplerOptions(**override))
        assert not torch.equal(other, default), override
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['step'\].*'steps'"):
        model.translate(c, sampling=SamplerOptions.from_dict({"step": 2}))
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        model.translate(c, sampling=SamplerOptions(sampler="nope"))


def test_sampling_override_equals_a_checkpoint_saved_with_it(
    fitted: dict, data: tuple[PairedSplit, ...], tmp_path: Path
) -> None:
    model, _, ckpt = fitted["ced"]
    c = data[1].cond[:20]
    one_step = model.translate(c, seed=0, sampling=SamplerOptions(steps=1))
    assert not torch.equal(one_step, model.translate(c, seed=0))
    shutil.copytree(ckpt, tmp_path / "ced")
    config = saved_options(tmp_path / "ced")
    config["params"]["steps"] = 1
    write_options(tmp_path / "ced", config)
    saved = Translator.load(tmp_path / "ced")
    assert saved.options.sampling == dataclasses.replace(model.options.sampling, steps=1)
    assert torch.equal(saved.translate(c, seed=0), one_step)


def test_baselines_ignore_sampling(fitted: dict, data: tuple[PairedSplit, ...]) -> None:
    model, c = fitted["ridge"][0], data[1].cond[:20]
    assert torch.equal(model.translate(c, sampling=SamplerOptions(steps=1, sampler="ddim")),
                       model.translate(c))


def test_ced_beats_identity_on_val(fitted: dict, data: tuple[PairedSplit, ...]) -> None:
    _, val = data
    ced_sim = sim(fitted["ced"][0].translate(val.cond, mode="mean", seed=0),
                  val.target)
    identity_sim = sim(fitted["identity"][0].translate(val.cond), val.target)
    ridge_sim = sim(fitted["ridge"][0].translate(val.cond), val.target)
    assert ced_sim > 0.9 and ced_sim > identity_sim + 0.5
    assert ced_sim > ridge_sim - 0.05


def test_ced_mlp_mean_map_learns_what_ridge_cannot(tmp_path: Path) -> None:
    train, val = (linear_pairs(n, seed, nonlinear=5.0) for n, seed in ((N_TRAIN, 1), (N_VAL, 2)))
    params = {**TINY["ced"], "mean_map": "mlp", "map_width": 128}
    L.seed_everything(0, verbose=False)
    untrained = build_translator("ced", "text2image", train, params=params)
    cn, zn = untrained.cond_norm(train.cond), untrained.target_norm(train.target)
    untrained.prepare(cn, zn, cn, zn)
    with torch.no_grad():  # the correction starts at zero: training starts from the ridge map
        torch.testing.assert_close(untrained.eval().mapped(cn), cn @ untrained.mapping)

    model, info = fit_translator("ced", train, val, tmp_path, params=params,
                                 recipe=train_config(epochs=40, batch_size=64),
                                 progress=False)
    vcn, vzn = model.cond_norm(val.cond), model.target_norm(val.target)
    with torch.no_grad():
        ridge_sim = model.val_similarity(vcn @ model.mapping, vzn)
        mlp_sim = model.val_similarity(model.mapped(vcn), vzn)
        residual = vzn - model.mapped(vcn)
    assert mlp_sim > ridge_sim + 0.05, (mlp_sim, ridge_sim)
    # γ is re-measured on the trained map's val residual, so a draw has its size on new data.
    assert float(model.gamma) == pytest.approx(float(residual.norm(dim=-1).mean()), rel=1e-4)
    assert info["chosen"]["gamma"] == pytest.approx(float(model.gamma))
    reloaded = Translator.load(tmp_path)
    torch.testing.assert_close(reloaded.mapped(vcn), model.mapped(vcn))


def test_ced_diffusion_loss_leaves_the_mean_map_alone(data: tuple[PairedSplit, ...]) -> None:
    model = build_translator("ced", "text2image", data[0],
                             params={**TINY["ced"], "mean_map": "mlp", "map_width": 32})
    model.correction[-1].weight.data.normal_()  # a non-zero map, as after some training
    cn, zn = model.cond_norm(data[0].cond[:64]), model.target_norm(data[0].target[:64])
    params = [*model.correction.parameters(), model.denoiser.out.weight]
    *from_total, denoiser_grad = torch.autograd.grad(model.training_loss(cn, zn), params)
    from_mse = torch.autograd.grad(F.mse_loss(model.mapped(cn), zn), params[:-1])
    # The map's gradient is its MSE term's alone: the diffusion target is detached from it.
    for total, mse in zip(from_total, from_mse, strict=True):
        torch.testing.assert_close(total, mse)
    assert denoiser_grad.abs().sum() > 0


def test_ced_rejects_an_unknown_mean_map(data: tuple[PairedSplit, ...]) -> None:
    with pytest.raises(ValueError, match="mean_map must be 'ridge' or 'mlp'"):
        build_translator("ced", "text2image", data[0], params={"mean_map": "linear"})


def test_checkpoint_without_a_newer_option_loads_with_its_default(fitted: dict,
                                                                  tmp_path: Path) -> None:
    ckpt = tmp_path / "ced"
    shutil.copytree(fitted["ced"][2], ckpt)
    config = saved_options(ckpt)
    for key in ("mean_map", "map_width", "map_depth"):  # as written before they existed
        del config["params"][key]
    write_options(ckpt, config)
    old, new = Translator.load(ckpt), Translator.load(fitted["ced"][2])
    assert old.options.mean_map == "ridge" and old.correction is None
    assert old.options == new.options and old.config.params == new.config.params
    c = torch.randn(8, D, generator=seeded(5))
    torch.testing.assert_close(old.translate(c, mode="sample", seed=6),
                               new.translate(c, mode="sample", seed=6))


def _mean_loss(model: Translator, cn: torch.Tensor, zn: torch.Tensor, repeats: int = 8) -> float:
    torch.manual_seed(0)
    with torch.no_grad():
        return sum(float(model.training_loss(cn, zn)) for _ in range(repeats)) / repeats


def test_ced_training_lowers_the_loss(tmp_path: Path) -> None:
    # A residual the denoiser can learn: z = c·A + sign(c₀)·1 + noise (bimodal given c·A).
    def pairs(n: int, seed: int) -> PairedSplit:
        g = torch.Generator().manual_seed(seed)
        c = torch.randn(n, D, generator=g)
        z = c @ A + torch.sign(c[:, :1]) + 0.05 * torch.randn(n, D, generator=g)
        return PairedSplit("text2image", z, c, torch.arange(n))

    train, val = pairs(N_TRAIN, 1), pairs(N_VAL, 2)
    tc = train_config(epochs=5, batch_size=64)
    losses: dict[Any, float] = {}
    default_ema = CEDOptions().ema_decay
    for ema in (None, default_ema):
        params = {**TINY["ced"], "ema_decay": ema}
        model, info = fit_translator("ced", train, val, tmp_path / str(ema), params=params,
                                     recipe=tc, progress=False)
        assert info["steps"] == 5 * (N_TRAIN // 64)
        L.seed_everything(tc.seed, verbose=False)  # the same initial weights as the fit
        untrained = build_translator("ced", "text2image", train, params=params)
        cn, zn = untrained.cond_norm(train.cond), untrained.target_norm(train.target)
        untrained.prepare(cn, zn, cn, zn)
        losses["init"] = _mean_loss(untrained.eval(), cn, zn)
        losses[ema] = _mean_loss(model.eval(), cn, zn)
    # Both the raw weights and the (warmed-up) EMA weights saved when ema_decay is set learn.
    assert losses[None] < 0.85 * losses["init"], losses
    assert losses[default_ema] < 0.85 * losses["init"], losses

    with open(tmp_path / "None" / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    sims = [float(r["val/sim"]) for r in rows if r.get("val/sim")]
    assert len(logged) >= 3 and len(sims) == 5
    assert logged[-1] < logged[0]


def test_ced_paper_rec_loss_backpropagates_through_the_sampler(
    fitted: dict, data: tuple[PairedSplit, ...]
) -> None:
    model = Translator.load(fitted["ced-paper"][2])  # own copy: its params are changed here
    model.set_options(lambda_diff=0.0)  # the L1 term through the DDIM sample, alone
    train, _ = data
    cn, zn = model.cond_norm(train.cond[:64]), model.target_norm(train.target[:64])
    model.train()
    model.zero_grad()
    torch.manual_seed(0)
    model.training_loss(cn, zn).backward()
    denoiser = dict(model.denoiser.named_parameters())
    for name in ("out.weight", "layers.0.linear.weight", "layers.0.cond_in.weight",
                 "time_mlp.0.weight"):
        grad = denoiser[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.projection.weight.grad.abs().sum() > 0


def test_ced_paper_batch_normalize_by_hand(fitted: dict) -> None:
    """The seed's ẑ = c·M + γ·F/‖F‖ in raw space, ‖F‖ the norm of all N rows of a draw
    together (F un-normalised first), returned in normalised space."""
    model = fitted["ced-paper"][0]
    assert (model.options.normalize, model.options.space) == ("batch", "raw")
    g = seeded(3)
    n, draws = 5, 2
    cn, residual = torch.randn(n, D, generator=g), torch.randn(draws * n, D, generator=g)
    raw = model.target_norm.inverse(residual).view(draws, n, D)
    term = torch.stack([block / torch.sqrt((block ** 2).sum()) for block in raw])
    mapped = model.cond_norm.inverse(cn) @ model.projection.weight.T
    expected = model.target_norm((mapped + model.gamma * term).reshape(draws * n, D))
    torch.testing.assert_close(model.combine(cn.repeat(draws, 1), residual, draws), expected)


def test_ced_paper_batch_normalize_depends_on_the_batch(
    fitted: dict, data: tuple[PairedSplit, ...]
) -> None:
    model = fitted["ced-paper"][0]
    c = data[1].cond[:12]
    alone = model.translate(c[:1], mode="sample", seed=4)
    assert not torch.allclose(alone, model.translate(c, mode="sample", seed=4)[:1], atol=1e-4)


def test_ced_paper_two_chain_guidance_by_hand(fitted: dict) -> None:
    """The seed's guidance: two DDIM chains (the unconditional one from its own noise, drawn
    after the conditional one's) mixed as (1 + w)·x_c − w·x_u with w = 5."""
    model = fitted["ced-paper"][0]
    o = model.options
    assert (o.guidance_mode, o.guidance, o.spacing) == ("chains", 6.0, "leading")
    cn = torch.randn(4, D, generator=seeded(5))
    noise = torch.randn(4, D, generator=seeded(6))
    got = model.sample_residual(cn, noise=noise, generator=row_generators(7, 4))
    noise_null = torch.stack([torch.randn(D, generator=g) for g in row_generators(7, 4)])
    schedule = model.schedule
    timesteps = list(range(1000 // o.steps * (o.steps - 1), -1, -(1000 // o.steps)))

    def chain(x: torch.Tensor, keep: bool) -> torch.Tensor:
        mask = torch.full((4,), keep)
        for i, t in enumerate(timesteps):  # DDIM η = 0 on the ε-prediction, by hand
            eps = model.denoiser(x, torch.full((4,), t), cn, mask)
            ab, ab_prev = schedule.alphas_cumprod[t], (
                schedule.alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0)
            x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            x = ab_prev ** 0.5 * x0 + (1 - ab_prev) ** 0.5 * eps
        return x

    with torch.no_grad():
        expected = 6 * chain(noise, True) - 5 * chain(noise_null, False)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_ced_paper_drops_the_condition_for_the_whole_batch(
    fitted: dict, data: tuple[PairedSplit, ...]
) -> None:
    """A dropped step (the seed's p = cond_drop per step) trains the unconditional diffusion
    loss only: no reconstruction, so M gets no gradient."""
    model = Translator.load(fitted["ced-paper"][2])
    model.set_options(cond_drop=0.999)
    train, _ = data
    cn, zn = model.cond_norm(train.cond[:64]), model.target_norm(train.target[:64])
    model.train()
    torch.manual_seed(0)
    model.training_loss(cn, zn).backward()
    assert model.projection.weight.grad.abs().sum() == 0  # zero, but there (for DDP)
    assert model.denoiser.out.weight.grad.abs().sum() > 0
    assert model.denoiser.layers[0].cond_in.weight.grad.abs().sum() == 0  # no shift


def test_ced_paper_checkpoints_from_before_the_seed_options_keep_their_behaviour(
    data: tuple[PairedSplit, ...], tmp_path: Path
) -> None:
    legacy = {"net": "film", "spacing": "linspace", "guidance_mode": "step",
              "normalize": "row", "space": "z", "cond_drop_mode": "sample", "grad_clip": None}
    model, _ = fit_translator("ced-paper", *data, tmp_path, recipe=train_config(epochs=1),
                              params={**TINY["ced-paper"], **legacy}, progress=False)
    options = saved_options(tmp_path)
    options["params"] = {k: v for k, v in options["params"].items() if k not in legacy}
    write_options(tmp_path, options)
    old = Translator.load(tmp_path)
    assert {k: getattr(old.options, k) for k in legacy} == legacy
    c = data[1].cond[:8]
    torch.testing.assert_close(old.translate(c, seed=1), model.translate(c, seed=1))


def test_ced_paper_trains_with_the_seeds_gradient_clipping(fitted: dict) -> None:
    assert fitted["ced-paper"][1]["chosen"] == {"gamma": 1.0}
    assert read_summary(fitted["ced-paper"][2])["train_config"]["gradient_clip"] == 1.0


def test_ced_rejects_bad_cond_drop(data: tuple[PairedSplit, ...]) -> None:
    with pytest.raises(ValueError, match="cond_drop"):
        build_translator("ced", "text2image", data[0], params={**TINY["ced"], "cond_drop": 1.0})


# --- translate errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "kwargs", "needle"),
    [
        (lambda c: torch.where(torch.arange(len(c))[:, None] == 2, math.nan, c), {},
         "NaN or inf in 1 row"),
        (lambda c: c[:, :8], {}, r"shape \(N, 16\); got \(10, 8\)"),
        (lambda c: c[:, None], {}, r"shape \(N, 16\)"),
        (lambda c: c[:0], {}, "empty"),
        (lambda c: c, {"mode": "median"}, "mode must be one of .*'median'"),
        (lambda c: c, {"n_samples": 0}, "n_samples must be at least 1"),
    ],
    ids=["nan", "wrong-dim", "wrong-rank", "empty", "bad-mode", "no-samples"],
)
@pytest.mark.parametrize("method", ["ridge", "ced"])
def test_translate_rejects_bad_input(
    method: str, make: Any, kwargs: dict, needle: str, fitted: dict,
    data: tuple[PairedSplit, ...],
) -> None:  # fmt: skip
    with pytest.raises(ValueError, match=needle):
        fitted[method][0].translate(make(data[1].cond[:10]), **kwargs)


# --- resume, options -----------------------------------------------------------------------


def test_resume_continues_from_last_checkpoint(
    data: tuple[PairedSplit, ...], tmp_path: Path
) -> None:
    steps_per_epoch = N_TRAIN // BATCH
    _, first = fit_translator("ced", *data, tmp_path, params=TINY["ced"],
                              recipe=train_config(epochs=1), progress=False)
    assert first["steps"] == steps_per_epoch
    assert (tmp_path / "lightning" / "last.ckpt").is_file()
    _, info = fit_translator("ced", *data, tmp_path, params=TINY["ced"], resume=True,
                             recipe=train_config(epochs=2), progress=False)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert info["steps"] == saved["steps"] == 2 * steps_per_epoch
    assert saved["epochs"] == 2
    assert torch.isfinite(Translator.load(tmp_path).translate(data[1].cond[:5])).all()
    # The log keeps the first run's rows (Lightning's CSV logger would delete them).
    with open(tmp_path / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val_epochs = [int(r["epoch"]) for r in rows if r.get("val/sim")]
    assert val_epochs == [0, 1]
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)


def test_resume_without_checkpoint(data: tuple[PairedSplit, ...], tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """A run killed before its first checkpoint (with its folder made, or not even that)
    starts again, saying so."""
    for out, why in ((tmp_path / "never_run", "no earlier run there"),
                     (tmp_path, "the run stopped before its first")):
        with caplog.at_level(logging.WARNING):
            _, info = fit_translator("ced", *data, out, params=TINY["ced"], resume=True,
                                     recipe=train_config(epochs=1), progress=False)
        assert info["steps"] > 0 and (out / "model.safetensors").is_file()
        assert f"no checkpoint at {out / 'lightning' / 'last.ckpt'} yet ({why}" in caplog.text


def test_unknown_method_option(data: tuple[PairedSplit, ...], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['widht'\].*valid options: .*'width'"):
        fit_translator("mlp", *data, tmp_path, params={"widht": 32}, progress=False)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("method", METHODS)
def test_unknown_option_lists_the_options_dataclass_fields(
    method: str, data: tuple[PairedSplit, ...]
) -> None:
    with pytest.raises(ValueError, match=r"\['nope'\].*valid options") as error:
        build_translator(method, "text2image", data[0], params={"nope": 1})
    assert f"valid options: {sorted(option_names(method))}" in str(error.value)


@pytest.mark.parametrize(
    ("options_class", "values", "needle"),
    [
        (CEDOptions, {"cond_drop": 1.0}, r"cond_drop must be in \[0, 1\).*--param cond_drop"),
        (CEDOptions, {"mean_map": "linear"}, "mean_map must be 'ridge' or 'mlp'.*--param"),
        (CEDOptions, {"objective": "score"}, "objective must be one of.*--param objective"),
        (CEDOptions, {"ridge_lambdas": []}, "ridge_lambdas must be a non-empty.*--param"),
        (CEDOptions, {"steps": 0}, "steps must be an int >= 1"),
        (CEDOptions, {"steps": None}, "steps.*need values.*--param"),
        (CEDOptions, {"sampler": "euler"}, "unknown sampler 'euler'.*'ddim'"),
        (CEDPaperOptions, {"guidance": -1.0}, "guidance must be >= 0"),
        (CEDPaperOptions, {"cond_drop": -0.1}, "cond_drop"),
        (RidgeOptions, {"lambdas": [0.1, -1.0]}, "lambdas must be a non-empty list.*--param"),
        (MLPOptions, {"loss": "l1"}, "mlp loss must be 'cosine' or 'mse'.*--param loss"),
        (MLPOptions, {"width": 0}, "width and depth must be at least 1.*--param width"),
        (MLPOptions, {"dropout": 1.0}, r"dropout must be in \[0, 1\).*--param dropout"),
        (KNNOptions, {"ks": []}, "ks must be a non-empty list.*--param ks"),
        (KNNOptions, {"k": 0}, "k must be >= 1"),
    ],
)
def test_options_validation_names_the_option(options_class: type, values: dict,
                                             needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        options_class(**values)


def test_options_round_trip_as_the_checkpoint_dict(fitted: dict) -> None:
    for method in METHODS:
        model = fitted[method][0]
        assert model.config.params == model.options.to_dict()
        assert type(model.options).from_dict(model.config.params) == model.options
    knn = fitted["knn"][0]
    assert (knn.options.n_train, knn.config.params["n_train"]) == (N_TRAIN, N_TRAIN)


def test_unknown_method(data: tuple[PairedSplit, ...], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown method 'diffusion'.*'ced'.*'ridge'"):
        fit_translator("diffusion", *data, tmp_path, progress=False)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="direction must be one of"):
        TranslatorConfig(method="ridge", direction="image2image", cond_dim=4, target_dim=4)
    with pytest.raises(ValueError, match="cond_dim must be positive"):
        TranslatorConfig(method="ridge", direction="text2image", cond_dim=0, target_dim=4)
    with pytest.raises(ValueError, match="epochs, batch_size, checkpoint_every and num_nodes"):
        Recipe(epochs=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        Recipe(checkpoint_every=0)
    with pytest.raises(ValueError, match="logger"):
        Recipe(logger="wandb")
    with pytest.raises(ValueError, match="precision must be one of"):
        Recipe(precision="bf16-true")
    assert Recipe(precision="bf16-mixed").precision == "bf16-mixed"


def test_image2text_direction(tmp_path: Path) -> None:
    train = linear_pairs(N_TRAIN, 1, noise=0.0, direction="image2text")
    val = linear_pairs(N_VAL, 2, noise=0.0, direction="image2text")
    model, _ = fit_translator("ridge", train, val, tmp_path, progress=False)
    assert model.config.direction == "image2text"
    assert (model.config.cond_modality, model.config.target_modality) == ("image", "text")
    assert sim(model.translate(val.images), val.texts) > 0.999


def test_a_fit_prints_no_third_party_noise(data: tuple[PairedSplit, ...], tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture,
                                           recwarn: pytest.WarningsRecorder) -> None:
    """Lightning's cloud-logger tip and torch's LeafSpec deprecation are filtered out."""
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        fit_translator("ridge", *data, tmp_path, progress=False)
        fit_translator("mlp", *data, tmp_path / "mlp", params={"width": 16},
                       recipe=train_config(epochs=1), progress=False)
    assert "litlogger" not in caplog.text and "GPU available" in caplog.text
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]
