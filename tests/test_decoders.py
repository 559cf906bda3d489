"""Decoders: the conditional image VAE and the ClipCap/CapDec caption decoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from artefact_helpers import as_format0, saved_options, write_options

from modtrans.data.store import EmbeddingStore
from modtrans.decoders.caption import (
    CaptionDecoder,
    CaptionDecoderConfig,
    caption_pairs,
    fit_caption_decoder,
)
from modtrans.decoders.image_vae import ConditionalVAE, ImageDecoderConfig, fit_image_decoder
from modtrans.world.recogniser import AttributeRecogniser

TINY_PRIOR = {"width": 32, "depth": 2, "emb_dim": 32, "train_steps": 4, "steps": 3}
TINY_VAE = dict(latent_channels=2, channels=(8, 8, 16), epochs=1, batch_size=16,
                prior=TINY_PRIOR)
TINY_CAPTION = dict(width=16, layers=1, heads=2, prefix_length=2, epochs=1, batch_size=32)


@pytest.fixture(scope="module")
def stores(tiny_store: Path) -> tuple[EmbeddingStore, EmbeddingStore]:
    return EmbeddingStore(tiny_store / "train"), EmbeddingStore(tiny_store / "val")


@pytest.mark.parametrize("condition", ["image", "text"])
def test_image_decoder_trains_saves_and_generates(
    stores: tuple[EmbeddingStore, EmbeddingStore], tmp_path: Path, condition: str
) -> None:
    train, val = stores
    config = ImageDecoderConfig(condition=condition, **TINY_VAE)
    summary = fit_image_decoder(train, val, tmp_path, config, accelerator="cpu",
                                progress=False)
    expected_pairs = train.n_images if condition == "image" else train.n_captions
    assert summary["pairs"] == expected_pairs and "val/loss" in summary
    model = ConditionalVAE.load(tmp_path)
    assert model.config.embed_dim == (train.image_dim if condition == "image" else train.text_dim)
    assert model.config.image_encoder == train.image_encoder
    e = torch.randn(3, model.config.embed_dim)
    images = model.generate(e, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 64, 64, 3) and images.dtype == torch.uint8
    # a sample depends on its seed and row only, not on what it was drawn with (the batch
    # size changes float rounding, which may move a pixel by one level)
    alone = model.generate(e[:1], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(alone[0].int(), images[0].int(), rtol=0, atol=1)


def test_vae_loss_terms_are_finite_and_kl_nonnegative() -> None:
    model = ConditionalVAE(ImageDecoderConfig(embed_dim=6, **TINY_VAE))
    images = torch.rand(4, 3, 64, 64)
    terms = model.loss(images, torch.randn(4, 6))
    assert all(torch.isfinite(v) for v in terms.values()) and terms["kl"] >= 0
    mse = ConditionalVAE(ImageDecoderConfig(embed_dim=6, loss="mse", ssim_weight=1.0, **TINY_VAE))
    assert torch.isfinite(mse.loss(images, torch.randn(4, 6))["loss"])


def test_vae_reconstruction_reads_the_image_and_is_batch_independent() -> None:
    torch.manual_seed(0)
    model = ConditionalVAE(ImageDecoderConfig(embed_dim=6, **TINY_VAE))
    model.embed_norm.fit(torch.randn(16, 6))
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    e = torch.randn(3, 6)
    out = model.reconstruct(images, e, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 64, 64, 3) and out.dtype == torch.uint8
    assert model.training  # the mode it was called in comes back
    alone = model.reconstruct(images[:1], e[:1], generator=torch.Generator().manual_seed(0))
    # equal up to float rounding, which differs between a conv's batch sizes on some CPUs
    assert (alone[0].int() - out[0].int()).abs().max() <= 1
    # same embedding and noise, another image: the posterior latent, so the output, changes
    other = model.reconstruct(255 - images[:1], e[:1], generator=torch.Generator().manual_seed(0))
    assert not torch.equal(other[0], out[0])
    with pytest.raises(ValueError, match="uint8"):
        model.reconstruct(images.float() / 255, e)
    with pytest.raises(ValueError, match="embeddings"):
        model.reconstruct(images, e[:2])


@pytest.mark.parametrize("grid", [8, 16])
def test_vae_latent_grid_sets_the_latent_and_prior_shape(grid: int) -> None:
    torch.manual_seed(0)
    model = ConditionalVAE(ImageDecoderConfig(embed_dim=6, grid=grid, **TINY_VAE))
    model.embed_norm.fit(torch.randn(16, 6))
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    e = torch.randn(3, 6)
    mean, std = model.posterior(images, e)
    assert mean.shape == std.shape == (3, 2 * grid * grid) == (3, model.config.latent_size)
    assert model.prior.denoiser.grid == grid
    logits = model.decode_logits(mean.view(3, 2, grid, grid), model.embed_norm(e))
    assert logits.shape == (3, 3, 64, 64)
    drawn = model.generate(e, generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 64, 64, 3) and drawn.dtype == torch.uint8
    with pytest.raises(ValueError, match="grid must be one of"):
        ImageDecoderConfig(grid=4)


def test_image_decoder_config_errors() -> None:
    with pytest.raises(ValueError, match="condition"):
        ImageDecoderConfig(condition="audio")
    with pytest.raises(ValueError, match="embed_dim"):
        ConditionalVAE(ImageDecoderConfig())
    with pytest.raises(FileNotFoundError, match="fit-decoder image"):
        ConditionalVAE.load("/nonexistent")


def test_image_decoder_of_an_older_version_says_retrain(tmp_path: Path) -> None:
    ConditionalVAE(ImageDecoderConfig(embed_dim=6, **TINY_VAE)).save(tmp_path)
    as_format0(tmp_path, {**saved_options(tmp_path), "latent_dim": 32, "cond_proj": 128},
               "decoder_config.json", "decoder.safetensors")
    with pytest.raises(ValueError, match=r"older modtrans.*fit-decoder image"):
        ConditionalVAE.load(tmp_path)


def test_image_decoder_saved_before_the_unet_prior_loads_its_mlp(tmp_path: Path) -> None:
    model = ConditionalVAE(ImageDecoderConfig(embed_dim=6, **{
        **TINY_VAE, "prior": {**TINY_PRIOR, "denoiser": "mlp"}}))
    model.save(tmp_path)
    config = saved_options(tmp_path)
    del config["prior"]["denoiser"]
    as_format0(tmp_path, config, "decoder_config.json", "decoder.safetensors")
    loaded = ConditionalVAE.load(tmp_path)
    assert loaded.config.prior.denoiser == "mlp"
    e = torch.randn(2, 6)
    torch.testing.assert_close(loaded.prior.denoiser(torch.ones(2, 128), torch.tensor([3, 9]), e),
                               model.prior.denoiser(torch.ones(2, 128), torch.tensor([3, 9]), e))


def test_refit_latent_prior_keeps_the_vae_and_swaps_the_prior(
    stores: tuple[EmbeddingStore, EmbeddingStore], tmp_path: Path
) -> None:
    from modtrans.decoders.image_vae import refit_latent_prior
    from modtrans.translators.denoisers import ConditionalGridUNet

    train, val = stores
    config = ImageDecoderConfig(**{**TINY_VAE, "prior": {**TINY_PRIOR, "denoiser": "mlp"}})
    fit_image_decoder(train, val, tmp_path, config, accelerator="cpu", progress=False)
    before = ConditionalVAE.load(tmp_path)
    summary = refit_latent_prior(train, val, tmp_path, {"denoiser": "unet", "train_steps": 3},
                                 accelerator="cpu", progress=False)
    after = ConditionalVAE.load(tmp_path)
    assert isinstance(after.prior.denoiser, ConditionalGridUNet)
    assert after.config.prior.width == 64 and after.config.prior.train_steps == 3
    assert after.config.prior.emb_dim == TINY_PRIOR["emb_dim"]  # kept options
    old_state = before.state_dict()
    for key, value in after.state_dict().items():
        if not key.startswith("prior."):
            assert torch.equal(value, old_state[key]), key
    assert summary["prior_refit"] and "vae_seconds" in summary and "val/prior_loss" in summary
    with pytest.raises(ValueError, match="mapping"):
        refit_latent_prior(train, val, tmp_path, "unet")  # type: ignore[arg-type]
    write_options(tmp_path, {**saved_options(tmp_path), "image_encoder": "hf:other"})
    with pytest.raises(ValueError, match="refit it on the store it was trained on"):
        refit_latent_prior(train, val, tmp_path)
    images = after.generate(torch.randn(2, after.config.embed_dim),
                            generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 64, 64, 3)


def test_refit_prior_cli_checks_its_options(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli_helpers import assert_cli_error

    config = tmp_path / "c.yaml"
    config.write_text("epochs: 3\nprior: {denoiser: unet}\n")
    base = ["fit-decoder", "image", "--data", str(tiny_store), "--out", str(tmp_path / "d"),
            "--prior-only"]
    assert_cli_error(capsys, [*base, "--config", str(config)], "prior only", "epochs")
    assert_cli_error(capsys, [*base, "--epochs", "2"], "--prior-only", "image decoders")
    assert_cli_error(capsys, base, "holds no image decoder", "fit-decoder image")


@pytest.mark.parametrize(("mode", "mapping", "text_input"), [
    ("clipcap", "mlp", "caption"), ("capdec", "transformer", "caption"),
    ("capdec", "mlp", "set-mean")])
def test_caption_decoder_trains_saves_and_decodes(
    stores: tuple[EmbeddingStore, EmbeddingStore], tmp_path: Path, mode: str, mapping: str,
    text_input: str
) -> None:
    train, val = stores
    config = CaptionDecoderConfig(mode=mode, mapping=mapping, text_input=text_input,
                                  **TINY_CAPTION)
    summary = fit_caption_decoder(train, val, tmp_path, config, accelerator="cpu",
                                  progress=False)
    assert summary["pairs"] == train.n_captions and summary["mode"] == mode
    model = CaptionDecoder.load(tmp_path)
    assert model.config.text_input == text_input
    e, _ = caption_pairs(val, config.condition, max_images=3)
    greedy = model.generate(e)
    beam = model.generate(e, num_beams=3)
    assert len(greedy) == len(beam) == len(e)
    assert all(isinstance(c, str) for c in greedy + beam)
    assert "[EOS]" not in " ".join(greedy) and "[BOS]" not in " ".join(greedy)
    assert greedy == CaptionDecoder.load(tmp_path).generate(e)  # deterministic after reload


def test_caption_pairs_set_mean_is_the_mean_of_the_image_captions(
    stores: tuple[EmbeddingStore, EmbeddingStore]
) -> None:
    train, _ = stores
    own, texts = caption_pairs(train, "text", max_images=4)
    sets, same_texts = caption_pairs(train, "text", max_images=4, text_input="set-mean")
    assert same_texts == texts and sets.shape == own.shape
    owner = np.asarray(train.caption_image_index)
    owner = owner[owner < 4]
    for image in range(4):
        rows = np.flatnonzero(owner == image)
        assert len(rows) > 1  # the tiny world has several captions per image
        expected = F.normalize(own[rows], dim=-1).mean(0)
        torch.testing.assert_close(sets[rows], expected.expand(len(rows), -1))
    assert not torch.allclose(sets, F.normalize(own, dim=-1))
    with pytest.raises(ValueError, match="text_input must be one of"):
        CaptionDecoderConfig(mode="capdec", text_input="image")
    with pytest.raises(ValueError, match="text_input must be one of"):
        caption_pairs(train, "text", text_input="set_mean")
    with pytest.raises(ValueError, match="ClipCap trains on image embeddings"):
        CaptionDecoderConfig(mode="clipcap", text_input="set-mean")


def test_capdec_noise_defaults_by_text_input_and_is_saved(tmp_path: Path) -> None:
    assert CaptionDecoderConfig(mode="capdec").noise_variance == 0.016  # the paper's
    config = CaptionDecoderConfig(mode="capdec", text_input="set-mean")
    assert config.noise_variance == 0.0013
    assert CaptionDecoderConfig(mode="capdec", text_input="set-mean",
                                noise_variance=0.0).noise_variance == 0
    config.save(tmp_path / "c.json")
    assert CaptionDecoderConfig.load(tmp_path / "c.json") == config


@pytest.mark.parametrize("name", ["c.json", "c.yaml"])
def test_config_files_round_trip_in_their_format(tmp_path: Path, name: str) -> None:
    config = CaptionDecoderConfig(mode="capdec", noise_variance=7e-5, lr=5e-5)
    config.save(tmp_path / name)
    text = (tmp_path / name).read_text()
    if name.endswith(".json"):
        assert json.loads(text)["noise_variance"] == 7e-5
    else:
        assert "mode: capdec" in text.splitlines()
    loaded = CaptionDecoderConfig.load(tmp_path / name)
    assert loaded == config and isinstance(loaded.lr, float)  # "5e-05" read as a number
    (tmp_path / "old.json").write_text(yaml.safe_dump({"mode": "capdec", "lr": 0.001}))
    assert CaptionDecoderConfig.load(tmp_path / "old.json").lr == 0.001  # YAML of old saves


def test_caption_decoder_learns_to_echo_a_caption(stores: tuple[EmbeddingStore, EmbeddingStore]
                                                  ) -> None:
    """Overfit two captions on two well-separated embeddings: greedy decoding returns them."""
    from modtrans.decoders.caption import build_caption_decoder

    captions = ["a red circle", "two blue squares on a striped background"]
    config = CaptionDecoderConfig(embed_dim=4, **{**TINY_CAPTION, "width": 32})
    torch.manual_seed(0)
    model = build_caption_decoder(config, captions)
    e = torch.eye(4)[:2]
    tokens = model.tokenize(captions)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        model.loss(e, tokens["input_ids"], tokens["attention_mask"]).backward()
        optimizer.step()
    assert model.generate(e) == captions
    assert model.generate(e, num_beams=2) == captions


# --- the CLI -------------------------------------------------------------------------------


def _ok(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    from modtrans.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.fixture(scope="module")
def cli_models(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Decoders and translators trained through the CLI on the tiny store."""
    import yaml

    from modtrans.cli import main

    root = tmp_path_factory.mktemp("cli_decoders")
    (root / "vae.yaml").write_text(yaml.safe_dump(TINY_VAE))
    (root / "cap.yaml").write_text(yaml.safe_dump(TINY_CAPTION))
    runs = {
        "t2i": ["train", "--direction", "text2image", "--method", "ridge"],
        "i2t": ["train", "--direction", "image2text", "--method", "ridge"],
        "vae_image": ["fit-decoder", "image", "--config", str(root / "vae.yaml")],
        "vae_text": ["fit-decoder", "image", "--condition", "text", "--config",
                     str(root / "vae.yaml")],
        "clipcap": ["fit-decoder", "caption", "--config", str(root / "cap.yaml")],
        "capdec": ["fit-decoder", "caption", "--mode", "capdec", "--text-input", "set-mean",
                   "--noise-from", str(root / "i2t"), "--config", str(root / "cap.yaml")],
    }
    for name, argv in runs.items():
        assert main([*argv, "--data", str(tiny_store), "--out", str(root / name)]) == 0
    return {name: root / name for name in runs}


def test_generate_through_a_translator_and_direct(
    cli_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    out = tmp_path / "grid.png"
    _ok(capsys, ["generate", str(cli_models["t2i"]), "--decoder", str(cli_models["vae_image"]),
                 "--text", "a red circle", "--text", "two blue stars", "-n", "3", "-o", str(out)])
    assert Image.open(out).size == (3 * 66 + 2, 2 * 66 + 2)
    _ok(capsys, ["generate", "--decoder", str(cli_models["vae_text"]), "--text", "a red circle",
                 "-n", "2", "-o", str(tmp_path / "direct.png")])
    assert Image.open(tmp_path / "direct.png").size == (2 * 66 + 2, 66 + 2)
    _ok(capsys, ["generate", "--decoder", str(cli_models["vae_text"]), "--text", "a red circle",
                 "-n", "2", "--steps", "2", "--guidance", "1", "-o", str(tmp_path / "g1.png")])
    assert Image.open(tmp_path / "g1.png").size == (2 * 66 + 2, 66 + 2)
    for args in ([str(cli_models["t2i"]), "--decoder", str(cli_models["vae_image"])],
                 ["--decoder", str(cli_models["vae_text"])]):
        said = _ok(capsys, ["generate", *args, "--text", "a red circle", "--text", "a blue star",
                            "-n", "2", "--candidates", "3", "-o", str(tmp_path / "best.png")])
        assert "kept the best of 3 per image" in said
        assert Image.open(tmp_path / "best.png").size == (2 * 66 + 2, 2 * 66 + 2)


class _MeanColour:
    """An image encoder whose embedding is each image's mean RGB."""

    @staticmethod
    def encode_images(images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(1, 2))


def test_best_of_keeps_the_candidate_closest_to_its_target() -> None:
    from modtrans.decoders.rerank import best_of

    colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255],
                            [0, 0, 255], [250, 10, 0], [0, 255, 0]], dtype=torch.uint8)
    candidates = colours[:, None, None, :].expand(6, 4, 4, 3).contiguous()
    targets = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).repeat_interleave(3, 0)
    chosen, scores = best_of(candidates, targets, _MeanColour(), k=3)
    assert chosen[:, 0, 0].tolist() == [[0, 255, 0], [250, 10, 0]]
    assert scores[0] == pytest.approx(1.0) and 0.99 < scores[1] < 1.0
    with pytest.raises(ValueError, match="do not split into groups of k=4"):
        best_of(candidates, targets, _MeanColour(), k=4)
    with pytest.raises(ValueError, match="k must be ≥ 1, got 0"):
        best_of(candidates, targets, _MeanColour(), k=0)
    with pytest.raises(ValueError, match=r"6 candidates need targets \(6, D\), got \(2, 3\)"):
        best_of(candidates, targets[:2], _MeanColour(), k=3)
    with pytest.raises(ValueError, match="embeds to 3 dims but the targets have 5"):
        best_of(candidates, torch.ones(6, 5), _MeanColour(), k=3)


def test_generate_errors(cli_models: dict[str, Path], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    from cli_helpers import assert_cli_error

    assert_cli_error(capsys, ["generate", "--decoder", str(cli_models["vae_image"]), "--text",
                              "x", "-o", str(tmp_path / "a.png")], "text2image translator")
    assert_cli_error(capsys, ["generate", str(cli_models["i2t"]), "--decoder",
                              str(cli_models["vae_image"]), "--text", "x"], "image2text")
    assert not (tmp_path / "a.png").exists()
    assert_cli_error(capsys, ["generate", "--decoder", str(cli_models["vae_text"]), "--text",
                              "x", "--candidates", "0"], "--candidates must be ≥ 1")
    other = tmp_path / "vae_minilm"  # the same decoder, said to be trained on MiniLM captions
    shutil.copytree(cli_models["vae_text"], other)
    write_options(other, {**saved_options(other), "text_encoder": "sbert:minilm"})
    assert_cli_error(capsys, ["generate", "--decoder", str(other), "--text", "x",
                              "--candidates", "2"], "not one CLIP pair", "give a text2image")


def test_caption_through_a_translator_and_direct(
    cli_models: dict[str, Path], tiny_world: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli_helpers import assert_cli_error

    images = sorted((tiny_world / "val" / "images").glob("*.png"))[:2]
    argv = [arg for p in images for arg in ("--image", str(p))]
    out = _ok(capsys, ["caption", str(cli_models["i2t"]), "--decoder",
                       str(cli_models["capdec"]), *argv])
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(p) for p in images]
    direct = _ok(capsys, ["caption", "--decoder", str(cli_models["clipcap"]), "--beams", "1",
                          *argv])
    assert len(direct.splitlines()) == 2
    assert_cli_error(capsys, ["caption", "--decoder", str(cli_models["capdec"]), *argv],
                     "CapDec", "image2text translator")


def test_capdec_noise_matched_to_a_translator(cli_models: dict[str, Path], tiny_store: Path,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from cli_helpers import assert_cli_error

    from modtrans.data.store import open_store
    from modtrans.decoders.caption import matched_noise_variance
    from modtrans.translators.base import Translator

    config = CaptionDecoder.load(cli_models["capdec"]).config
    ridge = Translator.load(cli_models["i2t"])
    train = open_store(tiny_store, "train")
    expected = matched_noise_variance(lambda z: ridge.translate(z), train, "set-mean")
    assert config.text_input == "set-mean" and 0 < expected < 0.1
    assert config.noise_variance == pytest.approx(expected)
    out = tmp_path / "unused"
    base = ["fit-decoder", "caption", "--data", str(tiny_store), "--out", str(out)]
    assert_cli_error(capsys, [*base, "--noise-from", str(cli_models["i2t"])], "add --mode capdec")
    assert_cli_error(capsys, [*base, "--mode", "capdec", "--noise-variance", "0.01",
                              "--noise-from", str(cli_models["i2t"])], "not both")
    (tmp_path / "noisy.yaml").write_text("noise_variance: 0.01\n")
    assert_cli_error(capsys, [*base, "--mode", "capdec", "--config", str(tmp_path / "noisy.yaml"),
                              "--noise-from", str(cli_models["i2t"])], "not both")
    assert_cli_error(capsys, [*base, "--mode", "capdec", "--noise-from",
                              str(cli_models["t2i"])], "needs an image2text translator")
    assert not out.exists()


def test_matched_noise_is_zero_for_a_translator_that_hits_the_targets(
    stores: tuple[EmbeddingStore, EmbeddingStore]
) -> None:
    from modtrans.decoders.caption import matched_noise_variance

    train, _ = stores
    n = 5
    owner = np.asarray(train.caption_image_index)
    rows = owner[owner < n]
    sets, _ = caption_pairs(train, "text", n, "set-mean")
    set_means = torch.stack([sets[np.flatnonzero(rows == i)[0]] for i in range(n)])
    assert matched_noise_variance(lambda z: 3 * set_means, train, "set-mean", n) == (
        pytest.approx(0, abs=1e-12))  # scale does not count: both sides are normalised
    # single captions lie around their set's mean, so the same translations miss them
    assert matched_noise_variance(lambda z: set_means, train, "caption", n) > 1e-3
    shifted = matched_noise_variance(lambda z: torch.ones(len(z), train.text_dim), train,
                                     "set-mean", n)
    assert shifted > 1e-3


def test_fit_recogniser_cli(tiny_world: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from modtrans.world.generator import load_world_info

    out = _ok(capsys, ["fit-recogniser", str(tiny_world), "--out", str(tmp_path / "judge"),
                       "--epochs", "1", "--train-split"])
    report = json.loads(out)
    assert report["split"] == "test" and 0 <= report["pairs_presence_accuracy"] <= 1
    assert report["train_images"] == load_world_info(tiny_world)["counts"]["train"]
    config = AttributeRecogniser.load(tmp_path / "judge").config
    assert config.epochs == 1 and config.all_pairs is False


def test_e2e_needs_a_demo_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli_helpers import assert_cli_error

    assert_cli_error(capsys, ["e2e", str(tmp_path)], "no world/", "modtrans demo")


@pytest.mark.parametrize(("denoiser", "shape"), [("mlp", (8,)), ("unet", (2, 2, 2))])
def test_latent_prior_learns_a_conditional_distribution(denoiser: str,
                                                       shape: tuple[int, ...]) -> None:
    """Trained on z = A·e + small noise, its draws follow the condition: their mean is close to
    A·e and far from the unconditional mean (zero), and their spread is the noise's (guidance 1:
    the learned distribution itself, not its guided sharpening)."""
    from torch.utils.data import DataLoader, TensorDataset

    from modtrans.decoders.latent_prior import LatentPrior, LatentPriorConfig
    from modtrans.training.fit import Recipe, fit

    torch.manual_seed(0)
    a = torch.randn(3, 8)
    e = torch.randn(2048, 3)
    mean = e @ a
    std = torch.full_like(mean, 0.1)
    width, depth = (64, 2) if denoiser == "mlp" else (8, 1)
    config = LatentPriorConfig(denoiser=denoiser, width=width, depth=depth, emb_dim=32,
                               steps=10, guidance=1.0)
    prior = LatentPrior(config, shape, 3)
    prior.scale.fill_(float(mean.std()))
    recipe = Recipe(epochs=75, max_steps=600, batch_size=256, lr=config.lr, weight_decay=0.01,
                    accelerator="cpu", logger="none", progress=False)
    fit(prior, prior.training_loss, DataLoader(TensorDataset(mean, std, e), batch_size=256,
                                               shuffle=True), None, recipe, None)
    test_e = torch.randn(8, 3)
    draws = prior.sample(test_e.repeat(64, 1),
                         torch.randn(512, 8, generator=torch.Generator().manual_seed(1)))
    draws = draws.view(64, 8, 8)
    target = test_e @ a
    error = (draws.mean(0) - target).norm(dim=1) / target.norm(dim=1)
    assert error.median() < 0.25, error
    assert draws.std(0).mean() < 0.5 * mean.std()


def test_latent_prior_config_defaults_and_errors() -> None:
    from modtrans.decoders.latent_prior import LatentPrior, LatentPriorConfig

    unet, mlp = LatentPriorConfig(), LatentPriorConfig(denoiser="mlp")
    assert (unet.denoiser, unet.width, unet.depth) == ("unet", 64, 1)
    assert (mlp.width, mlp.depth) == (1024, 4)
    assert LatentPriorConfig(denoiser="mlp", width=8).width == 8
    with pytest.raises(ValueError, match="denoiser must be one of"):
        LatentPriorConfig(denoiser="transformer")
    with pytest.raises(ValueError, match="square latent grid"):
        LatentPrior(unet, (256,), 3)


def test_generate_uses_the_prior_and_its_overrides() -> None:
    torch.manual_seed(0)
    model = ConditionalVAE(ImageDecoderConfig(embed_dim=6, **TINY_VAE))
    torch.nn.init.normal_(model.prior.denoiser.out.weight, std=0.5)  # an untrained prior predicts 0
    e = torch.randn(2, 6)
    seed = torch.Generator().manual_seed
    base = model.generate(e, generator=seed(0))
    assert torch.equal(base, model.generate(e, generator=seed(0)))
    assert not torch.equal(base, model.generate(e, generator=seed(0), guidance=3.0))
    assert not torch.equal(base, model.generate(e, generator=seed(0), steps=1))
    with pytest.raises(ValueError, match="unknown option"):
        ImageDecoderConfig(prior={"widht": 8})
    with pytest.raises(ValueError, match="mapping"):
        ImageDecoderConfig(prior=None)
    for bad in ({"ema_decay": 1.5}, {"steps": 2000}, {"guidance": -1.0}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            ImageDecoderConfig(prior=bad)


@pytest.mark.parametrize("target", ["draw", "mean"])
def test_latent_prior_target_is_a_posterior_draw_or_its_mean(
        target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from modtrans.decoders.latent_prior import LatentPrior, LatentPriorConfig

    prior = LatentPrior(LatentPriorConfig(denoiser="mlp", width=8, depth=1, emb_dim=8,
                                          target=target), (16,), 3)
    seen = []
    monkeypatch.setattr(prior, "loss", lambda z, e: seen.append(z) or z.sum())
    mean, std = torch.zeros(4096, 16), torch.full((4096, 16), 2.0)
    prior.training_loss((mean, std, torch.randn(4096, 3)))
    if target == "mean":
        assert torch.equal(seen[0], mean)
    else:
        assert abs(float(seen[0].std()) - 2.0) < 0.05


def test_latent_prior_cosine_lr_decays_to_zero_over_its_steps() -> None:
    from modtrans.decoders.latent_prior import LatentPrior, LatentPriorConfig
    from modtrans.training.fit import FitModule

    def optimizers(**options):
        config = LatentPriorConfig(denoiser="mlp", width=8, depth=1, emb_dim=8, lr=0.01,
                                   train_steps=10, **options)
        prior = LatentPrior(config, (16,), 3)
        return FitModule(prior, prior.training_loss, config.recipe(1),
                         config.train_steps).configure_optimizers()

    assert isinstance(optimizers(), torch.optim.AdamW)  # constant: no scheduler
    cosine = optimizers(lr_decay="cosine")
    optimizer, schedule = cosine["optimizer"], cosine["lr_scheduler"]["scheduler"]
    assert cosine["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.01) and lrs == sorted(lrs, reverse=True)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    for bad in ({"lr_decay": "linear"}, {"target": "mode"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LatentPriorConfig(**bad)


def test_image_decoder_resumes_each_stage_from_its_checkpoint(
    stores: tuple[EmbeddingStore, EmbeddingStore], tmp_path: Path
) -> None:
    train, val = stores
    first = fit_image_decoder(train, val, tmp_path, ImageDecoderConfig(**TINY_VAE),
                              accelerator="cpu", progress=False)
    assert (tmp_path / "lightning" / "last.ckpt").is_file()
    assert (tmp_path / "lightning" / "prior" / "last.ckpt").is_file()
    longer = ImageDecoderConfig(**{**TINY_VAE, "epochs": 2})
    resumed = fit_image_decoder(train, val, tmp_path, longer, accelerator="cpu",
                                progress=False, resume=True)
    assert resumed["vae_steps"] == 2 * first["vae_steps"]  # the VAE went on for an epoch
    assert resumed["prior_steps"] == first["prior_steps"] == TINY_PRIOR["train_steps"]
    assert ConditionalVAE.load(tmp_path).config.epochs == 2


def test_resume_starts_a_later_stage_without_a_checkpoint_from_the_beginning(
    stores: tuple[EmbeddingStore, EmbeddingStore], tmp_path: Path
) -> None:
    import shutil

    train, val = stores
    fit_image_decoder(train, val, tmp_path, ImageDecoderConfig(**TINY_VAE),
                      accelerator="cpu", progress=False)
    shutil.rmtree(tmp_path / "lightning" / "prior")  # as if stopped before the prior began
    resumed = fit_image_decoder(train, val, tmp_path, ImageDecoderConfig(**TINY_VAE),
                                accelerator="cpu", progress=False, resume=True)
    assert resumed["prior_steps"] == TINY_PRIOR["train_steps"]
