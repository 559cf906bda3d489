"""``modtrans serve``: every endpoint and every bad input through FastAPI's TestClient, the
micro-batcher, and the page in a real browser against uvicorn on 127.0.0.1.

A tiny demo folder (the shared tiny world, CLIP and store; ridge and ced both ways; the four
end-to-end decoders at their test sizes) is built once for the module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_decoders import TINY_CAPTION, TINY_VAE

pytest.importorskip("fastapi", reason="modtrans[serve] is not installed")
from fastapi.testclient import TestClient

from modtrans.cli import main
from modtrans.data.pairs import load_pairs
from modtrans.data.store import open_store
from modtrans.decoders.caption import CaptionDecoderConfig, fit_caption_decoder
from modtrans.decoders.image_vae import ImageDecoderConfig, fit_image_decoder
from modtrans.pipelines import Search, store_gallery
from modtrans.serve import Batching, Limits, ServeConfig, create_app
from modtrans.serve.batching import Admission, MicroBatcher, Overloaded
from modtrans.training.fit import Recipe
from modtrans.training.translator import fit_translator
from modtrans.translators.base import DIRECTIONS, Translator

TINY_CED = {"width": 32, "depth": 2, "emb_dim": 32, "time_dim": 16, "steps": 4}
LIMITS = Limits(max_text_chars=80, max_image_bytes=50_000, max_pixels=128 * 128, max_k=20,
                max_n=4, max_candidates=2, max_samples=8, max_steps=8, max_beams=3)


@pytest.fixture(scope="module")
def folder(tiny_world: Path, tiny_clip: Any, tiny_store: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo folder laid out as ``modtrans demo`` writes it, with tiny models."""
    out = tmp_path_factory.mktemp("serve") / "demo"
    out.mkdir()
    for name, target in (("world", tiny_world), ("world_clip", tiny_clip.path),
                         ("store", tiny_store)):
        (out / name).symlink_to(target)
    train, val = open_store(tiny_store, "train"), open_store(tiny_store, "val")
    for direction in DIRECTIONS:
        for method, params in (("ridge", None), ("ced", TINY_CED)):
            fit_translator(method, load_pairs(train, direction), load_pairs(val, direction),
                           out / "translators" / direction / method, params=params,
                           recipe=Recipe(epochs=1, accelerator="cpu", logger="none"),
                           image_encoder=train.image_encoder, text_encoder=train.text_encoder,
                           progress=False)
    for condition in ("image", "text"):
        fit_image_decoder(train, val, out / "e2e" / f"vae_{condition}",
                          ImageDecoderConfig(condition=condition, **TINY_VAE),
                          accelerator="cpu", progress=False)
    for name, options in (("clipcap", {"mode": "clipcap"}),
                          ("capdec", {"mode": "capdec", "text_input": "set-mean"})):
        fit_caption_decoder(train, val, out / "e2e" / name,
                            CaptionDecoderConfig(**options, **TINY_CAPTION),
                            accelerator="cpu", progress=False)
    return out


@pytest.fixture(scope="module")
def client(folder: Path) -> Iterator[TestClient]:
    app = create_app(folder, ServeConfig(limits=LIMITS))
    with TestClient(app) as client:
        yield client


def png(size: tuple[int, int] = (64, 64), colour: tuple[int, int, int] = (200, 30, 30),
        format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=format)
    return buffer.getvalue()


def error(response: Any, status: int, *fragments: str) -> dict[str, Any]:
    """The response must be a JSON error with ``status`` whose message holds ``fragments``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and isinstance(body["error"], str), body
    for fragment in fragments:
        assert fragment in body["error"], (fragment, body["error"])
    return body


def upload(data: bytes, name: str = "query.png", kind: str = "image/png") -> dict[str, Any]:
    return {"image": (name, data, kind)}


def world_image(folder: Path) -> Path:
    return sorted((folder / "world" / "val" / "images").glob("*.png"))[0]


# --- what is loaded ------------------------------------------------------------------------


def test_health_models_page_and_docs(client: TestClient, folder: Path) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["in_flight"] == 0
    assert health["loaded"] == {"encoders": 1, "translators": 4, "decoders": 4, "indexes": 2}
    models = client.get("/models").json()
    val = open_store(folder / "store", "val")
    assert [(e["spec"], e["dim"]) for e in models["encoders"]] == [(val.image_encoder, 16)]
    translators = {t["name"]: t for t in models["translators"]}
    assert set(translators) == {f"{d}/{m}" for d in DIRECTIONS for m in ("ced", "ridge")}
    assert translators["text2image/ced"]["stochastic"] and translators["text2image/ced"]["default"]
    assert not translators["image2text/ridge"]["default"]
    assert {(d["name"], d["kind"], d["condition"]) for d in models["decoders"]} == {
        ("vae_image", "image", "image"), ("vae_text", "image", "text"),
        ("clipcap", "caption", "image"), ("capdec", "caption", "text")}
    sizes = {i["name"]: (i["modality"], i["size"]) for i in models["indexes"]}
    assert sizes == {"val-image": ("image", val.n_images), "val-text": ("text", val.n_captions)}
    assert models["limits"]["max_k"] == LIMITS.max_k
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="prompt"' in page.text and 'id="upload"' in page.text
    assert "swagger" in client.get("/docs").text.lower()
    spec = client.get("/openapi.json").json()
    assert {"/health", "/models", "/translate", "/search", "/generate", "/caption",
            "/images/{image_id}"} <= set(spec["paths"])
    assert set(spec["paths"]["/caption"]["post"]["requestBody"]["content"]) == {
        "multipart/form-data"}


# --- the endpoints give what the library gives ---------------------------------------------


def test_translate_text_and_image_as_the_library_does(client: TestClient, folder: Path,
                                                      clip_encoder: Any) -> None:
    text = "a red circle"
    r = client.post("/translate", json={"text": text, "translator": "text2image/ridge", "n": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["direction"], body["n"], body["dim"]) == ("text2image", 2, 16)
    ridge = Translator.load(folder / "translators" / "text2image" / "ridge")
    expected = ridge.translate(clip_encoder.encode_texts([text]))
    got = torch.tensor(body["embeddings"])
    assert got.shape == (2, 16)
    torch.testing.assert_close(got, expected.repeat(2, 1), atol=1e-5, rtol=1e-4)
    assert set(body["timings_ms"]) == {"encode", "translate"}
    image = world_image(folder)
    r = client.post("/translate", files=upload(image.read_bytes()),
                    data={"translator": "image2text/ridge"})
    assert r.status_code == 200, r.text
    i2t = Translator.load(folder / "translators" / "image2text" / "ridge")
    with Image.open(image) as im:
        expected = i2t.translate(clip_encoder.encode_images([im.convert("RGB")]))
    torch.testing.assert_close(torch.tensor(r.json()["embeddings"]), expected, atol=1e-5,
                               rtol=1e-4)
    assert r.json()["query"] == "query.png"


def test_stochastic_translation_follows_its_seed(client: TestClient) -> None:
    def draw(seed: int) -> np.ndarray:
        r = client.post("/translate", json={"text": "a blue square", "mode": "sample", "n": 3,
                                            "seed": seed, "steps": 2})
        assert r.status_code == 200, r.text
        assert r.json()["translator"] == "text2image/ced"  # the default
        return np.array(r.json()["embeddings"])

    first = draw(0)
    assert not np.allclose(first[0], first[1])  # n draws, not one repeated
    np.testing.assert_allclose(draw(0), first, rtol=1e-5, atol=1e-6)
    assert not np.allclose(draw(1), first)
    np.testing.assert_allclose(draw(1)[0], first[1], rtol=1e-5, atol=1e-6)  # seed + j


def test_requests_sharing_a_translator_call_get_what_they_get_alone(folder: Path,
                                                                    clip_encoder: Any) -> None:
    from modtrans.serve.inputs import Draw
    from modtrans.serve.service import _translate
    from modtrans.translators.samplers import SamplerOptions

    ced = Translator.load(folder / "translators" / "text2image" / "ced")
    c = clip_encoder.encode_texts(["a red circle", "two blue stars"])
    items = [(c[:1].repeat(2, 1), Draw(mode="sample", seed=4)),
             (c[1:], Draw(mode="sample", seed=9))]
    together = _translate(ced, items)
    for (rows, draw), got in zip(items, together, strict=True):
        (alone,) = _translate(ced, [(rows, draw)])
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
    library = ced.translate(c[1:], mode="sample", seed=9, sampling=SamplerOptions())
    torch.testing.assert_close(together[1], library, atol=1e-5, rtol=1e-5)


def test_search_raw_and_translated_as_the_library_does(client: TestClient, folder: Path
                                                       ) -> None:
    gallery = store_gallery(open_store(folder / "store", "val"), "image")
    ridge = Translator.load(folder / "translators" / "text2image" / "ridge")
    for translator in (None, ridge):
        pipeline = Search(gallery, translator)
        modality, queries, labels = pipeline.encode(["a green ring"])
        (expected,) = pipeline(modality, queries, labels, 5)
        name = None if translator is None else "text2image/ridge"
        r = client.post("/search", json={"text": "a green ring", "k": 5, "translator": name})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["index"], body["translator"], body["modality"]) == ("val-image", name,
                                                                         "text")
        assert [h["row"] for h in body["results"]] == [h["row"] for h in expected["results"]]
        assert [h["score"] for h in body["results"]] == pytest.approx(
            [h["score"] for h in expected["results"]], abs=1e-4)
        assert set(body["timings_ms"]) == ({"encode", "search"} if name is None
                                           else {"encode", "translate", "search"})
    hit = body["results"][0]
    assert hit["image_url"] == f"/images/val-{hit['row']}" and len(hit["captions"]) == 5
    served = client.get(hit["image_url"])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    paths = open_store(folder / "store", "val").image_metadata().column("image_path")
    assert served.content == Path(paths[hit["row"]].as_py()).read_bytes()


def test_search_with_an_image_finds_captions(client: TestClient, folder: Path) -> None:
    image = world_image(folder)
    r = client.post("/search", files=upload(image.read_bytes(), image.name), data={"k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["modality"], body["index"], body["query"]) == ("image", "val-text", image.name)
    assert len(body["results"]) == 3
    captions = open_store(folder / "store", "val").text_metadata().column("caption").to_pylist()
    for hit in body["results"]:
        assert hit["caption"] == captions[hit["row"]]
        assert client.get(hit["image_url"]).status_code == 200
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_generate_through_a_translator_and_directly(client: TestClient, folder: Path) -> None:
    from modtrans.pipelines import TextToImage

    r = client.post("/generate", json={"prompt": "a red circle", "translator":
                                       "text2image/ridge", "n": 2, "seed": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["decoder"], body["translator"], body["scores"]) == ("vae_image",
                                                                     "text2image/ridge", None)
    images = [np.asarray(Image.open(io.BytesIO(
        __import__("base64").b64decode(src.split(",", 1)[1])))) for src in body["images"]]
    assert [im.shape for im in images] == [(64, 64, 3)] * 2
    pipeline = TextToImage.load(folder / "e2e" / "vae_image",
                                folder / "translators" / "text2image" / "ridge")
    expected, _ = pipeline(["a red circle"], n=2, seed=3)
    assert np.abs(np.stack(images).astype(int) - expected.numpy().astype(int)).max() <= 1
    both, _ = pipeline(["a red circle", "a blue star"], n=2, seed=[3, 8])  # one seed a prompt
    torch.testing.assert_close(both[:2], expected, atol=1, rtol=0)
    with pytest.raises(ValueError, match="one per prompt: 1 seeds for 2 prompts"):
        pipeline(["a red circle", "a blue star"], seed=[3])
    assert set(body["timings_ms"]) == {"encode", "translate", "decode"}
    reranked = client.post("/generate", json={"prompt": "a red circle", "n": 1,
                                              "candidates": 2}).json()
    assert reranked["translator"] == "text2image/ced" and len(reranked["scores"]) == 1
    direct = client.post("/generate", json={"prompt": "a red circle", "translator": "none",
                                            "n": 1}).json()
    assert (direct["decoder"], direct["translator"]) == ("vae_text", None)
    assert set(direct["timings_ms"]) == {"encode", "decode"}


def test_caption_directly_and_through_a_translator(client: TestClient, folder: Path) -> None:
    from modtrans.pipelines import ImageToText

    image = world_image(folder)
    r = client.post("/caption", files=upload(image.read_bytes()))
    assert r.status_code == 200, r.text
    routes = {(c["decoder"], c["translator"]): c["caption"] for c in r.json()["captions"]}
    assert set(routes) == {("clipcap", None), ("capdec", "image2text/ced")}
    assert all(isinstance(c, str) and c for c in routes.values())
    r = client.post("/caption", files=upload(image.read_bytes()),
                    data={"decoder": "capdec", "translator": "image2text/ridge", "beams": "2"})
    assert r.status_code == 200, r.text
    (got,) = r.json()["captions"]
    expected = ImageToText.load(folder / "e2e" / "capdec",
                                folder / "translators" / "image2text" / "ridge")([image], beams=2)
    assert got == {"decoder": "capdec", "translator": "image2text/ridge", "caption": expected[0]}
    clipcap = client.post("/caption", files=upload(image.read_bytes()),
                          data={"decoder": "clipcap"}).json()
    assert [c["decoder"] for c in clipcap["captions"]] == ["clipcap"]


# --- bad requests ----------------------------------------------------------------------------

NOISE = np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


BAD = [  # (endpoint, request keywords, status, message fragments)
    ("/search", {"content": b"{not json", "headers": {"content-type": "application/json"}},
     400, ["not valid JSON"]),
    ("/search", {"json": ["a red circle"]}, 400, ["JSON object"]),
    ("/search", {"content": b"a red circle", "headers": {"content-type": "text/plain"}},
     415, ["not text/plain"]),
    ("/search", {"json": {"text": "x", "kk": 3}}, 422, ["unknown field 'kk'"]),
    ("/search", {"json": {"text": "x", "k": 0}}, 422, ["k must be between 1 and 20"]),
    ("/search", {"json": {"text": "x", "k": 21}}, 422, ["k must be between 1 and 20, got 21"]),
    ("/search", {"json": {"text": "x", "k": "many"}}, 422, ["k: Input should be a valid int"]),
    ("/search", {"json": {"text": "x" * 81}}, 422, ["81 characters; the limit is 80"]),
    ("/search", {"json": {"text": "   "}}, 422, ["text is empty"]),
    ("/search", {"json": {}}, 422, ["text is empty"]),
    ("/search", {"files": upload(b""), "data": {"text": "x"}}, 422, ["the image file is empty"]),
    ("/search", {"files": upload(_png(NOISE[:8, :8])), "data": {"text": "x"}}, 422,
     ["a text or an image, not both"]),
    ("/search", {"json": {"text": "x", "index": "nope"}}, 404, ["no index 'nope'", "val-text"]),
    ("/search", {"json": {"text": "x", "translator": "nope"}}, 404, ["no translator 'nope'"]),
    ("/search", {"json": {"text": "x", "translator": "image2text/ridge", "index": "val-text"}},
     422, ["the queries are text"]),
    ("/search", {"json": {"text": "x", "translator": "text2image/ridge", "index": "val-text"}},
     422, ["holds text embeddings"]),
    ("/translate", {"json": {"text": "x", "mode": "bogus"}}, 422, ["mode:"]),
    ("/translate", {"json": {"text": "x", "n": 5}}, 422, ["n must be between 1 and 4"]),
    ("/translate", {"json": {"text": "x", "n_samples": 0}}, 422, ["n_samples must be between"]),
    ("/translate", {"json": {"text": "x", "seed": 2**64}}, 422, ["seed must be between 0"]),
    ("/translate", {"json": {"text": "x", "steps": 9}}, 422, ["steps must be between 1 and 8"]),
    ("/translate", {"json": {"text": "x", "guidance": -1}}, 422, ["guidance must be between"]),
    ("/translate", {"json": {"text": "x", "sampler": "nope"}}, 422, ["unknown sampler 'nope'"]),
    ("/translate", {"json": {"text": "x", "translator": "none"}}, 422, ["needs a translator"]),
    ("/translate", {"json": {"text": "x", "translator": "image2text/ced"}}, 422,
     ["translates image2text", "needs a text2image"]),
    ("/generate", {"json": {"n": 1}}, 422, ["prompt: required"]),
    ("/generate", {"json": {"prompt": "x", "candidates": 3}}, 422, ["candidates must be"]),
    ("/generate", {"json": {"prompt": "x", "decoder": "nope"}}, 404, ["no image decoder 'nope'"]),
    ("/generate", {"json": {"prompt": "x", "translator": "none", "decoder": "vae_image"}}, 422,
     ["give a text2image translator"]),
    ("/generate", {"json": {"prompt": "x", "translator": "text2image/ced",
                            "decoder": "vae_text"}}, 422, ["a translator feeds a decoder"]),
    ("/generate", {"files": upload(_png(NOISE[:8, :8])), "data": {"prompt": "x"}}, 415,
     ["must be application/json"]),
    ("/caption", {"json": {"decoder": "clipcap"}}, 415, ["multipart/form-data"]),
    ("/caption", {"files": {"other": ("a.txt", b"x", "text/plain")}}, 422, ["field 'other'"]),
    ("/caption", {"data": {"beams": "2"}, "files": {}}, 415, ["multipart/form-data"]),
    ("/caption", {"files": upload(b"hello, not an image", "x.png", "application/octet-stream")},
     415, ["not an image PIL can read"]),
    ("/caption", {"files": upload(b"hello", "x.txt", "text/plain")}, 415, ["is text/plain"]),
    ("/caption", {"files": upload(_png(NOISE))}, 413, ["larger than the limit of 50000"]),
    ("/caption", {"files": upload(png((200, 200)))}, 413, ["200×200 = 40000 pixels",
                                                          "limit is 16384"]),
    ("/caption", {"files": upload(_png(NOISE[:100, :100])[:5000])}, 400, ["could not be decoded",
                                                                      "truncated"]),
    ("/caption", {"files": upload(png(format="TIFF"), "x.tif", "image/tiff")}, 415,
     ["TIFF are not accepted"]),
    ("/caption", {"files": upload(png()), "data": {"beams": "4"}}, 422,
     ["beams must be between 1 and 3"]),
    ("/caption", {"files": upload(png()), "data": {"decoder": "capdec", "translator": "none"}},
     422, ["give an image2text translator"]),
    ("/caption", {"files": upload(png()), "data": {"decoder": "clipcap",
                                                   "translator": "image2text/ridge"}},
     422, ["a translator feeds a caption decoder trained on text"]),
]


@pytest.mark.parametrize(("endpoint", "request_kw", "status", "fragments"), BAD,
                         ids=[f"{e}-{s}-{f[0][:24]}" for e, _, s, f in BAD])
def test_bad_requests_get_a_4xx_that_says_why(client: TestClient, endpoint: str,
                                              request_kw: dict[str, Any], status: int,
                                              fragments: list[str]) -> None:
    error(client.post(endpoint, **request_kw), status, *fragments)
    assert client.get("/health").json()["in_flight"] == 0  # every place was given back


def test_bodies_over_the_limit_and_unknown_routes(client: TestClient) -> None:
    big = b"x" * (LIMITS.max_image_bytes + 70_000)
    error(client.post("/caption", content=big, headers={"content-type": "multipart/form-data"}),
          413, "the body has", "the limit is")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        for _ in range(20):
            yield b"{" * 10_000

    error(client.post("/search", content=chunks(), headers={"content-type": "application/json"}),
          413, "over the limit")
    for bad_id in ("val-99999", "nope-1", "val-abc", "..%2F..%2Fetc%2Fpasswd"):
        error(client.get(f"/images/{bad_id}"), 404)
    error(client.get("/nowhere"), 404, "no such endpoint /nowhere")
    error(client.get("/search"), 405, "GET is not allowed on /search")


# --- robustness ------------------------------------------------------------------------------


def test_a_failing_request_leaves_the_service_running(client: TestClient,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model = client.app.state.service.models.translators["text2image/ridge"]

    def broken(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise RuntimeError("the weights melted")

    monkeypatch.setattr(model, "translate", broken)
    error(client.post("/search", json={"text": "x", "translator": "text2image/ridge"}), 500,
          "internal error (RuntimeError: the weights melted)", "runs on")
    monkeypatch.undo()
    assert client.get("/health").json()["status"] == "ok"
    r = client.post("/search", json={"text": "x", "translator": "text2image/ridge"})
    assert r.status_code == 200, r.text


def _blocking(monkeypatch: pytest.MonkeyPatch, model: Translator) -> threading.Event:
    """Make ``model.translate`` wait (in the model thread) until the returned event is set."""
    release = threading.Event()
    real = model.translate

    def slow(*args: Any, **kwargs: Any) -> torch.Tensor:
        assert release.wait(30), "never released"
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "translate", slow)
    return release


def _wait_for(condition: Any, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_full_queue_answers_503_with_retry_after(client: TestClient,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    models = client.app.state.service.models
    app = create_app(models, ServeConfig(limits=LIMITS, batching=Batching(
        max_queue=1, retry_after_s=2)))
    release = _blocking(monkeypatch, models.translators["text2image/ridge"])
    with TestClient(app) as busy, ThreadPoolExecutor(1) as pool:
        first = pool.submit(busy.post, "/translate",
                            json={"text": "x", "translator": "text2image/ridge"})
        _wait_for(lambda: app.state.service.admission.active == 1, "the first request")
        refused = busy.post("/search", json={"text": "x"})
        error(refused, 503, "busy", "retry in 2 s")
        assert refused.headers["retry-after"] == "2"
        release.set()
        assert first.result(30).status_code == 200
        assert busy.post("/search", json={"text": "x"}).status_code == 200
        metrics = busy.get("/metrics").text
        assert 'modtrans_rejected_total{endpoint="/search"} 1.0' in metrics


def test_concurrent_requests_are_batched_with_the_same_answers(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests that arrive while the model is busy are merged into one call; each still
    gets what it would get alone (a deterministic translator: bit for bit)."""
    texts = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square")]
    alone = {t: client.post("/search", json={"text": t, "translator": "text2image/ridge",
                                             "k": 3}).json()["results"] for t in texts}
    service = client.app.state.service
    model = service.models.translators["text2image/ridge"]
    calls: list[int] = []
    real = model.translate
    monkeypatch.setattr(model, "translate",
                        lambda c, **kw: calls.append(len(c)) or real(c, **kw))
    release = _blocking(monkeypatch, service.models.translators["image2text/ridge"])
    with ThreadPoolExecutor(len(texts) + 1) as pool:
        # a request holding the model thread, so the others queue up behind it
        hold = pool.submit(client.post, "/translate", files=upload(png()),
                           data={"translator": "image2text/ridge"})
        _wait_for(lambda: service.admission.active == 1, "the holding request")
        futures = {t: pool.submit(client.post, "/search", json={
            "text": t, "translator": "text2image/ridge", "k": 3}) for t in texts}
        _wait_for(lambda: service.admission.active == len(texts) + 1, "the queued requests")
        release.set()
        assert hold.result(30).status_code == 200
        together = {t: f.result(30).json()["results"] for t, f in futures.items()}
    assert together == alone
    assert calls and max(calls) > 1 and sum(calls) == len(texts), calls
    metrics = client.get("/metrics").text
    assert 'modtrans_batch_size_bucket{le="1.0",op="translate"}' in metrics


def test_metrics_count_requests_and_stages(client: TestClient) -> None:
    client.post("/search", json={"text": "a red circle"})
    client.post("/search", json={"text": "x", "k": 0})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()

    def value(prefix: str) -> float:
        (line,) = [line for line in lines if line.startswith(prefix)]
        return float(line.rsplit(" ", 1)[1])

    assert value('modtrans_requests_total{endpoint="/search",status="200"}') >= 1
    assert value('modtrans_requests_total{endpoint="/search",status="422"}') >= 1
    assert value('modtrans_request_seconds_count{endpoint="/search"}') >= 2
    for stage in ("encode", "search"):
        assert value(f'modtrans_stage_seconds_count{{stage="{stage}"}}') >= 1


def test_the_batcher_merges_waiting_items_and_never_delays_a_lone_one() -> None:
    async def scenario() -> tuple[list[int], list[int], float, Any]:
        sizes: list[int] = []
        busy = [1]

        def double(items: list[int]) -> list[int]:
            assert torch.is_inference_mode_enabled()
            sizes.append(len(items))
            if 13 in items:
                raise ValueError("13 is unlucky")
            return [2 * i for i in items]

        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher("double", double, executor, max_batch=4, max_wait=0.5,
                                   busy=lambda: busy[0])
            start = time.perf_counter()
            assert await batcher(1) == 2
            lone = time.perf_counter() - start
            busy[0] = 6
            results = await asyncio.gather(*(batcher(i) for i in range(6)))
            busy[0] = 3
            failed = await asyncio.gather(batcher(12), batcher(13), batcher(14),
                                          return_exceptions=True)
            await batcher.close()
        return sizes, results, lone, failed

    sizes, results, lone, failed = asyncio.run(scenario())
    assert results == [0, 2, 4, 6, 8, 10]
    assert lone < 0.25  # a lone request does not wait for company
    assert sizes[:3] == [1, 4, 2]  # max_batch 4, then the rest
    assert failed[0] == 24 and failed[2] == 28 and isinstance(failed[1], ValueError)
    assert sizes[3:] == [3, 1, 1, 1]  # the failed batch retried one by one


def test_admission_refuses_past_its_bound() -> None:
    admission = Admission(2, 5, "requests")
    with admission.enter(), admission.enter(), pytest.raises(
            Overloaded, match="2 requests in flight") as refused, admission.enter():
        pass
    assert refused.value.retry_after == 5
    assert admission.active == 0


# --- sources ---------------------------------------------------------------------------------


def test_a_yaml_file_names_the_models_and_the_limits(
        folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "serve.yaml"
    t2i = folder / "translators" / "text2image"
    spec.write_text(json.dumps({
        "translators": {"ridge": str(t2i / "ridge"), "ced": str(t2i / "ced")},
        "decoders": {"vae": str(folder / "e2e" / "vae_image")},
        "indexes": {"images": {"store": str(folder / "store"), "split": "val",
                               "modality": "image"}},
        "defaults": {"text2image": "ridge"},
        "limits": {"max_k": 3},
    }))
    with TestClient(create_app(spec)) as yaml_client:
        models = yaml_client.get("/models").json()
        assert [t["name"] for t in models["translators"] if t["default"]] == ["ridge"]
        assert [d["name"] for d in models["decoders"]] == ["vae"]
        assert [(i["name"], i["modality"]) for i in models["indexes"]] == [("images", "image")]
        error(yaml_client.post("/search", json={"text": "x", "k": 4}), 422, "between 1 and 3")
        r = yaml_client.post("/generate", json={"prompt": "a red circle", "n": 1})
        assert r.status_code == 200 and r.json()["translator"] == "ridge"
        error(yaml_client.post("/caption", files=upload(png())), 404, "no caption decoder")
    spec.write_text("translators: {x: " + str(t2i / "ridge") + "}\nextra: 1\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['extra'\]"):
        create_app(spec)
    spec.write_text("decoders: {x: " + str(t2i / "ridge") + "}\n")
    with pytest.raises(ValueError, match="holds no image or caption decoder"):
        create_app(spec)
    spec.write_text("translators: {ridge: " + str(t2i / "ridge") + "}\n"
                    "defaults: {text2image: ced}\n")
    with pytest.raises(ValueError, match="no loaded text2image translator"):
        create_app(spec)
    options = tmp_path / "options.yaml"
    options.write_text("limit: {max_k: 3}\n")
    assert main(["serve", str(folder), "--config", str(options)]) == 2
    assert "unknown option(s) ['limit']" in capsys.readouterr().err
    options.write_text("limits: {max_kk: 3}\n")
    assert main(["serve", str(folder), "--config", str(options)]) == 2
    assert "unknown option(s) ['max_kk']" in capsys.readouterr().err


def test_a_demo_folder_without_decoders_searches_and_says_how_to_generate(
        folder: Path, tmp_path: Path) -> None:
    """What `make demo` leaves (no end-to-end stage): search works, generation says what to
    run."""
    plain = tmp_path / "demo"
    plain.mkdir()
    for name in ("world", "store", "translators"):
        (plain / name).symlink_to(folder / name)
    with TestClient(create_app(plain)) as plain_client:
        assert plain_client.get("/health").json()["loaded"]["decoders"] == 0
        assert plain_client.post("/search", json={"text": "a red circle"}).status_code == 200
        error(plain_client.post("/generate", json={"prompt": "a red circle"}), 404,
              "no image decoder", "modtrans e2e")
        error(plain_client.post("/caption", files=upload(png())), 404, "no caption decoder",
              "modtrans e2e")


def test_a_folder_that_is_no_demo_folder(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FileNotFoundError, match="modtrans demo --out"):
        create_app(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="is not a demo folder"):
        create_app(tmp_path)
    assert main(["serve", str(tmp_path)]) == 2
    assert "is not a demo folder" in capsys.readouterr().err


# --- the real server and the page in a browser ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def server(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``modtrans serve FOLDER`` in a process of its own, on a free loopback port."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modtrans", "serve", str(folder), "--port", str(port),
             "--graceful-s", "20"], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if json.load(r)["status"] == "ok":
                    break
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    yield Server(url, process, log)
    if process.poll() is None:
        process.kill()
        process.wait(10)


def test_the_page_in_a_browser(server: Server, folder: Path, tmp_path: Path) -> None:
    """Chromium types a prompt and sees retrieved and generated images; uploads an image and
    sees its captions and nearest captions."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_function(
                "document.getElementById('loaded').textContent.includes('translators')")
            assert page.locator("#translator").input_value() == "text2image/ced"
            page.fill("#prompt", "a red circle")
            page.select_option("#mode", "sample")
            page.fill("#candidates", "2")
            page.click("#go")
            for grid, count in (("#retrieved", 8), ("#generated", 4)):
                page.wait_for_function(
                    f"[...document.querySelectorAll('{grid} img')].length === {count} && "
                    f"[...document.querySelectorAll('{grid} img')].every("
                    "i => i.complete && i.naturalWidth === 64)", timeout=30_000)
            assert "ms" in page.inner_text("#retrieved-latency")
            assert "decode" in page.inner_text("#generated-latency")
            page.set_input_files("#upload", str(world_image(folder)))
            page.wait_for_selector("#captions .caption", timeout=30_000)
            page.wait_for_function("document.querySelectorAll('#nearest li').length === 5",
                                   timeout=30_000)
            captions = page.locator("#captions .caption").all_inner_texts()
            assert len(captions) == 2 and all(c.strip() for c in captions)
            assert "encode" in page.inner_text("#captions-latency")
            assert not problems, problems
        finally:
            browser.close()


def test_the_server_finishes_requests_in_flight_when_stopped(server: Server) -> None:
    """SIGTERM while a generation runs: it is answered, then the server stops cleanly."""
    body = json.dumps({"prompt": "a red circle", "n": 16, "candidates": 8}).encode()

    def generate() -> int:
        request = urllib.request.Request(f"{server.url}/generate", body,
                                         {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            return len(json.load(r)["images"])

    def in_flight() -> int:
        with urllib.request.urlopen(f"{server.url}/health", timeout=5) as r:
            return json.load(r)["in_flight"]

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(generate)
        _wait_for(lambda: in_flight() > 0, "the generation to start")
        server.process.send_signal(signal.SIGTERM)
        assert answer.result(120) == 16
    assert server.process.wait(60) in (0, -signal.SIGTERM)
    log = server.log.read_text()
    assert "serve: stopped" in log and "Traceback" not in log, log
