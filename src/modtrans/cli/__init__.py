"""The ``modtrans`` command line: thin verbs over the Python API.

Every verb lives in a submodule that registers itself on :data:`~modtrans.cli.application.app`;
:func:`main` takes ``argv`` so tests call it directly.
"""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.2x vendors its own click and raises that click's exceptions
    from typer._click.exceptions import ClickException
except ImportError:  # older typer runs on click itself
    from click import ClickException

from modtrans.cli import (  # noqa: F401  (add verbs)
    data,
    decoders,
    encoders,
    joint,
    lverse,
    retrieval,
    serve,
    translate,
)
from modtrans.cli.application import app, options
from modtrans.errors import Interrupted

#: Errors that describe bad input or a missing file: shown as one line, exit code 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError, ImportError)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Errors are reported in one line, without a traceback: bad input (exit 2), an interrupted
    job (130), anything else as an internal error (1); ``modtrans --debug VERB`` re-raises
    them to show the traceback.
    """
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
    except Exception as e:
        if options.debug:
            raise
        if isinstance(e, Interrupted):
            typer.echo(f"Stopped: {e}", err=True)
            return 130
        if isinstance(e, USER_ERRORS):
            typer.echo(f"Error: {e}", err=True)
            return 2
        typer.echo(f"Internal error ({type(e).__name__}): {e}. Rerun with `modtrans --debug "
                   "...` for the traceback, and report it if the input looks right.", err=True)
        return 1
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
