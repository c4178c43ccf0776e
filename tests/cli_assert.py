"""The check every CLI error-path test makes: exit code 2, one sentence, no traceback."""

from __future__ import annotations

from typer.testing import Result


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
