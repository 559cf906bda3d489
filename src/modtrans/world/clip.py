"""The world CLIP: a small CLIP trained contrastively on the world, in transformers format.

The default has a small convolutional image tower (:mod:`modtrans.encoders.conv_clip`);
``vision="vit"`` makes it a plain ``CLIPModel`` (ViT image tower). Either is saved with
``save_pretrained`` (model, word-level tokenizer, image processor) and then loaded only
through the ``hf:`` spec, exactly like a real CLIP.

The CNN tower is warm-started before the contrastive epochs (``warm_start_epochs``): it is
trained for a few epochs as the world's object detector (:mod:`modtrans.world.recogniser`,
the judge's recipe) on the train split's ground truth. It stands in for the pretrained
backbone a real CLIP tower starts from: trained contrastively from scratch on a CPU budget,
the world CLIP learns colour and not shape (``docs/findings.md``, *World CLIP*). The
detector's shape head also starts the tower's object head, by which the image's cells are
pooled (``pool: objects``). The ground truth never reaches the text tower or the
contrastive loss.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from modtrans.artefacts import Artefact, Layout, load_pretrained
from modtrans.config import Config
from modtrans.data.coco import CaptionedImages, read_coco_captions
from modtrans.data.records import DECODE_ERRORS, CaptionSource
from modtrans.encoders.tokenizer import build_tokenizer
from modtrans.images import CLIP_MEAN, CLIP_STD, load_images, pixel_values
from modtrans.training.contrastive import clamp_logit_scale, contrastive_step
from modtrans.training.fit import Recipe, derived_seed, fit

logger = logging.getLogger(__name__)

@dataclasses.dataclass
class WorldClipConfig(Config):
    """Architecture and training recipe of the world CLIP.

    The default is a narrow CNN image tower warm-started for 2 epochs as the world's object
    detector, then 3 contrastive epochs, its cells pooled by the detector's object
    probabilities (about 2 minutes on the demo's world on a 2-core CPU; the variants'
    figures: ``docs/findings.md``, *World CLIP*). Left as None, ``warm_start_epochs`` means
    2 for the CNN tower and 0 for the ViT (``vision: vit``, a plain ``CLIPModel``), and
    ``pool`` means ``objects`` for a warm-started CNN tower and ``mean`` otherwise.

    ``pool``: ``mean`` embeds an image as the mean of its tower's cells; ``objects`` adds
    the mean weighted by each cell's probability of holding an object, from an object head
    that the warm start trains as part of the detector
    (:class:`modtrans.encoders.conv_clip.ConvClipModel`).
    """

    vision: str = "cnn"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    warm_start_epochs: int | None = None
    pool: str | None = None
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 96
    vision_layers: int = 3
    text_width: int = 96
    text_layers: int = 2
    heads: int = 4
    projection_dim: int = 128
    max_length: int = 32
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vision not in ("cnn", "vit"):
            raise ValueError(f"vision must be 'cnn' or 'vit', got {self.vision!r}")
        self.channels = tuple(self.channels)
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}"
            )
        for name in ("vision_width", "text_width"):
            if getattr(self, name) % self.heads:
                raise ValueError(f"{name} must be a multiple of heads ({self.heads})")
        for name in ("epochs", "batch_size", "vision_layers", "text_layers", "projection_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warm_start_epochs is None:
            self.warm_start_epochs = 2 if self.vision == "cnn" else 0
        if self.warm_start_epochs < 0:
            raise ValueError(f"warm_start_epochs must be >= 0, got {self.warm_start_epochs}")
        if self.warm_start_epochs and self.vision != "cnn":
            raise ValueError("warm_start_epochs needs the CNN image tower (vision: cnn)")
        if self.pool is None:
            self.pool = "objects" if self.warm_start_epochs else "mean"
        if self.pool not in ("mean", "objects"):
            raise ValueError(f"pool must be 'mean' or 'objects', got {self.pool!r}")
        if self.pool == "objects" and not self.warm_start_epochs:
            raise ValueError("pool: objects needs the warm start that trains its object head "
                             "(vision: cnn, warm_start_epochs >= 1); or set pool: mean")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")

    def recipe(self) -> Recipe:
        """CLIP's: AdamW (β₂ 0.98, no decay on biases, norms and embeddings), linear warm-up
        then cosine decay."""
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                      betas=(0.9, 0.98), weight_decay=self.weight_decay, decay_filter=True,
                      schedule="warmup-cosine", warmup_fraction=self.warmup_fraction,
                      seed=self.seed)


class WorldClip(Artefact, nn.Module):
    """The trained world CLIP as an artefact: a transformers directory (``hf:`` loads it like
    any CLIP) with the modtrans config and training summary beside transformers' files."""

    kind = "world-clip"
    config_class = WorldClipConfig
    train_hint = "train one with `modtrans fit-encoder WORLD --out DIR`"
    layout = Layout("world_clip.json", weights=None)  # config.json is transformers'
    legacy = Layout("world_clip_config.yaml", weights=None)

    def __init__(self, config: WorldClipConfig, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.config, self.model, self.tokenizer = config, model, tokenizer

    def save_payload(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        build_image_processor(self.config.image_size).save_pretrained(path)

    @classmethod
    def build(cls, config: WorldClipConfig, path: Path) -> WorldClip:
        """Model and tokenizer as transformers saved them in ``path``."""
        from transformers import AutoModel

        model, tokenizer = load_pretrained(AutoModel, path, cls.train_hint)
        return cls(config, model, tokenizer)

    def load_payload(self, path: Path, layout: Layout) -> None:
        """Nothing more: transformers read the weights in :meth:`build`."""


def build_model(config: WorldClipConfig, tokenizer):
    """A fresh world CLIP (``ConvClipModel`` or ``CLIPModel``) for a given tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    from modtrans.encoders.conv_clip import ConvClipConfig, ConvClipModel

    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=config.text_width,
        intermediate_size=4 * config.text_width,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.heads,
        max_position_embeddings=config.max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = dict(
        image_size=config.image_size,
        patch_size=config.patch_size,
        hidden_size=config.vision_width,
        intermediate_size=4 * config.vision_width,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.heads,
    )
    if config.vision == "cnn":
        from modtrans.world.recogniser import AttributeRecogniser

        objects = AttributeRecogniser.HEADS["shape"] if config.pool == "objects" else 0
        return ConvClipModel(ConvClipConfig(text_config=text, channels=config.channels,
                                            projection_dim=config.projection_dim,
                                            object_classes=objects))
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                                projection_dim=config.projection_dim))


def build_image_processor(image_size: int):
    """CLIP preprocessing (resize, centre crop, CLIP mean/std) at the world's image size."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


class _PairDataset(Dataset):
    """Each item: an image index and one of its captions, drawn anew every epoch from
    ``(seed, epoch)`` alone, so that a resumed run draws the captions an uninterrupted one
    would."""

    def __init__(self, captions: list[list[str]], seed: int) -> None:
        self.captions, self.seed = captions, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
        counts = torch.tensor([len(options) for options in self.captions])
        self.choice = (torch.rand(len(counts), generator=generator) * counts).long().tolist()

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[int, str]:
        return i, self.captions[i][self.choice[i]]


class _Collate:
    def __init__(self, images: torch.Tensor, tokenizer, max_length: int) -> None:
        self.images, self.tokenizer, self.max_length = images, tokenizer, max_length

    def __call__(self, items: list[tuple[int, str]]) -> dict[str, torch.Tensor]:
        index = torch.tensor([i for i, _ in items])
        tokens = self.tokenizer(
            [c for _, c in items], padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            "pixel_values": pixel_values(self.images[index]),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
        }


def fit_world_clip(
    train: CaptionedImages,
    out_dir: str | Path,
    config: WorldClipConfig | None = None,
    *,
    objects: list[dict] | None = None,
    accelerator: str = "auto",
    progress: bool = True,
    resume: bool = False,
) -> dict:
    """Train the world CLIP on captioned images and save it for ``hf:<out_dir>``.

    Args:
        train: the training images and captions (e.g. a world's train split).
        out_dir: where ``save_pretrained`` writes model, tokenizer and image processor.
        config: architecture and recipe; defaults to :class:`WorldClipConfig`.
        objects: the world's ground-truth rows of ``train``'s images, in order; needed
            (only) for the warm start.
        accelerator: Lightning accelerator ("auto", "cpu", "gpu").
        progress: show Lightning's progress bar.
        resume: continue the warm start and the contrastive epochs from their checkpoints
            in ``out_dir/lightning``.

    Returns:
        A summary: pairs, epochs, steps, seconds, final loss.
    """
    config = config or WorldClipConfig()
    images = load_images(train.image_paths, config.image_size)
    return fit_clip(CaptionedPixels(images, train.captions), out_dir, config, objects=objects,
                    accelerator=accelerator, progress=progress, resume=resume)


def _warm_start(model, images: torch.Tensor, objects: list[dict] | None,
                config: WorldClipConfig, out_dir: Path | None = None, **run: Any) -> float:
    """Train the CNN image tower as the world's object detector (stage ``warm_start``); the
    object head (if any) then starts as the detector's shape head. Returns seconds."""
    from modtrans.world.recogniser import AttributeRecogniser, RecogniserConfig, train_recogniser

    if objects is None or len(objects) != len(images):
        raise ValueError(
            "the warm start needs the world's ground truth for every training image; train "
            "on a world made by `modtrans world`, or set warm_start_epochs: 0"
        )
    detector = AttributeRecogniser(RecogniserConfig(  # crisp images: the recipe as measured
        channels=config.channels, epochs=config.warm_start_epochs,
        batch_size=config.batch_size, seed=config.seed, degrade=0.0,
    ), features=model.vision_model)  # trains the CLIP's own tower in place
    seconds = train_recogniser(detector, images, objects, out_dir, stage="warm_start", **run)
    if model.object_head is not None:  # it starts as the detector's shape head
        classes = model.object_head.out_channels
        with torch.no_grad():
            model.object_head.weight.copy_(detector.cells.weight[:classes])
            model.object_head.bias.copy_(detector.cells.bias[:classes])
    return seconds


def fit_world_clip_from_world(world_dir: str | Path, out_dir: str | Path, *,
                              config: WorldClipConfig | None = None, **kwargs) -> dict:
    """:func:`fit_world_clip` on the ``train`` split of a world directory (with its ground
    truth when the config warm-starts the image tower)."""
    from modtrans.world.generator import load_ground_truth

    split = Path(world_dir) / "train"
    captions = split / "captions.json"
    if not captions.is_file():
        raise FileNotFoundError(
            f"{captions} does not exist; generate a world first with `modtrans world {world_dir}`"
        )
    config = config or WorldClipConfig()
    train = read_coco_captions(captions)
    objects = None
    if config.warm_start_epochs:
        rows = {r["image_id"]: r for r in load_ground_truth(split)}
        objects = [rows[i] for i in train.image_ids]
    return fit_world_clip(train, out_dir, config, objects=objects, **kwargs)


@dataclasses.dataclass
class CaptionedPixels:
    """Decoded images, square at the CLIP's size, with their captions: what a CLIP trains
    on and is scored on."""

    images: torch.Tensor  # uint8 (N, S, S, 3)
    captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.captions)

    def take(self, rows: list[int]) -> CaptionedPixels:
        return CaptionedPixels(self.images[rows], [self.captions[i] for i in rows])


def decode_source(source: CaptionSource, image_size: int, *, where: str,
                  progress: bool = True) -> tuple[CaptionedPixels, int]:
    """Every readable image of ``source`` with a non-empty caption, resized (shorter side)
    and centre-cropped to ``image_size`` as CLIP's preprocessing does.

    Returns:
        The images with their non-empty captions, and how many images were left out
        (unreadable, or without a caption).
    """
    from PIL import Image, ImageOps
    from tqdm.auto import tqdm

    images, captions, left_out = [], [], 0
    for record in tqdm(source.records(), total=len(source), desc="read images", unit="img",
                       disable=not progress):
        texts = [t for t in record.captions if t.strip()]
        try:
            image = None if record.error or not texts else record.open_image()
        except DECODE_ERRORS:
            image = None
        if image is None:
            left_out += 1
            continue
        fitted = ImageOps.fit(image, (image_size, image_size), Image.Resampling.BICUBIC)
        images.append(torch.from_numpy(np.asarray(fitted, dtype=np.uint8).copy()))
        captions.append(texts)
    if not images:
        raise ValueError(f"no readable image with a caption in {where} ({left_out} left "
                         "out); check where its images are (--images DIR) and its captions")
    return CaptionedPixels(torch.stack(images), captions), left_out


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")


def hold_out(data: CaptionedPixels, fraction: float, seed: int
             ) -> tuple[CaptionedPixels, CaptionedPixels]:
    """(train, held out): a seeded random ``fraction`` of the images (at least one) held
    out of training, for the retrieval reported after it."""
    _check_fraction(fraction)
    n_out = max(1, round(fraction * len(data)))
    if n_out >= len(data):
        raise ValueError(f"{len(data)} image(s) are too few to hold {fraction:.0%} out of "
                         "training; give more data or a separate held-out split")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    return data.take(sorted(order[n_out:])), data.take(sorted(order[:n_out]))


def fit_clip(train: CaptionedPixels, out_dir: str | Path, config: WorldClipConfig, *,
             objects: list[dict] | None = None, accelerator: str = "auto",
             progress: bool = True, resume: bool = False) -> dict:
    """Train a CLIP contrastively on decoded images and their captions, with a tokenizer
    built from those captions, and save it for ``hf:<out_dir>``; see :func:`fit_world_clip`."""
    out_dir = Path(out_dir)
    run = {"accelerator": accelerator, "progress": progress, "resume": resume}
    L.seed_everything(config.seed, verbose=False)
    tokenizer = build_tokenizer([c for caps in train.captions for c in caps])
    model = build_model(config, tokenizer)
    warm_seconds = (_warm_start(model, train.images, objects, config, out_dir, **run)
                    if config.warm_start_epochs else 0.0)
    recipe = dataclasses.replace(config.recipe(), **run)
    loader = recipe.loader(_PairDataset(train.captions, recipe.seed),
                           collate_fn=_Collate(train.images, tokenizer, config.max_length))
    result = fit(model, functools.partial(contrastive_step, model), loader, None, recipe,
                 out_dir, after_step=functools.partial(clamp_logit_scale, model))
    summary = {
        "pairs": len(train),
        "vocabulary": len(tokenizer),
        "epochs": config.epochs,
        "steps": result["steps"],
        "seconds": round(result["seconds"], 1),
        "warm_start_epochs": config.warm_start_epochs,
        "warm_start_seconds": round(warm_seconds, 1),
        "final_loss": result.get("train/loss", float("nan")),
    }
    WorldClip(config, model.eval(), tokenizer).save(out_dir, summary)
    logger.info("CLIP trained: %s", summary)
    return summary


def fit_clip_on_source(path: str | Path, out_dir: str | Path, config: WorldClipConfig, *,
                       images: str | Path | None = None, split: str | None = None,
                       held_out: float = 0.05, max_held_out: int = 1000,
                       **run: Any) -> tuple[dict, CaptionedPixels]:
    """Train a CLIP on whatever ``path`` holds (any source :func:`~modtrans.data.sources.
    open_sources` reads) and return its summary with the images held out of training.

    A world folder trains on its ``train`` split (with the detector warm start its ground
    truth allows) and holds out ``val``; a source with splits (Karpathy JSON) trains on
    ``split`` (default ``train``) and holds out ``val`` (or ``test``); a single-split source
    holds out a seeded ``held_out`` share of its images. At most ``max_held_out`` held-out
    images are kept.
    """
    from modtrans.data.sources import open_sources

    path = Path(path)
    if (path / "world.json").is_file():
        summary = fit_world_clip_from_world(path, out_dir, config=config, **run)
        val = read_coco_captions(path / "val" / "captions.json")
        rows = list(range(min(max_held_out, len(val))))
        kept = CaptionedPixels(load_images([val.image_paths[i] for i in rows], config.image_size),
                               [val.captions[i] for i in rows])
        return {**summary, "held_out_from": "val"}, kept
    if config.warm_start_epochs:
        raise ValueError(
            f"{path} is not a world folder: the warm start trains the image tower as the "
            "world's object detector on ground truth that only `modtrans world` writes; pass "
            "--warm-start-epochs 0 (and drop warm_start_epochs from --config)")
    _check_fraction(held_out)  # before reading every image
    sources = open_sources(path, images=images)
    progress = run.get("progress", True)
    if len(sources) > 1:
        name = split or "train"
        if name not in sources:
            raise ValueError(f"{path} has splits {sorted(sources)} but no {name!r}; choose the "
                             "one to train on with --split")
        other = next((s for s in ("val", "test") if s in sources and s != name), None)
        if other is None:
            raise ValueError(f"{path} has no val or test split to hold out beside {name!r}")
        train, left_out = decode_source(sources[name][0], config.image_size,
                                        where=f"{path} ({name})", progress=progress)
        kept, _ = decode_source(sources[other][0], config.image_size,
                                where=f"{path} ({other})", progress=progress)
        held_from = other
    else:
        ((name, (data, _)),) = sources.items()
        everything, left_out = decode_source(data, config.image_size, where=str(path),
                                             progress=progress)
        train, kept = hold_out(everything, held_out, config.seed)
        held_from = f"{held_out:.0%} of {name}"
    if left_out:
        logger.warning("%d image(s) of %s left out of training: unreadable or without a "
                       "caption", left_out, path)
    summary = fit_clip(train, out_dir, config, **run)
    kept = kept.take(list(range(min(max_held_out, len(kept)))))
    return {**summary, "images_left_out": left_out, "held_out_from": held_from}, kept
