"""The Typer application every verb module registers on, and its logging options."""

from __future__ import annotations

import dataclasses
import logging
import os

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(
    name="modtrans",
    help=(
        "Modality translation between embedding spaces. Start with `modtrans demo`, or run the "
        "pipeline step by step: world → fit-encoder → embed."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclasses.dataclass
class Options:
    """The options given before the verb."""

    debug: bool = False


options = Options()


@app.callback()
def _configure(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings and errors only."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error."),
) -> None:
    options.debug = debug
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    handler.setLevel(level)
    if not verbose:
        handler.addFilter(_hide_library_info)
        # Lightning logs through handlers of its own ("GPU available: False", tips).
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    # Read by transformers and huggingface_hub on import: no per-load progress bars.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _hide_library_info(record: logging.LogRecord) -> bool:
    """Keep third-party info chatter (Lightning's tips, device summary) off the terminal."""
    return record.name.startswith("modtrans") or record.levelno >= logging.WARNING
