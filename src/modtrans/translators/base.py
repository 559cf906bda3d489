"""What every translator shares: config, normalisers, the ``translate`` API, checkpoints.

A translator maps condition embeddings c (N, Dc) to estimates ẑ (N, D) of target embeddings.
Both spaces are z-normalised with statistics of the train split (stored in the checkpoint);
subclasses work in normalised space through :meth:`Translator._translate`.

A checkpoint is an artefact directory (:mod:`modtrans.artefacts`): ``model.safetensors``
(every tensor, normalisers included), ``config.json`` (everything needed to rebuild: method,
direction, dims, encoder specs and the method's options as a plain dict of its options
dataclass) and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from modtrans.artefacts import Artefact, Layout
from modtrans.config import Config

if TYPE_CHECKING:
    from modtrans.translators.baselines import RidgeMoments
    from modtrans.translators.samplers import SamplerOptions

logger = logging.getLogger(__name__)

#: The seed of a translation: one int for every row, or one per row.
RowSeeds = int | Sequence[int]


def row_generators(seed: RowSeeds, n: int) -> list[torch.Generator]:
    """One CPU generator per row, seeded by ``seed`` (an int: the same for every row; a
    sequence: row i's own), so that a row's noise depends on its seed alone and not on which
    rows share its batch."""
    seeds = [int(seed)] * n if isinstance(seed, numbers.Integral) else [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"give one seed per row: {len(seeds)} seeds for {n} rows")
    return [torch.Generator().manual_seed(s) for s in seeds]


def draw_seeds(seed: int, n: int) -> list[int]:
    """The seeds of ``n`` draws of one query: ``seed, seed + 1, …``, so that the first of
    ``n`` draws is the one draw made with ``seed`` alone."""
    return [seed + j for j in range(n)]


def row_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent seeds derived from ``seed``, one per row index: for evaluations,
    whose distribution metrics (FD, diversity) need each row's draws independent of the
    others'."""
    return np.random.SeedSequence(seed).generate_state(n).tolist()


DIRECTIONS = ("text2image", "image2text")
MODES = ("sample", "mean", "best-of-k")
Mode = Literal["sample", "mean", "best-of-k"]


@dataclasses.dataclass
class TranslatorConfig(Config):
    """Self-description of a translator checkpoint.

    Attributes:
        method: registry name (``ced``, ``ridge``, ...).
        direction: ``text2image`` or ``image2text``.
        cond_dim, target_dim: Dc and D.
        image_encoder, text_encoder: the encoder specs of the store it was trained on.
        params: the method's options (hyper-parameters and data-dependent sizes), every field
            of its ``options_class`` as a plain dict.
    """

    method: str
    direction: str
    cond_dim: int
    target_dim: int
    image_encoder: str = "unknown"
    text_encoder: str = "unknown"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"direction must be one of {DIRECTIONS}, got {self.direction!r} "
                "(--direction text2image or image2text)"
            )
        for name in ("cond_dim", "target_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def cond_modality(self) -> str:
        return "text" if self.direction == "text2image" else "image"

    @property
    def target_modality(self) -> str:
        return "image" if self.direction == "text2image" else "text"


class Normalizer(nn.Module):
    """Per-dimension z-normalisation, x ↦ (x − μ) / σ, with statistics kept as buffers."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: Tensor, eps: float = 1e-6) -> Normalizer:
        """Set μ and σ from ``x`` (N, dim), in float64 for accuracy."""
        x = x.double()
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(eps))
        return self

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean


def check_embeddings(x: Tensor, dim: int, what: str) -> None:
    """Raise a clear ValueError for a wrong shape, an empty batch or non-finite values."""
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must have shape (N, {dim}); got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty (0 rows); check the split or the selection")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise ValueError(f"{what} holds NaN or inf in {bad} row(s); clean the embeddings first")


@dataclasses.dataclass
class NoOptions(Config):
    """The options of a method that has none."""


class Translator(Artefact, nn.Module):
    """Base class: subclasses set ``method`` and ``options_class`` and implement
    ``_translate`` (normalised space)."""

    kind = "translator"
    config_class = TranslatorConfig
    train_hint = "train one with `modtrans train`"
    legacy = Layout()  # format 0: the same file names, the config not yet wrapped

    method: ClassVar[str]
    stochastic: ClassVar[bool] = False
    trainable: ClassVar[bool] = False
    #: Whether :meth:`prepare_streamed` needs the split's :class:`RidgeMoments`.
    needs_moments: ClassVar[bool] = False
    #: Epochs ``train`` and the demo run when none are given (trainable methods).
    default_epochs: ClassVar[int] = 1
    options_class: ClassVar[type[Config]] = NoOptions

    def __init__(self, config: TranslatorConfig) -> None:
        super().__init__()
        #: The method's options, built from ``config.params`` (an option missing there takes
        #: its default); change them with :meth:`set_options` so the checkpoint follows.
        self.options = self.options_class.from_dict(config.params)
        self.config = dataclasses.replace(config, params=self.options.to_dict())
        self.cond_norm = Normalizer(config.cond_dim)
        self.target_norm = Normalizer(config.target_dim)

    def set_options(self, **changes: Any) -> None:
        """Change some options (validated again) and the ``config.params`` saved with them."""
        self.options = dataclasses.replace(self.options, **changes)
        self.config.params = self.options.to_dict()

    def prepare(self, cn: Tensor, zn: Tensor, val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        """Closed-form fitting before (or instead of) gradient training, in normalised space.

        Called after the normalisers are fitted. Returns what was chosen (e.g. λ on val).
        """
        return {}

    def prepare_streamed(self, moments: RidgeMoments | None, sample: tuple[Tensor, Tensor],
                         val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        """:meth:`prepare` for a split read from disk (``train --stream``): from its ridge
        moments (when :attr:`needs_moments`) and a sample of its pairs, normalised. A method
        whose closed form needs every pair in memory refuses."""
        if type(self).prepare is not Translator.prepare:
            raise ValueError(f"{self.method} fits its closed form on the whole train split in "
                             "memory; train it without --stream")
        return {}

    def finish(self, cn: Tensor, zn: Tensor, val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        """Closed-form fitting after gradient training, in normalised space.

        Returns what was chosen, like :meth:`prepare`.
        """
        return {}

    def training_loss(self, cn: Tensor, zn: Tensor) -> Tensor:
        """The loss of one batch (normalised space), for translators with ``trainable``."""
        raise NotImplementedError(f"{self.method} has no gradient training")

    def val_similarity(self, pred_n: Tensor, zn: Tensor) -> float:
        """Mean cosine between prediction and target in the raw target space (Sim)."""
        pred, z = self.target_norm.inverse(pred_n), self.target_norm.inverse(zn)
        return float(torch.nn.functional.cosine_similarity(pred, z, dim=-1).mean())

    def _translate(self, cn: Tensor, *, mode: Mode, n_samples: int,
                   generators: list[torch.Generator],
                   sampling: SamplerOptions | None = None) -> Tensor:
        """(N, Dc) normalised conditions → (N, D) normalised targets; row i's noise comes
        from ``generators[i]`` alone."""
        raise NotImplementedError

    @torch.no_grad()
    def translate(
        self,
        c: Tensor,
        *,
        mode: Mode = "mean",
        n_samples: int = 8,
        batch_size: int = 4096,
        seed: RowSeeds = 0,
        sampling: SamplerOptions | None = None,
    ) -> Tensor:
        """Translate condition embeddings into the target space.

        Args:
            c: (N, Dc) raw condition embeddings (as stored, not normalised).
            mode: ``sample`` (one draw), ``mean`` (average of ``n_samples`` draws) or
                ``best-of-k`` (the draw closest to the mapped condition). Deterministic
                translators return the same output in every mode.
            n_samples: draws for ``mean`` and ``best-of-k``.
            batch_size: rows translated at once.
            seed: the seed of stochastic translators' draws: one int for every row, or one
                per row (e.g. to draw different candidates of a repeated prompt). A row's
                translation depends only on the row and its seed, never on the other rows
                of the call or on ``batch_size``.
            sampling: sampler settings overriding the saved ones where not None (stochastic
                translators; the others ignore it).

        Returns:
            (N, D) float32 estimates in the raw target space.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        check_embeddings(c, self.config.cond_dim, f"{self.config.cond_modality} embeddings")
        was_training = self.training
        self.eval()
        device = self.cond_norm.mean.device
        generators = row_generators(seed, len(c))
        out = []
        for start in range(0, len(c), batch_size):
            cn = self.cond_norm(c[start:start + batch_size].to(device, torch.float32))
            zn = self._translate(cn, mode=mode, n_samples=n_samples,
                                 generators=generators[start:start + batch_size],
                                 sampling=sampling)
            out.append(self.target_norm.inverse(zn).float().cpu())
        self.train(was_training)
        return torch.cat(out)

    @classmethod
    def build(cls, config: TranslatorConfig, path: Path) -> Translator:
        """A fresh translator of the config's method, whatever class ``load`` was called on."""
        return translator_class(config.method)(config)

    @classmethod
    def migrate(cls, options: dict[str, Any], version: int, path: Path) -> dict[str, Any]:
        """Format 0 kept the writing modtrans version in the config. Options added to a method
        after a checkpoint was written take their defaults when its options are built (so a
        new option's default must reproduce the behaviour from before it existed, or the
        method's :meth:`migrate_params` fill in what it was)."""
        options = {k: v for k, v in options.items() if k != "version"}
        method = translator_class(str(options.get("method")))
        options["params"] = method.migrate_params(dict(options.get("params", {})))
        fields = {f.name for f in dataclasses.fields(method.options_class)}
        missing = sorted(fields - set(options["params"]))
        if missing:
            logger.debug("%s: options %s not in the checkpoint, defaults used", path, missing)
        return options

    @classmethod
    def migrate_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's saved options → today's, where a method changed a default (by
        default: unchanged)."""
        return params


_REGISTRY: dict[str, type[Translator]] = {}


def register_translator(cls: type[Translator]) -> type[Translator]:
    """Class decorator: make ``cls`` buildable by its ``method`` name."""
    _REGISTRY[cls.method] = cls
    return cls


def list_translators() -> list[str]:
    """Names accepted by ``--method``."""
    return sorted(_REGISTRY)


def translator_class(method: str) -> type[Translator]:
    """The class registered under ``method``; ValueError listing the known names otherwise."""
    if method not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[method]

