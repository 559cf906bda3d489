"""img2dataset webdataset shards (CC3M as seed 000 used it), streamed, never unpacked.

A shard ``00000.tar`` holds, per sample, members ``<key>.jpg`` (or png/webp), ``<key>.txt``
(the caption) and ``<key>.json`` (url, status, ...); img2dataset writes ``00000.parquet``
beside it, one row per attempted sample. Members of one sample are adjacent in the tar, so
one sequential pass reads everything. A truncated shard yields what it holds up to the
damage, then a record carrying the error, and the job goes on with the next shard.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modtrans.data.records import IMAGE_SUFFIXES, Record, contiguous_ranges
from modtrans.io import read_parquet

logger = logging.getLogger(__name__)


def _split_member(name: str) -> tuple[str, str]:
    """``"dir/000001.jpg"`` → (``"dir/000001"``, ``".jpg"``): the key ends at the first dot."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (dot + ext).lower()


class WebDatasetShards:
    """The samples of one ``.tar`` shard or of every ``.tar`` in a folder, in shard order.

    Workers take whole shards (shard *i* goes to worker *i* mod *n*); so do work units.
    """

    def __init__(self, path: str | Path | list[Path]) -> None:
        """Args:
        path: a ``.tar`` shard, a folder of them, or a list of shards.
        """
        if isinstance(path, list):
            self.shards = list(path)
        else:
            path = Path(path)
            self.shards = [path] if path.is_file() else sorted(path.glob("*.tar"))
        if not self.shards:
            raise FileNotFoundError(f"{path} holds no .tar shard")
        self._length = self._count_from_parquet()

    def units(self, n: int) -> list[WebDatasetShards]:
        """At most ``n`` contiguous, non-empty ranges of whole shards, covering them in order."""
        return [WebDatasetShards(self.shards[a:b])
                for a, b in contiguous_ranges(len(self.shards), n)]

    def _count_from_parquet(self) -> int:
        """Successful samples listed in the img2dataset parquet files (0 when there are none)."""
        total = 0
        for shard in self.shards:
            table_path = shard.with_suffix(".parquet")
            if not table_path.is_file():
                return 0
            table = read_parquet(table_path)
            if "status" in table.column_names:
                total += sum(s == "success" for s in table.column("status").to_pylist())
            else:
                total += table.num_rows
        return total

    def __len__(self) -> int:
        return self._length

    def records(self, worker: int = 0, n_workers: int = 1) -> Iterator[Record]:
        for shard in self.shards[worker::n_workers]:
            yield from self._read_shard(shard)

    def _read_shard(self, shard: Path) -> Iterator[Record]:
        key, members = None, {}
        try:
            with tarfile.open(shard, mode="r|*") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    member_key, ext = _split_member(info.name)
                    if member_key != key and key is not None:
                        yield self._record(shard, key, members)
                        members = {}
                    key = member_key
                    members[ext] = tar.extractfile(info).read()
        except (tarfile.TarError, EOFError, OSError) as e:
            logger.warning("shard %s is damaged after sample %s: %s", shard, key, e)
            yield Record(f"{shard.name}:damaged", b"", [], [], str(shard),
                         meta={"url": None}, error=f"damaged shard after sample {key} ({e})")
            return
        if key is not None:
            yield self._record(shard, key, members)

    @staticmethod
    def _record(shard: Path, key: str, members: dict[str, bytes]) -> Record:
        image_ext = next((e for e in members if e in IMAGE_SUFFIXES), None)
        caption = members.get(".txt", b"").decode("utf-8", errors="replace").strip()
        info: dict[str, Any] = {}
        if ".json" in members:
            try:
                info = json.loads(members[".json"])
            except json.JSONDecodeError:
                logger.warning("%s:%s has an unreadable .json member; ignored", shard, key)
        return Record(
            image_id=key,
            image=members[image_ext] if image_ext else b"",
            captions=[caption],
            caption_ids=[key],
            location=f"{shard}:{key}",
            meta={"url": info.get("url") if isinstance(info, dict) else None},
            error=None if image_ext else "no image member",
        )
