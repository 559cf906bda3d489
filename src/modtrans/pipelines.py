"""The pipelines users run: text → image, image → text and search, as library code.

The CLI verbs, the end-to-end benchmark and a service all call these, so that a generated
image, a caption or a neighbour list is produced the same way everywhere; the checks that a
translator fits a decoder, an index or a store (direction, modality, encoders) live here.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modtrans.data.pairs import load_pairs
from modtrans.data.store import EmbeddingStore, open_store
from modtrans.decoders.caption import CaptionDecoder
from modtrans.decoders.loading import ImageDecoder, load_image_decoder
from modtrans.decoders.rerank import best_of
from modtrans.encoders import Encoder, build_encoder
from modtrans.retrieval import GalleryIndex, build_index
from modtrans.training.translator import fit_translator
from modtrans.translators.base import (
    Mode,
    RowSeeds,
    Translator,
    TranslatorConfig,
    draw_seeds,
    list_translators,
    translator_class,
)
from modtrans.translators.samplers import SamplerOptions

logger = logging.getLogger(__name__)


def encode_queries(texts: Sequence[str] | None, images: Sequence[Path] | None, *,
                   image_spec: str, text_spec: str) -> tuple[str, torch.Tensor, list[str]]:
    """Embed text or image-file queries (exactly one kind) with the given encoders.

    Returns:
        (the queries' modality, their embeddings, a label for each).
    """
    if bool(texts) == bool(images):
        raise ValueError("give either --text or --image queries (one kind, one or more)")
    if texts:
        encoder = build_encoder(text_spec)
        warn_unknown_words(encoder, list(texts))
        return "text", encoder.encode_texts(list(texts)), list(texts)
    return ("image", build_encoder(image_spec).encode_images(open_images(images or [])),
            [str(p) for p in images or []])


def warn_unknown_words(encoder: Encoder, texts: Sequence[str]) -> None:
    """Warn about each query with words outside a closed-vocabulary text encoder's
    vocabulary: they reach the model as one unknown token, so different words can give the
    same embedding."""
    counter = getattr(encoder, "unknown_tokens", None)
    for text, count in zip(texts, counter(texts) if counter else [], strict=False):
        if not count.unknown:
            continue
        what = ("every word is" if len(count.unknown) == count.tokens
                else f"{len(count.unknown)} of {count.tokens} tokens are")
        logger.warning("query %r: %s unknown to %s (%s), so the embedding does not see them",
                       text, what, encoder.spec, ", ".join(map(repr, count.unknown)))


def open_images(paths: Sequence[Path]) -> list[Image.Image]:
    """Decode image files as RGB, with an error naming every missing or unreadable one."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
    opened = []
    for path in paths:
        try:
            with Image.open(path) as im:
                opened.append(im.convert("RGB"))
        except OSError as e:  # PIL.UnidentifiedImageError included
            raise ValueError(f"{path} is not an image modtrans can read ({e})") from e
    return opened


def check_encoders(config: TranslatorConfig, store: EmbeddingStore) -> None:
    """A translator must be used with embeddings from the encoders it was trained on."""
    for modality in ("image", "text"):
        trained, given = getattr(config, f"{modality}_encoder"), getattr(store,
                                                                          f"{modality}_encoder")
        if "unknown" not in (trained, given) and trained != given:
            raise ValueError(
                f"the translator was trained on {modality} embeddings from {trained!r} but the "
                f"store holds embeddings from {given!r}; embed the data with the same encoders"
            )


def check_feeds(translator: Translator, *, direction: str, encoders: tuple[str, str],
                consumer: str) -> None:
    """Raise unless ``translator`` goes in ``direction`` and was trained on ``encoders``
    (image, text), those of ``consumer`` (a decoder or an index, named in the message)."""
    cfg = translator.config
    if cfg.direction != direction:
        raise ValueError(f"{consumer} needs a {direction} translator (this one is "
                         f"{cfg.direction})")
    if (cfg.image_encoder, cfg.text_encoder) != encoders:
        raise ValueError(f"{consumer} was trained on {encoders[0]}/{encoders[1]} embeddings "
                         f"but the translator uses {cfg.image_encoder}/"
                         f"{cfg.text_encoder}; train them on the same store")


def translator_or_method(name: str | Path, data: Path, direction: str | None) -> Translator:
    """The translator saved in directory ``name``, or the closed-form method ``name`` fitted
    on ``data``'s train split (its val split choosing λ) for ``direction``."""
    if Path(name).is_dir():
        model = Translator.load(name)
        if direction and direction != model.config.direction:
            raise ValueError(f"{name} translates {model.config.direction}, not {direction}")
        return model
    name = str(name)
    if name not in list_translators():
        raise FileNotFoundError(
            f"{name!r} is neither a checkpoint directory nor a method name "
            f"({', '.join(list_translators())}); check the path, or train one with "
            "`modtrans train`")
    if translator_class(name).trainable:
        raise ValueError(f"{name} needs training: run `modtrans train --method {name}` and "
                         "pass the checkpoint directory")
    if not direction:
        raise ValueError("--direction is needed when evaluating a method by name")
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = fit_translator(name, load_pairs(open_store(data, "train"), direction),
                                  load_pairs(open_store(data, "val"), direction), tmp,
                                  progress=False)
    return model


@dataclasses.dataclass
class TextToImage:
    """Prompts → text embeddings → a text2image translator (none: the direct route, a decoder
    trained on text embeddings) → the image decoder → optionally the best of ``candidates``
    draws by the image encoder (the CLIP score for a CLIP pair, else against the translated
    embedding each was drawn from).

    Attributes:
        decoder: the image decoder (the world's VAE or a diffusers unCLIP pipeline).
        translator: the text2image translator, or None.
        text_encoder, image_encoder: built from the decoder's specs when not given.
    """

    decoder: ImageDecoder
    translator: Translator | None = None
    text_encoder: Encoder | None = None
    image_encoder: Encoder | None = None

    def __post_init__(self) -> None:
        cfg = self.decoder.config
        wanted = "text" if self.translator is None else "image"
        if cfg.condition != wanted:
            raise ValueError(
                f"the image decoder was trained on {cfg.condition} embeddings: "
                + ("give a text2image translator, or use a decoder trained on text embeddings"
                   if self.translator is None else "a translator feeds a decoder trained on "
                   "image embeddings (fit-decoder image --condition image)"))
        if self.translator is not None:
            check_feeds(self.translator, direction="text2image",
                        encoders=(cfg.image_encoder, cfg.text_encoder), consumer="the decoder")
        self.text_encoder = self.text_encoder or build_encoder(cfg.text_encoder)

    @classmethod
    def load(cls, decoder: str | Path, translator: str | Path | None = None) -> TextToImage:
        """The pipeline of an image decoder (a directory or a ``diffusers:`` spec, see
        :func:`~modtrans.decoders.loading.load_image_decoder`) and (optionally) a saved
        translator."""
        model = None if translator is None else Translator.load(translator)
        return cls(load_image_decoder(decoder, model), model)

    @property
    def shared_space(self) -> bool:
        """Whether the prompt's text embedding lives in the image encoder's space."""
        return self.decoder.config.image_encoder == self.decoder.config.text_encoder

    def __call__(self, prompts: Sequence[str], *, n: int = 1, candidates: int = 1,
                 mode: Mode = "sample", seed: int | Sequence[int] = 0,
                 steps: int | None = None, guidance: float | None = None,
                 sampling: SamplerOptions | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` images per prompt, uint8 (len(prompts)·n, 64, 64, 3), prompt-major, and the
        kept candidates' scores (None without reranking).

        ``seed`` seeds the translator's draws (the j-th image of a prompt from seed + j,
        whatever the other prompts; one seed per prompt gives the prompts independent draws,
        as an evaluation needs) and then the decoder's latents (from the first seed);
        ``steps`` and ``guidance`` override the decoder's latent prior, ``sampling`` the
        translator's.
        """
        self.check(n, candidates)
        seeds = [seed] * len(prompts) if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != len(prompts):
            raise ValueError(f"give one seed, or one per prompt: {len(seeds)} seeds for "
                             f"{len(prompts)} prompts")
        warn_unknown_words(self.text_encoder, list(prompts))
        c = self.text_encoder.encode_texts(list(prompts)).repeat_interleave(n * candidates, 0)
        e = c if self.translator is None else self.translator.translate(
            c, mode=mode, seed=[s for first in seeds for s in draw_seeds(first, n * candidates)],
            sampling=sampling)
        return self.draw(c, e, candidates=candidates,
                         generator=torch.Generator().manual_seed(seeds[0]), steps=steps,
                         guidance=guidance)

    def check(self, n: int, candidates: int) -> None:
        """Raise unless ``n`` images of the best of ``candidates`` each can be drawn."""
        if n < 1 or candidates < 1:
            raise ValueError(f"n and candidates must be ≥ 1, got {n} and {candidates}")
        if candidates > 1 and self.translator is None and not self.shared_space:
            cfg = self.decoder.config
            raise ValueError(f"reranking ranks the direct route's draws by the CLIP score, but "
                             f"{cfg.image_encoder} and {cfg.text_encoder} are not one CLIP "
                             "pair; give a text2image translator")

    def draw(self, c: torch.Tensor, e: torch.Tensor, *, candidates: int = 1,
             generator: torch.Generator | None = None, steps: int | None = None,
             guidance: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decode the embeddings ``e`` (the translations of the prompt embeddings ``c``, or
        ``c`` itself on the direct route; ``candidates`` consecutive rows per image) and keep
        the best candidate of each image; what :meth:`__call__` returns. A service that
        batches encoding and translation across requests calls this for the last stage."""
        images = self.decoder.generate(e, generator=generator, steps=steps, guidance=guidance)
        if candidates == 1:
            return images, None
        return best_of(images, c if self.shared_space else e, self._scorer, candidates)

    @functools.cached_property
    def _scorer(self) -> Encoder:
        if self.image_encoder is not None:
            return self.image_encoder
        return (self.text_encoder if self.shared_space
                else build_encoder(self.decoder.config.image_encoder))


@dataclasses.dataclass
class ImageToText:
    """Images → image embeddings → an image2text translator (none: ClipCap, a decoder trained
    on image embeddings) → the caption decoder.

    Attributes:
        decoder: the caption decoder.
        translator: the image2text translator, or None.
    """

    decoder: CaptionDecoder
    translator: Translator | None = None

    def __post_init__(self) -> None:
        cfg = self.decoder.config
        if self.translator is None and cfg.condition != "image":
            raise ValueError("the caption decoder was trained on text embeddings (CapDec): give "
                             "an image2text translator, or use a ClipCap decoder")
        if self.translator is not None:
            if cfg.condition != "text":
                raise ValueError("a translator feeds a caption decoder trained on text "
                                 "embeddings (CapDec); this one decodes image embeddings")
            check_feeds(self.translator, direction="image2text",
                        encoders=(cfg.image_encoder, cfg.text_encoder), consumer="the decoder")

    @classmethod
    def load(cls, decoder: str | Path, translator: str | Path | None = None) -> ImageToText:
        """The pipeline of a saved caption decoder and (optionally) a saved translator."""
        return cls(CaptionDecoder.load(decoder),
                   None if translator is None else Translator.load(translator))

    def translate(self, z: torch.Tensor, *, mode: Mode = "mean", n_samples: int = 8,
                  seed: RowSeeds = 0) -> torch.Tensor:
        """Image embeddings → what the decoder reads (the translation, or ``z`` itself)."""
        if self.translator is None:
            return z
        return self.translator.translate(z, mode=mode, n_samples=n_samples, seed=seed)

    def decode(self, e: torch.Tensor, *, beams: int = 3) -> list[str]:
        """One caption per row of what :meth:`translate` returned."""
        return self.decoder.generate(e, num_beams=beams)

    def __call__(self, images: Sequence[Path], *, beams: int = 3, mode: Mode = "mean",
                 n_samples: int = 8, seed: int = 0) -> list[str]:
        """A caption for each image file."""
        z = build_encoder(self.decoder.config.image_encoder).encode_images(open_images(images))
        return self.decode(self.translate(z, mode=mode, n_samples=n_samples, seed=seed),
                           beams=beams)


@dataclasses.dataclass
class Search:
    """Text or image queries → (optionally) a translator into the index's modality → the
    nearest items of an index."""

    gallery: GalleryIndex
    translator: Translator | None = None

    def __post_init__(self) -> None:
        if self.translator is not None:
            info, cfg = self.gallery.info, self.translator.config
            if cfg.target_modality != self.gallery.modality:
                raise ValueError(f"the translator maps {cfg.cond_modality} to "
                                 f"{cfg.target_modality}, but the index holds "
                                 f"{self.gallery.modality} embeddings")
            check_feeds(self.translator, direction=cfg.direction,
                        encoders=(info["image_encoder"], info["text_encoder"]),
                        consumer="the index's store")

    def encode(self, texts: Sequence[str] | None = None,
               images: Sequence[Path] | None = None) -> tuple[str, torch.Tensor, list[str]]:
        """The queries embedded with the index store's encoders (see :func:`encode_queries`)."""
        info = self.gallery.info
        return encode_queries(texts, images, image_spec=info["image_encoder"],
                              text_spec=info["text_encoder"])

    def __call__(self, modality: str, queries: torch.Tensor, labels: Sequence[str], k: int,
                 *, mode: Mode = "mean", n_samples: int = 8,
                 seed: int = 0) -> list[dict[str, Any]]:
        """The top ``k`` items per query: ``{"query", "results": [{rank, score, row, item}]}``."""
        self.check_queries(modality)
        if self.translator is not None:
            queries = self.translator.translate(queries, mode=mode, n_samples=n_samples,
                                                seed=seed)
        scores, rows = self.gallery.search(queries.numpy(), k)
        return ranked(labels, scores, rows, self.gallery.labels())

    def check_queries(self, modality: str) -> None:
        """Raise unless queries of ``modality`` can be searched: the translator maps that
        modality, or without one the store's two encoders share a space."""
        info = self.gallery.info
        if self.translator is not None:
            if self.translator.config.cond_modality != modality:
                raise ValueError(f"the translator maps {self.translator.config.cond_modality} "
                                 f"to {self.gallery.modality}, but the queries are {modality}")
        elif modality != self.gallery.modality and info["image_encoder"] != info["text_encoder"]:
            raise ValueError(
                f"{info['text_encoder']} texts and {info['image_encoder']} images do not share "
                "a space; pass --translator CKPT trained on this store's encoders")


def nearest_in_store(z: torch.Tensor, labels: Sequence[str], store: EmbeddingStore,
                     modality: str, k: int) -> list[dict[str, Any]]:
    """Exact top-``k`` items of a store's ``modality`` embeddings for each row of ``z``."""
    gallery = store_gallery(store, modality, kind="flat")
    scores, rows = gallery.search(z.numpy().astype(np.float32), k)
    return ranked(labels, scores, rows, gallery.labels())


def store_gallery(store: EmbeddingStore, modality: str, kind: str = "auto") -> GalleryIndex:
    """An in-memory index over one modality of a store (what ``modtrans index`` would save,
    without its recall measurement), for searching a store that has no index directory."""
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be image or text, got {modality!r}")
    emb = store.image_embeddings if modality == "image" else store.text_embeddings
    index, params = build_index(np.asarray(emb.to_numpy(), dtype=np.float32), kind=kind)
    info = {"store": str(Path(store.root).resolve()), "split": store.split,
            "modality": modality, **params, "image_encoder": store.image_encoder,
            "text_encoder": store.text_encoder}
    return GalleryIndex(index, info, store)


def ranked(labels: Sequence[str], scores: np.ndarray, rows: np.ndarray, names: Sequence[str]
           ) -> list[dict[str, Any]]:
    """Search results as one record per query."""
    return [{"query": label, "results": [
        {"rank": r + 1, "score": round(float(s), 4), "row": int(i), "item": names[i]}
        for r, (s, i) in enumerate(zip(sc, ix, strict=True))]}
        for label, sc, ix in zip(labels, scores, rows, strict=True)]
