"""The models a service holds, loaded once: from a demo folder or from a serve YAML file.

A demo folder (``modtrans demo``) gives its translators (``translators/<direction>/<method>``),
the decoders of its end-to-end stage (``e2e/``, when it ran) and its indexes
(``indexes/<name>/`` written by ``modtrans index``; without them, in-memory exact indexes over
both modalities of the store splits in ``index_splits``). A YAML file names them itself::

    translators: {ced: runs/t2i_ced, ridge-i2t: runs/i2t_ridge}
    decoders: {vae: runs/vae, clipcap: runs/clipcap}
    indexes:
      val-image: runs/index_val            # a `modtrans index` directory
      val-text: {store: store/val, modality: text}   # searched in memory
    defaults: {text2image: ced}
    limits: {max_k: 20}

Paths are relative to the YAML file. Every encoder the models were trained on is built once.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from modtrans.config import read_mapping
from modtrans.data.store import EmbeddingStore, open_store
from modtrans.decoders.caption import CaptionDecoder
from modtrans.decoders.loading import IMAGE_DECODER_KINDS, ImageDecoder, load_image_decoder
from modtrans.encoders import Encoder, build_encoder
from modtrans.io import read_json
from modtrans.pipelines import store_gallery
from modtrans.retrieval import GalleryIndex, load_index
from modtrans.serve.config import ServeConfig
from modtrans.translators.base import DIRECTIONS, Translator

logger = logging.getLogger(__name__)

#: The keys of a serve YAML file that name models (the others configure the service).
MODEL_KEYS = ("translators", "decoders", "indexes")
UNKNOWN = "unknown"


@dataclasses.dataclass
class Models:
    """Everything a service answers with.

    Attributes:
        source: the folder or YAML file they came from.
        translators, image_decoders, caption_decoders, indexes: by name.
        encoders: by spec, one per encoder any model was trained on.
        stores: the stores the indexes cover, by name (``/images/<name>-<row>``).
        defaults: the translator used per direction when a request names none.
    """

    source: str
    translators: dict[str, Translator]
    image_decoders: dict[str, ImageDecoder]
    caption_decoders: dict[str, CaptionDecoder]
    indexes: dict[str, GalleryIndex]
    encoders: dict[str, Encoder] = dataclasses.field(default_factory=dict)
    stores: dict[str, EmbeddingStore] = dataclasses.field(default_factory=dict)
    defaults: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for spec in sorted(self._specs()):
            logger.info("serve: building encoder %s", spec)
            self.encoders[spec] = build_encoder(spec)
        for index in self.indexes.values():
            self._name_store(index.store)
        for direction in DIRECTIONS:
            names = [n for n, t in self.translators.items() if t.config.direction == direction]
            chosen = self.defaults.get(direction)
            if chosen is not None and chosen not in names:
                raise ValueError(f"defaults.{direction} is {chosen!r}, which is no loaded "
                                 f"{direction} translator ({', '.join(names) or 'none'})")
            ced = [n for n in names if self.translators[n].config.method == "ced"]
            if chosen is None and names:
                self.defaults[direction] = (ced or names)[0]

    def _specs(self) -> set[str]:
        configs = [m.config for m in (*self.translators.values(), *self.image_decoders.values(),
                                      *self.caption_decoders.values())]
        specs = {s for c in configs for s in (c.image_encoder, c.text_encoder)}
        specs |= {i.info[k] for i in self.indexes.values()
                  for k in ("image_encoder", "text_encoder")}
        return specs - {UNKNOWN}

    def _name_store(self, store: EmbeddingStore) -> None:
        root = Path(store.root).resolve()
        if any(Path(s.root).resolve() == root for s in self.stores.values()):
            return
        name, i = store.split, 2
        while name in self.stores:
            name, i = f"{store.split}{i}", i + 1
        self.stores[name] = store

    def store_name(self, store: EmbeddingStore) -> str:
        """The name under which ``store``'s images are served."""
        root = Path(store.root).resolve()
        return next(n for n, s in self.stores.items() if Path(s.root).resolve() == root)

    def encoder(self, spec: str, what: str) -> Encoder:
        """The encoder of ``spec``; ValueError when ``what`` (a model) names none."""
        if spec not in self.encoders:
            raise ValueError(f"{what} was trained on embeddings of an unknown encoder; retrain "
                             "it on a store that records its encoders")
        return self.encoders[spec]

    def describe(self) -> dict[str, Any]:
        """What is loaded, for ``GET /models``."""
        return {
            "source": self.source,
            "encoders": [{"spec": spec, "dim": e.dim, "modalities": sorted(e.modalities)}
                         for spec, e in self.encoders.items()],
            "translators": [
                {"name": name, "direction": t.config.direction, "method": t.config.method,
                 "stochastic": t.stochastic, "cond_dim": t.config.cond_dim,
                 "target_dim": t.config.target_dim, "image_encoder": t.config.image_encoder,
                 "text_encoder": t.config.text_encoder,
                 "default": self.defaults.get(t.config.direction) == name}
                for name, t in self.translators.items()],
            "decoders": [
                *({"name": name, "kind": "image", "condition": d.config.condition,
                   "embed_dim": d.config.embed_dim} for name, d in self.image_decoders.items()),
                *({"name": name, "kind": "caption", "mode": d.config.mode,
                   "condition": d.config.condition, "embed_dim": d.config.embed_dim}
                  for name, d in self.caption_decoders.items())],
            "indexes": [
                {"name": name, "modality": i.modality, "size": int(i.index.ntotal),
                 "dim": i.info["dim"], "kind": i.info["kind"], "split": i.info.get("split"),
                 "store": self.store_name(i.store)}
                for name, i in self.indexes.items()],
        }


def load_models(source: str | Path, config: ServeConfig) -> Models:
    """The models of a demo folder or of a serve YAML file (see the module docstring)."""
    source = Path(source)
    if source.is_file():
        return _from_yaml(source, config)
    if not source.is_dir():
        raise FileNotFoundError(f"{source} does not exist; give a demo folder (`modtrans demo "
                                f"--out {source}`) or a serve YAML file")
    return _from_folder(source, config)


def _from_folder(folder: Path, config: ServeConfig) -> Models:
    """A demo folder's translators, end-to-end decoders and indexes."""
    if not any((folder / d).is_dir() for d in ("translators", "e2e", "indexes")):
        raise FileNotFoundError(f"{folder} is not a demo folder (no translators/, e2e/ or "
                                f"indexes/); run `modtrans demo --out {folder}` first")
    translators = {f"{p.parent.parent.name}/{p.parent.name}": Translator.load(p.parent)
                   for p in sorted(folder.glob("translators/*/*/config.json"))}
    image_decoders, caption_decoders = _decoders(
        {p.parent.name: p.parent for p in sorted(folder.glob("e2e/*/config.json"))}, strict=False)
    if (folder / "indexes").is_dir():
        indexes = {p.parent.name: load_index(p.parent)
                   for p in sorted((folder / "indexes").glob("*/index.json"))}
    elif (folder / "store").is_dir():
        indexes = {f"{split}-{modality}": store_gallery(open_store(folder / "store", split),
                                                        modality)
                   for split in config.index_splits for modality in ("image", "text")}
    else:
        indexes = {}
    if not image_decoders and not caption_decoders:
        logger.info("serve: %s has no decoders (run `modtrans e2e %s` to train them); "
                    "/generate and /caption answer 404", folder, folder)
    return Models(str(folder), translators, image_decoders, caption_decoders, indexes,
                  defaults=dict(config.defaults))


def _from_yaml(path: Path, config: ServeConfig) -> Models:
    """The models a serve YAML file names, its paths relative to the file."""
    options = read_mapping(path)
    known = {*MODEL_KEYS, *(f.name for f in dataclasses.fields(ServeConfig))}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; valid keys are {sorted(known)}")
    sections: dict[str, dict[str, Any]] = {}
    for key in MODEL_KEYS:
        section = options.get(key) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{path}: {key} must map names to paths, got {section!r}")
        sections[key] = section
    if not any(sections.values()):
        raise ValueError(f"{path} names no translators, decoders or indexes")
    base = path.parent

    def where(value: Any, key: str, name: str) -> Path:
        if not isinstance(value, str):
            raise ValueError(f"{path}: {key}.{name} must be a path, got {value!r}")
        return base / value

    translators = {name: Translator.load(where(value, "translators", name))
                   for name, value in sections["translators"].items()}
    image_decoders, caption_decoders = _decoders(
        {name: where(value, "decoders", name) for name, value in sections["decoders"].items()},
        strict=True)
    indexes = {name: _index(base, name, value, path)
               for name, value in sections["indexes"].items()}
    return Models(str(path), translators, image_decoders, caption_decoders, indexes,
                  defaults=dict(config.defaults))


def _index(base: Path, name: str, value: Any, path: Path) -> GalleryIndex:
    """An index directory, or ``{store, modality[, split, kind]}`` indexed in memory."""
    if isinstance(value, str):
        return load_index(base / value)
    if not isinstance(value, dict) or "store" not in value:
        raise ValueError(f"{path}: indexes.{name} must be an index directory or a mapping "
                         f"with store and modality, got {value!r}")
    extra = sorted(set(value) - {"store", "modality", "split", "kind"})
    if extra:
        raise ValueError(f"{path}: indexes.{name} has unknown key(s) {extra}; valid: store, "
                         "modality, split, kind")
    store = open_store(base / value["store"], value.get("split"))
    return store_gallery(store, value.get("modality", "image"), value.get("kind", "auto"))


def _decoders(paths: dict[str, Path], *, strict: bool
              ) -> tuple[dict[str, ImageDecoder], dict[str, CaptionDecoder]]:
    """The image and caption decoders among ``paths``, told apart by the kind their
    ``config.json`` records (image decoders: the world's VAE, or a diffusers pipeline made
    by ``modtrans import-decoder``); any other artefact is an error when ``strict``, else
    skipped."""
    images, captions = {}, {}
    for name, where in paths.items():
        kind = read_json(where / "config.json").get("kind") if (
            where / "config.json").is_file() else None
        if kind in IMAGE_DECODER_KINDS:
            images[name] = load_image_decoder(where)
        elif kind == CaptionDecoder.kind:
            captions[name] = CaptionDecoder.load(where)
        elif strict:
            raise ValueError(f"{where} holds no image or caption decoder (its config.json "
                             f"records kind {kind!r}); train one with `modtrans fit-decoder`")
    return images, captions
