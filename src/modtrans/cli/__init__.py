"""The ``modtrans`` command line: thin verbs over the Python API.

Every verb lives in a submodule that registers itself on :data:`app`; :func:`main` takes
``argv`` so tests call it directly.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

try:  # typer >= 0.2x vendors its own click and raises that click's exceptions
    from typer._click.exceptions import ClickException
except ImportError:  # older typer runs on click itself
    from click import ClickException

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


@app.callback()
def _configure(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings and errors only."),
) -> None:
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


def _register_verbs() -> None:
    from modtrans.cli import (  # noqa: F401  (modules add their verbs)
        data,
        decoders,
        encoders,
        retrieval,
        translate,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Expected errors (bad input, missing files) are reported in one line, without a traceback.
    """
    _register_verbs()
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="modtrans", standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except ClickException as e:
        e.show()
        return e.exit_code
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        typer.echo(f"Error: {e}", err=True)
        return 2
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
