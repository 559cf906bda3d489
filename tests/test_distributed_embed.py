"""The embed job on a local 2-worker Ray cluster against the single-process job: the same rows
and embeddings, no duplicate and no gap, also after a worker dies mid-unit or a unit fails
and the job is resumed."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modtrans.data.coco import CaptionedImages, read_coco_captions
from modtrans.data.embed import embed_captioned_images
from modtrans.data.records import Record
from modtrans.data.store import EmbeddingStore
from modtrans.data.webdataset import WebDatasetShards
from modtrans.io import read_json

ray = pytest.importorskip("ray")

OPTIONS = {"split": "train", "source": {"captions": "test"}, "dtype": "float32",
           "shard_size": 2, "batch_size": 2, "progress": False}


@dataclasses.dataclass
class FailingSource:
    """A source whose unit ``unit`` fails at its fourth record while ``marker`` exists: the
    worker kills itself (``kill``, once: the marker goes first) or raises (``raise``)."""

    inner: CaptionedImages
    marker: Path
    how: str
    unit: int = -1

    def __len__(self) -> int:
        return len(self.inner)

    def units(self, n: int) -> list[FailingSource]:
        return [dataclasses.replace(self, inner=part, unit=i)
                for i, part in enumerate(self.inner.units(n))]

    def records(self, worker: int = 0, n_workers: int = 1) -> Iterator[Record]:
        for k, record in enumerate(self.inner.records(worker, n_workers)):
            if self.unit == 1 and k == 3 and self.marker.exists():
                if self.how == "kill":
                    self.marker.unlink()
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("injected failure")
            yield record


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster of 2 worker CPUs that ships this module's classes by value."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             object_store_memory=100 * 2**20)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tiny_world: Path) -> CaptionedImages:
    return read_coco_captions(tiny_world / "train" / "captions.json")


@pytest.fixture(scope="module")
def single(data: CaptionedImages, clip_encoder: Any, tmp_path_factory: pytest.TempPathFactory
           ) -> EmbeddingStore:
    out = tmp_path_factory.mktemp("single") / "train"
    embed_captioned_images(data, clip_encoder, clip_encoder, out, **OPTIONS)
    return EmbeddingStore(out)


def _embed_on_ray(source: Any, encoder: Any, out: Path, **kwargs: Any) -> dict:
    from modtrans.data.distributed import embed_on_ray

    return embed_on_ray(source, encoder, encoder, out, **{**OPTIONS, "units": 4, **kwargs})


def _assert_same(store: EmbeddingStore, single: EmbeddingStore) -> None:
    """Same rows in the same order, no duplicate, embeddings allclose, pairing intact."""
    ids = store.image_metadata().column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == single.n_images
    assert store.image_metadata().to_pylist() == single.image_metadata().to_pylist()
    assert store.text_metadata().to_pylist() == single.text_metadata().to_pylist()
    np.testing.assert_allclose(store.image_embeddings[:], single.image_embeddings[:], atol=1e-5)
    np.testing.assert_allclose(store.text_embeddings[:], single.text_embeddings[:], atol=1e-5)
    assert store.manifest["complete"]
    assert not (store.root / "units").exists()


def test_units_cover_the_source_in_order(data: CaptionedImages, tmp_path: Path) -> None:
    parts = data.units(4)
    assert len(parts) == 4
    assert [i for p in parts for i in p.image_ids] == data.image_ids
    assert len(data.units(10**6)) == len(data)
    for i in range(3):
        with tarfile.open(tmp_path / f"{i:05d}.tar", "w"):
            pass
    shards = WebDatasetShards(tmp_path).units(2)
    assert [s.shards for s in shards] == [[tmp_path / "00000.tar"],
                                          [tmp_path / "00001.tar", tmp_path / "00002.tar"]]


def test_two_workers_write_the_single_process_store(
    cluster: None, data: CaptionedImages, clip_encoder: Any, single: EmbeddingStore,
    tmp_path: Path,
) -> None:  # fmt: skip
    summary = _embed_on_ray(data, clip_encoder, tmp_path / "ray")
    assert summary["units"] == 4 and summary["retries"] == 0
    assert summary["images_written"] == single.n_images
    _assert_same(EmbeddingStore(tmp_path / "ray"), single)


def test_a_worker_killed_mid_unit_is_retried_without_duplicates(
    cluster: None, data: CaptionedImages, clip_encoder: Any, single: EmbeddingStore,
    tmp_path: Path,
) -> None:  # fmt: skip
    marker = tmp_path / "fail"
    marker.touch()
    summary = _embed_on_ray(FailingSource(data, marker, "kill"), clip_encoder, tmp_path / "ray")
    assert summary["retries"] == 1, summary["errors"]
    assert "unit 1" in summary["errors"][0] and "Crashed" in summary["errors"][0], summary
    store = EmbeddingStore(tmp_path / "ray")
    assert store.manifest["units"]["retries"] == 1
    _assert_same(store, single)


def test_a_failed_unit_stops_the_job_and_resume_finishes_it(
    cluster: None, data: CaptionedImages, clip_encoder: Any, single: EmbeddingStore,
    tmp_path: Path,
) -> None:  # fmt: skip
    marker = tmp_path / "fail"
    marker.touch()
    source = FailingSource(data, marker, "raise")
    with pytest.raises(RuntimeError, match=r"unit 1 .* failed 2 time"):
        _embed_on_ray(source, clip_encoder, tmp_path / "ray", retries=1)
    partial = tmp_path / "ray" / "units" / "unit_00001"
    assert EmbeddingStore(partial).n_images == 2  # its first shard was kept
    before = read_json(tmp_path / "ray" / "manifest.json")
    assert before["units"] == {"planned": 4, "merged": before["units"]["merged"], "retries": 1}
    marker.unlink()
    summary = _embed_on_ray(source, clip_encoder, tmp_path / "ray", resume=True, units=7)
    assert summary["units"] == 4  # the plan it started with
    assert before["n_images"] + summary["images_written"] == single.n_images
    _assert_same(EmbeddingStore(tmp_path / "ray"), single)


def test_the_embed_verb_runs_on_ray(
    cluster: None, tiny_world: Path, tiny_clip: Any, single: EmbeddingStore, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from modtrans.cli import main

    argv = ["embed", str(tiny_world), "--split", "train", "--out", str(tmp_path), "--encoder",
            tiny_clip.spec, "--engine", "ray", "--workers", "2", "--units", "3", "--dtype",
            "float32", "--batch-size", "2"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["engine"], summary["units"]) == ("ray", 3)
    store = EmbeddingStore(tmp_path / "train")
    assert "main_shape" in store.image_metadata().column_names  # the world's ground truth
    assert (store.image_metadata().column("image_id").to_pylist()
            == single.image_metadata().column("image_id").to_pylist())
    np.testing.assert_allclose(store.image_embeddings[:], single.image_embeddings[:], atol=1e-5)


def test_units_finished_but_not_merged_are_merged_on_resume(
    cluster: None, data: CaptionedImages, clip_encoder: Any, single: EmbeddingStore,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from modtrans.data import distributed

    with monkeypatch.context() as patch:
        patch.setattr(distributed, "_merge_ready", lambda *args: None)  # stopped before merging
        with pytest.raises(RuntimeError, match="only 0 of 4 units are merged"):
            _embed_on_ray(data, clip_encoder, tmp_path / "ray")
    summary = _embed_on_ray(data, clip_encoder, tmp_path / "ray", resume=True)
    assert summary["units_done_before"] == 4 and summary["images_written"] == single.n_images
    _assert_same(EmbeddingStore(tmp_path / "ray"), single)


def test_webdataset_units_are_whole_tar_shards(
    cluster: None, data: CaptionedImages, clip_encoder: Any, tmp_path: Path,
) -> None:  # fmt: skip
    for n in range(3):
        with tarfile.open(tmp_path / f"{n:05d}.tar", "w") as tar:
            for row in range(n * 6, n * 6 + 6):
                for suffix, payload in ((".png", data.image_paths[row].read_bytes()),
                                        (".txt", data.captions[row][0].encode())):
                    info = tarfile.TarInfo(f"{row:06d}{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    shards = WebDatasetShards(tmp_path)
    embed_captioned_images(shards, clip_encoder, clip_encoder, tmp_path / "single", **OPTIONS)
    summary = _embed_on_ray(shards, clip_encoder, tmp_path / "ray", units=2)
    assert summary["units"] == 2 and summary["images_written"] == 18
    _assert_same(EmbeddingStore(tmp_path / "ray"), EmbeddingStore(tmp_path / "single"))
