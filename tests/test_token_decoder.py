"""The token decoder on tiny configs: the loss reads the condition, guidance and the KV cache,
save/load, the CLI verbs (fit-decoder image --kind tokens, generate) on the tiny store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modtrans.decoders.augvae import AugVAE, AugVAEConfig
from modtrans.decoders.loading import load_image_decoder
from modtrans.decoders.token_decoder import TokenDecoder, TokenDecoderConfig

TINY_TOKENIZER = {"levels": (8, 4), "channels": (8, 8, 8, 8), "codebook_size": 16,
                  "code_dim": 8, "batch_size": 16, "epochs": 1}
TINY = {"prefix": 2, "width": 16, "layers": 1, "heads": 2, "batch_size": 8, "epochs": 1}


@pytest.fixture
def model() -> TokenDecoder:
    torch.manual_seed(0)
    augvae = AugVAE(AugVAEConfig(**TINY_TOKENIZER))
    augvae.train().training_loss((torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8),))
    config = TokenDecoderConfig(embed_dim=6, augvae=augvae.config, **TINY)
    return TokenDecoder(config, augvae.eval()).eval()


def test_every_code_is_predicted_from_the_prefix_and_the_codes_before(model: TokenDecoder
                                                                      ) -> None:
    codes = torch.randint(0, 16, (3, model.config.tokens))
    e = torch.randn(3, 6)
    base = model.loss(codes, e)
    assert model.config.tokens == 8 * 8 + 4 * 4 and torch.isfinite(base)
    later = codes.clone()
    later[:, -1] = (later[:, -1] + 1) % 16  # the last code is a target, never an input
    inputs = torch.cat([model._prefix(e), model._codes(codes[:, :-1])], dim=1)
    assert torch.equal(inputs, torch.cat([model._prefix(e), model._codes(later[:, :-1])], 1))
    assert not torch.isclose(model.loss(later, e), base)
    assert not torch.isclose(model.loss(codes, torch.randn(3, 6)), base)  # reads e
    dropped = model.loss(codes, e, torch.ones(3, dtype=torch.bool))
    assert torch.isclose(dropped, model.loss(codes, torch.randn(3, 6),
                                             torch.ones(3, dtype=torch.bool)))


def test_sampling_is_seeded_guided_and_the_kv_cache_changes_nothing(model: TokenDecoder
                                                                    ) -> None:
    e = torch.randn(2, 6)

    def draw(**options) -> torch.Tensor:
        return model.sample_codes(e, generator=torch.Generator().manual_seed(0), **options)

    codes = draw()
    assert codes.shape == (2, model.config.tokens) and int(codes.max()) < 16
    assert torch.equal(codes, draw())
    assert torch.equal(codes, draw(use_cache=False))
    assert torch.equal(draw(guidance=1.0), draw(guidance=1.0, use_cache=False))
    with torch.no_grad():
        model.null.mul_(100)  # a null condition the untrained model tells apart from e
    greedy = draw(temperature=0)
    assert torch.equal(greedy, draw(temperature=0, batch_size=1))
    assert not torch.equal(greedy, draw(temperature=0, guidance=1.0))
    images = model.generate(e, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 64, 64, 3) and images.dtype == torch.uint8
    with pytest.raises(ValueError, match="--steps applies to the VAE"):
        model.generate(e, steps=4)
    with pytest.raises(ValueError, match=r"must have shape \(N, 6\)"):
        model.generate(torch.randn(2, 5))


def test_config_errors_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="condition must be one of"):
        TokenDecoderConfig(condition="audio")
    with pytest.raises(ValueError, match="set cond_dropout > 0 or guidance 1"):
        TokenDecoderConfig(cond_dropout=0.0)
    with pytest.raises(ValueError, match="embed_dim must be set"):
        TokenDecoder(TokenDecoderConfig())


def test_save_load_round_trip_through_the_decoder_loader(model: TokenDecoder, tmp_path: Path
                                                         ) -> None:
    model.embed_norm.fit(torch.randn(10, 6))
    model.save(tmp_path / "d")
    loaded = load_image_decoder(tmp_path / "d")
    assert isinstance(loaded, TokenDecoder) and loaded.config == model.config
    e = torch.randn(2, 6)
    assert torch.equal(loaded.sample_codes(e, temperature=0), model.sample_codes(e, temperature=0))
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["kind"] == "token-decoder"


def test_cli_fits_a_token_decoder_and_generates_with_it(
    tiny_store: Path, tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from modtrans.cli import main

    (tmp_path / "tok.json").write_text(json.dumps(TINY_TOKENIZER))
    (tmp_path / "dec.json").write_text(json.dumps(TINY))
    assert main(["fit-tokenizer", "--data", str(tiny_world), "--out", str(tmp_path / "tok"),
                 "--config", str(tmp_path / "tok.json"), "--max-val-images", "4",
                 "--accelerator", "cpu"]) == 0
    common = ["fit-decoder", "image", "--data", str(tiny_store), "--config",
              str(tmp_path / "dec.json"), "--accelerator", "cpu"]
    assert main([*common, "--out", str(tmp_path / "bad"), "--kind", "tokens"]) == 2
    assert "--kind tokens needs --tokenizer" in capsys.readouterr().err
    assert main([*common, "--kind", "tokens", "--tokenizer", str(tmp_path / "tok"),
                 "--condition", "text", "--max-images", "6", "--out", str(tmp_path / "d")]) == 0
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["condition"] == "text" and summary["tokens"] == 80
    assert 6 <= summary["pairs"] <= 6 * 5 and "val/loss" in summary
    out = tmp_path / "grid.png"
    capsys.readouterr()
    assert main(["generate", "--decoder", str(tmp_path / "d"), "--text", "a red circle",
                 "-n", "2", "--guidance", "2", "-o", str(out)]) == 0
    assert Image.open(out).size == (2 * 66 + 2, 66 + 2)
