"""`dvc.yaml` lists each stage's code dependencies by hand; this test derives them and fails on any that is missing.

For every stage whose ``cmd`` runs ``mufasa.cli stage NAME``, the project modules the stage module
(``mufasa.pipeline.NAME``) imports are found by static analysis (``ast``), transitively, including imports inside
functions (the stages import lazily) and the ``__init__.py`` of every package on the way (importing a submodule
runs them); imports under ``if TYPE_CHECKING:`` never run and are skipped. Each module file must be listed in the
stage's ``deps``, itself or through a folder above it; otherwise DVC would not rerun the stage when that code
changes and ``dvc repro`` would report stale outputs as up to date.

One module is a leaf (its file counts, its imports are not followed): ``mufasa/config.py`` imports every stage's
config class to build the whole ``params.yaml`` schema; a stage reads only its own section, whose classes it
imports itself. The runner around the stage (``mufasa/cli.py``, tracking, the project lock) is not a dependency:
it decides where results are logged, not what the stage writes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from tests.conftest import REPO

PACKAGES = ("mufasa", "data_checks")
LEAVES = frozenset({"mufasa.config"})
STAGE_CMD = re.compile(r"\bmufasa\.cli stage (\w+)\b")


def module_file(root: Path, module: str) -> Path | None:
    """The file of project module ``module`` under ``root`` (a package's ``__init__.py``), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported_names(path: Path, module: str, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """Every project module name ``path`` (module ``module``) may import, anywhere in the file.

    ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (``c`` may be a submodule; names that are not modules
    are dropped by the caller, which finds no file for them). Relative imports are resolved against ``module``.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(), filename=str(path))]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            stack.extend(node.orelse)  # the `else:` branch does run
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return {n for n in names if n.split(".")[0] in packages}


def import_closure(root: Path, start: str, packages: tuple[str, ...] = PACKAGES, leaves=LEAVES) -> dict[str, Path]:
    """Module name -> file of every project module importing ``start`` can run (``start`` included)."""
    found: dict[str, Path] = {}
    todo = [start]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # a.b.c runs a/__init__.py and a/b/__init__.py first
            name = ".".join(parts[:i])
            path = module_file(root, name)
            if path is None or name in found:
                continue
            found[name] = path
            if name not in leaves:
                todo.extend(imported_names(path, name, packages))
    return found


def covered(rel: str, deps: list[str]) -> bool:
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


def missing_code_deps(root: Path, packages: tuple[str, ...] = PACKAGES, leaves=LEAVES) -> list[str]:
    """One line per (stage, module file) of ``<root>/dvc.yaml`` that the stage imports but does not list."""
    problems = []
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for stage, spec in stages.items():
        match = STAGE_CMD.search(str(spec.get("cmd", "")))
        if not match:
            continue
        module = f"mufasa.pipeline.{match.group(1)}"
        if module_file(root, module) is None:
            problems.append(f"dvc.yaml: stage '{stage}' runs {module}, which has no file under {root}")
            continue
        deps = [str(d) for d in spec.get("deps", [])]
        for name, path in sorted(import_closure(root, module, packages, leaves).items()):
            rel = path.relative_to(root).as_posix()
            if not covered(rel, deps):
                problems.append(f"dvc.yaml: stage '{stage}' imports {name} ({rel}), which its deps do not list")
    return problems


def test_every_stage_lists_the_project_code_it_imports():
    problems = missing_code_deps(REPO)
    assert not problems, "add these files (or a folder above them) to the stage's deps:\n" + "\n".join(problems)


def _write(root: Path, rel: str, text: str = "") -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def test_the_check_names_the_stage_and_the_file_it_does_not_list(tmp_path):
    """A fake project: the stage module imports one module at the top, one relatively, one inside a function
    (lazily, transitively through the first) and one only for type checking."""
    _write(tmp_path, "mufasa/__init__.py")
    _write(tmp_path, "mufasa/pipeline/__init__.py")
    _write(tmp_path, "mufasa/models/__init__.py")
    _write(tmp_path, "mufasa/pipeline/train.py",
           "from typing import TYPE_CHECKING\nfrom mufasa.models import net\nfrom . import helper\n"
           "if TYPE_CHECKING:\n    from mufasa.models import typed_only\n")
    _write(tmp_path, "mufasa/pipeline/helper.py")
    _write(tmp_path, "mufasa/models/net.py", "def build():\n    from mufasa.models.layers import Block\n")
    _write(tmp_path, "mufasa/models/layers.py", "class Block: ...\n")
    _write(tmp_path, "mufasa/models/typed_only.py")
    base = ["mufasa/__init__.py", "mufasa/pipeline/__init__.py", "mufasa/pipeline/train.py"]

    def check(deps):
        stage = {"cmd": "python -m mufasa.cli stage train", "deps": deps}
        other = {"cmd": "echo not a mufasa stage", "deps": []}
        (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage, "other": other}}))
        return missing_code_deps(tmp_path)

    problems = check(base + ["mufasa/models/net.py", "mufasa/models/__init__.py"])
    assert problems == [
        "dvc.yaml: stage 'train' imports mufasa.models.layers (mufasa/models/layers.py), which its deps do not list",
        "dvc.yaml: stage 'train' imports mufasa.pipeline.helper (mufasa/pipeline/helper.py), which its deps do not "
        "list",
    ]
    assert check(base + ["mufasa/models/", "mufasa/pipeline/helper.py"]) == []  # a folder covers what it holds
    assert check(["mufasa"]) == []
    assert check(base + ["mufasa/models/net.py"]) == [  # the package's __init__.py runs too
        "dvc.yaml: stage 'train' imports mufasa.models (mufasa/models/__init__.py), which its deps do not list",
        "dvc.yaml: stage 'train' imports mufasa.models.layers (mufasa/models/layers.py), which its deps do not list",
        "dvc.yaml: stage 'train' imports mufasa.pipeline.helper (mufasa/pipeline/helper.py), which its deps do not "
        "list",
    ]
