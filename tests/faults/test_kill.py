"""kill -9 of a real ``modtrans train`` process: ``--resume`` ends with the weights of an
uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modtrans.cli import main


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
