"""``open_clip:<arch>/<pretrained>`` — OpenCLIP models (optional extra ``modtrans[openclip]``).

``pretrained`` is a tag already in the local open_clip cache or a path to a checkpoint file.
open_clip needs torchvision, which must match the installed torch (e.g. torch 2.14.1 with
torchvision 0.29.1); it is therefore kept out of the core install.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from modtrans.encoders.base import ImageBatch, batches, check_texts, register_encoder, to_pil_list

INSTALL_HINT = (
    "open_clip is not installed (it is an optional extra that needs torchvision): "
    "pip install 'modtrans[openclip]' with a matching torch/torchvision pair, "
    "e.g. torch==2.14.1 torchvision==0.29.1"
)


class OpenClipEncoder:
    """An OpenCLIP model with its own preprocessing and tokenizer."""

    modalities = frozenset({"image", "text"})

    def __init__(
        self, argument: str, *, device: torch.device, dtype: torch.dtype, normalize: bool
    ) -> None:
        self.spec = f"open_clip:{argument}"
        arch, sep, pretrained = argument.partition("/")
        if not sep or not arch or not pretrained:
            raise ValueError(
                f"encoder spec {self.spec!r} must be open_clip:<arch>/<pretrained>, "
                "e.g. open_clip:ViT-B-32/laion2b_s34b_b79k"
            )
        try:
            import open_clip
        except ImportError as e:
            raise ImportError(f"encoder spec {self.spec!r}: {INSTALL_HINT}") from e
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained, device=device, precision=_precision(dtype)
            )
        except RuntimeError as e:
            raise FileNotFoundError(
                f"encoder spec {self.spec!r}: could not load {arch} weights {pretrained!r} "
                f"locally ({e}); pass a checkpoint file path as <pretrained>"
            ) from e
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.device, self.dtype, self.normalize = device, dtype, normalize
        self.name = argument
        self.dim = int(model.text_projection.shape[1])

    def _finish(self, features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        return F.normalize(features, dim=-1) if self.normalize else features

    @torch.inference_mode()
    def encode_images(self, images: ImageBatch, *, batch_size: int = 64) -> torch.Tensor:
        out = []
        for chunk in batches(to_pil_list(images), batch_size):
            pixels = torch.stack([self.preprocess(im) for im in chunk]).to(self.device, self.dtype)
            out.append(self._finish(self.model.encode_image(pixels)))
        return torch.cat(out).cpu() if out else torch.empty(0, self.dim)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        check_texts(texts)
        out = [
            self._finish(self.model.encode_text(self.tokenizer(list(chunk)).to(self.device)))
            for chunk in batches(list(texts), batch_size)
        ]
        return torch.cat(out).cpu() if out else torch.empty(0, self.dim)


def _precision(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


@register_encoder("open_clip", "OpenCLIP <arch>/<pretrained> (optional extra 'openclip')")
def _build_open_clip(argument: str, *, device: torch.device, dtype: torch.dtype, normalize: bool):
    return OpenClipEncoder(argument, device=device, dtype=dtype, normalize=normalize)
