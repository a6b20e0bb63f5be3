"""The import layering of the packages (docs/architecture.md, "Layering"), checked by parsing every module.

Every ``import`` and ``from ... import`` of every module is read with ``ast`` (function-local ones too, and
``importlib.import_module("literal")``), so a violation fails here even when the import only runs on one code
path. A failure names the module, the line and the import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pretrain", "transfer", "benchmarks")

#: (importing modules, forbidden imports, why): a module named by the first prefix may not import anything named
#: by the second. A prefix matches the module itself and everything below it.
RULES: tuple[tuple[str, str, str], ...] = (
    ("pretrain", "transfer", "pretraining sits below transfer: transfer loads what pretraining exports"),
    ("pretrain", "benchmarks", "the library never imports the command line"),
    ("transfer", "benchmarks", "the library never imports the command line"),
    ("benchmarks.hot_paths", "benchmarks.speed", "the speed engine times the hot paths, not the reverse"),
)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    path: Path  # its file, relative to the root
    line: int
    target: str  # the imported module, dotted (for ``from a import b``: ``a.b`` when that is a module, else ``a``)
    local: bool  # inside a function (runs only when it is called)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, name] if name else base)


def _is_module(dotted: str, root: Path) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _function_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes that sit inside a function body."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom | ast.Call):
                    inside.add(id(sub))
    return inside


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every import in the file at ``path`` (inside ``root``), with the imported module resolved to a dotted name."""
    module = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    local = _function_nodes(tree)
    rel = path.relative_to(root)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, rel, node.lineno, alias.name, id(node) in local)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                target = candidate if _is_module(candidate, root) else base
                yield Import(module, rel, node.lineno, target, id(node) in local)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield Import(module, rel, node.lineno, node.args[0].value, id(node) in local)


def project_imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    found: list[Import] = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found.extend(imports_of(path, root))
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layering_violations(imports: list[Import], rules: tuple[tuple[str, str, str], ...] = RULES) -> list[str]:
    problems: list[str] = []
    for imp in dict.fromkeys(imports):  # one line per import statement and target (``from a import b, c``)
        for importer, forbidden, why in rules:
            if _under(imp.module, importer) and _under(imp.target, forbidden):
                local = " (function-local)" if imp.local else ""
                problems.append(f"{imp.path}:{imp.line}: {imp.module} imports {imp.target}{local}: {why}")
    return list(dict.fromkeys(problems))


def package_self_imports(imports: list[Import], package: str) -> list[str]:
    """Imports of ``package`` itself (its ``__init__``, which holds the registry) from modules inside it: such an
    import is a cycle that only works when the registry is filled at the bottom of a file."""
    return [
        f"{imp.path}:{imp.line}: {imp.module} imports {imp.target} (the package's own __init__; import the sibling "
        "module it needs instead)"
        for imp in imports
        if _under(imp.module, package) and imp.module != package and imp.target == package
    ]


def module_level_cycles(imports: list[Import]) -> list[list[str]]:
    """Cycles in the graph of module-level imports between project modules (function-local ones are excluded:
    they run after every module has loaded)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if not imp.local and imp.target.split(".")[0] in PACKAGES and imp.target != imp.module:
            graph.setdefault(imp.module, set()).add(imp.target)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


# ------------------------------------------------------------------------------------------------ the project


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = project_imports(REPO_ROOT)
    assert len({i.module for i in found}) > 50, "the parser found too few modules; is REPO_ROOT right?"
    return found


def test_packages_import_only_downwards(imports: list[Import]) -> None:
    problems = layering_violations(imports)
    assert not problems, "import layering broken:\n" + "\n".join(problems)


def test_pretraining_methods_never_import_their_registry(imports: list[Import]) -> None:
    problems = package_self_imports(imports, "pretrain.methods")
    assert not problems, "\n".join(problems)


def test_no_module_level_import_cycles(imports: list[Import]) -> None:
    cycles = module_level_cycles(imports)
    assert not cycles, "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_method_module_is_imported_by_the_registry(imports: list[Import]) -> None:
    """A method module that ``pretrain/methods/__init__.py`` does not import would never be registered."""
    modules = {module_name(p, REPO_ROOT) for p in (REPO_ROOT / "pretrain" / "methods").glob("*.py")}
    registered = {i.target for i in imports if i.module == "pretrain.methods"}
    missing = sorted(modules - registered - {"pretrain.methods", "pretrain.methods.base"})
    assert not missing, f"pretrain/methods/__init__.py does not import {missing}"


# ------------------------------------------------------------------------------------------- the checker itself


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_checker_reports_function_local_and_relative_imports_by_file_and_line(tmp_path: Path) -> None:
    for package in PACKAGES:
        _write(tmp_path, f"{package}/__init__.py", "")
    _write(tmp_path, "transfer/voc.py", "X = 1\n")
    _write(tmp_path, "benchmarks/speed.py", "X = 1\n")
    _write(tmp_path, "benchmarks/hot_paths.py", "from . import speed\n")
    _write(tmp_path, "pretrain/data.py", "import os\n\n\ndef load():\n    from transfer.voc import X\n    return X\n")
    _write(tmp_path, "transfer/rows.py", "import importlib\n\nM = importlib.import_module('benchmarks.speed')\n")
    problems = layering_violations(project_imports(tmp_path))
    assert len(problems) == 3, problems
    data, hot, rows = sorted(problems, key=lambda p: ("pretrain" not in p, "hot_paths" not in p))
    assert data.startswith("pretrain/data.py:5: pretrain.data imports transfer.voc (function-local): pretraining")
    assert hot.startswith("benchmarks/hot_paths.py:1: benchmarks.hot_paths imports benchmarks.speed: the speed")
    assert rows.startswith("transfer/rows.py:3: transfer.rows imports benchmarks.speed: the library never")


def test_checker_finds_a_registry_cycle(tmp_path: Path) -> None:
    for package in PACKAGES:
        _write(tmp_path, f"{package}/__init__.py", "")
    _write(tmp_path, "pretrain/methods/__init__.py", "METHODS = {}\nimport pretrain.methods.ce  # noqa\n")
    _write(tmp_path, "pretrain/methods/ce.py", "from pretrain.methods import METHODS\n")
    found = project_imports(tmp_path)
    assert package_self_imports(found, "pretrain.methods") == [
        "pretrain/methods/ce.py:1: pretrain.methods.ce imports pretrain.methods (the package's own __init__; "
        "import the sibling module it needs instead)"
    ]
    assert module_level_cycles(found) == [["pretrain.methods", "pretrain.methods.ce", "pretrain.methods"]]
