"""Published ClipCap and CapDec weights as modtrans caption decoders.

ClipCap's ``coco_weights.pt`` and ``conceptual_weights.pt`` (Mokady et al., 2021) are plain
``state_dict`` pickles of ``ClipCaptionModel(prefix_length=10)``: ``clip_project.*`` (an MLP
``clip_project.model.{0,2}``, or a transformer mapper ``clip_project.linear``,
``clip_project.prefix_const`` and ``clip_project.transformer.layers.<i>.*`` with 8 heads,
biasless query / key-value projections and ReLU feed-forward layers) from a 512-d ViT-B/32
``encode_image`` vector to the prefix of ``gpt.*``, a GPT-2. CapDec's (Nukrai et al., 2022)
have the same layout, trained on normalised CLIP text embeddings with noise.

:func:`import_clipcap` reads one with ``torch.load(weights_only=True)`` (no code is
unpickled), infers the mapper's shape from its tensors, maps it onto
:class:`~modtrans.decoders.caption.CaptionDecoder` with the GPT-2 config and tokenizer of a
local directory, and saves the result as any caption decoder (safetensors + config).
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from modtrans.data.store import EmbeddingStore
from modtrans.decoders.caption import MODES, CaptionDecoder, CaptionDecoderConfig
from modtrans.decoders.norms import MAX_IMAGES, image_norms

logger = logging.getLogger(__name__)

CLIPCAP_HEADS = 8  # ClipCap's transformer mapper hard-codes 8 heads
DEFAULT_ENCODER = "hf:openai/clip-vit-base-patch32"
# GPT-2 buffers older transformers saved in a state dict (the causal mask); today's rebuild them
GPT2_BUFFERS = re.compile(r"\.attn\.(bias|masked_bias)$")
GPT2_HINT = ("give --gpt2 a GPT-2 directory: `huggingface-cli download gpt2 --local-dir DIR` "
             "(config.json and the tokenizer files are what is read; the weights come from the "
             "ClipCap file)")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pt`` state dict, loaded without unpickling code."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give the ClipCap/CapDec weight file "
                                "(e.g. coco_weights.pt from the ClipCap repository)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path} is not a plain state dict torch can read safely ({e}); "
                         "ClipCap's and CapDec's published .pt files are") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors "
                         "(ClipCap's torch.save(model.state_dict()))")
    return state


def _layer_count(state: dict[str, torch.Tensor]) -> int:
    found = {int(m.group(1)) for k in state
             if (m := re.match(r"clip_project\.transformer\.layers\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def mapper_options(state: dict[str, torch.Tensor], width: int, path: Path) -> dict[str, Any]:
    """The :class:`CaptionDecoderConfig` options of the mapper in a ClipCap state dict, read
    from its tensors' shapes (``width``: the GPT-2's embedding width)."""
    if "clip_project.model.0.weight" in state and "clip_project.model.2.weight" in state:
        hidden, embed_dim = state["clip_project.model.0.weight"].shape
        out = state["clip_project.model.2.weight"].shape[0]
        if out % width:
            raise ValueError(f"{path}: clip_project.model.2 makes {out} values, not a whole "
                             f"number of {width}-d GPT-2 tokens; is --gpt2 the right GPT-2?")
        return {"mapping": "mlp", "embed_dim": embed_dim, "mapper_hidden": hidden,
                "prefix_length": out // width}
    if "clip_project.linear.weight" in state and "clip_project.prefix_const" in state:
        rows, embed_dim = state["clip_project.linear.weight"].shape
        fc1 = state.get("clip_project.transformer.layers.0.mlp.fc1.weight")
        if rows % width or fc1 is None:
            raise ValueError(f"{path}: clip_project.linear makes {rows} values for {width}-d "
                             "GPT-2 tokens, or clip_project.transformer.layers.0.mlp.fc1 is "
                             "missing; is this a ClipCap transformer mapper with this GPT-2?")
        return {"mapping": "transformer", "embed_dim": embed_dim,
                "prefix_length": state["clip_project.prefix_const"].shape[0],
                "clip_length": rows // width, "mapper_layers": _layer_count(state),
                "mapper_heads": CLIPCAP_HEADS, "mapper_ffn": fc1.shape[0]}
    sample = ", ".join(sorted(state)[:6])
    raise ValueError(f"{path} has neither ClipCap's MLP mapper (clip_project.model.0/2) nor its "
                     f"transformer mapper (clip_project.linear, clip_project.prefix_const); "
                     f"its keys begin {sample}")


def _mapping_layout(decoder: CaptionDecoder) -> dict[str, tuple[str, slice | None]]:
    """Published key → (modtrans mapping key, the rows of it the key fills)."""
    if decoder.config.mapping == "mlp":
        return {f"clip_project.model.{i}.{p}": (f"{i}.{p}", None)
                for i in (0, 2) for p in ("weight", "bias")}
    width = decoder.lm.config.n_embd
    layout: dict[str, tuple[str, slice | None]] = {
        "clip_project.linear.weight": ("project.weight", None),
        "clip_project.linear.bias": ("project.bias", None),
        "clip_project.prefix_const": ("constants", None)}
    q, kv = slice(0, width), slice(width, 3 * width)
    for i in range(decoder.config.mapper_layers):
        src, dst = f"clip_project.transformer.layers.{i}.", f"transformer.layers.{i}."
        for name, (target, rows) in {
            "norm1.weight": ("norm1.weight", None), "norm1.bias": ("norm1.bias", None),
            "norm2.weight": ("norm2.weight", None), "norm2.bias": ("norm2.bias", None),
            "attn.to_queries.weight": ("self_attn.in_proj_weight", q),
            "attn.to_keys_values.weight": ("self_attn.in_proj_weight", kv),
            "attn.to_queries.bias": ("self_attn.in_proj_bias", q),
            "attn.to_keys_values.bias": ("self_attn.in_proj_bias", kv),
            "attn.project.weight": ("self_attn.out_proj.weight", None),
            "attn.project.bias": ("self_attn.out_proj.bias", None),
            "mlp.fc1.weight": ("linear1.weight", None), "mlp.fc1.bias": ("linear1.bias", None),
            "mlp.fc2.weight": ("linear2.weight", None), "mlp.fc2.bias": ("linear2.bias", None),
        }.items():
            layout[src + name] = (dst + target, rows)
    return layout


# ClipCap's attention projections have no bias; a file that has them is read too
_OPTIONAL = re.compile(r"attn\.to_(queries|keys_values)\.bias$")


def load_published(decoder: CaptionDecoder, state: dict[str, torch.Tensor], path: Path) -> None:
    """Copy a ClipCap state dict into ``decoder`` (its mapping and its GPT-2), or raise a
    ValueError naming every missing, unexpected or mis-shaped key (in the file's names)."""
    targets = {"mapping": {k: v.clone() for k, v in decoder.mapping.state_dict().items()},
               "lm": {k: v.clone() for k, v in decoder.lm.state_dict().items()}}
    layout = {k: ("mapping", t, rows) for k, (t, rows) in _mapping_layout(decoder).items()}
    layout |= {f"gpt.{k}": ("lm", k, None) for k in targets["lm"]}
    tied = {"gpt.lm_head.weight"} if decoder.lm.config.tie_word_embeddings else set()
    missing = sorted(k for k in layout if k not in state and k not in tied
                     and not _OPTIONAL.search(k))
    unexpected = sorted(k for k in state if k not in layout
                        and not (k.startswith("gpt.") and GPT2_BUFFERS.search(k)))
    wrong = []
    for key, (part, target, rows) in layout.items():
        if key not in state:
            continue
        tensor = targets[part][target]
        shape = (tensor if rows is None else tensor[rows]).shape
        if state[key].shape != shape:
            wrong.append(f"{key} {tuple(state[key].shape)} ≠ {tuple(shape)}")
    if missing or unexpected or wrong:
        raise ValueError(f"{path} does not match a ClipCap model of this layout and GPT-2: "
                         + "; ".join(f"{what} ({len(keys)}): {', '.join(keys[:8])}"
                                     + (" …" if len(keys) > 8 else "")
                                     for what, keys in (("missing", missing),
                                                        ("unexpected", unexpected),
                                                        ("wrong shape", wrong)) if keys))
    for key, (part, target, rows) in layout.items():
        tensor = targets[part][target]
        view = tensor if rows is None else tensor[rows]
        if key in state:
            view.copy_(state[key])
        elif _OPTIONAL.search(key):
            view.zero_()
    if tied and "lm_head.weight" in targets["lm"]:  # one tensor: the file's embedding
        targets["lm"]["lm_head.weight"] = targets["lm"]["transformer.wte.weight"]
    decoder.mapping.load_state_dict(targets["mapping"])
    decoder.lm.load_state_dict(targets["lm"])


def _gpt2(path: Path) -> tuple[Any, Any]:
    """A GPT-2 built from the config in ``path`` (its weights are not read) and its
    tokenizer, with the end-of-text token as padding."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no GPT-2 (config.json is missing); {GPT2_HINT}")
    try:
        config = GPT2Config.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} holds no readable GPT-2 config and tokenizer ({e}); "
                         f"{GPT2_HINT}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return GPT2LMHeadModel(config), tokenizer


def import_clipcap(weights: str | Path, gpt2: str | Path, out: str | Path, *,
                   mode: str = "clipcap", store: EmbeddingStore | None = None,
                   image_encoder: str | None = None, text_encoder: str | None = None,
                   prefix_norm: float | None = None, max_images: int = MAX_IMAGES,
                   max_length: int = 67, stop_token: str | None = ".") -> dict[str, Any]:
    """Import a published ClipCap (``mode="clipcap"``) or CapDec (``"capdec"``) weight file
    as a caption decoder in ``out``.

    Args:
        weights: the ``.pt`` state dict.
        gpt2: a local GPT-2 directory (its config and tokenizer).
        out: the decoder directory to write.
        mode: which embeddings it reads: clipcap image embeddings, capdec text embeddings.
        store: the store it will decode for: its encoders are recorded, its width checked
            and, for ClipCap, the norm of its raw image embeddings measured (ClipCap reads
            raw CLIP vectors; modtrans stores hold normalised ones).
        image_encoder, text_encoder: the encoder specs without a store (default ViT-B/32).
        prefix_norm: the norm embeddings are scaled to (default: measured on ``store`` for
            ClipCap, 1 for CapDec, which normalises).
        max_images: images measured for the norm.
        max_length, stop_token: generation length and ClipCap's stop token (ClipCap and
            CapDec never learned the end-of-text token; they end captions with ".").

    Returns:
        The summary written beside the decoder.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be clipcap or capdec, got {mode!r}")
    weights, gpt2 = Path(weights), Path(gpt2)
    state = read_state_dict(weights)
    lm, tokenizer = _gpt2(gpt2)
    options = mapper_options(state, lm.config.n_embd, weights)
    if store is not None:
        image_encoder, text_encoder = store.image_encoder, store.text_encoder
        dim = store.image_dim if mode == "clipcap" else store.text_dim
        if dim != options["embed_dim"]:
            modality = "image" if mode == "clipcap" else "text"
            raise ValueError(f"{weights} maps {options['embed_dim']}-d embeddings but "
                             f"{store.root} holds {dim}-d {modality} ones; embed the data with "
                             "the CLIP it was trained on (ViT-B/32 for the published weights)")
    summary: dict[str, Any] = {"imported": str(weights.resolve()), "mode": mode}
    if prefix_norm is None and mode == "clipcap":
        if store is None:
            raise ValueError("ClipCap reads raw CLIP image embeddings, modtrans normalised ones: "
                             "give --data STORE to measure their norm on its images, or "
                             "--prefix-norm")
        from modtrans.encoders import build_encoder

        encoder = build_encoder(store.image_encoder, normalize=False)
        norms = image_norms(store, encoder.encode_images, max_images=max_images)
        prefix_norm = norms["mean"]
        summary.update(norm_images=norms["images"], norm_std=norms["std"],
                       norm_store=str(Path(store.root).resolve()))
    config = CaptionDecoderConfig(
        mode=mode, max_length=max_length, stop_token=stop_token, gpt2=str(gpt2.resolve()),
        prefix_norm=1.0 if prefix_norm is None else prefix_norm,
        image_encoder=image_encoder or DEFAULT_ENCODER,
        text_encoder=text_encoder or DEFAULT_ENCODER, **options)
    decoder = CaptionDecoder(config, lm, tokenizer)
    load_published(decoder, state, weights)
    summary.update(prefix_norm=config.prefix_norm, **options)
    decoder.eval().save(out, summary)
    logger.info("imported %s (%s, %s mapper) into %s", weights, mode, options["mapping"], out)
    return summary
