"""``hf:<dir-or-id>`` — transformers CLIP models, loaded from a directory or the local cache only.

The world CLIP that ``modtrans fit-encoder`` trains is saved in the same format and loaded
through this same code, so it exercises exactly the path a real CLIP takes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from modtrans.encoders.base import (
    ImageBatch,
    batches,
    check_texts,
    register_encoder,
    to_pil_list,
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


class HFClipEncoder:
    """A transformers ``CLIPModel`` with its tokenizer and image processor."""

    modalities = frozenset({"image", "text"})

    def __init__(
        self,
        argument: str,
        *,
        device: torch.device,
        dtype: torch.dtype,
        normalize: bool,
    ) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPImageProcessorPil

        from modtrans.encoders import conv_clip  # registers the world CLIP's model type

        self.spec = f"hf:{argument}"
        source = resolve_hf_source(argument, self.spec)
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=True)
        except OSError as e:
            raise FileNotFoundError(_cache_hint(argument, self.spec)) from e
        if config.model_type not in ("clip", conv_clip.MODEL_TYPE):
            raise ValueError(
                f"encoder spec {self.spec!r}: model_type {config.model_type!r} is not a CLIP "
                f"model; hf: loads CLIP checkpoints (model_type 'clip' or "
                f"'{conv_clip.MODEL_TYPE}')"
            )
        try:
            self.model = AutoModel.from_pretrained(source, local_files_only=True, dtype=dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            self.processor = CLIPImageProcessorPil.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as e:
            raise _load_error(argument, self.spec, source, e) from e
        self.model.to(device).eval()
        self.device, self.dtype, self.normalize = device, dtype, normalize
        self.name = Path(argument).name or argument
        self.dim = int(config.projection_dim)
        text_config = self.model.text_model.config
        self.max_length = int(text_config.max_position_embeddings)
        self._check_tokenizer(text_config.vocab_size)

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

    def _finish(self, features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        return F.normalize(features, dim=-1) if self.normalize else features

    @torch.inference_mode()
    def encode_images(self, images: ImageBatch, *, batch_size: int = 64) -> torch.Tensor:
        pil = to_pil_list(images)
        out = []
        for chunk in batches(pil, batch_size):
            pixels = self.processor(images=list(chunk), return_tensors="pt")["pixel_values"]
            pixels = pixels.to(self.device, self.dtype)
            out.append(self._finish(self.model.get_image_features(pixel_values=pixels).pooler_output))
        return torch.cat(out).cpu() if out else torch.empty(0, self.dim)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        check_texts(texts)
        out = []
        for chunk in batches(list(texts), batch_size):
            tokens = self.tokenizer(
                list(chunk), padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            features = self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).pooler_output
            out.append(self._finish(features))
        return torch.cat(out).cpu() if out else torch.empty(0, self.dim)


@register_encoder("hf", "transformers CLIPModel from a local directory or the local HF cache")
def _build_hf(argument: str, *, device: torch.device, dtype: torch.dtype, normalize: bool):
    return HFClipEncoder(argument, device=device, dtype=dtype, normalize=normalize)
