"""MkDocs hook: the CLI reference page is generated from the command line itself (every
verb's ``--help``), so it cannot drift from the code."""

from __future__ import annotations

import typer
from mkdocs.structure.files import File


def _reference() -> str:
    from typer.testing import CliRunner

    from modtrans.cli import app

    runner = CliRunner()
    parts = ["# Command line", "", "Generated from `modtrans <verb> --help`.", ""]
    for name in sorted(typer.main.get_command(app).commands):
        result = runner.invoke(app, [name, "--help"], prog_name="modtrans", terminal_width=100,
                               env={"NO_COLOR": "1", "COLUMNS": "100", "TERM": "dumb"})
        if result.exit_code != 0:
            raise RuntimeError(f"modtrans {name} --help failed: {result.output}")
        parts += [f"## `{name}`", "", "```text", result.output.rstrip(), "```", ""]
    return "\n".join(parts)


def on_files(files, config):
    """Add the generated ``reference/cli.md`` to the site."""
    files.append(File.generated(config, "reference/cli.md", content=_reference()))
    return files
