"""STYLE.md's dependency direction, checked on the source: plumbing imports no feature, and
identity (users, sessions, organizations, audit) never imports `oauth`. Imports under
`if TYPE_CHECKING:` are annotations, not dependencies, and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import authserver

PACKAGE = Path(authserver.__file__).parent
PLUMBING = ("db", "security", "errors", "web", "rest", "kv", "keystore", "outbound",
            "ratelimit", "settings", "observability", "app_access",
            "resource_server")  # fmt: skip
IDENTITY = ("users", "sessions", "organizations", "audit")
FEATURES = (*IDENTITY, "oauth")


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
