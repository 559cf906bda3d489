"""Helpers for tests that edit or age a saved artefact directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def saved_options(path: Path, file: str = "config.json") -> dict[str, Any]:
    """The config options an artefact in ``path`` was saved with."""
    return json.loads((path / file).read_text())["config"]


def write_options(path: Path, options: dict[str, Any], file: str = "config.json") -> None:
    """Replace the saved config options of the artefact in ``path``."""
    raw = json.loads((path / file).read_text())
    (path / file).write_text(json.dumps({**raw, "config": options}))


def as_format0(path: Path, options: dict[str, Any], config: str, weights: str | None) -> None:
    """Rewrite the artefact in ``path`` as modtrans wrote it before the artefact layer: flat
    ``options`` in the kind's old config file, the weights under its old name."""
    (path / "config.json").unlink(missing_ok=True)
    (path / config).write_text(json.dumps(options))
    if weights is not None:
        (path / "model.safetensors").rename(path / weights)
