#!/usr/bin/env python3
"""The README's commands, needing only Python 3.11+ and pip on the machine.

    python3 tasks.py run  [serve options]   # install, migrate, serve on http://127.0.0.1:8000
    python3 tasks.py test [pytest options]  # install with dev extras, run the whole suite
    python3 tasks.py lint                   # ruff check, ruff format --check, mypy
    python3 tasks.py lock [--upgrade]       # re-pin requirements/*.txt from pyproject.toml

`run`, `test` and `lint` create `.venv/` beside this file on first use and install the
pinned, hash-checked versions from requirements/ (runtime.txt, or dev.txt with the dev
extras); they reinstall only when pyproject.toml or the lock changes. When pyproject.toml
declares dependencies the lock was not made for, they say so and install from
pyproject.toml unpinned until `python3 tasks.py lock` is run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
LOCKS = ROOT / "requirements"
#: The lock records which declared dependencies it was made for on a line of its own.
STAMP_PREFIX = "# pyproject dependencies sha256: "
PYTHON_FLOOR = "3.11"


def declared_dependencies() -> str:
    """A digest of what pyproject.toml declares (not its other settings, which do not
    change what gets installed)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {
        "dependencies": project.get("dependencies", []),
        "optional": project.get("optional-dependencies", {}),
        "python": project.get("requires-python"),
    }
    return hashlib.sha256(json.dumps(declared, sort_keys=True).encode()).hexdigest()


def lock_file(extra: str | None) -> Path:
    return LOCKS / f"{extra or 'runtime'}.txt"


def lock_is_current(lock: Path) -> bool:
    if not lock.exists():
        return False
    return f"{STAMP_PREFIX}{declared_dependencies()}" in lock.read_text(encoding="utf-8")


def pip(*args: str) -> None:
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        cwd=ROOT,
    )


def ensure_venv() -> None:
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)


def ensure_installed(extra: str | None) -> None:
    ensure_venv()
    target = f".[{extra}]" if extra else "."
    lock = lock_file(extra)
    locked = lock_is_current(lock)
    fingerprint = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + target.encode())
    if locked:
        fingerprint.update(lock.read_bytes())
    stamp = VENV / f".installed-{extra or 'base'}"
    if stamp.exists() and stamp.read_text() == fingerprint.hexdigest():
        return
    pip("install", "--upgrade", "pip")
    if locked:
        print(f"installing {lock.relative_to(ROOT)} (hash-checked) into .venv ...", flush=True)
        pip("install", "--require-hashes", "-r", str(lock))
        pip("install", "--no-deps", "-e", ".")
    else:
        print(
            f"{lock.relative_to(ROOT)} was not made for the dependencies pyproject.toml "
            f"declares now: installing {target} unpinned. Run `python3 tasks.py lock` and "
            "commit requirements/ to pin them again.",
            file=sys.stderr,
            flush=True,
        )
        pip("install", "-e", target)
    stamp.write_text(fingerprint.hexdigest())


def run(args: list[str]) -> int:
    ensure_installed(None)
    authserver = str(BIN / "authserver")
    migrated = subprocess.run([authserver, "migrate"], check=False)
    if migrated.returncode != 0:
        return migrated.returncode
    os.execv(authserver, [authserver, "serve", *args])
    return 0


def test(args: list[str]) -> int:
    ensure_installed("dev")
    return subprocess.run(
        [str(BIN / "python"), "-m", "pytest", *args], check=False, cwd=ROOT
    ).returncode


def lint(args: list[str]) -> int:
    """Every check runs, so one report shows every problem; any failure fails the command."""
    ensure_installed("dev")
    checks = [
        ["ruff", "check", ".", *args],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ]
    failed = []
    for tool, *options in checks:
        if subprocess.run([str(BIN / tool), *options], check=False, cwd=ROOT).returncode:
            failed.append(" ".join([tool, *options[:1]]))
    if failed:
        print(f"lint failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def lock(args: list[str]) -> int:
    """Pin runtime and dev dependencies, with hashes, for every platform and Python 3.11+.

    Versions already in the lock are kept unless `--upgrade` is given (or pyproject.toml
    now needs another), so a new dependency changes only the lines it brings.
    """
    ensure_venv()
    uv = BIN / "uv"
    if not uv.exists():
        pip("install", "uv")
    LOCKS.mkdir(exist_ok=True)
    stamp = f"{STAMP_PREFIX}{declared_dependencies()}\n"
    common = [
        str(uv), "pip", "compile", "pyproject.toml", "--generate-hashes", "--universal",
        "--python-version", PYTHON_FLOOR, "--quiet", "--no-header", *args,
    ]  # fmt: skip
    for extra in (None, "dev"):
        out = lock_file(extra)
        command = [*common, "-o", str(out)]
        if extra:
            command += ["--extra", extra, "-c", str(lock_file(None))]
        if subprocess.run(command, check=False, cwd=ROOT).returncode != 0:
            return 1
        header = (
            f"# Generated by `python3 tasks.py lock` from pyproject.toml"
            f"{' [' + extra + ']' if extra else ''}; do not edit.\n{stamp}"
        )
        out.write_text(header + out.read_text(encoding="utf-8"), encoding="utf-8")
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


def main() -> int:
    commands = {"run": run, "test": test, "lint": lint, "lock": lock}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
