"""Load on ``modtrans serve`` over loopback: throughput and latency under concurrent clients.

Starts ``modtrans serve FOLDER`` on 127.0.0.1 in a process of its own, then for each
scenario runs N clients for a fixed time, each sending its next request as soon as the last
is answered (keep-alive connections, a minimal HTTP/1.1 client so that the load generator
takes little of the machine): requests/s, p50/p95/p99 latency, 4xx, 5xx and lost requests
(no answer: a reset connection or a 60 s timeout). ``/search`` (text → ced → the image
index) and ``/translate`` (text → ced) run at 1, 16 and 64 clients, ``/generate`` at 1 and
4. Then single requests give the latency of each stage (encode, translate, search, decode)
as the server times them, and ``/metrics`` the batch sizes the micro-batcher formed.

Usage: ``python benchmarks/bench_serve.py [--folder DIR] [--seconds 20]``; without
``--folder`` it builds (once) the ``tiny-generation`` demo in ``benchmarks/work/serve_demo``.
Writes ``benchmarks/results/serve.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from _common import write_result

logger = logging.getLogger("bench_serve")

WORK = Path(__file__).resolve().parent / "work"
PRESET = "tiny-generation"
#: (name, endpoint, body fields without the text, client counts)
SCENARIOS = [
    ("search", "/search", {"translator": "text2image/ced", "k": 10}, (1, 16, 64)),
    ("translate", "/translate", {"translator": "text2image/ced"}, (1, 16, 64)),
    ("generate", "/generate", {"n": 4}, (1, 4)),
]
TIMEOUT_S = 60.0


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def load(host: str, port: int, path: str, bodies: list[bytes], clients: int,
               seconds: float) -> dict[str, Any]:
    """``clients`` closed-loop clients on ``path`` for ``seconds``; their figures."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lost = [0]
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        connection = Connection(host, port)
        n = i
        while time.perf_counter() < stop:
            body = bodies[n % len(bodies)]
            n += clients
            start = time.perf_counter()
            try:
                status, _ = await asyncio.wait_for(connection.post(path, body), TIMEOUT_S)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                lost[0] += 1
                await connection.close()
                continue
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1
        await connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    ok = statuses.get(200, 0)
    return {
        "clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies),
        "ok": ok, "requests_per_s": round(ok / elapsed, 2),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) if len(ms) else None
           for q in (50, 95, 99)},
        "4xx": sum(n for s, n in statuses.items() if 400 <= s < 500),
        "5xx": sum(n for s, n in statuses.items() if s >= 500),
        "503": statuses.get(503, 0), "lost": lost[0],
    }


def stage_breakdown(url: str, prompts: list[str], image: Path, repeats: int = 20
                    ) -> dict[str, Any]:
    """Median server-side stage latencies of lone requests, and the HTTP round trip."""
    plans = {
        "search": ("/search", {"translator": "text2image/ced", "k": 10}),
        "search_raw": ("/search", {"k": 10}),
        "translate": ("/translate", {"translator": "text2image/ced"}),
        "generate": ("/generate", {"n": 4}),
    }
    out: dict[str, Any] = {}
    for name, (path, fields) in plans.items():
        stages: dict[str, list[float]] = {}
        totals = []
        for i in range(repeats if name != "generate" else 5):
            key = "prompt" if path == "/generate" else "text"
            start = time.perf_counter()
            answer = _post_json(url + path, {key: prompts[i % len(prompts)], **fields})
            totals.append((time.perf_counter() - start) * 1000)
            for stage, ms in answer["timings_ms"].items():
                stages.setdefault(stage, []).append(ms)
        out[name] = _medians(stages, totals)
    stages, totals = {}, []
    for _ in range(5):
        start = time.perf_counter()
        answer = _post_form(url + "/caption", image)
        totals.append((time.perf_counter() - start) * 1000)
        for stage, ms in answer["timings_ms"].items():
            stages.setdefault(stage, []).append(ms)
    out["caption"] = _medians(stages, totals)
    return out


def _medians(stages: dict[str, list[float]], totals: list[float]) -> dict[str, float]:
    medians = {s: round(float(np.median(v)), 2) for s, v in stages.items()}
    total = float(np.median(totals))
    return {**medians, "total": round(total, 2),
            "http_and_framework": round(total - sum(medians.values()), 2)}


def _post_json(url: str, fields: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(fields).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
        return json.load(r)


def _post_form(url: str, image: Path) -> dict[str, Any]:
    boundary = "modtransbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{image.name}\"\r\nContent-Type: image/png\r\n\r\n").encode() + \
        image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, body, {
        "content-type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
        return json.load(r)


def batch_sizes(metrics: str) -> dict[str, float]:
    """Mean requests per model call, by operation, from ``/metrics``."""
    sums = dict(re.findall(r'^modtrans_batch_size_sum\{op="([^"]+)"\} (\S+)$', metrics, re.M))
    counts = dict(re.findall(r'^modtrans_batch_size_count\{op="([^"]+)"\} (\S+)$', metrics,
                             re.M))
    return {op: round(float(sums[op]) / float(counts[op]), 2) for op in sums
            if float(counts.get(op, 0)) > 0}


def start_server(folder: Path, log: Path) -> tuple[subprocess.Popen, str, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = open(log, "w")  # noqa: SIM115  (the server writes to it until it stops)
    process = subprocess.Popen([sys.executable, "-m", "modtrans", "serve", str(folder),
                                "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return process, url, port
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the server did not come up in 180 s") from None
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None,
                        help=f"a demo folder (default: the {PRESET} demo, built once in "
                        f"{WORK / 'serve_demo'})")
    parser.add_argument("--seconds", type=float, default=20.0, help="per scenario and "
                        "client count")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = args.folder
    if folder is None:
        from modtrans.demo import PRESETS, run_demo

        folder = WORK / "serve_demo"
        if not (folder / "e2e" / "results.json").is_file():
            logger.info("building the %s demo in %s", PRESET, folder)
            run_demo(folder, PRESETS[PRESET], progress=False)
    WORK.mkdir(exist_ok=True)
    process, url, port = start_server(folder, WORK / "serve_bench.log")
    try:
        figures = run(folder, url, port, args.seconds)
    finally:
        process.terminate()
        code = process.wait(60)
    log = (WORK / "serve_bench.log").read_text()
    figures["server"] = {"exit_code": code, "tracebacks_in_log": log.count("Traceback")}
    config = {"folder": str(folder), "preset": PRESET if args.folder is None else None,
              "seconds_per_run": args.seconds, "scenarios": [
                  {"name": n, "endpoint": e, "fields": f, "clients": list(c)}
                  for n, e, f, c in SCENARIOS],
              "client": "closed loop, keep-alive HTTP/1.1 over 127.0.0.1, same process "
                        "for every client (asyncio); the server is a separate process",
              "note": "clients share the 2 cores with the server; ced requests all use "
                      "seed 0, so concurrent ones can share a translator call"}
    path = write_result("serve", config, figures)
    logger.info("wrote %s", path)


def run(folder: Path, url: str, port: int, seconds: float) -> dict[str, Any]:
    from modtrans.data.store import open_store

    val = open_store(folder / "store", "val")
    prompts = val.text_metadata().column("caption").to_pylist()[:512]
    image = Path(val.image_metadata().column("image_path")[0].as_py())
    models = json.load(urllib.request.urlopen(url + "/models", timeout=10))
    _post_json(url + "/generate", {"prompt": prompts[0], "n": 1})  # warm up every stage
    _post_json(url + "/search", {"text": prompts[0], "translator": "text2image/ced"})
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, path, fields, counts in SCENARIOS:
        key = "prompt" if path == "/generate" else "text"
        bodies = [json.dumps({key: p, **fields}).encode() for p in prompts]
        for clients in counts:
            result = asyncio.run(load("127.0.0.1", port, path, bodies, clients, seconds))
            logger.info("%s × %d clients: %.1f req/s, p50 %s ms, p99 %s ms, 5xx %d, lost %d",
                        name, clients, result["requests_per_s"], result["p50_ms"],
                        result["p99_ms"], result["5xx"], result["lost"])
            runs.setdefault(name, []).append(result)
    metrics = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    breakdown = stage_breakdown(url, prompts, image)
    speedup = {name: round(r[1]["requests_per_s"] / r[0]["requests_per_s"], 2)
               for name, r in runs.items() if len(r) > 1 and r[0]["requests_per_s"]}
    return {
        "models": {k: len(v) for k, v in models.items() if isinstance(v, list)},
        "index_size": {i["name"]: i["size"] for i in models["indexes"]},
        "runs": runs,
        "throughput_ratio_16_vs_1": {n: s for n, s in speedup.items() if n != "generate"},
        "throughput_ratio_4_vs_1": {n: s for n, s in speedup.items() if n == "generate"},
        "total_5xx": sum(r["5xx"] for rs in runs.values() for r in rs),
        "total_lost": sum(r["lost"] for rs in runs.values() for r in rs),
        "mean_batch_size": batch_sizes(metrics),
        "stage_latency_ms": breakdown,
        "cpu_count": os.cpu_count(),
    }


if __name__ == "__main__":
    main()
