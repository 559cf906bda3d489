"""What ``modtrans serve`` loads and how hard it may be pushed: limits on every request,
the micro-batcher's settings and the queue bound, readable from YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from modtrans.config import Config, read_mapping


@dataclasses.dataclass
class Limits(Config):
    """The largest request the service answers; anything beyond gets a 4xx naming the limit.

    Attributes:
        max_text_chars: characters of a prompt or text query.
        max_image_bytes: bytes of an uploaded image (the request body may carry a little
            more for its form fields).
        max_pixels: width × height of an uploaded image, checked before it is decoded.
        max_k: search results per query.
        max_n: translations or images per request.
        max_candidates: reranking candidates per generated image.
        max_samples: draws averaged by a translator's mean and best-of-k modes.
        max_steps: sampler steps of a translator or of an image decoder's latent prior.
        max_guidance: classifier-free guidance scale.
        max_beams: beam width of the caption decoders.
    """

    max_text_chars: int = 500
    max_image_bytes: int = 4_000_000
    max_pixels: int = 4096 * 4096
    max_k: int = 100
    max_n: int = 16
    max_candidates: int = 8
    max_samples: int = 32
    max_steps: int = 100
    max_guidance: float = 20.0
    max_beams: int = 8

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"limit {field.name} must be positive, got "
                                 f"{getattr(self, field.name)!r}")


@dataclasses.dataclass
class Batching(Config):
    """Dynamic micro-batching and admission.

    Attributes:
        max_batch: requests merged into one model call at most.
        max_wait_ms: how long a batch waits for more requests once others are in flight
            (a lone request never waits).
        max_queue: requests admitted at once; one more gets 503 with Retry-After.
        max_heavy: generate and caption requests admitted at once (each is seconds of
            work); one more gets 503.
        retry_after_s: the Retry-After a 503 carries.
    """

    max_batch: int = 32
    max_wait_ms: float = 4.0
    max_queue: int = 256
    max_heavy: int = 8
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_heavy < 1:
            raise ValueError("max_batch, max_queue and max_heavy must be ≥ 1")
        if self.max_wait_ms < 0 or self.retry_after_s < 0:
            raise ValueError("max_wait_ms and retry_after_s must be ≥ 0")


@dataclasses.dataclass
class ServeConfig(Config):
    """The service's options (the ``limits:``, ``batching:`` and ``index_splits:`` keys of a
    serve YAML file, or of ``--config``).

    Attributes:
        limits: see :class:`Limits`.
        batching: see :class:`Batching`.
        index_splits: store splits of a demo folder searched in memory when the folder has no
            ``indexes/`` directory (both modalities of each).
        defaults: the translator used when a request names none, per direction (default:
            ``ced`` where loaded, else the first).
    """

    limits: Limits = dataclasses.field(default_factory=Limits)
    batching: Batching = dataclasses.field(default_factory=Batching)
    index_splits: list[str] = dataclasses.field(default_factory=lambda: ["val"])
    defaults: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.limits, dict):
            self.limits = Limits.from_dict(self.limits)
        if isinstance(self.batching, dict):
            self.batching = Batching.from_dict(self.batching)
        unknown = sorted(set(self.defaults) - {"text2image", "image2text"})
        if unknown:
            raise ValueError(f"defaults names directions text2image and image2text, not "
                             f"{unknown}")

    @classmethod
    def from_mapping(cls, options: dict[str, Any]) -> ServeConfig:
        """The options of a serve YAML file that configure the service (the others name
        models)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in options.items() if k in names})


def service_options(source: str | Path, options: str | Path | None = None) -> ServeConfig:
    """The service's options: those of the file ``options`` if given, else those of a serve
    YAML ``source`` (beside its models), else the defaults (a demo folder)."""
    if options is not None:
        return ServeConfig.load(options)  # every key must be an option: a typo is an error
    if Path(source).is_file():
        return ServeConfig.from_mapping(read_mapping(source))
    return ServeConfig()
