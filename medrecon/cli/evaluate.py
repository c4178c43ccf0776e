"""``medrecon evaluate``: placeholder module, replaced by its implementation."""

import typer


def register(app: typer.Typer) -> None:
    pass
