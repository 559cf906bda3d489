"""Encoders: the protocol, the spec-string registry and the built-in kinds.

Importing the package registers the built-in kinds (hf, sbert, open_clip), whichever of its
modules a caller imports first.
"""

from modtrans.encoders import hf, open_clip, sbert  # noqa: F401  (register their kinds)
from modtrans.encoders.base import (
    Encoder,
    ModalityError,
    build_encoder,
    list_encoders,
    parse_spec,
    register_encoder,
)

__all__ = [
    "Encoder",
    "ModalityError",
    "build_encoder",
    "list_encoders",
    "parse_spec",
    "register_encoder",
]
