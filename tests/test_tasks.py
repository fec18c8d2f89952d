"""tasks.py: the committed lock files are the ones pyproject.toml asks for."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tasks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tasks", ROOT / "tasks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("extra", [None, "dev"])
def test_the_lock_was_made_for_the_declared_dependencies(tasks: ModuleType, extra) -> None:
    """After editing dependencies in pyproject.toml, run `python3 tasks.py lock`."""
    assert tasks.lock_is_current(tasks.lock_file(extra))


@pytest.mark.parametrize("extra", [None, "dev"])
def test_every_pin_carries_a_hash(tasks: ModuleType, extra) -> None:
    """A pin is a line at the left margin; its hashes follow on indented lines."""
    text = tasks.lock_file(extra).read_text(encoding="utf-8")
    blocks = re.split(r"\n(?=[^\s#])", text)
    pins = [block for block in blocks if "==" in block.split("\n")[0]]
    assert len(pins) > 20
    unhashed = [pin.split()[0] for pin in pins if "--hash=sha256:" not in pin]
    assert not unhashed


def test_the_dev_lock_pins_the_runtime_versions(tasks: ModuleType) -> None:
    def pins(extra: str | None) -> dict[str, str]:
        text = tasks.lock_file(extra).read_text(encoding="utf-8")
        return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M))

    runtime, dev = pins(None), pins("dev")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_a_stale_lock_is_noticed(tasks: ModuleType, tmp_path: Path) -> None:
    stale = tmp_path / "runtime.txt"
    stale.write_text(f"{tasks.STAMP_PREFIX}{'0' * 64}\nalembic==1.0\n")
    assert not tasks.lock_is_current(stale)
    assert not tasks.lock_is_current(tmp_path / "missing.txt")
