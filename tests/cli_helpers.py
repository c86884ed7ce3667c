"""What the CLI tests share: run a command in-process, and check that bad input is one clear line."""

from __future__ import annotations

from typer.testing import CliRunner

from diffusionlab.cli import app

runner = CliRunner()

# `train` options for a model that trains in a second: the tiny UNet on 8x8 digits, no previews, no final evaluation
TINY = ["--model-size", "tiny", "--image-size", "8", "--batch-size", "8", "--sample-every", "0", "--no-progress"]
TINY += ["--no-final-eval"]


def run(*args: object):  # type: ignore[no-untyped-def]
    """``diffusionlab ARGS...`` in this process; returns click's Result (exit_code, output, stderr)."""
    return runner.invoke(app, [str(a) for a in args])


def assert_clear_error(result, *fragments: str, progress_on_stderr: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Exit status 2, no traceback, and exactly one stderr line 'error: ...' holding every fragment
    (``progress_on_stderr``: other stderr lines, such as progress messages, are allowed)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    if progress_on_stderr:
        lines = [ln for ln in lines if ln.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
