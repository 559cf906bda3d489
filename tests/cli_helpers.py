"""Helpers shared by the CLI tests."""

from __future__ import annotations

import pytest

from modtrans.cli import main


def assert_cli_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """``main(argv)`` exits 2 with a one-line ``Error: ...`` as the last line on stderr."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("Error: "), err
    for needle in needles:
        assert needle in last, last
    return last
