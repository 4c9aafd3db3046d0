"""One exception tree: every exception class the project defines is a :class:`recsys.core.errors.RecsysError`,
and the drawing in that module's docstring names each of them."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import recsys.core.errors
from recsys.core.errors import RecsysError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("recsys", "trainer", "serving", "gateway", "feedback", "scripts")
#: Exceptions outside the tree on purpose, each with its reason (also said in recsys.core.errors' docstring).
ALLOWED = {
    "serving.stub.BadRequest": "a Triton stub's answer to one bad request; serving/ imports numpy only, never recsys",
}
#: Modules that only run inside Triton's python stub, where this module exists.
STUB_ONLY = "triton_python_backend_utils"


def _module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        path = ROOT / package
        names += [info.name for info in pkgutil.walk_packages([str(path)], prefix=f"{package}.")]
    return sorted(names)


def _is_entry_point(name: str) -> bool:
    """``__main__`` modules run their command when imported: read, not imported."""
    return name.rsplit(".", 1)[-1] == "__main__"


def _source(name: str) -> Path:
    path = ROOT / name.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _classes_outside_the_tree_by_reading(name: str) -> list[str]:
    """For modules that cannot be imported here: classes whose base is a builtin exception (ast, no import)."""
    builtin_errors = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
    found = []
    for node in ast.walk(ast.parse(_source(name).read_text())):
        if isinstance(node, ast.ClassDef):
            bases = {
                b.id if isinstance(b, ast.Name) else b.attr
                for b in node.bases
                if isinstance(b, ast.Name | ast.Attribute)
            }
            if bases & builtin_errors:
                found.append(f"{name}.{node.name}")
    return found


def _load(name: str) -> ModuleType | None:
    """The module, or None when it needs Triton's stub environment."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == STUB_ONLY:
            return None
        raise


def test_every_exception_class_is_a_recsys_error() -> None:
    outside: list[str] = []
    in_tree: set[str] = set()
    read_only: list[str] = []
    for name in _module_names():
        module = None if _is_entry_point(name) else _load(name)
        if module is None:
            read_only.append(name)
            outside += _classes_outside_the_tree_by_reading(name)
            continue
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != name or not issubclass(cls, Exception):
                continue
            if issubclass(cls, RecsysError):
                in_tree.add(cls_name)
            else:
                outside.append(f"{name}.{cls_name}")
    assert "serving.stub" in read_only, "the Triton-only module was not found (the walk is broken)"
    assert {"GatewayError", "ReportError", "AwsError", "PromtoolError"} <= in_tree  # the walk reached them
    unexpected = sorted(set(outside) - set(ALLOWED))
    assert not unexpected, f"exceptions outside the RecsysError tree: {unexpected}"
    drawing = recsys.core.errors.__doc__ or ""
    undrawn = sorted(n for n in in_tree if not n.startswith("_") and not re.search(rf"\b{n}\b", drawing))
    assert not undrawn, f"add these to the tree in recsys/core/errors.py's docstring: {undrawn}"


def test_allowed_exceptions_exist_and_are_documented() -> None:
    drawing = recsys.core.errors.__doc__ or ""
    for qualified in ALLOWED:
        module, _, cls_name = qualified.rpartition(".")
        assert cls_name in _classes_outside_by_name(module), f"{qualified} is gone: drop it from ALLOWED"
        assert qualified in drawing


def _classes_outside_by_name(module: str) -> set[str]:
    return {q.rpartition(".")[2] for q in _classes_outside_the_tree_by_reading(module)}


def test_the_reader_finds_a_class_outside_the_tree(tmp_path: Path) -> None:
    """Negative control of the check used on modules that cannot be imported here."""
    module = tmp_path / "stray.py"
    module.write_text("class Oops(RuntimeError):\n    pass\n\nclass Fine(SomethingError):\n    pass\n")
    tree = ast.parse(module.read_text())
    names = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    assert names == ["Oops", "Fine"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(f"{__name__}._source", lambda name: module)
        assert _classes_outside_the_tree_by_reading("stray") == ["stray.Oops"]
