"""kill -9 of real ``modtrans train`` and ``modtrans embed`` processes: ``--resume`` ends
with the weights, or the store, of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modtrans.cli import main
from modtrans.data.store import EmbeddingStore


@pytest.mark.parametrize("checkpoints_before_kill", [2])
def test_train_killed_with_sigkill_resumes_to_the_same_weights(
    tiny_store: Path, tmp_path: Path, checkpoints_before_kill: int
) -> None:
    argv = ["train", "--data", str(tiny_store), "--direction", "text2image", "--method",
            "mlp", "--param", "width=32", "--epochs", "40", "--batch-size", "8",
            "--checkpoint-every", "2", "--logger", "none"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "modtrans", *argv, "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    checkpoint, seen, deadline = out / "lightning" / "last.ckpt", set(), time.time() + 120
    while len(seen) < checkpoints_before_kill and process.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        if checkpoint.is_file():
            seen.add(checkpoint.stat().st_mtime_ns)
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before the kill"
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _shards(store: Path) -> int:
    try:
        return len(json.loads((store / "manifest.json").read_text())["shards"])
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("shards_before_kill", [1, 4])
def test_embed_killed_with_sigkill_resumes_with_no_duplicate_and_no_gap(
    tiny_world: Path, tiny_clip, tmp_path: Path, shards_before_kill: int
) -> None:
    argv = ["embed", str(tiny_world), "--split", "train", "--encoder", tiny_clip.spec,
            "--shard-size", "4", "--batch-size", "2", "--workers", "1", "--dtype", "float32"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "modtrans", *argv, "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while _shards(out / "train") < shards_before_kill and process.poll() is None:
        assert time.time() < deadline, "no shard appeared"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not json.loads((out / "train" / "manifest.json").read_text())["complete"], \
        "the run finished before the kill"
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    whole, cut = EmbeddingStore(tmp_path / "whole" / "train"), EmbeddingStore(out / "train")
    ids = cut.image_metadata().column("image_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert ids == whole.image_metadata().column("image_id").to_pylist()
    assert cut.text_metadata().to_pylist() == whole.text_metadata().to_pylist()
    np.testing.assert_allclose(cut.image_embeddings[:], whole.image_embeddings[:], atol=1e-5)
    np.testing.assert_allclose(cut.text_embeddings[:], whole.text_embeddings[:], atol=1e-5)
