"""The backend's command line (backend/cli.py)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_size_limits_on_the_command_line_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    from backend.cli import build_parser

    for flag in ("--max-size", "--max-message-mb"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([flag, "0"])
        assert "must be at least 1" in capsys.readouterr().err
    assert build_parser().parse_args(["--max-size", "2048"]).max_size == 2048
