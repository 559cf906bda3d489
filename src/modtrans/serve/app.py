"""The FastAPI application: routes, JSON errors, metrics, the body limit and the page.

Every answer that is not a success is JSON ``{"error": message, "status": code}``: a 4xx
says what was wrong with the request, a 503 (with Retry-After) that the queue is full, a 500
that something failed inside; the failure is logged and the server keeps serving.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import modtrans
from modtrans.serve.batching import Overloaded
from modtrans.serve.config import ServeConfig, service_options
from modtrans.serve.inputs import (
    ApiError,
    CaptionParams,
    GenerateParams,
    Params,
    SearchParams,
    TranslateParams,
    read_params,
)
from modtrans.serve.models import Models, load_models
from modtrans.serve.service import Service

logger = logging.getLogger(__name__)

#: Bytes a multipart body may carry beyond the image: its boundaries and form fields.
FORM_SLACK = 64 * 1024

Endpoint = Callable[..., Awaitable[Any]]


def create_app(source: str | Path | Models, config: ServeConfig | None = None) -> FastAPI:
    """The service of a demo folder or serve YAML file (or of models already loaded).

    Args:
        source: a demo folder, a serve YAML file (whose ``limits:``/``batching:`` keys apply
            unless ``config`` is given), or :class:`~modtrans.serve.models.Models`.
        config: limits, batching and index choices (default: the YAML's, else defaults).
    """
    if config is None:
        config = ServeConfig() if isinstance(source, Models) else service_options(source)
    models = source if isinstance(source, Models) else load_models(source, config)
    service = Service(models, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        logger.info("serve: ready (%s)", models.source)
        try:
            yield
        finally:
            await service.stop()
            logger.info("serve: stopped")

    app = FastAPI(title="modtrans", lifespan=lifespan, version=modtrans.__version__,
                  description="Translate, search, generate and caption with the models of a "
                  "modtrans demo folder. Errors are JSON `{error, status}`.")
    app.state.service = service
    app.add_middleware(Guard, service=service,
                       max_body=config.limits.max_image_bytes + FORM_SLACK)
    _errors(app)
    _routes(app, service)
    return app


def error_response(status: int, message: str, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    """The service's one error shape."""
    return JSONResponse({"error": message, "status": status}, status_code=status,
                        headers=headers)


def _errors(app: FastAPI) -> None:
    """Answer every error as JSON."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.message, e.headers)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, e: Overloaded) -> JSONResponse:
        request.app.state.service.metrics.rejected.labels(request.url.path).inc()
        return error_response(503, str(e), {"Retry-After": str(e.retry_after)})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = {404: f"no such endpoint {request.url.path}; see /docs",
                   405: f"{request.method} is not allowed on {request.url.path}; see /docs"
                   }.get(e.status_code, str(e.detail))
        return error_response(e.status_code, message, getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        return error_response(422, "; ".join(parts))


def guarded(fn: Endpoint) -> Endpoint:
    """An endpoint whose unexpected exceptions become a logged 500, never a crash."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except (ApiError, Overloaded):
            raise
        except Exception as e:
            logger.exception("serve: %s failed", fn.__name__)
            raise ApiError(500, f"internal error ({type(e).__name__}: {e}); the request "
                           "failed, the service runs on") from e

    return wrapper


def _body(params: type[Params], image: str) -> dict[str, Any]:
    """The OpenAPI description of a body read by :func:`read_params`."""
    schema = params.model_json_schema()
    content: dict[str, Any] = {}
    if image != "required":
        content["application/json"] = {"schema": schema}
    if image != "none":
        form = {**schema, "properties": {**schema["properties"],
                                         "image": {"type": "string", "format": "binary"}}}
        content["multipart/form-data"] = {"schema": form}
    return {"requestBody": {"required": True, "content": content}}


def _endpoint(service: Service, params: type[Params], image: str,
              handler: Callable[..., Awaitable[dict[str, Any]]]) -> Endpoint:
    """A POST endpoint: admitted (or 503), its body read as ``params`` (with an image when
    ``image`` allows one), answered by ``handler``."""

    @guarded
    async def endpoint(request: Request) -> JSONResponse:
        with service.admission.enter():
            fields, upload, name = await read_params(request, params, service.limits,
                                                     image=image)  # type: ignore[arg-type]
            # a response of our own: FastAPI's encoder would walk every float again
            return JSONResponse(await handler(fields, upload, name))

    endpoint.__name__ = handler.__name__
    return endpoint


def _routes(app: FastAPI, service: Service) -> None:
    limits = service.limits
    page = resources.files("modtrans.serve").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: ``ok``, uptime, requests in flight and how many models are loaded."""
        return service.health()

    @app.get("/models")
    async def models() -> dict[str, Any]:
        """What is loaded: encoders (spec, dim), translators (direction, method), decoders,
        indexes (modality, size), with the limits requests must keep to."""
        return {**service.models.describe(), "limits": limits.to_dict()}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(service.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    posts: list[tuple[str, type[Params], str, Callable[..., Awaitable[dict[str, Any]]], str]] = [
        ("/translate", TranslateParams, "optional", service.translate_query,
         "A text (JSON `text`) or an image (multipart `image`) translated into the other "
         "space: `n` rows, drawn with `mode`, `n_samples`, `sampler`, `steps`, `guidance`."),
        ("/search", SearchParams, "optional", service.search,
         "The top `k` items of an index for a text or an image, raw or through a "
         "translator, with scores, captions and image URLs."),
        ("/generate", GenerateParams, "none", service.generate,
         "`n` PNG images (data URLs) of a prompt through a translator (`none`: the direct "
         "route) and an image decoder, each the best of `candidates`."),
        ("/caption", CaptionParams, "required", service.caption,
         "Captions of an uploaded image (multipart `image`): ClipCap directly, CapDec "
         "through an image2text translator."),
    ]
    for path, params, image, handler, description in posts:
        app.add_api_route(path, _endpoint(service, params, image, handler), methods=["POST"],
                          description=description, openapi_extra=_body(params, image),
                          name=path.strip("/"))

    @app.get("/images/{image_id}", response_class=FileResponse)
    async def image(image_id: str) -> FileResponse:
        """A store image by the id search results give (``<store>-<row>``)."""
        return FileResponse(service.image_file(image_id),
                            headers={"Cache-Control": "public, max-age=3600"})


class Guard:
    """ASGI middleware: refuses a body over ``max_body`` bytes (413, by its Content-Length
    or while it streams), counts requests in flight and records each one's status and
    latency by endpoint."""

    def __init__(self, app: ASGIApp, service: Service, max_body: int) -> None:
        self.app, self.service, self.max_body = app, service, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await error_response(413, f"the body has {int(length)} bytes; the limit is "
                                 f"{self.max_body}")(scope, receive, send)
            return
        metrics, status, seen = self.service.metrics, [500], [0]

        async def limited() -> Message:
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > self.max_body:
                raise ApiError(413, f"the body is over the limit of {self.max_body} bytes")
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        start = time.perf_counter()
        metrics.in_flight.inc()
        try:
            await self.app(scope, limited, sending)
        finally:
            metrics.in_flight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            metrics.requests.labels(endpoint, str(status[0])).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
