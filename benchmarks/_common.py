"""Shared by benchmark scripts: where results go and what every result file records."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from modtrans.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def git_commit() -> str:
    """HEAD's commit; ``MODTRANS_GIT_COMMIT`` names it where the tree was copied without .git."""
    if os.environ.get("MODTRANS_GIT_COMMIT"):
        return os.environ["MODTRANS_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(name: str, config: dict[str, Any], figures: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` with config, figures, commit and machine."""
    path = RESULTS / f"{name}.json"
    write_json(path, {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine(),
        "config": config,
        "figures": figures,
    })
    return path
