#!/usr/bin/env python3
"""The README's two commands, needing only Python 3.11+ and pip on the machine.

    python3 tasks.py run  [serve options]   # install, migrate, serve on http://127.0.0.1:8000
    python3 tasks.py test [pytest options]  # install with dev extras, run the whole suite

Both create `.venv/` beside this file on first use and reinstall only when pyproject.toml
changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def ensure_installed(extra: str | None) -> None:
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    target = f".[{extra}]" if extra else "."
    fingerprint = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + target.encode())
    stamp = VENV / f".installed-{extra or 'base'}"
    if stamp.exists() and stamp.read_text() == fingerprint.hexdigest():
        return
    print(f"installing {target} into .venv ...", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True, cwd=ROOT)
    subprocess.run([*pip, "install", "-e", target], check=True, cwd=ROOT)
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


def main() -> int:
    commands = {"run": run, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
