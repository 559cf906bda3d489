"""L-Verse: the AugVAE tokenizer on tiny configs (save/load, the SL-from-ML start) and its CLI
verb on the tiny world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modtrans.decoders.augvae import AugVAE, AugVAEConfig

TINY_AUGVAE = {"channels": (8, 8, 8), "codebook_size": 16, "code_dim": 8, "batch_size": 16,
               "epochs": 1}


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


def test_cli_trains_ml_then_sl(tiny_world: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from modtrans.cli import main

    tok_config = tmp_path / "augvae.json"
    tok_config.write_text(json.dumps(TINY_AUGVAE))
    common = ["--data", str(tiny_world), "--accelerator", "cpu"]
    assert main(["fit-tokenizer", *common, "--out", str(tmp_path / "ml"), "--config",
                 str(tok_config), "--max-val-images", "4"]) == 0
    assert main(["fit-tokenizer", *common, "--out", str(tmp_path / "sl"), "--config",
                 str(tok_config), "--variant", "sl", "--init", str(tmp_path / "ml")]) == 0
    sl = json.loads((tmp_path / "sl" / "summary.json").read_text())
    assert sl["variant"] == "sl" and sl["tokens"] == 256 and {"psnr", "codebook_usage",
                                                              "perplexity"} <= set(sl["val"])
    assert main(["fit-tokenizer", *common, "--out", str(tmp_path / "x"), "--init",
                 str(tmp_path / "ml")]) == 2
