"""``open_clip:<arch>/<pretrained>`` — OpenCLIP models (optional extra ``modtrans[openclip]``).

``pretrained`` is a tag already in the local open_clip cache or a path to a checkpoint file.
open_clip needs torchvision, which must match the installed torch (e.g. torch 2.14.1 with
torchvision 0.29.1); it is therefore kept out of the core install.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from modtrans.encoders.base import ImageEncoderBase, batches, check_texts, finish, register_encoder

INSTALL_HINT = (
    "open_clip is not installed (it is an optional extra that needs torchvision): "
    "pip install 'modtrans[openclip]' with a matching torch/torchvision pair, "
    "e.g. torch==2.14.1 torchvision==0.29.1"
)


class OpenClipEncoder(ImageEncoderBase):
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
        self.image_transform = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.device, self.dtype, self.normalize = device, dtype, normalize
        self.name = argument
        self.dim = int(model.text_projection.shape[1])

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, self.dtype)
        return finish(self.model.encode_image(pixels), self.normalize)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        check_texts(texts)
        out = [
            finish(self.model.encode_text(self.tokenizer(list(chunk)).to(self.device)),
                   self.normalize)
            for chunk in batches(list(texts), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.dim)


def _precision(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


@register_encoder("open_clip", "OpenCLIP <arch>/<pretrained> (optional extra 'openclip')")
def _build_open_clip(argument: str, *, device: torch.device, dtype: torch.dtype, normalize: bool):
    return OpenClipEncoder(argument, device=device, dtype=dtype, normalize=normalize)
