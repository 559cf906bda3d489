"""Configuration base: dataclasses validated in ``__post_init__``, serialised as JSON or YAML.

Each module keeps its own config dataclass beside the code it configures; this module holds
only the shared (de)serialisation so every config reads and writes the same way.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml

from modtrans.io import atomic_open

C = TypeVar("C", bound="Config")


@dataclasses.dataclass
class Config:
    """Base class for modtrans configs: ``to_dict``/``from_dict`` and YAML/JSON files."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a dict, rejecting unknown keys with a message that lists the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown option(s) {unknown}; valid options are {sorted(names)}"
            )
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write as YAML (``.yaml``/``.yml``) or JSON (anything else), atomically."""
        with atomic_open(path, "w") as f:
            if Path(path).suffix in (".yaml", ".yml"):
                yaml.safe_dump(self.to_dict(), f, sort_keys=False)
            else:
                json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        """Read a YAML or JSON file written by :meth:`save`."""
        return cls.from_dict(read_mapping(path))

    @classmethod
    def with_overrides(cls: type[C], path: str | Path | None = None, **values: Any) -> C:
        """The options in ``path`` (default: none, so the defaults), with every non-None value
        set. Defaults that depend on other options are resolved after the overrides."""
        base = read_mapping(path) if path else {}
        return cls.from_dict({**base, **{k: v for k, v in values.items() if v is not None}})


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON file, for code that must look at the raw options
    (e.g. to recognise a file of an older version) before building a config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    try:  # PyYAML reads JSON's "1e-05" as a string: JSON files are read as JSON
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:  # hand-written, or saved as YAML by earlier modtrans
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(f"{path} is not valid JSON ({e}); it may be truncated") from e
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{path} is not valid YAML ({first}); it may be truncated") from e
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values")
    return data
