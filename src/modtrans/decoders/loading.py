"""One way to name an image decoder: a directory, or a ``diffusers:`` spec.

:func:`load_image_decoder` is what the text → image pipeline, the CLI and the service call,
so a world decoder and a real one differ only in the string that names them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Union

from modtrans.decoders.diffusers_unclip import SPEC_PREFIX, DiffusersImageDecoder
from modtrans.decoders.image_vae import ConditionalVAE
from modtrans.decoders.token_decoder import TokenDecoder
from modtrans.io import read_json
from modtrans.translators.base import Translator

#: What draws images from embeddings: the world's VAE, a token decoder or a diffusers unCLIP
#: pipeline.
ImageDecoder = Union[ConditionalVAE, TokenDecoder, DiffusersImageDecoder]  # noqa: UP007

IMAGE_DECODER_KINDS = (ConditionalVAE.kind, TokenDecoder.kind, DiffusersImageDecoder.kind)


def load_image_decoder(spec: str | Path, translator: Translator | None = None) -> ImageDecoder:
    """The image decoder ``spec`` names.

    Args:
        spec: a directory written by ``modtrans fit-decoder image`` or ``modtrans
            import-decoder unclip-variation|stable-unclip``, or ``diffusers:<pipeline>:<dir>``
            (a diffusers pipeline directory used as it is).
        translator: the translator that will feed it. A bare ``diffusers:`` spec records no
            encoders, so it takes this translator's (after checking the width); a directory
            keeps its own, checked by the pipeline.
    """
    if str(spec).startswith(SPEC_PREFIX):
        decoder = DiffusersImageDecoder.from_spec(str(spec))
        if translator is not None:
            cfg = translator.config
            if cfg.target_dim != decoder.config.embed_dim:
                raise ValueError(f"{spec} reads {decoder.config.embed_dim}-d image embeddings "
                                 f"but the translator makes {cfg.target_dim}-d ones; train it "
                                 "on a store embedded with the pipeline's CLIP")
            decoder.config = dataclasses.replace(decoder.config, image_encoder=cfg.image_encoder,
                                                 text_encoder=cfg.text_encoder)
        return decoder
    path = Path(spec)
    config = path / "config.json"
    kind = read_json(config).get("kind") if config.is_file() else None
    if kind == DiffusersImageDecoder.kind:
        return DiffusersImageDecoder.load(path)
    if kind == TokenDecoder.kind:
        return TokenDecoder.load(path)
    return ConditionalVAE.load(path)
