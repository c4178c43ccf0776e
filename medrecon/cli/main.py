"""The ``medrecon`` typer application.

Commands live in their own modules and register themselves; heavy imports (torch, pydicom,
monai) happen inside the command functions so ``medrecon --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

from medrecon import __version__


class _OneLineErrors(TyperGroup):
    """The command group, with an invalid option value (out of range, not a number) reported
    as one ``Error:`` line and exit code 2, like every other user error, instead of click's
    usage block."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.BadParameter as exc:
            text = exc.format_message().rstrip()
            typer.echo(f"Error: {text}{'' if text.endswith('.') else '.'}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_OneLineErrors,
    name="medrecon",
    help="Reconstruct 3D MRI and CT from undersampled measurements with a learned diffusion prior.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Order here is the order in `medrecon --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "info", "convert", "evaluate", "phantom", "simulate", "reconstruct", "reconstruct_many", "train",
    "priors", "demo",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medrecon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Reconstruct 3D MRI and CT from undersampled measurements with a learned diffusion prior."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"medrecon.cli.{_name}").register(app)


def main() -> None:
    from medrecon.monai_import import lean_monai_import

    lean_monai_import()  # this process is ours: MONAI serves only the U-Net here
    app()


if __name__ == "__main__":
    main()
