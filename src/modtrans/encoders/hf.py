"""``hf:<dir-or-id>`` — transformers models, loaded from a directory or the local cache only.

The model's config decides what the spec builds:

- a CLIP (``model_type`` ``clip``, or the world CLIP's ``modtrans_conv_clip``) encodes images
  and texts into its shared projection space;
- any other model with a vocabulary (BERT-like) is a text encoder, pooled by the mean of its
  token states (``hf:<dir>?pool=cls`` for the first token);
- any other model with an ``image_size`` (DINOv2-like, ViT) is an image encoder, pooled by
  its CLS token (``?pool=mean`` for the mean of the patch tokens).

The world CLIP that ``modtrans fit-encoder`` trains is saved in the same format and loaded
through this same code, so it exercises exactly the path a real CLIP takes. Images are
preprocessed by the model's own saved image processor (resize, crop, mean/std), PIL backend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from modtrans.encoders.base import (
    ImageEncoderBase,
    ModalityError,
    ProcessorTransform,
    TextOnlyEncoderBase,
    TokenCount,
    batches,
    check_texts,
    count_unknown,
    finish,
    longer_than,
    register_encoder,
    split_options,
)

logger = logging.getLogger(__name__)

_PROBE_TEXT = "a photo of a red circle"


def resolve_hf_source(argument: str, spec: str) -> str:
    """Return a local directory or a hub id that is present in the local cache.

    Raises:
        FileNotFoundError: naming the spec, where it looked and how to get the weights.
    """
    path = Path(argument).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"encoder spec {spec!r}: {path} has no config.json; point hf: at a directory "
                "written by save_pretrained (or by `modtrans fit-encoder`)"
            )
        return str(path)
    looks_like_path = argument.startswith(("/", ".", "~")) or argument.count("/") > 1
    if looks_like_path:
        raise FileNotFoundError(
            f"encoder spec {spec!r}: model directory {path} does not exist; "
            "train one with `modtrans fit-encoder` or give the directory of a saved model"
        )
    return argument


def _cache_hint(argument: str, spec: str) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return (
        f"encoder spec {spec!r}: {argument!r} is not a local directory and is not in the "
        f"Hugging Face cache ({cache}); modtrans never downloads at run time. On a machine "
        f"with network run `huggingface-cli download {argument}` (or save_pretrained to a "
        "directory) and pass hf:<that directory>"
    )


def _load_error(argument: str, spec: str, source: str, error: Exception) -> Exception:
    """The error to raise when weights, tokenizer or image processor fail to load.

    A local directory that lacks (or holds broken) files gets a message naming the directory
    and the files save_pretrained writes; a hub id gets the cache hint.
    """
    if Path(source).is_dir():
        detail = " ".join(str(error).split())
        cls = FileNotFoundError if isinstance(error, OSError) else ValueError
        return cls(
            f"encoder spec {spec!r}: could not load the model in {source} ({detail}); the "
            "directory must hold what save_pretrained writes (config.json, model weights, "
            "tokenizer.json/tokenizer_config.json, preprocessor_config.json): re-save the "
            "model or retrain it with `modtrans fit-encoder`"
        )
    if isinstance(error, OSError):
        return FileNotFoundError(_cache_hint(argument, spec))
    return error


def _load(source: str, argument: str, spec: str, loader, **kwargs):
    """``loader.from_pretrained(source, local_files_only=True)`` with modtrans' error messages."""
    try:
        return loader.from_pretrained(source, local_files_only=True, **kwargs)
    except (OSError, ValueError) as e:
        raise _load_error(argument, spec, source, e) from e


class _Texts:
    """Text encoding shared by the CLIP and the text-only encoders: tokenizer checks,
    tokenisation and the batch loop; each defines ``_text_features`` (its pooling)."""

    spec: str
    tokenizer: object
    device: torch.device
    max_length: int
    normalize: bool
    dim: int

    def _check_tokenizer(self, vocab_size: int) -> None:
        """Refuse a tokenizer that loaded empty or mismatched (offline loads can fail silently)."""
        ids = self.tokenizer(_PROBE_TEXT)["input_ids"]
        unk = self.tokenizer.unk_token_id
        known = [i for i in ids if i != unk and i not in self.tokenizer.all_special_ids]
        if len(self.tokenizer) < 8 or not known or max(ids) >= vocab_size:
            raise ValueError(
                f"encoder spec {self.spec!r}: the tokenizer did not load correctly "
                f"(size {len(self.tokenizer)}, ids for {_PROBE_TEXT!r}: {ids}, model vocabulary "
                f"{vocab_size}); make sure the model directory holds its tokenizer files"
            )

    def _tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)

    def _text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled features of a tokenised batch (before normalisation)."""
        raise NotImplementedError

    @property
    def text_context(self) -> int:
        """Tokens a text is truncated to."""
        return self.max_length

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Which texts are longer than the context (and so are embedded from their start)."""
        return longer_than(self.tokenizer, texts, self.max_length)

    def unknown_tokens(self, texts: Sequence[str]) -> list[TokenCount]:
        """Each text's tokens and the pieces of it outside the tokenizer's vocabulary."""
        return count_unknown(self.tokenizer, texts, self.max_length)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        """Embeddings of ``texts``, in order. Texts are batched by length (longest first),
        so a batch is padded to about its own length, not to the longest text overall."""
        check_texts(texts)
        if not texts:
            return torch.empty(0, self.dim)
        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.cat([finish(self._text_features(self._tokens([texts[i] for i in chunk])),
                                self.normalize)
                         for chunk in batches(order, batch_size)])
        return out[torch.argsort(torch.tensor(order))]


class HFClipEncoder(ImageEncoderBase, _Texts):
    """A transformers ``CLIPModel`` (or the world CLIP) with its tokenizer and image processor."""

    modalities = frozenset({"image", "text"})

    def __init__(self, source: str, argument: str, *, spec: str, device: torch.device,
                 dtype: torch.dtype, normalize: bool) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        self.spec = spec
        self.model = _load(source, argument, self.spec, AutoModel, dtype=dtype)
        self.tokenizer = _load(source, argument, self.spec, AutoTokenizer)
        processor = _load(source, argument, self.spec, AutoImageProcessor, backend="pil")
        self.image_transform = ProcessorTransform(processor)
        self.model.to(device).eval()
        self.device, self.dtype, self.normalize = device, dtype, normalize
        self.name = Path(argument).name or argument
        self.dim = int(self.model.config.projection_dim)
        text_config = self.model.text_model.config
        self.max_length = int(text_config.max_position_embeddings)
        self._check_tokenizer(text_config.vocab_size)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, self.dtype)
        return finish(self.model.get_image_features(pixel_values=pixels).pooler_output,
                      self.normalize)

    def _text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output


def _mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states where ``mask`` is 1: (B, L, D), (B, L) → (B, D)."""
    mask = mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1)


class HFTextEncoder(TextOnlyEncoderBase, _Texts):
    """A BERT-like ``AutoModel`` text encoder, mean- or CLS-pooled (as sentence-transformers)."""

    def __init__(self, source: str, argument: str, *, spec: str, pool: str, device: torch.device,
                 dtype: torch.dtype, normalize: bool) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.spec = spec
        self.model = _load(source, argument, self.spec, AutoModel, dtype=dtype).to(device).eval()
        self.tokenizer = _load(source, argument, self.spec, AutoTokenizer)
        self.device, self.dtype, self.normalize, self.pool = device, dtype, normalize, pool
        self.name = Path(argument).name or argument
        self.dim = int(self.model.config.hidden_size)
        self.max_length = min(int(getattr(self.model.config, "max_position_embeddings", 512)),
                              self.tokenizer.model_max_length)
        self._check_tokenizer(self.model.config.vocab_size)

    def _text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        states = self.model(**tokens).last_hidden_state
        return states[:, 0] if self.pool == "cls" else _mean_pool(states, tokens["attention_mask"])


class HFImageEncoder(ImageEncoderBase):
    """A DINOv2/ViT-like ``AutoModel`` image encoder, CLS- or mean-pooled."""

    modalities = frozenset({"image"})

    def __init__(self, source: str, argument: str, *, spec: str, pool: str, device: torch.device,
                 dtype: torch.dtype, normalize: bool) -> None:
        from transformers import AutoImageProcessor, AutoModel

        self.spec = spec
        self.model = _load(source, argument, self.spec, AutoModel, dtype=dtype).to(device).eval()
        processor = _load(source, argument, self.spec, AutoImageProcessor, backend="pil")
        self.image_transform = ProcessorTransform(processor)
        self.device, self.dtype, self.normalize, self.pool = device, dtype, normalize, pool
        self.name = Path(argument).name or argument
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        states = self.model(pixel_values=pixels.to(self.device, self.dtype)).last_hidden_state
        pooled = states[:, 0] if self.pool == "cls" else states[:, 1:].mean(1)
        return finish(pooled, self.normalize)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        raise ModalityError(
            f"{self.spec} encodes images only; pair it with a text encoder "
            "(e.g. --text-encoder sbert:minilm)"
        )


@register_encoder(
    "hf",
    "transformers model from a local directory or the local HF cache: CLIP (both modalities), "
    "BERT-like text or DINOv2-like image AutoModel (?pool=cls|mean)",
)
def _build_hf(argument: str, *, device: torch.device, dtype: torch.dtype, normalize: bool):
    from transformers import AutoConfig

    from modtrans.encoders import conv_clip  # registers the world CLIP's model type

    spec = f"hf:{argument}"
    base, options = split_options(argument, spec, {"pool": ("cls", "mean")})
    source = resolve_hf_source(base, spec)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(_cache_hint(base, spec)) from e
    common = dict(spec=spec, device=device, dtype=dtype, normalize=normalize)
    if config.model_type in ("clip", conv_clip.MODEL_TYPE):
        if options:
            raise ValueError(f"encoder spec {spec!r}: a CLIP takes no ?pool option")
        return HFClipEncoder(source, base, **common)
    if hasattr(config, "vocab_size"):
        return HFTextEncoder(source, base, pool=options.get("pool", "mean"), **common)
    if hasattr(config, "image_size"):
        return HFImageEncoder(source, base, pool=options.get("pool", "cls"), **common)
    raise ValueError(
        f"encoder spec {spec!r}: model_type {config.model_type!r} is neither a CLIP, a text "
        "model (no vocab_size) nor an image model (no image_size); hf: cannot encode with it"
    )
