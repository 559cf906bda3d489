"""The Encoder protocol and the registry that builds encoders from spec strings.

A spec is ``<kind>:<argument>``: ``hf:/path/to/clip`` or ``hf:openai/clip-vit-base-patch32``,
``sbert:minilm``, ``open_clip:ViT-B-32/laion2b_s34b_b79k``. Kinds register a factory with
:func:`register_encoder`; :func:`build_encoder` parses the spec and calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from PIL import Image

ImageBatch = Sequence[Image.Image] | torch.Tensor


class ModalityError(ValueError):
    """Raised when an encoder is asked for a modality it does not encode."""


@runtime_checkable
class Encoder(Protocol):
    """Maps images and/or texts to embeddings of one dimension ``dim``.

    Encoders that handle one modality only raise :class:`ModalityError` for the other;
    ``modalities`` says which they handle.

    Image encoding is split in two so that decoding and preprocessing can run in DataLoader
    workers: ``image_transform`` (picklable; one PIL image → one pixel tensor, exactly the
    model's own preprocessing) and ``encode_pixels`` (a stacked batch → embeddings, on the
    encoder's device). ``encode_images`` is the two in sequence.
    """

    spec: str
    name: str
    dim: int
    modalities: frozenset[str]
    image_transform: Callable[[Image.Image], torch.Tensor] | None

    def encode_images(self, images: ImageBatch, *, batch_size: int = 64) -> torch.Tensor:
        """Embed images (PIL images, or a uint8 tensor (N, H, W, 3)) → float tensor (N, dim)."""
        ...

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed a batch of ``image_transform`` outputs stacked → float tensor (N, dim), on CPU."""
        ...

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        """Embed texts → float tensor (N, dim)."""
        ...


EncoderFactory = Callable[..., Encoder]
_REGISTRY: dict[str, tuple[EncoderFactory, str]] = {}


def register_encoder(kind: str, help: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Register ``factory(argument, *, device, dtype, normalize)`` under ``kind``."""

    def decorator(factory: EncoderFactory) -> EncoderFactory:
        _REGISTRY[kind] = (factory, help)
        return factory

    return decorator


def list_encoders() -> dict[str, str]:
    """The registered spec kinds with a one-line description of each."""
    return {kind: help for kind, (_, help) in sorted(_REGISTRY.items())}


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``kind:argument``; raise ValueError naming the known kinds when malformed."""
    kind, sep, argument = spec.partition(":")
    if not sep or not argument:
        raise ValueError(
            f"encoder spec {spec!r} is not of the form <kind>:<argument>; "
            f"known kinds: {', '.join(sorted(_REGISTRY))} (e.g. hf:/path/to/clip, sbert:minilm)"
        )
    if kind not in _REGISTRY:
        raise ValueError(
            f"unknown encoder kind {kind!r} in spec {spec!r}; "
            f"known kinds: {', '.join(sorted(_REGISTRY))}"
        )
    return kind, argument


def build_encoder(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    normalize: bool = True,
) -> Encoder:
    """Build an encoder from a spec string.

    Args:
        spec: ``<kind>:<argument>``, see :func:`list_encoders`.
        device: where the model runs.
        dtype: the model's parameter dtype (float32, float16, bfloat16); outputs are float32.
        normalize: L2-normalise the embeddings (the clip-retrieval convention).

    Returns:
        An object following the :class:`Encoder` protocol.
    """
    kind, argument = parse_spec(spec)
    factory, _ = _REGISTRY[kind]
    return factory(argument, device=torch.device(device), dtype=dtype, normalize=normalize)


def batches(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    """Consecutive slices of ``items`` of at most ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def check_texts(texts: Sequence[str]) -> None:
    """Reject non-strings and empty captions with a message naming the first bad row."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {i} is a {type(text).__name__}, expected str")
        if not text.strip():
            raise ValueError(f"text {i} is empty; remove empty captions before encoding")


def longer_than(tokenizer: Any, texts: Sequence[str], context: int) -> list[bool]:
    """Which texts a transformers tokenizer makes longer than ``context`` tokens (specials
    included); each is tokenised to at most ``context + 1`` tokens, so a huge text is cheap."""
    ids = tokenizer(list(texts), truncation=True, max_length=context + 1)["input_ids"]
    return [len(row) > context for row in ids]


class TokenCount(NamedTuple):
    """A text's tokens (specials left out) and the pieces of it mapped to the unknown token."""

    tokens: int
    unknown: list[str]


def count_unknown(tokenizer: Any, texts: Sequence[str], context: int) -> list[TokenCount]:
    """Each text's tokens within ``context`` and the pieces a transformers tokenizer maps to
    its unknown token: a closed vocabulary (a word-level or WordPiece tokenizer built for
    other data) silently turns every word it lacks into that one token."""
    unk = tokenizer.unk_token_id
    fast = getattr(tokenizer, "is_fast", False)
    enc = tokenizer(list(texts), truncation=True, max_length=context,
                    return_special_tokens_mask=True, return_offsets_mapping=fast)
    out = []
    for row, text in enumerate(texts):
        special = enc["special_tokens_mask"][row]
        ids = [i for i, s in zip(enc["input_ids"][row], special, strict=True) if not s]
        if not fast:
            out.append(TokenCount(len(ids), ["?"] * sum(i == unk for i in ids)))
            continue
        spans = [span for span, s in zip(enc["offset_mapping"][row], special, strict=True)
                 if not s]
        out.append(TokenCount(len(ids), [text[a:b] for i, (a, b) in zip(ids, spans, strict=True)
                                         if unk is not None and i == unk]))
    return out


def to_pil_list(images: ImageBatch) -> list[Image.Image]:
    """Accept PIL images or a uint8 tensor (N, H, W, 3) and return RGB PIL images."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                "image tensors must be uint8 (N, H, W, 3); "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        return [Image.fromarray(a) for a in images.cpu().numpy()]
    return [im.convert("RGB") for im in images]


def split_options(argument: str, spec: str, allowed: dict[str, tuple[str, ...]]
                  ) -> tuple[str, dict[str, str]]:
    """Split ``<argument>?key=value&...`` into the argument and validated options.

    Args:
        argument: what follows ``<kind>:`` in the spec.
        spec: the whole spec, for error messages.
        allowed: option name → its allowed values.
    """
    base, sep, query = argument.partition("?")
    options: dict[str, str] = {}
    for item in query.split("&") if sep else ():
        key, eq, value = item.partition("=")
        if not eq or key not in allowed or value not in allowed[key]:
            choices = "; ".join(f"{k}={'|'.join(v)}" for k, v in allowed.items()) or "none"
            raise ValueError(f"encoder spec {spec!r}: bad option {item!r}; options: {choices}")
        options[key] = value
    return base, options


def finish(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    """float32 on CPU, L2-normalised when ``normalize``."""
    features = features.float().cpu()
    return F.normalize(features, dim=-1) if normalize else features


class ProcessorTransform:
    """A transformers image processor as a picklable ``PIL image → (C, H, W) tensor``."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


class ImageEncoderBase:
    """``encode_images`` for encoders that define ``image_transform`` and ``encode_pixels``."""

    dim: int
    image_transform: Callable[[Image.Image], torch.Tensor]

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_images(self, images: ImageBatch, *, batch_size: int = 64) -> torch.Tensor:
        out = [
            self.encode_pixels(torch.stack([self.image_transform(im) for im in chunk]))
            for chunk in batches(to_pil_list(images), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.dim)


class TextOnlyEncoderBase:
    """The image half of a text-only encoder: every image call raises :class:`ModalityError`."""

    spec: str
    modalities = frozenset({"text"})
    image_transform = None

    def _no_images(self) -> ModalityError:
        return ModalityError(
            f"{self.spec} encodes text only; pair it with an image encoder "
            "(e.g. --image-encoder hf:<clip-dir>)"
        )

    def encode_images(self, images: ImageBatch, *, batch_size: int = 64) -> torch.Tensor:
        raise self._no_images()

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        raise self._no_images()
