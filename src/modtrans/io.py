"""Atomic file writes (a file either appears whole or not at all), and reads of JSON, npy and
parquet files whose errors name the file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic.
    On error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing and atomically move it to ``path`` on success."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with an error that names the file when it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it or regenerate it") from e


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a numpy array as ``.npy``, atomically."""
    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def save_weights(path: str | os.PathLike, module: Any, metadata: dict[str, str] | None = None
                 ) -> None:
    """Write a torch module's state dict as safetensors (never a pickle), atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def require_file(path: str | os.PathLike, message: str) -> None:
    """FileNotFoundError with ``message`` (what is missing and how to make it) unless ``path``
    is a file."""
    if not Path(path).is_file():
        raise FileNotFoundError(message)



def load_npy(path: str | os.PathLike, *, mmap: bool = True) -> np.ndarray:
    """Load a ``.npy`` array (memory-mapped by default), with an error that names the file
    when it is missing, truncated or not an array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npy array ({e}); it is truncated or "
                         "damaged: regenerate it") from e


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None):
    """Read a parquet file as a pyarrow Table, with an error that names the file when it is
    missing, truncated, not parquet or lacks one of ``columns``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path} is not a readable parquet table ({e}); it is truncated, "
                         "damaged or lacks a column: regenerate it") from e
