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
    lverse,
    retrieval,
    translate,
)
from modtrans.cli.application import app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Expected errors (bad input, missing files) are reported in one line, without a traceback.
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
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        typer.echo(f"Error: {e}", err=True)
        return 2
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
