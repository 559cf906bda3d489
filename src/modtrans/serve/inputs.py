"""Reading requests: the JSON or multipart body, its fields checked against the limits, an
uploaded image checked before and while it is decoded. Every problem is an :class:`ApiError`
whose message says what was wrong."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterator
from typing import Any, Literal, TypeVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from modtrans.serve.config import Limits
from modtrans.translators.samplers import SamplerOptions

#: Image formats accepted in an upload (what PIL reports once it has read the header).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
#: Form fields a multipart body may carry besides the image (a bound on the parser's work).
MAX_FORM_FIELDS = 32
#: The largest seed a torch generator takes.
MAX_SEED = 2**63 - 1

P = TypeVar("P", bound="Params")


class ApiError(Exception):
    """A request the service answers with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@contextlib.contextmanager
def bad_request(status: int = 422) -> Iterator[None]:
    """Turn the ValueError of a library check (a translator that does not fit a decoder, an
    unknown sampler) into a 4xx that carries its message."""
    try:
        yield
    except ValueError as e:
        raise ApiError(status, str(e)) from e


class Draw(BaseModel):
    """How a translator draws. Concurrent requests are translated in one call when these
    agree but for the seed (a deterministic translator ignores them, so all its requests
    share calls); each row draws from its own seed, so sharing a call changes no answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["sample", "mean", "best-of-k"] = "mean"
    n_samples: int = 8
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    eta: float | None = None

    @property
    def sampling(self) -> SamplerOptions:
        """The sampler settings (None: the translator's saved one)."""
        return SamplerOptions(sampler=self.sampler, steps=self.steps, guidance=self.guidance,
                              eta=self.eta)


class Params(Draw):
    """Fields every query shares; unknown fields are refused (a typo is not ignored).

    ``translator`` names a loaded translator; ``"none"`` asks for none (raw search, the
    direct generation route, ClipCap only), and so does leaving it out of a search.
    """

    model_config = ConfigDict(extra="forbid", frozen=False)

    translator: str | None = None

    def draw(self) -> Draw:
        """The fields that say how the translator draws."""
        return Draw.model_validate(self.model_dump(include=set(Draw.model_fields)))

    def check(self, limits: Limits) -> None:
        """Raise :class:`ApiError` (422) for a field outside the service's limits."""
        within("n_samples", self.n_samples, 1, limits.max_samples)
        within("seed", self.seed, 0, MAX_SEED)
        if self.steps is not None:
            within("steps", self.steps, 1, limits.max_steps)
        if self.guidance is not None:
            within("guidance", self.guidance, 0, limits.max_guidance)
        if self.eta is not None:
            within("eta", self.eta, 0, 1)
        with bad_request():
            self.draw().sampling  # noqa: B018  (SamplerOptions checks the sampler's name)


class TranslateParams(Params):
    """``POST /translate``: a text (JSON) or an image (multipart) and how to translate it."""

    text: str | None = None
    n: int = 1

    def check(self, limits: Limits) -> None:
        super().check(limits)
        within("n", self.n, 1, limits.max_n)


class SearchParams(Params):
    """``POST /search``: a text or an image, the index, the translator (none: raw) and k."""

    text: str | None = None
    index: str | None = None
    k: int = 10

    def check(self, limits: Limits) -> None:
        super().check(limits)
        within("k", self.k, 1, limits.max_k)


class GenerateParams(Params):
    """``POST /generate``: a prompt, the route (translator and image decoder), how many
    images, reranking candidates, and the decoder prior's steps and guidance."""

    prompt: str
    decoder: str | None = None
    mode: Literal["sample", "mean", "best-of-k"] = "sample"
    n: int = 4
    candidates: int = 1

    def check(self, limits: Limits) -> None:
        super().check(limits)
        within("n", self.n, 1, limits.max_n)
        within("candidates", self.candidates, 1, limits.max_candidates)


class CaptionParams(Params):
    """``POST /caption`` (multipart, with the image): the caption decoder (none: every one
    loaded), the translator feeding a CapDec decoder, and the beam width."""

    decoder: str | None = None
    beams: int = 3

    def check(self, limits: Limits) -> None:
        super().check(limits)
        within("beams", self.beams, 1, limits.max_beams)


def within(name: str, value: float, low: float, high: float) -> None:
    """ApiError 422 unless ``low ≤ value ≤ high``."""
    if not low <= value <= high:
        raise ApiError(422, f"{name} must be between {low} and {high}, got {value}")


def check_text(name: str, text: str | None, limits: Limits) -> str:
    """The text stripped; ApiError 422 when it is empty or longer than the limit."""
    text = (text or "").strip()
    if not text:
        raise ApiError(422, f"{name} is empty: give some text")
    if len(text) > limits.max_text_chars:
        raise ApiError(422, f"{name} has {len(text)} characters; the limit is "
                       f"{limits.max_text_chars}")
    return text


async def read_params(request: Request, model: type[P], limits: Limits, *,
                      image: Literal["required", "optional", "none"]
                      ) -> tuple[P, Image.Image | None, str | None]:
    """The request's fields as ``model`` (checked against ``limits``), and its image (with
    its file name) when the body is multipart.

    A JSON body (``application/json``) carries the fields; a ``multipart/form-data`` body
    carries them as form fields beside the image file in field ``image``.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload: UploadFile | None = None
    if kind == "application/json" and image != "required":
        fields = await _json_fields(request)
    elif kind == "multipart/form-data" and image != "none":
        fields, upload = await _form_fields(request)
    else:
        wanted = {"required": "multipart/form-data (the image in field 'image')",
                  "optional": "application/json, or multipart/form-data with an image",
                  "none": "application/json"}[image]
        raise ApiError(415, f"the body must be {wanted}, not {kind or 'untyped'}")
    try:
        params = model.model_validate(fields)
    except ValidationError as e:
        raise ApiError(422, validation_message(e)) from e
    params.check(limits)
    if upload is None:
        if image == "required":
            raise ApiError(422, "no image: upload it in form field 'image'")
        return params, None, None
    return params, await read_image(upload, limits), upload.filename or "upload"


async def _json_fields(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        fields = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e})") from e
    if not isinstance(fields, dict):
        raise ApiError(400, f"the body must be a JSON object of fields, got "
                       f"{type(fields).__name__}")
    return fields


async def _form_fields(request: Request) -> tuple[dict[str, Any], UploadFile | None]:
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except ApiError:
        raise
    except Exception as e:  # the multipart parser's own errors: malformed, too many parts
        detail = getattr(e, "detail", None) or str(e)
        raise ApiError(400, f"the multipart body could not be read ({detail})") from e
    fields: dict[str, Any] = {}
    upload = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != "image":
                raise ApiError(422, f"file field {key!r}: upload the image in field 'image'")
            upload = value
        elif value != "":  # an empty form field means "not given"
            fields[key] = value
    return fields, upload


async def read_image(upload: UploadFile, limits: Limits) -> Image.Image:
    """The uploaded image as RGB: its declared type, size in bytes, format and pixel count
    are checked before the pixels are decoded."""
    declared = (upload.content_type or "").lower()
    if declared and not (declared.startswith("image/") or declared == "application/octet-stream"):
        raise ApiError(415, f"the upload is {declared}, not an image")
    data = await upload.read(limits.max_image_bytes + 1)
    if len(data) > limits.max_image_bytes:
        raise ApiError(413, f"the image is larger than the limit of {limits.max_image_bytes} "
                       "bytes")
    if not data:
        raise ApiError(422, "the image file is empty")
    return decode_image(data, limits)


def decode_image(data: bytes, limits: Limits) -> Image.Image:
    """Decode image bytes as RGB; ApiError for a format that is not accepted, too many
    pixels (checked from the header, before decoding) or a damaged file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ApiError(413, f"the image has too many pixels ({e})") from e
        except OSError as e:  # PIL.UnidentifiedImageError included
            raise ApiError(415, f"the upload is not an image PIL can read ({e}); send one "
                           f"of {', '.join(IMAGE_FORMATS)}") from e
        if im.format not in IMAGE_FORMATS:
            raise ApiError(415, f"images in {im.format} are not accepted; send one of "
                           f"{', '.join(IMAGE_FORMATS)}")
        width, height = im.size
        if width * height > limits.max_pixels:
            raise ApiError(413, f"the image is {width}×{height} = {width * height} pixels; the "
                           f"limit is {limits.max_pixels}")
        try:
            return im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombWarning) as e:
            raise ApiError(400, f"the {im.format} image could not be decoded ({e}); it may be "
                           "truncated") from e


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line per bad field: ``k: Input should be a valid integer``."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "body"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown field {field!r}")
        elif item["type"] == "missing":
            lines.append(f"{field}: required")
        else:
            lines.append(f"{field}: {item['msg']}")
    return "; ".join(lines)
