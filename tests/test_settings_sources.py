"""The settings module's docstring names every place that reads the environment itself, so it stays true."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import recsys.core.settings

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("recsys", "trainer", "serving", "gateway", "feedback", "scripts", "benchmarks", "triton_models")


def _reads_environment(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv", "environb"}:
            return True
        names = {a.name for a in node.names} if isinstance(node, ast.ImportFrom) and node.module == "os" else set()
        if names & {"environ", "getenv", "environb"}:
            return True
    return False


def _named_in_docstring() -> list[str]:
    """Dotted names quoted in the docstring (``serving.models.Lookup``, ``recsys.stack``, ``benchmarks``)."""
    doc = recsys.core.settings.__doc__ or ""
    return [n for n in re.findall(r"``([A-Za-z_][\w.]*)``", doc) if n.split(".")[0] in PACKAGES]


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_every_module_that_reads_the_environment_is_named_in_the_settings_docstring() -> None:
    named = _named_in_docstring()
    assert named, "the docstring names no module"
    readers = [
        _module(path)
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if _module(path) != "recsys.core.settings" and _reads_environment(ast.parse(path.read_text()))
    ]
    assert "serving.models" in readers  # the walk reaches the one known reader
    assert "recsys" not in named, "a bare `recsys` would excuse every module of it"
    unnamed = [m for m in readers if not any(m == n or m.startswith(n + ".") or n.startswith(m + ".") for n in named)]
    assert not unnamed, f"these read os.environ: use Settings, or say why in recsys/core/settings.py: {unnamed}"


def test_the_reader_check_sees_both_spellings() -> None:
    assert _reads_environment(ast.parse("import os\nx = os.environ.get('A')"))
    assert _reads_environment(ast.parse("from os import getenv\nx = getenv('A')"))
    assert not _reads_environment(ast.parse("import os\nx = os.path.join('a')"))
