"""The README and the documentation site: short, buildable, and every command they show
names a verb and options the CLI has."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from modtrans.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shell_commands(markdown: str) -> list[list[str]]:
    """The ``modtrans ...`` command lines of a page's fenced bash blocks, as tokens."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("modtrans "):
                commands.append(shlex.split(line))
    return commands


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move text into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_shown_exists(page: Path) -> None:
    verbs = typer.main.get_command(app).commands
    for tokens in shell_commands(page.read_text()):
        verb = tokens[1]
        assert verb in verbs, f"{page.name}: `modtrans {verb}` is no verb"
        options = {opt for param in verbs[verb].params for opt in param.opts + param.secondary_opts}
        for token in tokens[2:]:
            if token.startswith("--"):
                assert token.split("=")[0] in options, (
                    f"{page.name}: `modtrans {verb}` has no option {token}")


def test_shell_commands_are_found() -> None:
    text = "```bash\nmodtrans train --data s \\\n    --method ced  # note\nls\n```\n"
    assert shell_commands(text) == [["modtrans", "train", "--data", "s", "--method", "ced"]]


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d",
                           str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "modtrans train" in cli and "--resume" in cli
