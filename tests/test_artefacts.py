"""The one artefact layer: checkpoints of every kind written by the code before it (commit
76213ae, tests/fixtures/legacy) load and give the outputs they gave then; a new save loads
back; every broken file gives an error that names it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from modtrans.artefacts import FORMAT, read_summary
from modtrans.decoders.caption import CaptionDecoder
from modtrans.decoders.image_vae import ConditionalVAE
from modtrans.encoders import build_encoder
from modtrans.translators.base import Translator
from modtrans.world.clip import WorldClip
from modtrans.world.recogniser import AttributeRecogniser

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
REFERENCE = json.loads((LEGACY / "reference.json").read_text())


def _inputs(name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(LEGACY / f"inputs_{name}.npy"))


def _seed(n: int) -> torch.Generator:
    return torch.Generator().manual_seed(n)


def _mean_of_two_as_drawn_then(model: Translator, c: torch.Tensor) -> torch.Tensor:
    """The mean mode of 2 draws with the noise the code of then drew: one generator seeded
    0 for the whole batch, (K, N, D) in that order (rows now draw from their own
    generators)."""
    with torch.no_grad():
        cn = model.cond_norm(c)
        noise = torch.randn(1, len(c), model.config.target_dim, generator=_seed(0))
        noise = torch.cat([noise, -noise]).reshape(2 * len(c), -1)
        residual = model.sample_residual(cn.repeat(2, 1), noise=noise)
        z_hat = model.combine(cn.repeat(2, 1), residual).view(2, len(c), -1)
        return model.target_norm.inverse(z_hat.mean(0))


@pytest.mark.parametrize("method", ["ridge", "ced", "ced-paper"])
def test_legacy_translators_load_and_translate_as_before(method: str) -> None:
    model = Translator.load(LEGACY / "translator" / method)
    assert model.config.method == method
    c = _inputs("text_emb")
    z = (_mean_of_two_as_drawn_then(model, c) if model.stochastic
         else model.translate(c, mode="mean", n_samples=2, seed=0))
    torch.testing.assert_close(z, torch.tensor(REFERENCE[f"translator_{method}"]))


def test_legacy_image_decoder_loads_and_draws_as_before() -> None:
    model = ConditionalVAE.load(LEGACY / "image_decoder")
    images = model.generate(_inputs("image_emb"), generator=_seed(0))
    torch.testing.assert_close(images.float().mean(dim=(1, 2, 3)),
                               torch.tensor(REFERENCE["image_decoder"]))


def test_legacy_caption_decoder_loads_and_captions_as_before() -> None:
    model = CaptionDecoder.load(LEGACY / "caption_decoder")
    assert model.generate(_inputs("image_emb")) == REFERENCE["caption_decoder"]


def test_legacy_recogniser_loads_and_reads_as_before() -> None:
    model = AttributeRecogniser.load(LEGACY / "recogniser")
    assert model.config.degrade == 0.5  # saved with the option: not the format-0 default
    predicted = model.predict(_inputs("images"))
    assert {k: v.int().tolist() for k, v in predicted.items()} == REFERENCE["recogniser"]


def test_legacy_world_clip_loads_as_an_artefact_and_through_hf() -> None:
    clip = WorldClip.load(LEGACY / "world_clip")
    assert clip.config.vision == "vit" and clip.config.projection_dim == 8
    encoder = build_encoder(f"hf:{LEGACY / 'world_clip'}")
    texts = ["a red circle", "a blue square to the left of a green star"]
    torch.testing.assert_close(encoder.encode_texts(texts),
                               torch.tensor(REFERENCE["world_clip_text"]))


@pytest.mark.parametrize("kind", ["translator/ced", "image_decoder", "caption_decoder",
                                  "recogniser", "world_clip"])
def test_a_resaved_legacy_artefact_is_format_1_and_loads_the_same(kind: str,
                                                                  tmp_path: Path) -> None:
    cls = {"translator/ced": Translator, "image_decoder": ConditionalVAE,
           "caption_decoder": CaptionDecoder, "recogniser": AttributeRecogniser,
           "world_clip": WorldClip}[kind]
    old = cls.load(LEGACY / kind)
    old.save(tmp_path, summary={"note": "resaved"})
    raw = json.loads((tmp_path / cls.layout.config).read_text())
    assert raw["format"] == FORMAT and raw["kind"] == cls.kind
    new = cls.load(tmp_path)
    assert new.config == old.config
    for (name, a), (_, b) in zip(old.state_dict().items(), new.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    summary = read_summary(tmp_path)
    assert summary["note"] == "resaved" and "modtrans" in summary["provenance"]


@pytest.fixture
def ridge(tmp_path: Path) -> Path:
    out = tmp_path / "ridge"
    shutil.copytree(LEGACY / "translator" / "ridge", out)
    Translator.load(out).save(out)
    return out


def test_truncated_or_random_weights_name_the_file(ridge: Path) -> None:
    weights = ridge / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors.*"
                                         r"modtrans train"):
        Translator.load(ridge)
    weights.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable"):
        Translator.load(ridge)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        Translator.load(ridge)


def test_truncated_config_names_the_file(ridge: Path) -> None:
    config = ridge / "config.json"
    config.write_text(config.read_text()[:60])
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON.*modtrans train"):
        Translator.load(ridge)


def test_an_edited_dimension_says_the_files_do_not_match(ridge: Path) -> None:
    raw = json.loads((ridge / "config.json").read_text())
    raw["config"]["cond_dim"] += 1
    (ridge / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"model\.safetensors does not match .*config\.json"):
        Translator.load(ridge)


def test_wrong_kind_bad_option_and_future_format_are_refused(ridge: Path) -> None:
    with pytest.raises(ValueError, match="holds a 'translator', not a recogniser"):
        AttributeRecogniser.load(ridge)
    raw = json.loads((ridge / "config.json").read_text())
    (ridge / "config.json").write_text(json.dumps({**raw, "config": {**raw["config"],
                                                                      "direction": "up"}}))
    with pytest.raises(ValueError, match=r"config\.json does not describe a valid translator"):
        Translator.load(ridge)
    (ridge / "config.json").write_text(json.dumps({**raw, "format": FORMAT + 1}))
    with pytest.raises(ValueError, match="upgrade modtrans"):
        Translator.load(ridge)


def test_a_missing_directory_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"holds no caption decoder.*fit-decoder caption"):
        CaptionDecoder.load(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=r"holds no world clip.*fit-encoder"):
        WorldClip.load(tmp_path)


def test_a_new_model_needs_only_its_config_module_loss_and_data(tmp_path: Path) -> None:
    """The layer's contract for every later model (L-Verse, the joint VAE): a config
    dataclass, an ``nn.Module`` that names its kind, a loss and loaders; fit, resume, save,
    load and the errors come from the layer."""
    import dataclasses

    import lightning as L
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from modtrans.artefacts import Artefact
    from modtrans.config import Config
    from modtrans.training.fit import Recipe, fit

    @dataclasses.dataclass
    class LineConfig(Config):
        dim: int = 3

    class Line(Artefact, nn.Module):
        kind, config_class, train_hint = "line", LineConfig, "fit one"

        def __init__(self, config: LineConfig) -> None:
            super().__init__()
            self.config, self.map = config, nn.Linear(config.dim, 1)

        def training_loss(self, batch: tuple[torch.Tensor, torch.Tensor]
                          ) -> dict[str, torch.Tensor]:
            x, y = batch
            return {"loss": (self.map(x).squeeze(1) - y).pow(2).mean()}

    recipe = Recipe(epochs=40, batch_size=32, lr=0.05, accelerator="cpu", progress=False)
    L.seed_everything(recipe.seed, verbose=False)
    x = torch.randn(256, 3)
    data = TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3)
    model = Line(LineConfig())
    result = fit(model, model.training_loss, recipe.loader(data),
                 DataLoader(data, batch_size=256), recipe, tmp_path)
    assert result["val/loss"] < 1e-3 and result["steps"] == 40 * 8
    model.save(tmp_path, summary=result)
    loaded = Line.load(tmp_path)
    torch.testing.assert_close(loaded.map.weight, torch.tensor([[1.0, -2.0, 0.5]]),
                               atol=0.02, rtol=0)
    assert read_summary(tmp_path)["steps"] == 40 * 8
    longer = dataclasses.replace(recipe, epochs=41, resume=True)
    assert fit(loaded, loaded.training_loss, longer.loader(data), None, longer,
               tmp_path)["steps"] == 41 * 8
