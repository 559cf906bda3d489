"""What each endpoint does, on the library's pipelines: encode (batched per encoder),
translate (batched per translator), search (batched per index), decode (images, captions).

Model calls run in worker threads: one for the batched stages, one for decoding, which takes
seconds and would otherwise hold up every search behind it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gc
import io
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modtrans.data.store import EmbeddingStore
from modtrans.pipelines import ImageToText, Search, TextToImage, ranked
from modtrans.serve.batching import Admission, MicroBatcher, call_in_inference_mode
from modtrans.serve.config import ServeConfig
from modtrans.serve.inputs import (
    ApiError,
    CaptionParams,
    Draw,
    GenerateParams,
    SearchParams,
    TranslateParams,
    bad_request,
    check_text,
)
from modtrans.serve.metrics import Metrics
from modtrans.serve.models import Models
from modtrans.translators.base import Translator, draw_seeds

logger = logging.getLogger(__name__)

NONE = "none"
Timings = dict[str, float]


class StoreView:
    """What search results show of a store's rows: image ids and every image's captions."""

    def __init__(self, name: str, store: EmbeddingStore) -> None:
        self.name = name
        self.paths = [Path(p) for p in store.image_metadata().column("image_path").to_pylist()]
        self.image_ids = [f"{name}-{row}" for row in range(len(self.paths))]
        self.captions: list[str] = []
        self.caption_image: Sequence[int] = []
        if store.has_text:
            self.captions = store.text_metadata().column("caption").to_pylist()
            self.caption_image = store.caption_image_index.tolist()
        self.image_captions: list[list[str]] = [[] for _ in self.paths]
        for caption, image in zip(self.captions, self.caption_image, strict=True):
            self.image_captions[image].append(caption)

    def hit(self, modality: str, hit: dict[str, Any]) -> dict[str, Any]:
        """One search result of a ``modality`` index, with its image and caption(s)."""
        row = hit["row"]
        image = row if modality == "image" else self.caption_image[row]
        shown = {"captions": self.image_captions[image]} if modality == "image" else {
            "caption": self.captions[row]}
        return {"rank": hit["rank"], "score": hit["score"], "row": row,
                "image_id": self.image_ids[image], "image_url": f"/images/{self.image_ids[image]}",
                **shown}


class Service:
    """The models of a service, its batchers, worker threads and metrics."""

    def __init__(self, models: Models, config: ServeConfig) -> None:
        self.models, self.config, self.limits = models, config, config.limits
        self.metrics = Metrics()
        batching = config.batching
        self.admission = Admission(batching.max_queue, batching.retry_after_s, "requests")
        self.heavy = Admission(batching.max_heavy, batching.retry_after_s,
                               "generate and caption requests")
        self.views = {name: StoreView(name, store) for name, store in models.stores.items()}
        self.started = time.time()
        self._batchers: dict[str, MicroBatcher] = {}
        self._fast: ThreadPoolExecutor | None = None
        self._slow: ThreadPoolExecutor | None = None

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker threads (in the event loop that will serve), and move what is
        loaded out of the garbage collector's sight: a full collection over the models'
        objects would stall every request in flight."""
        gc.collect()
        gc.freeze()
        self._fast = ThreadPoolExecutor(1, thread_name_prefix="modtrans-model")
        self._slow = ThreadPoolExecutor(1, thread_name_prefix="modtrans-decode")

    async def stop(self) -> None:
        """Stop the batchers and let the worker threads finish what they run."""
        for batcher in self._batchers.values():
            await batcher.close()
        self._batchers.clear()
        for executor in (self._fast, self._slow):
            if executor is not None:
                executor.shutdown(wait=True)
        self._fast = self._slow = None
        gc.unfreeze()

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - self.started, 1),
                "in_flight": self.admission.active,
                "loaded": {k: len(v) for k, v in self.models.describe().items()
                           if isinstance(v, list)}}

    # -- the batched stages ----------------------------------------------------------------

    def _batcher(self, op: str, fn: Callable[[Sequence[Any]], Sequence[Any]]) -> MicroBatcher:
        if self._fast is None:
            raise RuntimeError("the service is not started (run it under its app's lifespan)")
        if op not in self._batchers:
            b = self.config.batching
            self._batchers[op] = MicroBatcher(
                op, fn, self._fast, max_batch=b.max_batch, max_wait=b.max_wait_ms / 1000,
                busy=lambda: self.admission.active, observe=self.metrics.observe_batch)
        return self._batchers[op]

    async def encode(self, spec: str, what: str, query: str | Image.Image) -> torch.Tensor:
        """One query embedded, (1, D), in a batch with the other queries of its encoder."""
        with bad_request():
            encoder = self.models.encoder(spec, what)
        if isinstance(query, str):
            op = f"encode-text:{spec}"
            fn: Callable = lambda texts: list(encoder.encode_texts(list(texts)))  # noqa: E731
        else:
            op = f"encode-image:{spec}"
            fn = lambda images: list(encoder.encode_images(list(images)))  # noqa: E731
        return (await self._batcher(op, fn)(query)).unsqueeze(0)

    async def translate(self, name: str, c: torch.Tensor, draw: Draw) -> torch.Tensor:
        """``c`` (m, Dc) translated, in a batch with the other requests of the translator."""
        model = self.models.translators[name]
        return await self._batcher(f"translate:{name}", lambda items: _translate(model, items))(
            (c, draw))

    async def nearest(self, name: str, q: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` (scores, rows) of index ``name`` for ``q`` (1, D), batched."""
        gallery = self.models.indexes[name]

        def search(items: Sequence[tuple[torch.Tensor, int]]) -> list[tuple[Any, Any]]:
            scores, rows = gallery.search(torch.cat([q for q, _ in items]).numpy(),
                                          max(k for _, k in items))
            return [(scores[i:i + 1, :k], rows[i:i + 1, :k]) for i, (_, k) in enumerate(items)]

        return await self._batcher(f"search:{name}", search)((q, k))

    async def decode(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the decoding thread, under inference mode."""
        if self._slow is None:
            raise RuntimeError("the service is not started (run it under its app's lifespan)")
        return await asyncio.get_running_loop().run_in_executor(
            self._slow, call_in_inference_mode, fn, *args)

    @contextlib.asynccontextmanager
    async def stage(self, timings: Timings, name: str) -> AsyncIterator[None]:
        """Time one stage of a request into ``timings`` (ms) and the stage histogram."""
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        timings[name] = round(timings.get(name, 0.0) + seconds * 1000, 2)
        self.metrics.stages.labels(name).observe(seconds)

    # -- choosing models -------------------------------------------------------------------

    def translator(self, name: str | None, direction: str | None = None, *,
                   default: bool = True) -> str | None:
        """The translator a request names (None for ``"none"``, or when it names none and
        ``default`` is off), checked to go in ``direction``."""
        if name == NONE or (name is None and not default):
            return None
        if name is None:
            name = self.models.defaults.get(direction or "")
            if name is None:
                return None
        if name not in self.models.translators:
            raise ApiError(404, f"no translator {name!r} is loaded; loaded: "
                           f"{_names(self.models.translators)}")
        actual = self.models.translators[name].config.direction
        if direction is not None and actual != direction:
            raise ApiError(422, f"translator {name!r} translates {actual}; this request "
                           f"needs a {direction} translator")
        return name

    def _model(self, kind: str, models: dict[str, Any], name: str | None,
               fits: Callable[[Any], bool]) -> str:
        """The model a request names, or the first loaded one that ``fits``."""
        if name is not None:
            if name not in models:
                raise ApiError(404, f"no {kind} {name!r} is loaded; loaded: {_names(models)}")
            return name
        chosen = next((n for n, m in models.items() if fits(m)), None)
        if chosen is None:
            raise ApiError(404, f"no {kind} fits this request (loaded: {_names(models)}); "
                           "train one with `modtrans fit-decoder` or `modtrans e2e FOLDER`")
        return chosen

    # -- the endpoints ---------------------------------------------------------------------

    async def translate_query(self, params: TranslateParams, image: Image.Image | None,
                              filename: str | None) -> dict[str, Any]:
        """``POST /translate``: a text or an image into the other space, ``n`` rows."""
        timings: Timings = {}
        modality, query = self._query(params.text, image)
        direction = "text2image" if modality == "text" else "image2text"
        if params.translator == NONE:
            raise ApiError(422, "/translate needs a translator; name one of /models")
        name = self.translator(params.translator, direction)
        if name is None:
            raise ApiError(404, f"no {direction} translator is loaded")
        model = self.models.translators[name]
        draw = params.draw()
        spec = getattr(model.config, f"{modality}_encoder")
        async with self.stage(timings, "encode"):
            c = await self.encode(spec, f"translator {name!r}", query)
        async with self.stage(timings, "translate"):
            z = await self.translate(name, c.repeat(params.n, 1), draw)
        return {"translator": name, "direction": direction, "query": filename or query,
                "mode": draw.mode, "n": params.n, "dim": int(z.shape[1]),
                "embeddings": z.tolist(), "timings_ms": timings}

    async def search(self, params: SearchParams, image: Image.Image | None,
                     filename: str | None) -> dict[str, Any]:
        """``POST /search``: the top ``k`` items of an index, raw or through a translator."""
        timings: Timings = {}
        modality, query = self._query(params.text, image)
        name = self.translator(params.translator, default=False)
        model = None if name is None else self.models.translators[name]
        target = None if model is None else model.config.target_modality
        index = self._model("index", self.models.indexes, params.index,
                            lambda g: g.modality == (target or _other(modality)))
        gallery = self.models.indexes[index]
        with bad_request():
            Search(gallery, model).check_queries(modality)
        draw = params.draw()
        async with self.stage(timings, "encode"):
            q = await self.encode(gallery.info[f"{modality}_encoder"], f"index {index!r}", query)
        if name is not None:
            async with self.stage(timings, "translate"):
                q = await self.translate(name, q, draw)
        async with self.stage(timings, "search"):
            scores, rows = await self.nearest(index, q, params.k)
        view = self.views[self.models.store_name(gallery.store)]
        (hits,) = ranked([filename or query], scores, rows,
                          view.image_ids if gallery.modality == "image" else view.captions)
        return {"query": hits["query"], "modality": modality, "index": index,
                "translator": name, "k": params.k,
                "results": [view.hit(gallery.modality, h) for h in hits["results"]],
                "timings_ms": timings}

    async def generate(self, params: GenerateParams, image: None = None,
                       filename: None = None) -> dict[str, Any]:
        """``POST /generate``: ``n`` PNG images of a prompt through a translator (or the
        direct route) and an image decoder, each the best of ``candidates`` (a JSON body:
        no image, like the other endpoints' signature says)."""
        timings: Timings = {}
        prompt = check_text("prompt", params.prompt, self.limits)
        decoders = self.models.image_decoders
        condition = "text" if params.translator == NONE or not (
            params.translator or self.models.defaults.get("text2image")) else "image"
        if params.decoder is None and params.translator is None and not any(
                d.config.condition == condition for d in decoders.values()):
            condition = "text"  # no decoder for a translator: the direct route
        decoder = self._model("image decoder", decoders, params.decoder,
                              lambda d: d.config.condition == condition)
        vae = decoders[decoder]
        name = self.translator(params.translator, "text2image",
                               default=vae.config.condition == "image")
        model = None if name is None else self.models.translators[name]
        cfg = vae.config
        with bad_request():
            pipeline = TextToImage(vae, model, text_encoder=self.models.encoder(
                cfg.text_encoder, f"image decoder {decoder!r}"),
                image_encoder=self.models.encoders.get(cfg.image_encoder))
            pipeline.check(params.n, params.candidates)
        draw = params.draw()
        rows = params.n * params.candidates
        with self.heavy.enter():
            async with self.stage(timings, "encode"):
                c = (await self.encode(cfg.text_encoder, f"image decoder {decoder!r}", prompt)
                     ).repeat(rows, 1)
            e = c
            if name is not None:
                async with self.stage(timings, "translate"):
                    e = await self.translate(name, c, draw)
            async with self.stage(timings, "decode"):
                images, scores = await self.decode(
                    lambda: pipeline.draw(c, e, candidates=params.candidates,
                                          generator=torch.Generator().manual_seed(params.seed),
                                          steps=params.steps, guidance=params.guidance))
                pngs = await self.decode(lambda: [png_data_url(a) for a in images.numpy()])
        return {"prompt": prompt, "decoder": decoder, "translator": name, "n": params.n,
                "candidates": params.candidates, "images": pngs,
                "scores": None if scores is None else [round(float(s), 4) for s in scores],
                "timings_ms": timings}

    async def caption(self, params: CaptionParams, image: Image.Image | None,
                      filename: str | None) -> dict[str, Any]:
        """``POST /caption``: a caption from each caption decoder asked for (all, by
        default), CapDec ones fed by an image2text translator."""
        timings: Timings = {}
        decoders = self.models.caption_decoders
        names = [self._model("caption decoder", decoders, params.decoder, lambda d: True)] \
            if params.decoder is not None else list(decoders)
        if not names:
            raise ApiError(404, "no caption decoder is loaded; train one with `modtrans "
                           "fit-decoder caption` or `modtrans e2e FOLDER`")
        routes = []
        for decoder in names:
            reads_text = decoders[decoder].config.condition == "text"
            translator = self.translator(params.translator, "image2text",
                                         default=reads_text) if reads_text or params.decoder \
                else None
            if reads_text and translator is None and params.decoder is None:
                continue  # CapDec without an image2text translator: not a route
            with bad_request():
                routes.append((decoder, translator, ImageToText(
                    decoders[decoder], None if translator is None
                    else self.models.translators[translator])))
        if not routes:
            raise ApiError(422, "no caption route without a translator: the caption decoders "
                           "loaded are CapDec ones, which need an image2text translator")
        draw = params.draw()
        embedded: dict[str, torch.Tensor] = {}
        captions = []
        with self.heavy.enter():
            for decoder, translator, pipeline in routes:
                spec = pipeline.decoder.config.image_encoder
                if spec not in embedded:
                    async with self.stage(timings, "encode"):
                        embedded[spec] = await self.encode(spec, f"caption decoder {decoder!r}",
                                                           image)
                e = embedded[spec]
                if translator is not None:
                    async with self.stage(timings, "translate"):
                        e = await self.translate(translator, e, draw)
                async with self.stage(timings, "decode"):
                    (text,) = await self.decode(
                        functools.partial(pipeline.decode, beams=params.beams), e)
                captions.append({"decoder": decoder, "translator": translator, "caption": text})
        return {"image": filename, "captions": captions, "timings_ms": timings}

    def image_file(self, image_id: str) -> Path:
        """The file of a store image, ``<store>-<row>`` as search results name it."""
        store, _, row = image_id.rpartition("-")
        view = self.views.get(store)
        if view is None or not row.isdigit() or int(row) >= len(view.paths):
            raise ApiError(404, f"no image {image_id!r}: ids are <store>-<row>, stores "
                           f"{_names(self.views)}")
        path = view.paths[int(row)]
        if not path.is_file():
            raise ApiError(404, f"image {image_id!r} is in the store but its file is gone")
        return path

    def _query(self, text: str | None, image: Image.Image | None
               ) -> tuple[str, str | Image.Image]:
        if image is not None:
            if text:
                raise ApiError(422, "give a text or an image, not both")
            return "image", image
        return "text", check_text("text", text, self.limits)


def _translate(model: Translator, items: Sequence[tuple[torch.Tensor, Draw]]
               ) -> list[torch.Tensor]:
    """One translator call per group of items that draw alike but for their seeds (one for a
    deterministic translator), split back into the items' rows. An item's m rows draw from
    its seeds ``seed, …, seed + m - 1`` (as the CLI's do), whatever shares the call."""
    groups: dict[Draw, list[int]] = {}
    for i, (_, draw) in enumerate(items):
        key = draw.model_copy(update={"seed": 0}) if model.stochastic else Draw()
        groups.setdefault(key, []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(items)
    for draw, members in groups.items():
        c = torch.cat([items[i][0] for i in members])
        seeds = [s for i in members for s in draw_seeds(items[i][1].seed, len(items[i][0]))]
        z = model.translate(c, mode=draw.mode, n_samples=draw.n_samples, seed=seeds,
                            sampling=draw.sampling)
        for i, part in zip(members, z.split([len(items[i][0]) for i in members]), strict=True):
            out[i] = part
    return out


def png_data_url(pixels: np.ndarray) -> str:
    """A uint8 image (H, W, 3) as a ``data:image/png;base64,`` URL."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _names(models: dict[str, Any]) -> str:
    return ", ".join(models) or "none"


def _other(modality: str) -> str:
    return "image" if modality == "text" else "text"
