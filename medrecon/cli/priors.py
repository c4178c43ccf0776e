"""``medrecon priors``: list the available diffusion priors (shipped and user-trained)."""

from __future__ import annotations

from pathlib import Path

import typer

from medrecon.cli.common import user_errors


def register(app: typer.Typer) -> None:
    app.command("priors", short_help="List the available diffusion priors.")(priors)


def _check_prior_path(path: Path) -> None:
    """Refuse a path that is not a readable medrecon prior description, in one sentence."""
    import json

    from medrecon.errors import InputError
    from medrecon.priors import resolve_prior_path

    js = resolve_prior_path(path)
    try:
        doc = json.loads(js.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{js} is not a medrecon prior description (a NAME.json file); "
                         f"give a prior's .json, its folder or a training run folder.") from None
    if not isinstance(doc, dict) or doc.get("format") != "medrecon-prior":
        raise InputError(f"{js} is not a medrecon prior description (a NAME.json file); "
                         f"give a prior's .json, its folder or a training run folder.")
    missing = [k for k in ("name", "weights", "modalities", "patch_size", "spacing_mm",
                           "uses_position") if k not in doc]
    if missing:
        raise InputError(f"{js} lacks the prior field {missing[0]!r}; export the prior again.")


@user_errors
def priors(
    paths: list[Path] = typer.Argument(None, metavar="PATH", help="Extra priors: NAME.json files, prior "
                                       "folders or training run folders."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List shipped priors, those in $MEDRECON_PRIORS folders, and any given paths."""
    import json

    from medrecon.priors import list_priors

    for path in paths or []:
        _check_prior_path(path)
    infos = list_priors(list(paths or []))
    if as_json:
        typer.echo(json.dumps([{
            "name": i.name, "path": str(i.path), "modalities": list(i.modalities),
            "patch_size": list(i.patch_size), "spacing_mm": list(i.spacing_mm),
            "steps": i.steps, "parameters": i.parameters, "size_bytes": i.size_bytes,
            "shipped": i.shipped, "uses_position": i.uses_position,
            "problem": i.problem or None} for i in infos], indent=1))
        return
    if not infos:
        typer.echo("No priors found.")
        return
    header = f"{'name':<16} {'modalities':<10} {'patch':<10} {'mm':<5} {'steps':>8} " \
             f"{'params':>7} {'size':>8}  source"
    typer.echo(header)
    for i in infos:
        patch = "x".join(str(p) for p in i.patch_size) if any(i.patch_size) else "?"
        mm = f"{i.spacing_mm[0]:g}" if any(i.spacing_mm) else "?"
        size = f"{i.size_bytes / 1e6:.1f} MB"
        src = "shipped" if i.shipped else str(i.path)
        mark = f"  [{i.problem}: not usable]" if i.problem else ""
        typer.echo(f"{i.name:<16} {'+'.join(i.modalities) or '?':<10} {patch:<10} {mm:<5} "
                   f"{i.steps:>8} {i.parameters / 1e6:>6.1f}M {size:>8}  {src}{mark}")
