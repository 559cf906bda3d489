"""L-Verse: the AugVAE tokenizer and BiART on tiny configs (save/load, the SL-from-ML start,
the target-only loss, seeded and KV-cached sampling) and their CLI verbs on the tiny world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modtrans.decoders.augvae import AugVAE, AugVAEConfig
from modtrans.decoders.biart import BiART, BiARTConfig, caption_pairs_dataset
from modtrans.encoders.tokenizer import build_tokenizer
from modtrans.images import load_images

TINY_AUGVAE = {"channels": (8, 8, 8), "codebook_size": 16, "code_dim": 8, "batch_size": 16,
               "epochs": 1}
TINY_BIART = {"max_text_length": 12, "width": 16, "layers": 1, "heads": 2, "batch_size": 8,
              "epochs": 1}
CAPTIONS = [["a red disc", "a photo of a blue star"], ["two objects", "a green ring"]]


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=g)


def _trained_step(model: AugVAE) -> AugVAE:
    """One training forward: k-means initialises the codebook, as fitting does."""
    torch.manual_seed(0)
    model.train().training_loss((_images(),))
    return model.eval()


@pytest.fixture
def ml() -> AugVAE:
    torch.manual_seed(0)
    return _trained_step(AugVAE(AugVAEConfig(**TINY_AUGVAE)))


@pytest.fixture
def biart(ml: AugVAE) -> BiART:
    torch.manual_seed(0)
    tokenizer = build_tokenizer([c for texts in CAPTIONS for c in texts])
    config = BiARTConfig(augvae=ml.config, text_vocab=len(tokenizer), **TINY_BIART)
    return BiART(config, tokenizer, ml).eval()


def test_augvae_tokens_and_images_have_the_documented_shapes(ml: AugVAE) -> None:
    tokens = ml.encode(_images(3))
    assert tokens.shape == (3, 16 * 16 + 8 * 8) and tokens.dtype == torch.long
    assert int(tokens.max()) < ml.config.codebook_size
    images = ml.decode(tokens)
    assert images.shape == (3, 64, 64, 3) and images.dtype == torch.uint8
    with pytest.raises(ValueError, match="tokens must be"):
        ml.decode(tokens[:, :10])


def test_augvae_save_load_round_trip(ml: AugVAE, tmp_path: Path) -> None:
    ml.save(tmp_path / "tok")
    loaded = AugVAE.load(tmp_path / "tok")
    images = _images(2, seed=1)
    assert torch.equal(loaded.encode(images), ml.encode(images))
    assert torch.equal(loaded.reconstruct(images), ml.reconstruct(images))


def test_sl_inherits_every_ml_weight_but_its_connector(ml: AugVAE) -> None:
    sl = AugVAE(AugVAEConfig(**{**TINY_AUGVAE, "variant": "sl", "levels": (16,)}))
    copied = sl.inherit(ml)
    state, parent = sl.state_dict(), ml.state_dict()
    assert set(state) - set(copied) == {"connector.weight", "connector.bias"}
    assert all(torch.equal(state[k], parent[k]) for k in copied)
    assert sl.encode(_images(1)).shape == (1, 256)


def test_config_names_the_fix() -> None:
    with pytest.raises(ValueError, match="variant sl"):
        AugVAEConfig(levels=(16,))
    with pytest.raises(ValueError, match="half the one before"):
        AugVAEConfig(levels=(16, 4))


def test_biart_scores_target_tokens_only(biart: BiART) -> None:
    batch = [torch.stack(t) for t in zip(*[caption_pairs_dataset(biart, _images(2),
                                                                 CAPTIONS)[i]
                                           for i in range(4)], strict=True)]
    left, right, codes = batch
    for direction, text in (("text2image", left), ("image2text", right)):
        ids, segments, mask = biart._sequences(text, (text != 0).long(), codes, direction)
        labels = biart.target_labels(ids, segments, mask)
        changed = torch.where(segments == 0, torch.randint_like(ids, biart.null), ids)
        assert torch.equal(biart.target_labels(changed, segments, mask) != -100, labels != -100)
        assert (labels[segments == 0] == -100).all() and (labels != -100).any()
    assert torch.isfinite(biart.train().training_loss(batch)["loss"])


def test_biart_sampling_is_seeded_and_the_kv_cache_changes_nothing(biart: BiART) -> None:
    draw = {"top_k": 5, "top_p": 0.9}
    first = biart.generate_image(["a red disc"], generator=torch.Generator().manual_seed(3),
                                 **draw)
    again = biart.generate_image(["a red disc"], generator=torch.Generator().manual_seed(3),
                                 **draw)
    assert torch.equal(first, again) and first.shape == (1, 64, 64, 3)
    ids, mask = biart.text_ids(["a red disc", "two objects"], left=True)
    for guidance in (1.0, 3.0):
        cached = biart.sample(ids, mask, "text2image", temperature=0, guidance=guidance)
        plain = biart.sample(ids, mask, "text2image", temperature=0, guidance=guidance,
                             use_cache=False)
        assert torch.equal(cached, plain)
        assert int(cached.min()) >= 0 and int(cached.max()) < biart.config.augvae.codebook_size


def test_biart_save_load_round_trip(biart: BiART, tmp_path: Path) -> None:
    biart.save(tmp_path / "biart")
    loaded = BiART.load(tmp_path / "biart")
    images = _images(2)
    assert loaded.caption(images) == biart.caption(images)
    ids, mask = biart.text_ids(["a green ring"], left=True)
    assert torch.equal(loaded.sample(ids, mask, "text2image", temperature=0),
                       biart.sample(ids, mask, "text2image", temperature=0))


def test_cli_trains_ml_then_sl_then_biart(tiny_world: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from modtrans.cli import main
    from modtrans.world.recogniser import AttributeRecogniser, RecogniserConfig

    AttributeRecogniser(RecogniserConfig(channels=(8, 8, 8, 8))).save(tmp_path / "judge")
    tok_config, biart_config = tmp_path / "augvae.json", tmp_path / "biart.json"
    tok_config.write_text(json.dumps(TINY_AUGVAE))
    biart_config.write_text(json.dumps(TINY_BIART))
    common = ["--data", str(tiny_world), "--accelerator", "cpu"]
    assert main(["fit-tokenizer", *common, "--out", str(tmp_path / "ml"), "--config",
                 str(tok_config), "--max-val-images", "4", "--judge",
                 str(tmp_path / "judge")]) == 0
    judged = json.loads((tmp_path / "ml" / "summary.json").read_text())["judge"]
    assert set(judged) == {"reconstructions", "real"}
    assert all(0 <= v <= 1 for v in judged["reconstructions"].values())
    assert main(["fit-tokenizer", *common, "--out", str(tmp_path / "sl"), "--config",
                 str(tok_config), "--variant", "sl", "--init", str(tmp_path / "ml")]) == 0
    sl = json.loads((tmp_path / "sl" / "summary.json").read_text())
    assert sl["variant"] == "sl" and sl["tokens"] == 256 and {"psnr", "codebook_usage",
                                                              "perplexity"} <= set(sl["val"])
    assert main(["fit-biart", *common, "--tokenizer", str(tmp_path / "sl"), "--out",
                 str(tmp_path / "biart"), "--config", str(biart_config), "--max-images", "8",
                 "--max-val-images", "2"]) == 0
    capsys.readouterr()
    model = BiART.load(tmp_path / "biart")
    assert model.generate_image(["a red disc"]).shape == (1, 64, 64, 3)
    grid = tmp_path / "lverse.png"
    assert main(["generate", "--system", "lverse", "--decoder", str(tmp_path / "biart"),
                 "--text", "a red disc", "--text", "a blue star", "-n", "3", "--top-k", "5",
                 "--out", str(grid)]) == 0
    from PIL import Image

    assert Image.open(grid).size == (3 * 66 + 2, 2 * 66 + 2)
    image = sorted((tiny_world / "val" / "images").iterdir())[0]
    capsys.readouterr()
    assert main(["caption", "--system", "lverse", "--decoder", str(tmp_path / "biart"),
                 "--image", str(image)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split("\t")[0] == str(image)
    assert line.split("\t")[1] == model.caption(load_images([image], 64))[0]
    for argv in (["generate", "--system", "lverse", str(tmp_path / "biart"), "--decoder",
                  str(tmp_path / "biart"), "--text", "x"],
                 ["generate", "--system", "lverse", "--decoder", str(tmp_path / "biart"),
                  "--text", "x", "--candidates", "2"],
                 ["generate", "--system", "dalle", "--decoder", str(tmp_path / "biart"),
                  "--text", "x"]):
        assert main(argv) == 2
    assert main(["fit-tokenizer", *common, "--out", str(tmp_path / "x"), "--init",
                 str(tmp_path / "ml")]) == 2
