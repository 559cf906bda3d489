"""hf: with non-CLIP AutoModels: a tiny BERT (text), a tiny DINOv2 (images), mixed pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modtrans.data.coco import read_coco_captions
from modtrans.data.embed import embed_captioned_images
from modtrans.data.store import EmbeddingStore
from modtrans.encoders import ModalityError, build_encoder
from modtrans.encoders.hf import HFImageEncoder, HFTextEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEXTS = ["a red circle", "two blue squares on a striped background", "a star"]


def save_tiny_bert(path: Path, words: list[str]) -> Path:
    """A random 2-layer BERT with a WordPiece tokenizer over ``words``, saved for hf:."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=48, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(path)
    return path


def save_tiny_dinov2(path: Path) -> Path:
    """A random 1-layer DINOv2 with an ImageNet-normalising image processor, saved for hf:."""
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    config = Dinov2Config(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                          num_attention_heads=2, mlp_ratio=2)
    torch.manual_seed(0)
    Dinov2Model(config).eval().save_pretrained(path)
    BitImageProcessorPil(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
    ).save_pretrained(path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    words = [*" ".join(TEXTS).split(), "photo", "of", "green", "ring", "the"]
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert", words)


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("dino") / "dino")


def test_bert_config_builds_a_mean_pooled_text_encoder(bert_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    encoder = build_encoder(f"hf:{bert_dir}")
    assert isinstance(encoder, HFTextEncoder)
    assert encoder.modalities == frozenset({"text"}) and encoder.dim == 24
    got = encoder.encode_texts(TEXTS)
    model, tokenizer = AutoModel.from_pretrained(bert_dir), AutoTokenizer.from_pretrained(bert_dir)
    for i, text in enumerate(TEXTS):  # one text at a time: no padding to get wrong
        states = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        torch.testing.assert_close(got[i], F.normalize(states.mean(0), dim=-1), atol=1e-5,
                                   rtol=1e-4)


def test_bert_cls_pooling_is_the_first_token(bert_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    got = build_encoder(f"hf:{bert_dir}?pool=cls", normalize=False).encode_texts(TEXTS)
    model, tokenizer = AutoModel.from_pretrained(bert_dir), AutoTokenizer.from_pretrained(bert_dir)
    want = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_text_encoder_refuses_images(bert_dir: Path) -> None:
    encoder = build_encoder(f"hf:{bert_dir}")
    with pytest.raises(ModalityError, match="text only"):
        encoder.encode_images([Image.new("RGB", (8, 8))])


def test_dinov2_config_builds_a_cls_pooled_image_encoder(dino_dir: Path) -> None:
    from transformers import AutoModel

    encoder = build_encoder(f"hf:{dino_dir}")
    assert isinstance(encoder, HFImageEncoder)
    assert encoder.modalities == frozenset({"image"}) and encoder.dim == 16
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 60, 3), dtype=np.uint8)) for _ in range(3)]
    got = encoder.encode_images(images)
    pixels = torch.stack([encoder.image_transform(im) for im in images])
    want = AutoModel.from_pretrained(dino_dir)(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(got, F.normalize(want, dim=-1), atol=1e-5, rtol=1e-4)
    mean_pooled = build_encoder(f"hf:{dino_dir}?pool=mean").encode_images(images)
    assert not torch.allclose(mean_pooled, got, atol=1e-3)
    with pytest.raises(ModalityError, match="images only"):
        encoder.encode_texts(["a red circle"])


def test_image_preprocessing_resizes_crops_and_normalises_as_saved(dino_dir: Path) -> None:
    """A flat colour comes out as (value/255 - mean)/std at the crop size: the model's own
    normalisation is applied (seed 003 forgot it)."""
    encoder = build_encoder(f"hf:{dino_dir}")
    rgb = (200, 100, 30)
    pixels = encoder.image_transform(Image.new("RGB", (50, 70), rgb))
    assert pixels.shape == (3, 32, 32)
    want = [(c / 255 - m) / s for c, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    torch.testing.assert_close(pixels.mean(dim=(1, 2)), torch.tensor(want), atol=1e-3, rtol=0)


@pytest.mark.parametrize("option", ["pool=max", "pooling=cls", "pool"])
def test_bad_spec_option_lists_the_options(bert_dir: Path, option: str) -> None:
    with pytest.raises(ValueError, match=r"pool=cls\|mean"):
        build_encoder(f"hf:{bert_dir}?{option}")


def test_clip_takes_no_pool_option(tiny_clip) -> None:
    with pytest.raises(ValueError, match="no \\?pool option"):
        build_encoder(f"{tiny_clip.spec}?pool=cls")


def test_mixed_pair_dinov2_images_with_bert_texts(tiny_world: Path, tmp_path: Path,
                                                  bert_dir: Path, dino_dir: Path) -> None:
    """The seed's table 3: an image encoder and a text encoder of different families and
    widths write one store."""
    data = read_coco_captions(tiny_world / "val" / "captions.json")
    words = {w for caps in data.captions for c in caps for w in c.lower().split()}
    bert = save_tiny_bert(tmp_path / "world-bert", sorted(words))
    image_encoder = build_encoder(f"hf:{dino_dir}")
    text_encoder = build_encoder(f"hf:{bert}?pool=cls")
    embed_captioned_images(data, image_encoder, text_encoder, tmp_path / "store", split="val",
                           source={}, dtype="float32", progress=False)
    store = EmbeddingStore(tmp_path / "store")
    assert (store.image_dim, store.text_dim) == (16, 24)
    assert store.image_encoder == f"hf:{dino_dir}"
    assert store.text_encoder == f"hf:{bert}?pool=cls"
    assert store.n_images == len(data) and store.n_captions == data.n_captions
    np.testing.assert_allclose(store.text_embeddings[:3],
                               text_encoder.encode_texts(data.captions[0][:3]).numpy(),
                               atol=1e-5)
