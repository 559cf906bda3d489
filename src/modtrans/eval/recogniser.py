"""The judge of generated world images: a CNN that reads which attributes an image shows.

Trained on the world's ground truth (never on generated images), it predicts, per image:
which shapes, which colours and which colour–shape pairs are present (multi-label), and how
many objects there are. Its own held-out accuracy is reported with every score it gives:
a judge that is not measured proves nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modtrans.config import Config
from modtrans.data.captions import COLOURS, SHAPES
from modtrans.data.coco import read_coco_captions
from modtrans.data.world import load_ground_truth
from modtrans.encoders.conv_clip import conv_block
from modtrans.encoders.world_clip import load_images, pixel_values
from modtrans.io import load_weights, save_weights, write_json

logger = logging.getLogger(__name__)

COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOUR_NAMES for s in SHAPES)
MAX_OBJECTS = 4
WEIGHTS, CONFIG = "recogniser.safetensors", "recogniser_config.json"


@dataclasses.dataclass
class RecogniserConfig(Config):
    """Architecture and recipe of the attribute recogniser.

    Attributes:
        channels: conv blocks (``convs`` × (conv → BN → ReLU), then 2×2 max-pool).
        convs: convolutions per block.
        min_area: visible pixels an object needs to count as present (a sliver hidden under
            another object is not something a viewer, or a judge, can see).
        epochs, batch_size, lr, weight_decay, seed: the recipe.
    """

    channels: tuple[int, ...] = (32, 64, 128, 256)
    convs: int = 1
    min_area: float = 12.0
    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")


def attribute_targets(rows: list[dict[str, Any]], min_area: float) -> dict[str, torch.Tensor]:
    """Ground-truth rows → multi-hot ``shapes`` (N, 8), ``colours`` (N, 8), ``pairs``
    (N, 64) of the visible objects, and ``count`` (N,) = number of objects − 1."""
    n = len(rows)
    out = {"shapes": torch.zeros(n, len(SHAPES)), "colours": torch.zeros(n, len(COLOUR_NAMES)),
           "pairs": torch.zeros(n, len(PAIRS)), "count": torch.zeros(n, dtype=torch.long)}
    for i, row in enumerate(rows):
        out["count"][i] = row["n_objects"] - 1
        for obj in row["objects"]:
            if obj["area"] < min_area:
                continue
            s, c = SHAPES.index(obj["shape"]), COLOUR_NAMES.index(obj["colour"])
            out["shapes"][i, s] = out["colours"][i, c] = 1.0
            out["pairs"][i, c * len(SHAPES) + s] = 1.0
    return out


class AttributeRecogniser(nn.Module):
    """CNN over 64×64 world images with four heads (shapes, colours, pairs, count)."""

    HEADS: ClassVar[dict[str, int]] = {"shapes": len(SHAPES), "colours": len(COLOUR_NAMES),
                                       "pairs": len(PAIRS), "count": MAX_OBJECTS}

    def __init__(self, config: RecogniserConfig) -> None:
        super().__init__()
        self.config = config
        channels = [3, *config.channels]
        self.features = nn.Sequential(
            *(conv_block(a, b, convs=config.convs) for a, b in pairwise(channels))
        )
        self.head = nn.Linear(channels[-1], sum(self.HEADS.values()))

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """CLIP-normalised pixels (N, 3, H, W) → logits per head."""
        logits = self.head(self.features(pixels).amax(dim=(2, 3)))
        return dict(zip(self.HEADS, logits.split(list(self.HEADS.values()), dim=1), strict=True))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """uint8 images (N, H, W, 3) → boolean ``shapes``/``colours``/``pairs`` and ``count``
        (number of objects)."""
        was_training = self.training
        self.eval()
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.HEADS}
        for chunk in images.split(batch_size):
            logits = self(pixel_values(chunk))
            for key in ("shapes", "colours", "pairs"):
                parts[key].append(logits[key] > 0)
            parts["count"].append(logits["count"].argmax(dim=1) + 1)
        self.train(was_training)
        return {k: torch.cat(v) for k, v in parts.items()}

    def save(self, out_dir: str | Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_weights(out_dir / WEIGHTS, self)
        self.config.save(out_dir / CONFIG)
        return out_dir

    @classmethod
    def load(cls, path: str | Path) -> AttributeRecogniser:
        path = Path(path)
        if not (path / WEIGHTS).is_file():
            raise FileNotFoundError(
                f"{path} holds no attribute recogniser ({WEIGHTS}); train one with "
                "`modtrans fit-recogniser WORLD --out DIR`"
            )
        model = cls(RecogniserConfig.load(path / CONFIG))
        load_weights(model, path / WEIGHTS)
        return model.eval()


def recogniser_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
                    ) -> torch.Tensor:
    multi = sum(F.binary_cross_entropy_with_logits(logits[k], targets[k])
                for k in ("shapes", "colours", "pairs"))
    return multi + F.cross_entropy(logits["count"], targets["count"])


class _RecogniserModule(L.LightningModule):
    def __init__(self, model: AttributeRecogniser, total_steps: int) -> None:
        super().__init__()
        self.model, self.total_steps = model, total_steps

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        images, shapes, colours, pairs, count = batch
        logits = self.model(pixel_values(images))
        loss = recogniser_loss(logits, {"shapes": shapes, "colours": colours, "pairs": pairs,
                                        "count": count})
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def configure_optimizers(self):
        cfg = self.model.config
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr,
                                                       total_steps=self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule,
                                                         "interval": "step"}}


def recogniser_accuracy(model: AttributeRecogniser, images: torch.Tensor,
                        rows: list[dict[str, Any]]) -> dict[str, float]:
    """Held-out accuracy: per-label presence accuracy, whole-set exact match, count."""
    targets = attribute_targets(rows, model.config.min_area)
    predicted = model.predict(images)
    out: dict[str, float] = {}
    for key in ("shapes", "colours", "pairs"):
        hit = predicted[key] == targets[key].bool()
        out[f"{key}_presence_accuracy"] = float(hit.float().mean())
        out[f"{key}_set_exact"] = float(hit.all(dim=1).float().mean())
    out["count_accuracy"] = float((predicted["count"] == targets["count"] + 1).float().mean())
    out["n_images"] = len(rows)
    return out


def _split(world_dir: Path, split: str) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    folder = world_dir / split
    if not (folder / "ground_truth.parquet").is_file():
        raise FileNotFoundError(
            f"{folder} has no ground_truth.parquet; the recogniser trains on a world made by "
            "`modtrans world`"
        )
    data = read_coco_captions(folder / "captions.json")
    rows = {r["image_id"]: r for r in load_ground_truth(folder)}
    return load_images(data.image_paths, 64), [rows[i] for i in data.image_ids]


def fit_recogniser(world_dir: str | Path, out_dir: str | Path,
                   config: RecogniserConfig | None = None, *, eval_split: str = "test",
                   accelerator: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train the recogniser on a world's train split; measure it on ``eval_split``.

    Writes the weights, config and ``recogniser_report.json`` (held-out accuracy) to
    ``out_dir``. Returns that report.
    """
    config = config or RecogniserConfig()
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    L.seed_everything(config.seed, verbose=False)
    images, rows = _split(world_dir, "train")
    targets = attribute_targets(rows, config.min_area)
    dataset = TensorDataset(images, targets["shapes"], targets["colours"], targets["pairs"],
                            targets["count"])
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True,
                        drop_last=len(dataset) > config.batch_size)
    model = AttributeRecogniser(config)
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_epochs=config.epochs,
                        logger=False, enable_checkpointing=False, enable_progress_bar=progress,
                        enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(_RecogniserModule(model, config.epochs * len(loader)), loader)
    seconds = time.perf_counter() - start
    model.cpu()
    held_out_images, held_out_rows = _split(world_dir, eval_split)
    report = {"split": eval_split, "train_images": len(rows), "seconds": round(seconds, 1),
              **recogniser_accuracy(model, held_out_images, held_out_rows)}
    model.save(out_dir)
    write_json(out_dir / "recogniser_report.json", report)
    logger.info("attribute recogniser: %s", report)
    return report
