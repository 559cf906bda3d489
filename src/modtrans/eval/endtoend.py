"""End-to-end generation on the world, judged: text → image and image → text.

Works in a demo folder (world, world CLIP, store, translators) and adds ``e2e/``:

- trains (or reuses) the attribute recogniser (the judge; held-out accuracy first), the image
  VAE on image embeddings (after a text2image translator) and on text embeddings (direct),
  ClipCap on image embeddings and two CapDecs on noisy text embeddings (below); a model
  already there is reused only if it was trained with the options asked for;
- text → image, through ``ced`` (one draw; ``ced-mean``: the mean of 8 draws), ``ridge``
  and direct, each also as ``<route>-rerank`` (the best of ``candidates`` draws by the world
  CLIP's score against the prompt, :mod:`modtrans.decoders.rerank`): the recogniser's recall
  of the colour–shape pairs each prompt names and its hallucinations, for "full" prompts
  (every object named) with one, two and three objects; image FD against the split's real
  images in the world CLIP's image space. Three references bound them: ``oracle`` decodes the image
  embedding of the very image the prompt describes (what a perfect translator would hand the
  decoder), ``reconstruction`` redraws that image from the VAE's posterior (its latent has
  seen the image: what the decoder can draw at all), and ``real`` judges the image itself
  (what the judge finds in real images);
- image → text, through ``ced`` + CapDec, ``ridge`` + CapDec and ClipCap directly:
  BLEU/METEOR/ROUGE-L/CIDEr against the five references and semantic precision/recall
  against the ground truth. The CapDec decoder trains on the mean of each image's caption
  embeddings (``text_input: set-mean``), what a translator's ``mean`` mode estimates;
  ``ced-capdec-paper`` decodes the same translations with the paper's CapDec (each
  caption's own embedding, noise variance 0.016) to show what that choice buys;
- the token decoder (``tokens``: on by default), a transformer over an AugVAE tokenizer's codes
  conditioned on the embedding (:mod:`modtrans.decoders.token_decoder`), trained like the VAE
  on image embeddings and on text embeddings: every route above again with it in the VAE's
  place, as ``tokens-<route>`` (``tokens-reconstruction``: the tokenizer's own redrawing of the
  prompt's image, what the token decoder can draw at all);
- L-Verse (``lverse``: on by default), the route that generates the other modality directly:
  an AugVAE image tokenizer (multi-level, then single-level fine-tuned from it) and BiART over
  [text | image tokens] and [image tokens | text], trained on the world's train images and
  captions; text → image rows ``lverse`` (and ``lverse-rerank``) beside the others, with
  ``lverse-reconstruction`` (the tokenizer's own redrawing of the prompt's image) beside
  ``reconstruction``; image → text row ``lverse`` (greedy BiART captions);
- the joint VAE (``joint``: off by default), one latent for an image and its caption
  (:mod:`modtrans.decoders.joint_vae`), trained on the world's train images and captions:
  text → image row ``joint`` (one image from a draw of q(z | prompt)) and image → text row
  ``joint`` (the greedy caption of q(z | image)'s mean), scored by :func:`joint_rows` with
  the same prompts, images and scores as every other route.

Beside them, linear probes of the two conditioning embeddings (``conditioning_probes``) say
how much of the main shape and colour the decoders are handed at all, so that a route's recall
can be set against what its input carries.

Everything is written to ``e2e/results.json``, with ``e2e/text2image.png`` (a grid: one row
per example prompt, six samples per route) and ``e2e/image2text.json`` (captions of example
images per route) for people to look at.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modtrans.config import Config
from modtrans.data.coco import read_coco_captions
from modtrans.data.store import open_store
from modtrans.decoders.augvae import AugVAE, AugVAEConfig, fit_augvae
from modtrans.decoders.biart import BiART, BiARTConfig, fit_biart
from modtrans.decoders.caption import CaptionDecoder, CaptionDecoderConfig, fit_caption_decoder
from modtrans.decoders.image_vae import ConditionalVAE, ImageDecoderConfig, fit_image_decoder
from modtrans.decoders.joint_vae import (
    JointVAE,
    JointVAEConfig,
    fit_joint_vae,
    refit_joint_prior,
)
from modtrans.decoders.rerank import best_of
from modtrans.decoders.token_decoder import TokenDecoder, TokenDecoderConfig, fit_token_decoder
from modtrans.encoders import build_encoder
from modtrans.eval.captioning import caption_metrics
from modtrans.eval.encoder_report import linear_probe
from modtrans.images import image_grid, load_images
from modtrans.io import atomic_path, read_json, write_json
from modtrans.pipelines import ImageToText, TextToImage
from modtrans.translators.base import Translator, row_seeds
from modtrans.world.generator import load_ground_truth
from modtrans.world.recogniser import (
    AttributeRecogniser,
    RecogniserConfig,
    fit_recogniser,
    world_split,
)
from modtrans.world.semantic import (
    caption_semantic_scores,
    image_fd,
    image_semantic_scores,
    joint_coherence,
)

logger = logging.getLogger(__name__)

T2I_ROUTES = ("ced", "ced-mean", "ridge", "direct", "oracle", "reconstruction")
LVERSE_T2I = ("lverse", "lverse-reconstruction")
# the translate-then-decode routes again with the token decoder in the VAE's place
TOKENS = "tokens-"
# the routes also run as the best of ``candidates`` draws by CLIP score against the prompt
RERANKED = ("ced", "ced-mean", "ridge", "direct")
RERANK = "-rerank"
# image → text route → (image2text translator, caption decoder); ClipCap decodes the image
# embedding itself
I2T_ROUTES: dict[str, tuple[str | None, str]] = {
    "ced": ("ced", "capdec"), "ced-capdec-paper": ("ced", "capdec_paper"),
    "ridge": ("ridge", "capdec"), "clipcap": (None, "clipcap")}
EXAMPLE_SAMPLES = 6
JOINT_EXAMPLES = 16
FIT_TIME_OPTIONS = {"embed_dim", "image_encoder", "text_encoder", "augvae", "text_vocab"}


@dataclasses.dataclass
class EndToEndConfig(Config):
    """What the end-to-end evaluation trains and measures.

    Attributes:
        prompts_per_group: prompts with 1, 2 and 3 objects each, per split.
        images: images captioned per split.
        splits: splits evaluated.
        recogniser, vae_image, vae_text, clipcap, capdec, capdec_paper: config overrides of
            each model (e.g. ``{"epochs": 2}``).
        captions: evaluate image → text too (trains ClipCap and the CapDecs).
        tokens: train and evaluate the token decoder too (``tokens-<route>`` rows).
        tokenizer, token_image, token_text: config overrides of the token decoder's AugVAE
            tokenizer and of the token decoders on image and on text embeddings.
        train_images: the decoders of image embeddings and the token decoder's tokenizer
            train on the first N train images (None: all).
        text_train_images: the decoders of text embeddings train on the captions of the
            first N train images (None: all).
        routes: the text → image routes evaluated (None: all that are trained).
        lverse: train and evaluate L-Verse too.
        augvae, augvae_sl, biart: config overrides of L-Verse's tokenizer (multi-level), its
            single-level fine-tune (the one BiART uses) and BiART.
        lverse_sampling: BiART's text → image sampling options (temperature, top_k, top_p,
            guidance).
        joint: train and evaluate the joint VAE too (``joint`` rows).
        joint_vae: its config overrides.
        beams: beam width of the caption decoders.
        candidates: images drawn per prompt for the ``-rerank`` routes, of which the one the
            world CLIP scores highest against the prompt is judged (1: no such routes). The
            four routes draw this many times as much as the others: 8 took the evaluation of
            both splits on the benchmark world to 29 min on 2 CPU cores.
        seed: seeds prompt choice, draws and latents.
    """

    prompts_per_group: int = 150
    images: int = 300
    splits: list[str] = dataclasses.field(default_factory=lambda: ["test", "novel"])
    recogniser: dict[str, Any] = dataclasses.field(default_factory=dict)
    vae_image: dict[str, Any] = dataclasses.field(default_factory=lambda: {"epochs": 4})
    vae_text: dict[str, Any] = dataclasses.field(default_factory=lambda: {"epochs": 1})
    clipcap: dict[str, Any] = dataclasses.field(default_factory=lambda: {"epochs": 3})
    capdec: dict[str, Any] = dataclasses.field(default_factory=lambda: {"epochs": 3})
    capdec_paper: dict[str, Any] = dataclasses.field(default_factory=lambda: {"epochs": 3})
    captions: bool = True
    tokens: bool = True
    tokenizer: dict[str, Any] = dataclasses.field(default_factory=lambda: {
        "levels": [8, 4], "channels": [16, 32, 64, 64], "epochs": 2})
    token_image: dict[str, Any] = dataclasses.field(default_factory=lambda: {"epochs": 4})
    token_text: dict[str, Any] = dataclasses.field(default_factory=lambda: {"epochs": 1})
    train_images: int | None = None
    text_train_images: int | None = None
    routes: list[str] | None = None
    lverse: bool = True
    augvae: dict[str, Any] = dataclasses.field(default_factory=lambda: {"epochs": 2})
    augvae_sl: dict[str, Any] = dataclasses.field(default_factory=lambda: {"epochs": 1})
    biart: dict[str, Any] = dataclasses.field(default_factory=lambda: {"epochs": 1})
    lverse_sampling: dict[str, Any] = dataclasses.field(default_factory=dict)
    joint: bool = False
    joint_vae: dict[str, Any] = dataclasses.field(default_factory=dict)
    beams: int = 3
    candidates: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError(f"candidates must be ≥ 1, got {self.candidates}")
        for name in ("train_images", "text_train_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1 (or null: all), got {getattr(self, name)}")
        unknown = sorted(set(self.routes or ()) - set(self._trained_routes()))
        if unknown:
            raise ValueError(f"routes {unknown} are not evaluated with these options; choose "
                             f"from {list(self._trained_routes())}")

    def _trained_routes(self) -> tuple[str, ...]:
        tokens = self.tokens
        reranked = (RERANKED + (tuple(TOKENS + r for r in RERANKED) if tokens else ())
                    + (("lverse",) if self.lverse else ()))
        extra = tuple(r + RERANK for r in reranked) if self.candidates > 1 else ()
        return (T2I_ROUTES + (tuple(TOKENS + r for r in T2I_ROUTES) if tokens else ())
                + (LVERSE_T2I if self.lverse else ()) + extra)

    @property
    def t2i_routes(self) -> tuple[str, ...]:
        """The text → image routes evaluated, in table order."""
        return tuple(r for r in self._trained_routes()
                     if self.routes is None or r in self.routes)


def train_models(folder: Path, config: EndToEndConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or reuse, when already in ``folder/e2e``) the judge, the image decoders, the
    caption decoders (with ``captions``), the token decoders (``tokens``) and L-Verse
    (``lverse``); one that was interrupted continues from its last checkpoint."""
    e2e, stores = folder / "e2e", folder / "store"
    train, val = open_store(stores, "train"), open_store(stores, "val")
    summaries: dict[str, Any] = {}
    report = e2e / "recogniser" / "recogniser_report.json"
    judge = RecogniserConfig(**config.recogniser)
    if report.is_file():
        _check_reused(e2e / "recogniser", judge)
    else:
        fit_recogniser(folder / "world", e2e / "recogniser", judge, progress=progress,
                       resume=(e2e / "recogniser").is_dir())
    summaries["recogniser"] = read_json(report)
    jobs = {
        "vae_image": (functools.partial(fit_image_decoder, max_images=config.train_images),
                      ImageDecoderConfig(**{"condition": "image", **config.vae_image})),
        "vae_text": (functools.partial(fit_image_decoder, max_images=config.text_train_images),
                     ImageDecoderConfig(**{"condition": "text", **config.vae_text})),
    }
    captions = {
        "clipcap": (fit_caption_decoder,
                    CaptionDecoderConfig(**{"mode": "clipcap", **config.clipcap})),
        "capdec": (fit_caption_decoder, CaptionDecoderConfig(
            **{"mode": "capdec", "text_input": "set-mean", **config.capdec})),
        "capdec_paper": (fit_caption_decoder,
                         CaptionDecoderConfig(**{"mode": "capdec", **config.capdec_paper})),
    }
    if config.captions:
        jobs.update(captions)
    if config.tokens:
        summaries["tokenizer"] = _train_tokenizer(folder, config, progress)
        fit_tokens = functools.partial(fit_token_decoder, tokenizer_dir=e2e / "tokenizer")
        jobs.update({
            "token_image": (functools.partial(fit_tokens, max_images=config.train_images),
                            TokenDecoderConfig(**{"condition": "image", **config.token_image})),
            "token_text": (functools.partial(fit_tokens, max_images=config.text_train_images),
                           TokenDecoderConfig(**{"condition": "text", **config.token_text}))})
    for name, (fit, model_config) in jobs.items():
        if (e2e / name / "summary.json").is_file():
            _check_reused(e2e / name, model_config)
        else:
            fit(train, val, e2e / name, model_config, progress=progress,
                resume=(e2e / name).is_dir())
        summaries[name] = read_json(e2e / name / "summary.json")
    if config.lverse:
        summaries.update(_train_lverse(folder, config, progress))
    if config.joint:
        summaries["joint"] = train_joint(folder / "world", e2e / "joint", config, progress)
    return summaries


def train_joint(world: Path, out: Path, config: EndToEndConfig, progress: bool
                ) -> dict[str, Any]:
    """The joint VAE on the world's train images and captions (reused when there, its prior
    mixture refitted if only that differs); its summary."""
    def train(model_config: JointVAEConfig) -> None:
        images, _ = world_split(world, "train")
        val_images, _ = world_split(world, "val")
        captions = read_coco_captions(world / "train" / "captions.json").captions
        val_captions = read_coco_captions(world / "val" / "captions.json").captions
        fit_joint_vae(images, captions, val_images[:200], val_captions[:200], out,
                      model_config, progress=progress, resume=out.is_dir())

    wanted = JointVAEConfig(**config.joint_vae)
    if (out / "summary.json").is_file():
        saved = JointVAE.read_config(out).prior_components
        _check_reused(out, dataclasses.replace(wanted, prior_components=saved))
        if saved != wanted.prior_components and wanted.prior_components:
            images, _ = world_split(world, "train")
            captions = read_coco_captions(world / "train" / "captions.json").captions
            return refit_joint_prior(out, images, captions, wanted.prior_components)
    return _reused_or_trained(out, wanted, train)


def _reused_or_trained(out: Path, model_config: Config, train: Any) -> dict[str, Any]:
    """The summary of the model in ``out``: reused if it was trained with ``model_config``
    (:func:`_check_reused`), else trained by ``train(model_config)``."""
    if (out / "summary.json").is_file():
        _check_reused(out, model_config)
    else:
        train(model_config)
    return read_json(out / "summary.json")


def _train_tokenizer(folder: Path, config: EndToEndConfig, progress: bool) -> dict[str, Any]:
    """The token decoder's AugVAE on the world's first ``train_images`` train images (reused
    when there); its summary."""
    out, world = folder / "e2e" / "tokenizer", folder / "world"
    def train(model_config: AugVAEConfig) -> None:
        images, _ = world_split(world, "train")
        val_images, _ = world_split(world, "val")
        fit_augvae(images[:config.train_images], val_images[:500], out, model_config,
                   progress=progress, resume=out.is_dir())

    return _reused_or_trained(out, AugVAEConfig(**config.tokenizer), train)


def _train_lverse(folder: Path, config: EndToEndConfig, progress: bool) -> dict[str, Any]:
    """L-Verse's three stages on the world's train images and captions: the ML tokenizer,
    the SL one fine-tuned from it, BiART over the SL tokens (each reused when there)."""
    e2e, world = folder / "e2e", folder / "world"
    images, _ = world_split(world, "train")
    val_images, _ = world_split(world, "val")
    captions = read_coco_captions(world / "train" / "captions.json").captions
    val_captions = read_coco_captions(world / "val" / "captions.json").captions[:200]
    sl_levels = tuple(config.augvae.get("levels", AugVAEConfig().levels))[:1]
    stages = {
        "augvae_ml": (AugVAEConfig(**{"variant": "ml", **config.augvae}), lambda c, o: fit_augvae(
            images, val_images[:500], o, c, progress=progress, resume=o.is_dir())),
        "augvae": (AugVAEConfig(**{**config.augvae, "variant": "sl", "levels": sl_levels,
                                   **config.augvae_sl}),
                   lambda c, o: fit_augvae(images, val_images[:500], o, c, init=e2e / "augvae_ml",
                                           progress=progress, resume=o.is_dir())),
        "biart": (BiARTConfig(**config.biart), lambda c, o: fit_biart(
            images, captions, val_images[:200], val_captions, e2e / "augvae", o, c,
            progress=progress, resume=o.is_dir())),
    }
    return {name: _reused_or_trained(e2e / name, model_config,
                                     functools.partial(train, o=e2e / name))
            for name, (model_config, train) in stages.items()}


def _check_reused(folder: Path, wanted: Config) -> None:
    """A model trained earlier is reused only if it was trained with the options asked for
    now (aside from those set at fit time from the store: its dims and encoders)."""
    read = {CaptionDecoderConfig: CaptionDecoder.read_config,
            ImageDecoderConfig: ConditionalVAE.read_config,
            RecogniserConfig: AttributeRecogniser.read_config,
            AugVAEConfig: AugVAE.read_config, BiARTConfig: BiART.read_config,
            TokenDecoderConfig: TokenDecoder.read_config,
            JointVAEConfig: JointVAE.read_config}[type(wanted)]
    saved = read(folder)
    differ = _differences(json.loads(json.dumps(saved.to_dict())),
                          json.loads(json.dumps(wanted.to_dict())))
    if differ:
        raise ValueError(
            f"{folder} was trained with other options than asked for now "
            f"({'; '.join(differ)}); delete {folder} to retrain it, or ask for what it has"
        )


def _differences(saved: dict[str, Any], asked: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: saved → asked`` for every option that differs, nested options by their path."""
    out = []
    for key, value in asked.items():
        if key in FIT_TIME_OPTIONS or saved.get(key) == value:
            continue
        if isinstance(value, dict) and isinstance(saved.get(key), dict):
            out += _differences(saved[key], value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}: {saved.get(key)!r} → {value!r}")
    return out


def full_prompts(world_split: Path, per_group: int, seed: int
                 ) -> dict[int, list[tuple[str, Path]]]:
    """A random choice of "full" captions (every object named) of images with 1, 2 and 3
    distinct colour–shape pairs, each with the path of the image it describes:
    group → [(prompt, image path)]."""
    data = read_coco_captions(world_split / "captions.json")
    rows = {r["image_id"]: r for r in load_ground_truth(world_split)}
    groups: dict[int, list[tuple[str, Path]]] = {1: [], 2: [], 3: []}
    for image_id, path, caps, extra in zip(data.image_ids, data.image_paths, data.captions,
                                           data.extra, strict=True):
        n = len({(o["colour"], o["shape"]) for o in rows[image_id]["objects"]})
        full = [c for c, e in zip(caps, extra, strict=True) if e.get("kind") == "full"]
        if n in groups and full:
            groups[n].append((full[0], path))
    rng = np.random.default_rng(seed)
    return {n: [items[j] for j in rng.permutation(len(items))[:per_group]]
            for n, items in groups.items()}


class RouteGenerator:
    """Images from prompts through each text → image route (a :class:`TextToImage` pipeline,
    the world CLIP scoring the reranked ones), seeded.

    Assign another decoder to ``vae_image`` to compare decoders on the same prompts and
    draws; ``e2e/vae_text`` and the token decoders are loaded when a route first asks.
    """

    def __init__(self, folder: Path, clip: Any, seed: int, candidates: int,
                 lverse_sampling: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.vae_image = ConditionalVAE.load(folder / "e2e" / "vae_image")
        self.translators = {m: Translator.load(folder / "translators" / "text2image" / m)
                            for m in ("ced", "ridge")}
        self.clip, self.seed, self.candidates = clip, seed, candidates
        self.lverse_sampling = lverse_sampling or {}

    @functools.cached_property
    def vae_text(self) -> ConditionalVAE:
        return ConditionalVAE.load(self.folder / "e2e" / "vae_text")

    @functools.cached_property
    def token_image(self) -> TokenDecoder:
        return TokenDecoder.load(self.folder / "e2e" / "token_image")

    @functools.cached_property
    def token_text(self) -> TokenDecoder:
        return TokenDecoder.load(self.folder / "e2e" / "token_text")

    @functools.cached_property
    def biart(self) -> BiART:
        return BiART.load(self.folder / "e2e" / "biart")

    def _lverse(self, items: list[tuple[str, Path]], k: int,
                generator: torch.Generator) -> torch.Tensor:
        """BiART's images of the prompts, the best of ``k`` draws each by CLIP score."""
        prompts = [prompt for prompt, _ in items for _ in range(k)]
        images = torch.cat([self.biart.generate_image(prompts[i:i + 64], generator=generator,
                                                      **self.lverse_sampling)
                            for i in range(0, len(prompts), 64)])
        if k == 1:
            return images
        targets = self.clip.encode_texts([prompt for prompt, _ in items])
        return best_of(images, targets.repeat_interleave(k, dim=0), self.clip, k)[0]

    def __call__(self, route: str, items: list[tuple[str, Path]]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        tokens = route.startswith(TOKENS)
        route = route.removeprefix(TOKENS)
        image_decoder = self.token_image if tokens else self.vae_image
        if route == "lverse-reconstruction":
            return self.biart.augvae.reconstruct(load_images([path for _, path in items], 64))
        if route.removesuffix(RERANK) == "lverse":
            k = self.candidates if route.endswith(RERANK) else 1
            return self._lverse(items, k, generator)
        if route in ("oracle", "reconstruction"):
            images = load_images([path for _, path in items], 64)
            if route == "reconstruction" and tokens:
                return self.token_image.reconstruct(images)
            e = self.clip.encode_images(images)
            if route == "reconstruction":
                return self.vae_image.reconstruct(images, e, generator=generator)
            return image_decoder.generate(e, generator=generator)
        k = self.candidates if route.endswith(RERANK) else 1
        route = route.removesuffix(RERANK)
        method, mode = ("ced", "mean") if route == "ced-mean" else (route, "sample")
        pipeline = (TextToImage(self.token_text if tokens else self.vae_text,
                                text_encoder=self.clip) if route == "direct"
                    else TextToImage(image_decoder, self.translators[method],
                                     text_encoder=self.clip))
        return pipeline([prompt for prompt, _ in items], candidates=k, mode=mode,
                        seed=row_seeds(self.seed, len(items)))[0]


def conditioning_probes(folder: Path, min_images: int = 20) -> dict[str, Any]:
    """What the image decoders are conditioned on: linear probes of the main shape and colour
    (val accuracy) in the image embeddings (``vae_image``: the translators' and the oracle's
    input) and the caption embeddings (``vae_text``: the direct route's; the mean of an
    image's captions), on every image (``all``) and on the images holding one object
    (``one_object``, left out when a split has fewer than ``min_images`` of them)."""
    train, val = open_store(folder / "store", "train"), open_store(folder / "store", "val")
    one_object = []
    for store in (train, val):
        meta = store.image_metadata()
        if "n_objects" not in meta.column_names:
            raise ValueError(f"{store.root} has no n_objects metadata: the end-to-end "
                             "evaluation runs on a store of the world (`modtrans demo`)")
        one_object.append(meta.column("n_objects").to_pylist().count(1))
    subsets: dict[str, tuple[str, int] | None] = {"all": None}
    if min(one_object) >= min_images:
        subsets["one_object"] = ("n_objects", 1)
    else:
        logger.info("fewer than %d one-object images in train or val: probes on all only",
                    min_images)
    return {modality: {subset: {column: linear_probe(train, val, column, modality=modality,
                                                     where=where)
                                for column in ("main_shape", "main_colour")}
                       for subset, where in subsets.items()}
            for modality in ("image", "text")}


def text_to_image(folder: Path, split: str, config: EndToEndConfig, judge: AttributeRecogniser,
                  clip: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    """Semantic scores and FD per route (and the judge on the prompts' own real images);
    example images and their prompts."""
    groups = full_prompts(folder / "world" / split, config.prompts_per_group, config.seed)
    generate = RouteGenerator(folder, clip, config.seed, config.candidates,
                              config.lverse_sampling)
    world = read_coco_captions(folder / "world" / split / "captions.json")
    real = load_images(world.image_paths[:2000], 64)
    examples_items = [items[0] for items in groups.values() if items]
    results: dict[str, Any] = {"real": {"by_objects": {
        f"{n}_objects": image_semantic_scores(
            judge, load_images([path for _, path in items], 64),
            [prompt for prompt, _ in items], [True] * len(items))
        for n, items in groups.items() if items}}}
    examples: dict[str, torch.Tensor] = {}
    for route in config.t2i_routes:
        by_objects, generated = {}, []
        for n, items in groups.items():
            if items:
                images = generate(route, items)
                generated.append(images)
                by_objects[f"{n}_objects"] = image_semantic_scores(
                    judge, images, [prompt for prompt, _ in items], [True] * len(items))
        results[route] = {"by_objects": by_objects,
                          "fd": image_fd(clip, real, torch.cat(generated))}
        examples[route] = generate(
            route, [item for item in examples_items for _ in range(EXAMPLE_SAMPLES)])
    return results, examples, [prompt for prompt, _ in examples_items]


def image_to_text(folder: Path, split: str, config: EndToEndConfig
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Caption metrics and semantic scores per route; example captions."""
    store = open_store(folder / "store", split)
    n = min(config.images, store.n_images)
    image_emb = torch.from_numpy(store.image_embeddings[:n].astype(np.float32))
    meta = store.image_metadata()
    rows_by_id = {r["image_id"]: r for r in load_ground_truth(folder / "world" / split)}
    rows = [rows_by_id[i] for i in meta.column("image_id").to_pylist()[:n]]
    owner = np.asarray(store.caption_image_index)
    captions = store.text_metadata().column("caption").to_pylist()
    references = [[captions[j] for j in np.flatnonzero(owner == i)] for i in range(n)]
    decoders = {name: CaptionDecoder.load(folder / "e2e" / name)
                for name in {decoder for _, decoder in I2T_ROUTES.values()}}
    translators = {method: Translator.load(folder / "translators" / "image2text" / method)
                   for method, _ in I2T_ROUTES.values() if method is not None}
    translated: dict[str | None, torch.Tensor] = {}
    results: dict[str, Any] = {}
    outputs: dict[str, list[str]] = {}
    for route, (method, decoder) in I2T_ROUTES.items():
        pipeline = ImageToText(decoders[decoder], translators.get(method))
        if method not in translated:  # each translation once, shared by its routes
            translated[method] = pipeline.translate(
                image_emb, mode="mean", n_samples=8, seed=row_seeds(config.seed, len(image_emb)))
        predicted = pipeline.decode(translated[method], beams=config.beams)
        outputs[route] = predicted
        results[route] = {**caption_metrics(predicted, references),
                          **caption_semantic_scores(predicted, rows)}
    if config.lverse:
        biart = BiART.load(folder / "e2e" / "biart")
        images = load_images(meta.column("image_path").to_pylist()[:n], 64)
        outputs["lverse"] = [c for i in range(0, n, 64) for c in biart.caption(images[i:i + 64])]
        results["lverse"] = {**caption_metrics(outputs["lverse"], references),
                             **caption_semantic_scores(outputs["lverse"], rows)}
    paths = meta.column("image_path").to_pylist()[:n]
    examples = {"images": paths[:8], "references": references[:8],
                "captions": {route: out[:8] for route, out in outputs.items()}}
    return results, examples


def joint_rows(world: Path, split: str, config: EndToEndConfig, judge: AttributeRecogniser,
               model: JointVAE, clip: Any | None = None) -> dict[str, Any]:
    """The joint VAE's rows on a split, scored as every route: ``text_to_image`` (the judge
    on one image per prompt of :func:`full_prompts`, from a draw of q(z | prompt); FD
    against the split's real images when ``clip`` is given) and ``image_to_text`` (caption
    metrics and semantic scores of the greedy captions of the split's first ``images``
    images, from the mean of q(z | image))."""
    groups = full_prompts(world / split, config.prompts_per_group, config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    by_objects, generated = {}, []
    for n, items in groups.items():
        if items:
            prompts = [prompt for prompt, _ in items]
            images = model.generate_image(prompts, generator=generator)
            generated.append(images)
            by_objects[f"{n}_objects"] = image_semantic_scores(judge, images, prompts,
                                                               [True] * len(items))
    t2i: dict[str, Any] = {"by_objects": by_objects}
    data = read_coco_captions(world / split / "captions.json")
    if clip is not None:
        t2i["fd"] = image_fd(clip, load_images(data.image_paths[:2000], 64),
                             torch.cat(generated))
    images, rows = world_split(world, split)
    n = min(config.images, len(images))
    predicted = [c for i in range(0, n, 64) for c in model.caption(images[i:min(i + 64, n)])]
    return {"text_to_image": t2i, "image_to_text": {
        **caption_metrics(predicted, data.captions[:n]),
        **caption_semantic_scores(predicted, rows[:n])}, "captions": predicted[:8]}


def joint_samples(out: Path, model: JointVAE, judge: AttributeRecogniser, n: int,
                  seed: int) -> dict[str, Any]:
    """Draw ``n`` joint samples from the prior (the fitted one if the model has it) and
    judge their coherence
    (:func:`~modtrans.world.semantic.joint_coherence`); keep the first
    :data:`JOINT_EXAMPLES` as ``out/joint_samples/<i>.png``, a grid
    ``out/joint_samples.png`` and ``out/joint_samples.json`` (their captions and the
    coherence), for the report. Returns the coherence."""
    images, captions = model.sample_pairs(n, generator=torch.Generator().manual_seed(seed))
    scores = joint_coherence(judge, images, captions, seed=seed)
    k = min(JOINT_EXAMPLES, n)
    (out / "joint_samples").mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(k):
        files.append(f"joint_samples/{i}.png")
        with atomic_path(out / files[-1]) as tmp:
            image_grid(images[i:i + 1], rows=1, pad=0).save(tmp, format="PNG")
    with atomic_path(out / "joint_samples.png") as tmp:
        image_grid(images[:k], rows=max(d for d in range(1, int(k ** 0.5) + 1) if k % d == 0)
                   ).save(tmp, format="PNG")
    prior = "fitted" if model.config.prior_components else "standard"
    write_json(out / "joint_samples.json", {"samples": n, "prior": prior, "files": files,
                                            "captions": captions[:k], "coherence": scores})
    return scores


def run_end_to_end(folder: str | Path, config: EndToEndConfig | None = None, *,
                   progress: bool = True) -> dict[str, Any]:
    """Train what is missing, evaluate every route, write ``folder/e2e/``; returns results."""
    config = config or EndToEndConfig()
    folder = Path(folder)
    for needed in ("world", "world_clip", "store", "translators"):
        if not (folder / needed).is_dir():
            raise FileNotFoundError(
                f"{folder} has no {needed}/; end-to-end evaluation runs in a demo folder "
                f"(`modtrans demo --out {folder}` first)"
            )
    summaries = train_models(folder, config, progress)
    judge = AttributeRecogniser.load(folder / "e2e" / "recogniser")
    clip = build_encoder(f"hf:{(folder / 'world_clip').resolve()}")
    results: dict[str, Any] = {"recogniser": summaries["recogniser"], "training": summaries,
                               "conditioning_probes": conditioning_probes(folder),
                               "candidates": config.candidates,
                               "text_to_image": {}, "image_to_text": {}}
    for i, split in enumerate(config.splits):
        results["text_to_image"][split], examples, prompts = text_to_image(
            folder, split, config, judge, clip)
        if config.captions:
            results["image_to_text"][split], captioned = image_to_text(folder, split, config)
        if config.joint:
            joint = joint_rows(folder / "world", split, config, judge,
                               JointVAE.load(folder / "e2e" / "joint"), clip)
            results["text_to_image"][split]["joint"] = joint["text_to_image"]
            if config.captions:
                results["image_to_text"][split]["joint"] = joint["image_to_text"]
                captioned["captions"]["joint"] = joint["captions"]
        if i == 0:
            stacked = torch.cat([examples[r].view(len(prompts), EXAMPLE_SAMPLES, 64, 64, 3)
                                 for r in config.t2i_routes], dim=1)
            with atomic_path(folder / "e2e" / "text2image.png") as tmp:
                image_grid(stacked.reshape(-1, 64, 64, 3), rows=len(prompts)).save(
                    tmp, format="PNG")
            if config.captions:
                write_json(folder / "e2e" / "image2text.json", {"split": split, **captioned})
            results["examples"] = {"split": split, "prompts": prompts,
                                   "columns": [f"{EXAMPLE_SAMPLES} × {r}"
                                               for r in config.t2i_routes]}
    if config.joint:
        results["joint_coherence"] = joint_samples(
            folder / "e2e", JointVAE.load(folder / "e2e" / "joint"), judge, 256, config.seed)
    write_json(folder / "e2e" / "results.json", results)
    return results
