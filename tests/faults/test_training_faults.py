"""Faults in training: a run killed at any step resumes to the same weights; NaN in a store,
a loss or a checkpoint gives a clear error and nothing non-finite is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modtrans.data.pairs import load_pairs
from modtrans.data.store import open_store
from modtrans.errors import NonFiniteError
from modtrans.training import fit as fit_module
from modtrans.training.fit import Recipe
from modtrans.training.translator import fit_translator
from tests.cli_helpers import assert_cli_error

RECIPE = Recipe(epochs=2, batch_size=16, checkpoint_every=3, progress=False, logger="none")
PARAMS = {"ced": {"steps": 2, "width": 32, "depth": 1, "map_width": 32},
          "ced-paper": {"steps": 2, "width": 32, "depth": 1}, "mlp": {"width": 32}}


class Killed(Exception):
    """Stands for kill -9 right after a step (and any checkpoint it wrote)."""


def _pairs(store: Path) -> tuple:
    return tuple(load_pairs(open_store(store, s), "text2image") for s in ("train", "val"))


def _kill_at(monkeypatch: pytest.MonkeyPatch, step: int, stage: str = "") -> None:
    """Make training of ``stage`` die (as by kill -9) right after step ``step``."""
    original = fit_module.ResumePoint.on_train_batch_end

    def killing(self, trainer, *args):
        original(self, trainer, *args)
        if trainer.global_step == step and self.path.parent.name == (stage or "lightning"):
            raise Killed

    monkeypatch.setattr(fit_module.ResumePoint, "on_train_batch_end", killing)


def _assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    files = sorted(p.name for p in a_dir.glob("*.safetensors"))
    assert files and files == sorted(p.name for p in b_dir.glob("*.safetensors"))
    for name in files:
        a, b = load_file(a_dir / name), load_file(b_dir / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}: {key}")


@pytest.mark.parametrize(("method", "kill_at"), [("ced", 2), ("ced", 7), ("mlp", 5),
                                                 ("ced-paper", 4)])
def test_killed_run_resumes_to_the_same_weights(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str,
    kill_at: int,
) -> None:
    train, val = _pairs(tiny_store)
    _, whole = fit_translator(method, train, val, tmp_path / "whole", recipe=RECIPE,
                              params=PARAMS[method], progress=False)
    assert whole["steps"] > kill_at
    with monkeypatch.context() as m:
        _kill_at(m, kill_at)
        with pytest.raises(Killed):
            fit_translator(method, train, val, tmp_path / "cut", recipe=RECIPE,
                           params=PARAMS[method], progress=False)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    _, resumed = fit_translator(method, train, val, tmp_path / "cut", recipe=RECIPE,
                                params=PARAMS[method], resume=True, progress=False)
    assert resumed["steps"] == whole["steps"]
    _assert_same_weights(tmp_path / "whole", tmp_path / "cut")


def _fit_encoder(world: Path, store: Path, out: Path, resume: bool) -> None:
    from modtrans.world.clip import WorldClipConfig, fit_world_clip_from_world

    config = WorldClipConfig(vision="cnn", channels=(8, 16), text_width=32, heads=2,
                             text_layers=1, projection_dim=16, epochs=2, batch_size=16,
                             warm_start_epochs=2)
    fit_world_clip_from_world(world, out, config=config, accelerator="cpu", progress=False,
                              resume=resume)


def _fit_image_decoder(world: Path, store: Path, out: Path, resume: bool) -> None:
    from modtrans.decoders.image_vae import ImageDecoderConfig, fit_image_decoder

    config = ImageDecoderConfig(latent_channels=2, channels=(8, 8, 16), epochs=2,
                                batch_size=16, prior={"width": 32, "depth": 2, "emb_dim": 32,
                                                      "train_steps": 8, "steps": 3})
    fit_image_decoder(*_stores(store), out, config, accelerator="cpu", progress=False,
                      resume=resume)


def _fit_caption_decoder(world: Path, store: Path, out: Path, resume: bool) -> None:
    from modtrans.decoders.caption import CaptionDecoderConfig, fit_caption_decoder

    config = CaptionDecoderConfig(mode="capdec", width=16, layers=1, heads=2, prefix_length=2,
                                  epochs=2, batch_size=16)
    fit_caption_decoder(*_stores(store), out, config, accelerator="cpu", progress=False,
                        resume=resume)


TINY_AUGVAE = {"channels": (8, 8, 8), "codebook_size": 16, "code_dim": 8, "batch_size": 16,
               "epochs": 2}


def _fit_tokenizer(world: Path, store: Path, out: Path, resume: bool) -> None:
    from modtrans.decoders.augvae import AugVAEConfig, fit_augvae
    from modtrans.world.recogniser import world_split

    images, _ = world_split(world, "train")
    fit_augvae(images, images[:4], out, AugVAEConfig(**TINY_AUGVAE), accelerator="cpu",
               progress=False, resume=resume)


def _fit_biart(world: Path, store: Path, out: Path, resume: bool) -> None:
    from modtrans.data.coco import read_coco_captions
    from modtrans.decoders.augvae import AugVAE, AugVAEConfig
    from modtrans.decoders.biart import BiARTConfig, fit_biart
    from modtrans.world.recogniser import world_split

    tokenizer = out.parent / f"{out.name}_tokenizer"
    torch.manual_seed(0)  # the same (untrained) tokenizer for every run
    AugVAE(AugVAEConfig(**TINY_AUGVAE)).save(tokenizer)
    images, _ = world_split(world, "train")
    captions = read_coco_captions(world / "train" / "captions.json").captions
    config = BiARTConfig(max_text_length=12, width=16, layers=1, heads=2, batch_size=32,
                         epochs=2)
    fit_biart(images[:20], captions[:20], images[:2], captions[:2], tokenizer, out, config,
              accelerator="cpu", progress=False, resume=resume)


def _stores(store: Path) -> tuple:
    from modtrans.data.store import EmbeddingStore

    return EmbeddingStore(store / "train"), EmbeddingStore(store / "val")


@pytest.mark.parametrize(("trainer", "stage", "kill_at"), [
    (_fit_encoder, "warm_start", 4), (_fit_encoder, "", 4),
    (_fit_image_decoder, "", 4), (_fit_image_decoder, "prior", 5),
    (_fit_caption_decoder, "", 4), (_fit_tokenizer, "", 4), (_fit_biart, "", 5)],
    ids=["encoder-warm-start", "encoder", "image-decoder", "image-decoder-prior",
         "caption-decoder", "tokenizer", "biart"])
def test_every_trainer_resumes_to_the_same_weights(
    tiny_world: Path, tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    trainer, stage: str, kill_at: int,
) -> None:
    """fit-encoder, fit-decoder (image: both stages; caption), fit-tokenizer and fit-biart
    killed mid-run and resumed end with the weights of a run that was never stopped."""
    trainer(tiny_world, tiny_store, tmp_path / "whole", False)
    with monkeypatch.context() as m:
        _kill_at(m, kill_at, stage)
        with pytest.raises(Killed):
            trainer(tiny_world, tiny_store, tmp_path / "cut", False)
    trainer(tiny_world, tiny_store, tmp_path / "cut", True)
    _assert_same_weights(tmp_path / "whole", tmp_path / "cut")


def _nan_store(tiny_store: Path, tmp_path: Path) -> Path:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    shard = store / "train" / "img_emb" / "img_emb_0.npy"
    a = np.load(shard)
    a[[1, 4]] = np.nan
    a[6, 0] = np.inf
    np.save(shard, a)
    return store


def test_nan_rows_in_a_store_stop_training_with_the_shard_named(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _nan_store(tiny_store, tmp_path)
    argv = ["train", "--data", str(store), "--direction", "text2image", "--method", "ridge",
            "--out", str(tmp_path / "ridge")]
    assert_cli_error(capsys, argv, "img_emb_0.npy", "3 rows", "[1, 4, 6]", "'train'",
                     "--skip-bad-rows")
    assert not (tmp_path / "ridge").exists()


def test_skip_bad_rows_leaves_out_those_images_and_their_captions(
    tiny_store: Path, tmp_path: Path
) -> None:
    store = _nan_store(tiny_store, tmp_path)
    clean = load_pairs(open_store(tiny_store, "train"), "text2image")
    pairs = load_pairs(open_store(store, "train", skip_bad_rows=True), "text2image")
    assert len(pairs.images) == len(clean.images) - 3
    assert torch.isfinite(pairs.images).all() and torch.isfinite(pairs.target).all()
    dropped = np.isin(clean.owner.numpy(), [1, 4, 6])
    assert len(pairs.texts) == int((~dropped).sum())
    torch.testing.assert_close(pairs.texts, clean.texts[torch.from_numpy(~dropped)])


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, val = _pairs(tiny_store)
    original = fit_module.FitModule.training_step

    def step(self, batch, batch_idx):
        if self.global_step >= 4:
            batch = tuple(torch.full_like(t, float("nan")) for t in batch)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(fit_module.FitModule, "training_step", step)
    with pytest.raises(NonFiniteError, match="at step 4"):
        fit_translator("mlp", train, val, tmp_path, recipe=RECIPE, params=PARAMS["mlp"],
                       progress=False)
    checkpoint = torch.load(tmp_path / "lightning" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert not (tmp_path / "model.safetensors").exists()


def test_a_translator_with_nan_weights_is_not_saved(tiny_store: Path, tmp_path: Path) -> None:
    train, val = _pairs(tiny_store)
    model, _ = fit_translator("ridge", train, val, tmp_path / "ok", progress=False)
    with torch.no_grad():
        next(p for p in model.state_dict().values() if p.is_floating_point()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="not saving"):
        model.save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_hostile_checkpoint_is_refused_without_torch_advice(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pickle

    out = tmp_path / "run"
    (out / "lightning").mkdir(parents=True)
    with open(out / "lightning" / "last.ckpt", "wb") as f:
        pickle.dump({"state": Killed}, f)  # a class: not allowed by weights_only
    argv = ["train", "--data", str(tiny_store), "--direction", "text2image", "--method", "mlp",
            "--out", str(out), "--epochs", "1", "--resume"]
    last = assert_cli_error(capsys, argv, "last.ckpt", "not a checkpoint modtrans can read",
                            "without --resume")
    assert "weights_only=False" not in last
