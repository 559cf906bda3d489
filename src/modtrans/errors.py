"""The errors modtrans raises on purpose about a job, which the CLI reports in one line."""

from __future__ import annotations


class NonFiniteError(ValueError):
    """A NaN or infinite value met where numbers enter or leave (a store, a loss, weights);
    nothing non-finite was saved."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM stopped a job after what it had done was written; ``--resume``
    continues it."""
