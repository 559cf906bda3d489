"""One save/load for everything modtrans trains.

An artefact is a directory: ``config.json`` (its kind, the format version and its typed
config), ``model.safetensors`` (the weights; never a pickle) and ``summary.json`` (how it was
trained and from what: the training summary and provenance). :meth:`Artefact.load` checks
every file and is the one place where directories written by older modtrans versions are
read: each kind names its older file names and migrates its older options in
:meth:`Artefact.migrate`.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import subprocess
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

import modtrans
from modtrans.config import Config, read_mapping
from modtrans.errors import NonFiniteError
from modtrans.io import read_json, save_weights, write_json

logger = logging.getLogger(__name__)

#: The artefact format this modtrans writes. Format 0: the per-kind layouts from before the
#: artefact layer (flat configs, per-kind file names), still read through ``migrate``.
FORMAT = 1
CONFIG_FILE, WEIGHTS_FILE, SUMMARY_FILE = "config.json", "model.safetensors", "summary.json"
TOKENIZER_DIR = "text_tokenizer"

A = TypeVar("A", bound="Artefact")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one format of a kind keeps its config and weights."""

    config: str = CONFIG_FILE
    weights: str | None = WEIGHTS_FILE


class Artefact:
    """Mixin for a trained ``nn.Module`` saved as an artefact directory.

    A kind sets ``kind``, ``config_class`` and ``train_hint`` (the command that makes one);
    it may override :meth:`build` (construct from a config), :meth:`save_payload` and
    :meth:`load_payload` (files beyond one state dict), and :meth:`migrate` with ``legacy``
    (the layout of format 0) for directories written before the artefact layer.
    """

    kind: ClassVar[str]
    config_class: ClassVar[type[Config]]
    train_hint: ClassVar[str]
    layout: ClassVar[Layout] = Layout()
    legacy: ClassVar[Layout | None] = None

    config: Any

    # -- hooks ----------------------------------------------------------------------------

    @classmethod
    def build(cls: type[A], config: Any, path: Path) -> A:
        """A fresh model for ``config`` (weights are loaded after); ``path`` is the directory
        being loaded, for kinds whose parts are saved in formats of their own."""
        return cls(config)  # type: ignore[call-arg]

    @classmethod
    def migrate(cls, options: dict[str, Any], version: int, path: Path) -> dict[str, Any]:
        """Options saved in format ``version`` → today's options (the one place for that)."""
        return options

    def save_payload(self, path: Path) -> None:
        """Write the weights (default: the whole state dict as ``model.safetensors``)."""
        save_weights(path / self.layout.weights, self, {"format": f"modtrans-{self.kind}"})

    def load_payload(self, path: Path, layout: Layout) -> None:
        """Read what :meth:`save_payload` wrote (in ``layout``'s file names)."""
        load_state(self, path / layout.weights, path / layout.config, self.train_hint)

    # -- the one save / load --------------------------------------------------------------

    def save(self, path: str | Path, summary: dict[str, Any] | None = None) -> Path:
        """Write the artefact into directory ``path`` (and ``summary.json`` if given); one
        with a NaN or infinite weight is refused, since it would only give NaN later."""
        path = Path(path)
        bad = [name for name, t in self.state_dict().items()  # type: ignore[attr-defined]
               if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise NonFiniteError(
                f"not saving the {_words(self.kind)} to {path}: {len(bad)} weight(s) hold NaN "
                f"or infinite values ({', '.join(bad[:3])}); check the training data for NaN "
                "(stores are checked when read) or lower the learning rate")
        path.mkdir(parents=True, exist_ok=True)
        self.save_payload(path)
        write_json(path / self.layout.config, {
            "kind": self.kind, "format": FORMAT, "modtrans": modtrans.__version__,
            "config": self.config.to_dict()})
        if summary is not None:
            write_summary(path, summary)
        return path

    @classmethod
    def read_config(cls, path: str | Path) -> Any:
        """The config of the artefact in ``path``, as :meth:`load` builds it."""
        config, _ = cls._read(Path(path))
        return config

    @classmethod
    def load(cls: type[A], path: str | Path, device: str | torch.device = "cpu") -> A:
        """Rebuild the artefact saved in ``path``, in eval mode on ``device``."""
        path = Path(path)
        config, layout = cls._read(path)
        model = cls.build(config, path)
        model.load_payload(path, layout)
        return model.to(device).eval()  # type: ignore[attr-defined]

    @classmethod
    def _read(cls, path: Path) -> tuple[Any, Layout]:
        if not path.is_dir():
            raise FileNotFoundError(f"{path} holds no {_words(cls.kind)} (no such directory); "
                                    f"{cls.train_hint}")
        layout, version, options = cls._locate(path)
        try:
            return cls.config_class.from_dict(cls.migrate(options, version, path)), layout
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path / layout.config} does not describe a valid {_words(cls.kind)} "
                             f"({e}); fix the file or {cls.train_hint}") from e

    @classmethod
    def _locate(cls, path: Path) -> tuple[Layout, int, dict[str, Any]]:
        """The layout, format version and raw options of the artefact in ``path``."""
        file = path / cls.layout.config
        legacy = cls.legacy
        if not file.is_file() and legacy is not None and (path / legacy.config).is_file():
            return legacy, 0, _read_options(path / legacy.config, cls.train_hint)
        if not file.is_file():
            raise FileNotFoundError(f"{path} holds no {_words(cls.kind)} ({cls.layout.config} is "
                                    f"missing); {cls.train_hint}")
        raw = _read_options(file, cls.train_hint)
        if "format" not in raw:
            if legacy is None or legacy.config != cls.layout.config:
                raise ValueError(f"{file} is not a modtrans {_words(cls.kind)} config (no 'format' "
                                 f"key); {cls.train_hint}")
            return legacy, 0, raw
        if raw.get("kind") != cls.kind:
            raise ValueError(f"{path} holds a {raw.get('kind')!r}, not a {_words(cls.kind)}; "
                             f"pass the directory of a {_words(cls.kind)}")
        if not isinstance(raw["format"], int) or raw["format"] > FORMAT:
            raise ValueError(f"{file} has format {raw['format']!r}; this modtrans reads up to "
                             f"{FORMAT}: upgrade modtrans")
        if not isinstance(raw.get("config"), dict):
            raise ValueError(f"{file} has no 'config' mapping; {cls.train_hint}")
        return cls.layout, raw["format"], raw["config"]


class TokenizerArtefact(Artefact):
    """An artefact built around a transformers text tokenizer of its own (``cls(config,
    tokenizer)``), saved beside the weights in ``text_tokenizer/``."""

    tokenizer: Any

    def save_payload(self, path: Path) -> None:
        """The weights as ``model.safetensors`` and the tokenizer in ``text_tokenizer/``."""
        super().save_payload(path)
        self.tokenizer.save_pretrained(path / TOKENIZER_DIR)

    @classmethod
    def build(cls: type[A], config: Any, path: Path) -> A:
        """The model around the text tokenizer saved in ``path/text_tokenizer``."""
        from transformers import AutoTokenizer

        tokenizer_dir = path / TOKENIZER_DIR
        if not (tokenizer_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{tokenizer_dir} holds no tokenizer; {cls.train_hint}")
        return cls(config, AutoTokenizer.from_pretrained(  # type: ignore[call-arg]
            tokenizer_dir, local_files_only=True))


def _words(kind: str) -> str:
    """A kind as words for messages: ``image-decoder`` → ``image decoder``."""
    return kind.replace("-", " ")


def _read_options(file: Path, hint: str) -> dict[str, Any]:
    try:
        return read_mapping(file)
    except ValueError as e:
        raise ValueError(f"{e}: restore it or {hint}") from e


def load_state(module: torch.nn.Module, weights: Path, config: Path, hint: str) -> None:
    """Load safetensors ``weights`` into ``module`` (strict), with errors that name the file:
    missing, unreadable (truncated, not safetensors) or not matching ``config``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; {hint}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights} is not a readable safetensors file ({e}); it may be "
                         f"truncated: restore it or {hint}") from e
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
        raise ValueError(f"{weights} does not match {config} ({detail}); the config was edited "
                         f"or the files come from different models: restore them or {hint}"
                         ) from e


def load_pretrained(model_class: Any, path: Path, hint: str) -> tuple[Any, Any]:
    """A transformers model (``model_class.from_pretrained``) and its tokenizer saved in
    ``path``, offline, with an error that names the directory when they cannot be read."""
    from transformers import AutoTokenizer

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no transformers model (config.json is "
                                f"missing); {hint}")
    try:
        return (model_class.from_pretrained(path, local_files_only=True),
                AutoTokenizer.from_pretrained(path, local_files_only=True))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} holds no readable transformers model ({e}); restore it "
                         f"or {hint}") from e


def write_summary(path: str | Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``summary.json``: the training summary and its provenance (modtrans version,
    git commit when run from a checkout, time)."""
    provenance = {"modtrans": modtrans.__version__, "commit": _commit(),
                  "written": datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec="seconds")}
    summary = {**summary, "provenance": {**summary.get("provenance", {}), **provenance}}
    write_json(Path(path) / SUMMARY_FILE, summary)
    return summary


def read_summary(path: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of an artefact directory ({} if it has none)."""
    file = Path(path) / SUMMARY_FILE
    return read_json(file) if file.is_file() else {}


def _commit() -> str | None:
    """The git commit of the modtrans source, if it runs from a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None

