"""Prometheus counters and latency histograms of one service (a registry of its own, so
several apps in one process do not share them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Latency buckets in seconds: a cached search is ~1 ms, a generation several seconds.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Requests by endpoint and status, their latency, each stage's latency, batch sizes and
    the 503s of a full queue."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("modtrans_requests", "Requests answered, by endpoint and "
                                "status code.", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("modtrans_request_seconds", "Request latency, by endpoint.",
                                 ["endpoint"], buckets=SECONDS, registry=self.registry)
        self.stages = Histogram("modtrans_stage_seconds", "Latency of one request's stage "
                                "(encode, translate, search, decode), queueing included.",
                                ["stage"], buckets=SECONDS, registry=self.registry)
        self.batch_size = Histogram("modtrans_batch_size", "Requests merged into one model "
                                    "call, by operation.", ["op"], buckets=BATCH_SIZES,
                                    registry=self.registry)
        self.batch_seconds = Histogram("modtrans_batch_seconds", "Time of one batched model "
                                       "call, by operation.", ["op"], buckets=SECONDS,
                                       registry=self.registry)
        self.rejected = Counter("modtrans_rejected", "Requests refused with 503 because the "
                                "queue was full.", ["endpoint"], registry=self.registry)
        self.in_flight = Gauge("modtrans_in_flight", "Requests being served.",
                               registry=self.registry)

    def observe_batch(self, op: str, size: int, seconds: float) -> None:
        """Record one batched model call."""
        kind = op.split(":", 1)[0]
        self.batch_size.labels(kind).observe(size)
        self.batch_seconds.labels(kind).observe(seconds)

    def text(self) -> bytes:
        """Everything in the Prometheus text format."""
        return generate_latest(self.registry)
