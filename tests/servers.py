"""The app under a real uvicorn, in its own process, the way an operator runs it: the one way
the end-to-end tests (tests/e2e/conftest.py, tests/e2e/test_federation.py) and the scale-out
tests (tests/test_scale_out.py) start a server.

`uvicorn()` is the usual form: started, healthy, stopped when the block ends. `start()` and
`wait_healthy()` are its halves, for servers that must start together (and a port may be
chosen before the start when a test needs it in the settings)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

START_TIMEOUT = 40
#: One TLS context for every request to a test server: httpx builds a new one per top-level
#: call otherwise (30 ms of CPU loading the CA bundle, for servers that speak plain http).
TLS = ssl.create_default_context()
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(issuer: str, database_url: str, **settings: str) -> dict[str, str]:
    """A server's process environment: this one's without its `AUTHSERVER_*` settings, then
    the issuer and database, cheap password hashing, JSON logs, and `settings` on top.

    Back-channel logout delivery is off unless `settings` turns it on: a live server runs
    for the whole session on the test database, and its worker would claim (and fail to
    send, not trusting their receivers) the outbox rows of the in-process tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSERVER_")}
    env.update(
        AUTHSERVER_ISSUER=issuer,
        AUTHSERVER_DATABASE_URL=database_url,
        AUTHSERVER_PASSWORD_TIME_COST="1",
        AUTHSERVER_PASSWORD_MEMORY_COST="8",
        AUTHSERVER_LOG_FORMAT="json",
        AUTHSERVER_BACKCHANNEL_LOGOUT="off",
        **settings,
    )
    return env


@dataclass
class Server:
    """A uvicorn process serving the app on 127.0.0.1:`port` (`url`), logging to `log_path`."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[str]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=15, verify=TLS, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=15, verify=TLS, **kwargs)

    @property
    def folder(self) -> Path:
        """Its working directory (`start`'s `folder`)."""
        return self.log_path.parent

    def log_text(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        self.log.close()


def start(
    folder: Path, env: dict[str, str], *, port: int | None = None, args: Iterable[str] = ()
) -> Server:
    """Start uvicorn in `folder` (its working directory, where its log goes) and return at
    once; `wait_healthy` tells when it answers."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = folder / f"server-{port}.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "authserver.app:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return Server(f"http://127.0.0.1:{port}", port, process, log_path, log)


def wait_healthy(servers: Iterable[Server], timeout: float = START_TIMEOUT) -> None:
    """Poll each server's /health until it answers 200; a server that exits or stays silent
    past `timeout` fails with its log."""
    deadline = time.monotonic() + timeout
    for server in servers:
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.url} exited: {server.log_text()}")
            try:
                if server.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.url} did not start: {server.log_text()}")
            time.sleep(0.1)


@contextmanager
def uvicorn(
    folder: Path, env: dict[str, str], *, port: int | None = None, args: Iterable[str] = ()
) -> Iterator[Server]:
    """A healthy server for the length of the block; `port` when the test has already put it
    into `env` (the issuer, another server's settings)."""
    server = start(folder, env, port=port, args=args)
    try:
        wait_healthy([server])
        yield server
    finally:
        server.stop()


def until(condition: Callable[[], T | None], *, timeout: float = 20, what: str) -> T:
    """Poll `condition` until it returns something true, and return that: how a test waits
    for a server, never by sleeping a fixed time. Fails saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"waited {timeout} s in vain until {what}"
        time.sleep(0.05)
    return value
