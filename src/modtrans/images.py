"""Image helpers shared by the image decoders, the world CLIP and the judge: uint8 ↔ float
pixels, CLIP normalisation, decoding files, and a picture grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

# CLIP's pixel mean and standard deviation (Radford et al., 2021).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_images(paths: list[Path], image_size: int) -> torch.Tensor:
    """Decode images into one uint8 tensor (N, H, W, 3); they must already be square."""
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            if im.size != (image_size, image_size):
                raise ValueError(
                    f"{path} is {im.size[0]}x{im.size[1]}; the world CLIP expects "
                    f"{image_size}x{image_size} images (set --image-size to match)"
                )
            out[i] = np.asarray(im.convert("RGB"))
    return torch.from_numpy(out)


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W, 3) → float (N, 3, H, W) in [0, 1]."""
    return images.permute(0, 3, 1, 2).float() / 255


def uint8_images(pixels: torch.Tensor) -> torch.Tensor:
    """Float images (N, 3, H, W), clamped to [0, 1] → uint8 (N, H, W, 3)."""
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def pixel_values(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) → CLIP-normalised float (N, 3, H, W), as the image processor does."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (unit_pixels(images) - mean) / std


def image_grid(images: torch.Tensor, rows: int, pad: int = 2) -> Image.Image:
    """uint8 images (rows·cols, H, W, 3), row-major, as one picture with ``pad`` px gutters."""
    n, h, w, _ = images.shape
    if rows < 1 or n % rows:
        raise ValueError(f"{n} images do not fill {rows} rows")
    cols = n // rows
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, array in enumerate(images.numpy()):
        r, c = divmod(i, cols)
        grid.paste(Image.fromarray(array), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
