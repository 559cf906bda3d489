"""Encoders: the protocol, the spec-string registry and the built-in kinds."""

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
