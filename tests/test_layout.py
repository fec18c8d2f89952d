"""STYLE.md's dependency direction, checked on the source: plumbing imports no feature, and
identity (users, sessions, organizations, audit) never imports `oauth`. For the direction,
imports under `if TYPE_CHECKING:` are annotations, not dependencies, and do not count.

No two `authserver` modules import each other, however indirectly: here every import counts,
under `if TYPE_CHECKING:` and inside functions too, because a cycle hidden that way is still
two modules that cannot be read (or moved) one without the other."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import authserver

PACKAGE = Path(authserver.__file__).parent
PLUMBING = ("db", "security", "errors", "web", "rest", "kv", "keystore", "outbound",
            "ratelimit", "settings", "observability", "app_access", "resource_server",
            "dpop", "services", "fetch", "jsonsafe", "cache", "rendering")  # fmt: skip
IDENTITY = ("users", "sessions", "organizations", "audit", "actors")
FEATURES = (*IDENTITY, "oauth", "federation", "mfa")


def top_level(name: str) -> str:
    """`authserver.users.models` → `users`."""
    parts = name.split(".")
    return parts[1] if parts[0] == "authserver" and len(parts) > 1 else ""


def runtime_imports(path: Path) -> set[str]:
    """The `authserver` subpackages and modules a file imports when it runs."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(top_level(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "authserver":
                found.update(alias.name for alias in node.names)
            else:
                found.add(top_level(node.module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found - {""}


def sources(name: str) -> list[Path]:
    module = PACKAGE / f"{name}.py"
    return [module] if module.exists() else sorted((PACKAGE / name).rglob("*.py"))


@pytest.mark.parametrize("name", PLUMBING)
def test_plumbing_imports_no_feature(name: str) -> None:
    for path in sources(name):
        assert not runtime_imports(path) & {*FEATURES, "app", "cli", "api"}, path


@pytest.mark.parametrize("name", IDENTITY)
def test_identity_never_imports_oauth(name: str) -> None:
    for path in sources(name):
        assert "oauth" not in runtime_imports(path), path


def test_the_checker_sees_imports_of_every_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "import authserver.oauth.tokens\n"
        "from authserver import users, db\n"
        "from authserver.sessions.models import LoginSession\n"
        "def later():\n    from authserver.organizations import models\n"
        "if TYPE_CHECKING:\n    from authserver.app import Services\n"
    )
    assert runtime_imports(sample) == {"oauth", "users", "db", "sessions", "organizations"}


def module_name(path: Path, root: Path) -> str:
    """`<root>/authserver/oauth/__init__.py` → `authserver.oauth`."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Every module of `package` → the modules of it that it imports, in any way at all:
    at the top, under `if TYPE_CHECKING:`, inside functions. `from a.b import c` points at
    `a.b.c` when that is a module, else at `a.b`."""
    modules = {module_name(path, package.parent): path for path in package.rglob("*.py")}

    def known(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else known(node.module))
        graph[name] = targets - {name, ""}
    return graph


def cycle_from(
    name: str, graph: dict[str, set[str]], path: list[str], done: set[str]
) -> list[str] | None:
    """Depth first from `name`, `path` the imports followed to get there."""
    if name in path:
        return [*path[path.index(name) :], name]
    if name in done:
        return None
    path.append(name)
    for target in sorted(graph[name]):
        if (found := cycle_from(target, graph, path, done)) is not None:
            return found
    path.pop()
    done.add(name)
    return None


def cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """One cycle (`a → b → … → a`) through each group of modules that import each other."""
    done: set[str] = set()
    for start in sorted(graph):
        if (cycle := cycle_from(start, graph, [], done)) is not None:
            yield cycle
            done.update(cycle)


def test_no_import_cycles() -> None:
    found = [" → ".join(cycle) for cycle in cycles(import_graph(PACKAGE))]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_cycle_finder_sees_every_kind_of_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def later():\n    import pkg.c\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import Thing\n"
    )
    (package / "d.py").write_text("from pkg import a\n")
    assert import_graph(package)["pkg.a"] == {"pkg.sub.b"}
    assert list(cycles(import_graph(package))) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    (package / "c.py").write_text("")
    assert list(cycles(import_graph(package))) == []


def function_level_imports(path: Path) -> Iterator[tuple[ast.AST, str]]:
    """Each `authserver` import inside a function, with the function's name."""
    for function in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom) and "authserver" in ast.unparse(
                    node
                ):
                    yield node, function.name


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=str)
def test_late_imports_say_why(path: Path) -> None:
    """An import inside a function is either a cycle dodged (the test above catches it) or
    a choice about what loads when; the choice is written down in the function's or the
    module's docstring."""
    tree = ast.parse(path.read_text(), str(path))
    functions = {
        node.name: node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    for node, name in function_level_imports(path):
        reasons = f"{ast.get_docstring(functions[name])} {ast.get_docstring(tree)}"
        assert "import" in reasons.lower(), f"{path}:{node.lineno} imports late without a reason"
