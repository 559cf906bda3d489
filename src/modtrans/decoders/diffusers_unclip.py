"""Image decoders from diffusers: Karlo's unCLIP image-variation decoder and stable unCLIP.

Both draw an image from a CLIP image embedding: ``UnCLIPImageVariationPipeline`` takes it as
``image_embeddings=`` (Karlo: ViT-L/14, 768-d, the raw projection), and
``StableUnCLIPImg2ImgPipeline`` as ``image_embeds=`` through its image normaliser (ViT-L/14
768-d for ``-l``, ViT-H/14 1024-d for ``-h``). :class:`DiffusersImageDecoder` puts either
behind the interface of the world's :class:`~modtrans.decoders.image_vae.ConditionalVAE`
(``generate(e, generator=, steps=, guidance=)`` → uint8 images, a config naming the
encoders, the condition and the width), so the pipelines, the CLI and the service use it the
same way.

The pipelines read raw CLIP embeddings; a store, and a translator trained on it, hold
L2-normalised ones. The adapter rescales each embedding to the mean norm of real raw image
embeddings, measured by ``modtrans import-decoder`` with the pipeline's own image encoder on
the store's images and recorded in the decoder's config. Weights are only ever read from a
local directory (or the local Hugging Face cache path), never downloaded.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from modtrans.artefacts import Artefact, Layout
from modtrans.config import Config
from modtrans.data.store import EmbeddingStore
from modtrans.decoders.norms import MAX_IMAGES, image_norms, rescale
from modtrans.io import read_json
from modtrans.translators.base import check_embeddings

logger = logging.getLogger(__name__)

SPEC_PREFIX = "diffusers:"


@dataclasses.dataclass(frozen=True)
class _Kind:
    """One diffusers pipeline: its class, the files its directory holds, how to get one, and
    the names of its embedding, steps and guidance arguments."""

    pipeline: str
    components: tuple[str, ...]
    example: str
    embedding_arg: str
    steps_arg: str
    guidance_arg: str


KINDS: dict[str, _Kind] = {
    "unclip-variation": _Kind(
        "UnCLIPImageVariationPipeline",
        ("decoder", "text_proj", "super_res_first", "super_res_last", "image_encoder",
         "feature_extractor", "text_encoder", "tokenizer"),
        "kakaobrain/karlo-v1-alpha-image-variations", "image_embeddings",
        "decoder_num_inference_steps", "decoder_guidance_scale"),
    "stable-unclip": _Kind(
        "StableUnCLIPImg2ImgPipeline",
        ("unet", "vae", "image_normalizer", "image_encoder", "feature_extractor", "text_encoder",
         "tokenizer"),
        "stabilityai/stable-diffusion-2-1-unclip", "image_embeds", "num_inference_steps",
        "guidance_scale"),
}


@dataclasses.dataclass
class DiffusersDecoderConfig(Config):
    """A diffusers unCLIP decoder and how embeddings are fed to it.

    Attributes:
        pipeline: ``unclip-variation`` or ``stable-unclip`` (see ``KINDS``).
        source: the pipeline's local directory (``save_pretrained`` / ``huggingface-cli
            download --local-dir`` layout).
        embed_dim: width of the CLIP image embedding the pipeline reads (set from it).
        norm: each embedding is rescaled to this L2 norm, the mean norm of real raw image
            embeddings (None: fed as given).
        norm_std: the standard deviation of those norms (recorded, for reference).
        noise_level: stable unCLIP's noise augmentation of the embedding (0: none).
        super_res_steps: unclip-variation's super-resolution steps.
        image_encoder, text_encoder: the store's encoder specs (checked at use).
    """

    pipeline: str = "unclip-variation"
    source: str = ""
    embed_dim: int = 0
    norm: float | None = None
    norm_std: float | None = None
    noise_level: int = 0
    super_res_steps: int = 7
    image_encoder: str = "unknown"
    text_encoder: str = "unknown"

    def __post_init__(self) -> None:
        if self.pipeline not in KINDS:
            raise ValueError(f"pipeline must be one of {sorted(KINDS)}, got {self.pipeline!r}")
        if self.norm is not None and not self.norm > 0:
            raise ValueError(f"norm must be positive, got {self.norm}")
        if self.noise_level < 0 or self.super_res_steps < 1:
            raise ValueError("noise_level must be ≥ 0 and super_res_steps ≥ 1")

    @property
    def condition(self) -> str:
        """The modality of the embeddings it decodes: always CLIP image embeddings."""
        return "image"


def parse_spec(spec: str) -> tuple[str, Path]:
    """``diffusers:<pipeline>:<dir>`` → (pipeline, directory)."""
    kind, sep, where = spec.removeprefix(SPEC_PREFIX).partition(":")
    if not spec.startswith(SPEC_PREFIX) or not sep or not where or kind not in KINDS:
        raise ValueError(f"decoder spec {spec!r}: expected diffusers:<pipeline>:<dir> with "
                         f"pipeline one of {', '.join(sorted(KINDS))}")
    return kind, Path(where)


def load_pipeline(kind: str, source: Path, device: torch.device | None = None) -> Any:
    """The diffusers pipeline of ``kind`` saved in ``source``, offline, on ``device`` (default:
    CUDA in float16 when available, else the CPU in float32)."""
    import diffusers

    info = KINDS[kind]
    hint = (f"download one with `huggingface-cli download {info.example} --local-dir "
            f"{source}` on a machine with network access and copy it here")
    if not (source / "model_index.json").is_file():
        what = "does not exist" if not source.exists() else "has no model_index.json"
        raise FileNotFoundError(f"diffusers decoder {kind}: {source} {what}; it must hold a "
                                f"{info.pipeline} (model_index.json and the folders "
                                f"{', '.join(info.components)}): {hint}")
    missing = [c for c in info.components if not (source / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"diffusers decoder {kind}: {source} lacks {', '.join(missing)} "
                                f"of a {info.pipeline}; {hint}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        pipe = getattr(diffusers, info.pipeline)(**_load_components(source, dtype))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"diffusers decoder {kind}: could not load the {info.pipeline} in "
                         f"{source} ({e}); {hint}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _component_class(library: str, name: str) -> Any:
    """The class ``model_index.json`` names as ``[library, name]``: a transformers or diffusers
    class, or one of a diffusers pipeline module, looked up among the deprecated pipelines too
    (unCLIP moved there: Karlo's index names ``["unclip", "UnCLIPTextProjModel"]``, and a
    pipeline saved by this diffusers ``["diffusers", "UnCLIPTextProjModel"]``)."""
    import importlib

    if library in ("transformers", "diffusers") and hasattr(importlib.import_module(library),
                                                            name):
        return getattr(importlib.import_module(library), name)
    for module in (library, f"deprecated.{library}", "deprecated.unclip"):
        try:
            found = importlib.import_module(f"diffusers.pipelines.{module}")
        except ImportError:
            continue
        if hasattr(found, name):
            return getattr(found, name)
    raise ValueError(f"no class {name} (library {library}) in this diffusers/transformers")


def _load_components(source: Path, dtype: torch.dtype) -> dict[str, Any]:
    """Every component ``source/model_index.json`` lists, each from its own folder, offline.

    Loaded one by one rather than by ``DiffusionPipeline.from_pretrained``, which rejects an
    index naming a class where this diffusers no longer keeps it."""
    components = {}
    for name, entry in read_json(source / "model_index.json").items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        cls = _component_class(*entry)
        options: dict[str, Any] = {"local_files_only": True}
        if issubclass(cls, nn.Module):
            options["dtype" if entry[0] == "transformers" else "torch_dtype"] = dtype
        components[name] = cls.from_pretrained(source / name, **options)
    return components


def pipeline_dim(kind: str, pipe: Any) -> int:
    """The width of the image embedding ``pipe`` reads."""
    if kind == "stable-unclip":
        return int(pipe.image_normalizer.mean.shape[-1])
    return int(pipe.text_proj.config.clip_embeddings_dim)


def row_generators(generator: torch.Generator | None, n: int) -> list[torch.Generator]:
    """One generator per row, seeded in row order from ``generator``: row i's noise depends
    on the seed and i, never on how many rows are drawn with it."""
    seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
    return [torch.Generator().manual_seed(s) for s in seeds]


class DiffusersImageDecoder(Artefact, nn.Module):
    """A diffusers unCLIP pipeline behind the image-decoder interface.

    Saved by ``modtrans import-decoder`` as a config-only artefact (the pipeline stays in its
    own directory, named by ``source``); :meth:`from_spec` builds one from
    ``diffusers:<pipeline>:<dir>`` without a saved config.
    """

    kind = "diffusers-image-decoder"
    config_class = DiffusersDecoderConfig
    train_hint = ("make one with `modtrans import-decoder unclip-variation DIR --data STORE "
                  "--out OUT` (or stable-unclip)")
    layout: ClassVar[Layout] = Layout(weights=None)

    def __init__(self, config: DiffusersDecoderConfig, pipe: Any) -> None:
        super().__init__()
        dim = pipeline_dim(config.pipeline, pipe)
        if config.embed_dim not in (0, dim):
            raise ValueError(f"{config.source} reads {dim}-d image embeddings but the decoder "
                             f"config says {config.embed_dim}; import it again")
        self.config = dataclasses.replace(config, embed_dim=dim)
        self.pipe = pipe

    @classmethod
    def from_spec(cls, spec: str, device: torch.device | None = None
                  ) -> DiffusersImageDecoder:
        """The decoder of ``diffusers:<pipeline>:<dir>``: no measured norm, no encoders known
        (a translator's are adopted when it is given one, see
        :func:`modtrans.decoders.loading.load_image_decoder`)."""
        kind, source = parse_spec(spec)
        config = DiffusersDecoderConfig(pipeline=kind, source=str(source))
        logger.warning("%s: no norm of real image embeddings is recorded, so embeddings reach "
                       "the pipeline at their own norm (1 for a normalised store); `modtrans "
                       "import-decoder %s %s --data STORE --out DIR` measures it", spec, kind,
                       source)
        return cls(config, load_pipeline(kind, source, device))

    @classmethod
    def build(cls, config: DiffusersDecoderConfig, path: Path) -> DiffusersImageDecoder:
        """The decoder around the pipeline its config names."""
        return cls(config, load_pipeline(config.pipeline, Path(config.source)))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None
             ) -> DiffusersImageDecoder:
        """The decoder saved in ``path``; its pipeline on ``device`` (default: CUDA if
        available)."""
        config = cls.read_config(path)
        return cls(config, load_pipeline(config.pipeline, Path(config.source),
                                         None if device is None else torch.device(device)))

    def save_payload(self, path: Path) -> None:
        """Nothing beyond the config: the weights stay in the pipeline's directory."""

    def load_payload(self, path: Path, layout: Layout) -> None:
        """Nothing to read: :meth:`build` loaded the pipeline."""

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        """Raw (not normalised) image embeddings by the pipeline's own CLIP image encoder,
        what the pipeline computes itself when given an image."""
        pipe = self.pipe
        pixels = pipe.feature_extractor(images=images, return_tensors="pt").pixel_values
        out = pipe.image_encoder(pixels.to(pipe.device, pipe.image_encoder.dtype))
        return out.image_embeds.float().cpu()

    def prepare(self, e_raw: torch.Tensor) -> torch.Tensor:
        """The embeddings as the pipeline reads them: checked, rescaled to ``config.norm``."""
        check_embeddings(e_raw, self.config.embed_dim, "the embeddings to decode")
        return rescale(e_raw.float(), self.config.norm)

    @torch.no_grad()
    def generate(self, e_raw: torch.Tensor, *, generator: torch.Generator | None = None,
                 steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
        """One image per embedding row, uint8 (N, H, W, 3) at the pipeline's resolution.

        ``steps`` and ``guidance`` override the pipeline's denoising steps and
        classifier-free guidance scale (default: the pipeline's own). Row i's noise comes
        from its own generator (:func:`row_generators`), so an image depends on the seed and
        its row only.
        """
        e = self.prepare(e_raw)
        return self.call(**{KINDS[self.config.pipeline].embedding_arg: e},
                         generator=row_generators(generator, len(e)), steps=steps,
                         guidance=guidance)

    def call(self, *, generator: list[torch.Generator], steps: int | None = None,
             guidance: float | None = None, **inputs: Any) -> torch.Tensor:
        """Run the pipeline on ``inputs`` (an embedding or an ``image``) → uint8 images."""
        info, pipe = KINDS[self.config.pipeline], self.pipe
        n = len(generator)
        options: dict[str, Any] = {"generator": generator, "output_type": "np"}
        if steps is not None:
            options[info.steps_arg] = steps
        if guidance is not None:
            options[info.guidance_arg] = guidance
        if self.config.pipeline == "stable-unclip":
            options.update(prompt=[""] * n, noise_level=self.config.noise_level)
        else:
            options["super_res_num_inference_steps"] = self.config.super_res_steps
        if inputs.get(info.embedding_arg) is not None:
            inputs[info.embedding_arg] = inputs[info.embedding_arg].to(pipe.device,
                                                                       pipe.image_encoder.dtype)
        images = pipe(**inputs, **options).images
        return torch.from_numpy((np.clip(images, 0, 1) * 255).round().astype(np.uint8))


def import_diffusers_decoder(kind: str, source: str | Path, store: EmbeddingStore,
                             out: str | Path, *, max_images: int = MAX_IMAGES,
                             noise_level: int = 0) -> dict[str, Any]:
    """Write a decoder directory for the diffusers pipeline of ``kind`` in ``source``, fed by
    translators trained on ``store``: the store's encoders, and the norm of real image
    embeddings measured with the pipeline's image encoder on the store's first
    ``max_images`` images.

    Returns:
        The summary written beside it (the norm statistics and where they came from).
    """
    if kind not in KINDS:
        raise ValueError(f"diffusers decoder kind must be one of {sorted(KINDS)}, got {kind!r}")
    source = Path(source).resolve()
    config = DiffusersDecoderConfig(pipeline=kind, source=str(source), noise_level=noise_level,
                                    image_encoder=store.image_encoder,
                                    text_encoder=store.text_encoder)
    decoder = DiffusersImageDecoder(config, load_pipeline(kind, source))
    if store.image_dim != decoder.config.embed_dim:
        raise ValueError(f"the {kind} pipeline in {source} reads {decoder.config.embed_dim}-d "
                         f"image embeddings but {store.root} holds {store.image_dim}-d ones "
                         f"({store.image_encoder}); embed the data with the CLIP the pipeline "
                         "was trained on")
    norms = image_norms(store, decoder.embed_images, max_images=max_images)
    decoder.config = dataclasses.replace(decoder.config, norm=norms["mean"],
                                         norm_std=norms["std"])
    summary = {"pipeline": kind, "source": str(source), "norm_images": norms["images"],
               "norm_store": str(Path(store.root).resolve()), "norm": norms["mean"],
               "norm_std": norms["std"]}
    decoder.save(out, summary)
    return summary
