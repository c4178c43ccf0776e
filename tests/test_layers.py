"""Imports flow one way: recon and sampling never import each other, and what both use (problem,
solvers, device) imports neither. Checked on the source, imports inside functions included, and
on module names in strings (a registry that loads a module by name is an import too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medrecon"


def _imports(path: Path) -> set[str]:
    """Every medrecon module ``path`` imports, or names in a string."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("medrecon.") and " " not in node.value:
            found.add(node.value)
    return {name for name in found if name.startswith("medrecon")}


def _modules(sub: str) -> list[Path]:
    target = PACKAGE / sub
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


FORBIDDEN = {
    "recon": ("medrecon.sampling", "medrecon.methods", "medrecon.reconstruct", "medrecon.cli"),
    "sampling": ("medrecon.recon", "medrecon.methods", "medrecon.reconstruct", "medrecon.cli"),
    "problem": ("medrecon.recon", "medrecon.sampling", "medrecon.priors", "medrecon.methods",
                "medrecon.reconstruct"),
    "slab": ("medrecon.recon", "medrecon.sampling", "medrecon.priors", "medrecon.methods",
             "medrecon.reconstruct", "medrecon.guard", "medrecon.holdout"),
    "solvers": ("medrecon.recon", "medrecon.sampling", "medrecon.problem", "medrecon.io",
                "medrecon.priors"),
    "device": ("medrecon.recon", "medrecon.sampling", "medrecon.problem", "medrecon.io",
               "medrecon.operators"),
    "progress": ("medrecon.recon", "medrecon.sampling", "medrecon.problem", "medrecon.io",
                 "medrecon.operators", "medrecon.priors", "medrecon.solvers"),
    "methods": ("medrecon.reconstruct", "medrecon.cli", "medrecon.demo"),
    "guard": ("medrecon.methods", "medrecon.reconstruct", "medrecon.cli", "medrecon.demo"),
    "holdout": ("medrecon.guard", "medrecon.sampling", "medrecon.methods", "medrecon.reconstruct",
                "medrecon.cli", "medrecon.demo"),
    "batch": ("medrecon.cli", "medrecon.demo"),
}


@pytest.mark.parametrize("sub", sorted(FORBIDDEN))
def test_no_upward_or_sideways_imports(sub: str) -> None:
    bad = []
    for path in _modules(sub):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[sub]):
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not bad, bad


def test_the_checker_sees_function_level_and_string_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from medrecon.sampling import api\n"
                   "MODULES = ('medrecon.recon.mri',)\n")
    assert {"medrecon.sampling", "medrecon.recon.mri"} <= _imports(src)
