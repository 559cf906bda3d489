"""Real decoders, offline: tiny random diffusers unCLIP pipelines loaded through the decoder
spec and ``import-decoder``, and a tiny ClipCap state dict in the published layout imported
as a caption decoder. The same loading code reads the real weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_cli_error
from PIL import Image
from real_decoder_helpers import (
    PublishedClipCap,
    PublishedMLP,
    PublishedTransformerMapper,
    save_gpt2,
    save_stable_unclip,
    save_unclip_variation,
)

from modtrans.cli import main
from modtrans.data.pairs import load_pairs
from modtrans.data.store import open_store
from modtrans.decoders.caption import CaptionDecoder
from modtrans.decoders.clipcap import import_clipcap
from modtrans.decoders.diffusers_unclip import DiffusersImageDecoder, row_generators
from modtrans.decoders.loading import load_image_decoder
from modtrans.pipelines import ImageToText, TextToImage
from modtrans.training.translator import fit_translator

DIM = 16  # the tiny world CLIP's projection width (tests/conftest.py)
SAVERS = {"unclip-variation": save_unclip_variation, "stable-unclip": save_stable_unclip}
SIZES = {"unclip-variation": 64, "stable-unclip": 32}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both tiny pipelines, saved once in diffusers' directory layout."""
    root = tmp_path_factory.mktemp("diffusers")
    return {kind: save(root / kind, DIM) for kind, save in SAVERS.items()}


def _ridge(store: Path, direction: str, out: Path) -> Path:
    """A ridge translator fitted on a store, saved in ``out``."""
    train = open_store(store, "train")
    fit_translator("ridge", load_pairs(train, direction),
                   load_pairs(open_store(store, "val"), direction), out, progress=False,
                   image_encoder=train.image_encoder, text_encoder=train.text_encoder)
    return out


@pytest.fixture(scope="module")
def t2i_translator(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ridge text2image translator fitted on the tiny store, saved."""
    return _ridge(tiny_store, "text2image", tmp_path_factory.mktemp("t2i") / "ridge")


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (32, 32, 3), np.uint8))


@pytest.mark.parametrize("kind", sorted(SAVERS))
def test_spec_loads_a_pipeline_and_draws_per_row(pipelines: dict[str, Path], kind: str) -> None:
    decoder = load_image_decoder(f"diffusers:{kind}:{pipelines[kind]}")
    assert decoder.config.embed_dim == DIM and decoder.config.condition == "image"
    e = torch.randn(2, DIM)
    images = decoder.generate(e, generator=torch.Generator().manual_seed(0), steps=2)
    size = SIZES[kind]
    assert images.dtype == torch.uint8 and images.shape == (2, size, size, 3)
    assert (images[0].int() - images[1].int()).abs().max() > 50  # the embedding matters
    alone = decoder.generate(e[:1], generator=torch.Generator().manual_seed(0), steps=2)
    # row 0 does not depend on the batch (up to a rounding of batched arithmetic)
    assert (alone[0].int() - images[0].int()).abs().max() <= 2
    with pytest.raises(ValueError, match=f"shape \\(N, {DIM}\\)"):
        decoder.generate(torch.randn(1, DIM + 1))


@pytest.mark.parametrize("kind", sorted(SAVERS))
def test_embedding_in_gives_the_image_in_image(pipelines: dict[str, Path], kind: str) -> None:
    """diffusers' test_unclip_passed_image_embed through the adapter: the pipeline given an
    image draws what the adapter draws from that image's embedding."""
    decoder = load_image_decoder(f"diffusers:{kind}:{pipelines[kind]}")
    images = [_image(0), _image(1)]
    seed = torch.Generator().manual_seed(3)
    from_image = [decoder.call(image=im, generator=row_generators(seed, 1), steps=2)[0]
                  for im in images]
    from_embedding = decoder.generate(decoder.embed_images(images),
                                      generator=torch.Generator().manual_seed(3), steps=2)
    assert torch.equal(from_image[0], from_embedding[0])
    assert not torch.equal(from_image[1], from_embedding[0])


def test_missing_or_incomplete_pipeline_says_what_and_how(tmp_path: Path,
                                                          pipelines: dict[str, Path]) -> None:
    with pytest.raises(FileNotFoundError) as e:
        load_image_decoder(f"diffusers:unclip-variation:{tmp_path / 'karlo'}")
    for needle in (str(tmp_path / "karlo"), "model_index.json", "super_res_first",
                   "huggingface-cli download kakaobrain/karlo-v1-alpha-image-variations"):
        assert needle in str(e.value)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model_index.json").write_text((pipelines["stable-unclip"] / "model_index.json")
                                              .read_text())
    with pytest.raises(FileNotFoundError, match="lacks unet, vae, image_normalizer"):
        load_image_decoder(f"diffusers:stable-unclip:{partial}")
    with pytest.raises(ValueError, match="diffusers:<pipeline>:<dir>"):
        load_image_decoder(f"diffusers:karlo:{partial}")


def test_translator_to_imported_unclip_end_to_end(tiny_store: Path, t2i_translator: Path,
                                                  pipelines: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """import-decoder measures the norm of real image embeddings on the store's images; the
    text → image pipeline, the CLI and the service then use the directory like any
    decoder, the translations reaching the pipeline at that norm."""
    out = tmp_path / "karlo"
    assert main(["import-decoder", "unclip-variation", str(pipelines["unclip-variation"]),
                 "--data", str(tiny_store), "--out", str(out), "--max-images", "12"]) == 0
    capsys.readouterr()
    decoder = load_image_decoder(out)
    assert isinstance(decoder, DiffusersImageDecoder)
    train = open_store(tiny_store, "train")
    assert (decoder.config.image_encoder, decoder.config.text_encoder) == (
        train.image_encoder, train.text_encoder)
    paths = train.image_metadata().column("image_path").to_pylist()[:12]
    raw = decoder.embed_images([Image.open(p).convert("RGB") for p in paths]).norm(dim=-1)
    assert decoder.config.norm == pytest.approx(float(raw.mean()), rel=1e-4)
    assert decoder.prepare(torch.randn(3, DIM)).norm(dim=-1) == pytest.approx(
        [decoder.config.norm] * 3, rel=1e-4)

    pipeline = TextToImage.load(out, t2i_translator)
    images, scores = pipeline(["a red circle"], n=2, mode="mean", seed=0, steps=2)
    assert images.shape == (2, 64, 64, 3) and scores is None

    grid = tmp_path / "grid.png"
    for spec in (str(out), f"diffusers:unclip-variation:{pipelines['unclip-variation']}"):
        assert main(["generate", str(t2i_translator), "--decoder", spec, "--text",
                     "a red circle", "-n", "2", "--steps", "2", "--out", str(grid)]) == 0
        assert Image.open(grid).size == (2 * 66 + 2, 66 + 2)
    capsys.readouterr()

    from modtrans.serve.config import ServeConfig
    from modtrans.serve.models import load_models

    (tmp_path / "serve.yaml").write_text(f"translators: {{ridge: {t2i_translator}}}\n"
                                         f"decoders: {{karlo: {out}}}\n")
    models = load_models(tmp_path / "serve.yaml", ServeConfig())
    assert [d["name"] for d in models.describe()["decoders"]] == ["karlo"]


def test_bare_spec_takes_the_translators_encoders_after_a_width_check(
        pipelines: dict[str, Path], t2i_translator: Path, tmp_path: Path) -> None:
    from modtrans.translators.base import Translator

    translator = Translator.load(t2i_translator)
    decoder = load_image_decoder(f"diffusers:stable-unclip:{pipelines['stable-unclip']}",
                                 translator)
    assert decoder.config.image_encoder == translator.config.image_encoder
    wide = save_stable_unclip(tmp_path / "wide", DIM * 2)
    with pytest.raises(ValueError, match=f"reads {2 * DIM}-d image embeddings but the "
                                         f"translator makes {DIM}-d"):
        load_image_decoder(f"diffusers:stable-unclip:{wide}", translator)


# -- ClipCap / CapDec --------------------------------------------------------------------

CAPTIONS = ["a red circle .", "a blue square on the left .", "two green triangles ."]
PREFIX, WIDTH, MAX_LENGTH = 3, 16, 12


def _published(mapping: str, gpt: torch.nn.Module) -> PublishedClipCap:
    torch.manual_seed(1)
    project = (PublishedMLP(DIM, PREFIX * WIDTH // 2, PREFIX * WIDTH) if mapping == "mlp"
               else PublishedTransformerMapper(DIM, WIDTH, PREFIX, clip_length=2, layers=2))
    return PublishedClipCap(project, gpt, PREFIX).eval()


@pytest.mark.parametrize("mapping", ["mlp", "transformer"])
def test_imported_clipcap_decodes_the_tokens_of_the_original(tmp_path: Path, mapping: str
                                                             ) -> None:
    gpt, tokenizer = save_gpt2(tmp_path / "gpt2", CAPTIONS, WIDTH)
    model = _published(mapping, gpt)
    torch.save(model.state_dict(), tmp_path / "coco_weights.pt")
    norm = 7.5
    import_clipcap(tmp_path / "coco_weights.pt", tmp_path / "gpt2", tmp_path / "clipcap",
                   prefix_norm=norm, max_length=MAX_LENGTH,
                   image_encoder="hf:img", text_encoder="hf:txt")
    decoder = CaptionDecoder.load(tmp_path / "clipcap")
    assert decoder.config.mapping == mapping and decoder.config.prefix_length == PREFIX

    torch.manual_seed(2)
    e = torch.randn(4, DIM)
    raw = torch.nn.functional.normalize(e, dim=-1) * norm  # what ClipCap reads
    with torch.no_grad():
        torch.testing.assert_close(decoder.prefix(e),
                                   model.clip_project(raw).view(4, PREFIX, WIDTH))
    stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(".")}
    expected = [tokenizer.decode(model.greedy(row[None], MAX_LENGTH, stops),
                                 skip_special_tokens=True).strip() for row in raw]
    assert decoder.generate(e, num_beams=1) == expected
    assert len(set(expected)) > 1


def test_a_mismatching_weight_file_names_its_keys(tmp_path: Path) -> None:
    gpt, _ = save_gpt2(tmp_path / "gpt2", CAPTIONS, WIDTH)
    state = _published("mlp", gpt).state_dict()
    state.pop("clip_project.model.2.bias")
    state["clip_project.extra.weight"] = torch.zeros(1)
    state["gpt.transformer.wpe.weight"] = torch.zeros(3, WIDTH)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as e:
        import_clipcap(tmp_path / "bad.pt", tmp_path / "gpt2", tmp_path / "out", prefix_norm=1)
    for needle in ("missing (1): clip_project.model.2.bias",
                   "unexpected (1): clip_project.extra.weight",
                   "gpt.transformer.wpe.weight (3, 16) ≠ (128, 16)"):
        assert needle in str(e.value)
    torch.save({"model": {"x": 1}}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="not a state dict of tensors"):
        import_clipcap(tmp_path / "pickled.pt", tmp_path / "gpt2", tmp_path / "out")


def test_imported_clipcap_and_capdec_caption_through_the_cli(
        tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ClipCap's norm is measured on the store's raw image embeddings; the imported
    directories then caption like any decoder (ClipCap directly, CapDec after a
    translator)."""
    gpt, _ = save_gpt2(tmp_path / "gpt2", CAPTIONS, WIDTH)
    torch.save(_published("mlp", gpt).state_dict(), tmp_path / "coco_weights.pt")
    common = ["--gpt2", str(tmp_path / "gpt2"), "--data", str(tiny_store), "--max-length", "8"]
    assert_cli_error(capsys, ["import-decoder", "clipcap", str(tmp_path / "coco_weights.pt"),
                              "--out", str(tmp_path / "x")], "needs --gpt2")
    assert main(["import-decoder", "clipcap", str(tmp_path / "coco_weights.pt"),
                 "--out", str(tmp_path / "clipcap"), "--max-images", "8", *common]) == 0
    assert main(["import-decoder", "capdec", str(tmp_path / "coco_weights.pt"),
                 "--out", str(tmp_path / "capdec"), *common]) == 0
    capsys.readouterr()
    clipcap = CaptionDecoder.load(tmp_path / "clipcap")
    assert clipcap.config.condition == "image" and clipcap.config.prefix_norm > 1.5
    assert CaptionDecoder.load(tmp_path / "capdec").config.prefix_norm == 1.0

    image = open_store(tiny_store, "test").image_metadata().column("image_path")[0].as_py()
    assert main(["caption", "--decoder", str(tmp_path / "clipcap"), "--image", image,
                 "--beams", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}\t")

    i2t = _ridge(tiny_store, "image2text", tmp_path / "i2t")
    captions = ImageToText.load(tmp_path / "capdec", i2t)([Path(image)], beams=1)
    assert len(captions) == 1 and isinstance(captions[0], str)
