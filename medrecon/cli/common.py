"""Helpers every command uses: turning user errors into one sentence and exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from medrecon.errors import MedreconError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2


def user_errors(func: F) -> F:
    """Run a command; a :class:`MedreconError` becomes ``Error: <sentence>`` and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MedreconError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted; no partial output was kept.", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
