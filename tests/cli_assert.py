"""The check every CLI error-path test makes (exit code 2, one sentence, no traceback), and
what those tests share: the small simulation's options and a folder listing."""

from __future__ import annotations

from pathlib import Path

from typer.testing import Result

#: ``medrecon simulate`` options of the small MR measurement the error-path tests start from.
SIM = ["--coils", "2", "--acceleration", "2", "--calibration", "4", "--device", "cpu"]


def files_in(folder: Path) -> set[str]:
    """The names in ``folder`` (to show that nothing was written)."""
    return {p.name for p in folder.iterdir()}


def assert_user_error(result: Result, *fragments: str, endings: tuple[str, ...] = (".", ":"),
                      quiet_stdout: bool = False) -> str:
    """Exit code 2, ``Error: <one sentence>`` on stderr, no traceback; returns the message.

    ``endings``: how the first line may end (":" when a list follows it); ``quiet_stdout``:
    also require that nothing was printed on stdout.
    """
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    if quiet_stdout:
        assert result.stdout == ""
    first = result.stderr.splitlines()[0]
    assert first.startswith("Error: ") and first.endswith(endings), result.stderr
    assert first.count(". ") == 0, first  # one sentence
    for text in fragments:
        assert text in result.stderr, (text, result.stderr)
    return result.stderr
