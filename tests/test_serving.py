"""How `authserver serve` runs uvicorn: oversized request heads are refused with 431, and
`X-Forwarded-For` counts only from a configured proxy. Run against a real uvicorn process
started through `serving.run` (what `serve` calls), and through the ASGI app."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from authserver import serving, web
from authserver.db import Database
from authserver.settings import Settings

SERVE = (
    "import sys\n"
    "from authserver import serving\n"
    "from authserver.settings import Settings\n"
    "serving.run(Settings.from_env(), host='127.0.0.1', port=int(sys.argv[1]))\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raw_request(port: int, head: bytes) -> bytes:
    """Send a request head as bytes and read the status line (or b"" if the server hung up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)
        try:
            return sock.recv(4096)
        except ConnectionResetError:
            return b""


class Server:
    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def access_log(self) -> list[dict[str, object]]:
        lines = [line for line in self.log.read_text().splitlines() if line.startswith("{")]
        entries = [json.loads(line) for line in lines]
        return [e for e in entries if e.get("logger") == "authserver.access"]


@pytest.fixture
def serve(
    tmp_path: Path, keys_template: Path, database_url: str, schema: Database
) -> Iterator[Callable[..., Server]]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(**env_changes: str) -> Server:
        folder = tmp_path / f"server{len(processes)}"
        folder.mkdir()
        shutil.copytree(keys_template, folder / "keys")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSERVER_")}
        env.update(
            AUTHSERVER_ISSUER=f"http://127.0.0.1:{port}",
            AUTHSERVER_DATABASE_URL=database_url,
            AUTHSERVER_KEYS_DIR=str(folder / "keys"),
            AUTHSERVER_LOG_FORMAT="json",
            AUTHSERVER_PURGE_INTERVAL="0",
            **env_changes,
        )
        log = folder / "server.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", SERVE, str(port)],
                cwd=folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        server = Server(port, log)
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(log.read_text())
            try:
                if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=20)


def test_a_1_mb_header_is_a_431_from_the_server(serve: Callable[..., Server]) -> None:
    """The server itself refuses it (bounded httptools): the app never sees the request, and
    the server buffered no more than the bound."""
    server = serve()
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    assert raw_request(server.port, head).startswith(b"HTTP/1.1 431 ")
    time.sleep(0.2)
    assert all(entry["status"] == 200 for entry in server.access_log())
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_1_mb_url_is_a_414_from_the_server(serve: Callable[..., Server]) -> None:
    server = serve()
    head = b"GET /health?q=" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw_request(server.port, head).startswith(b"HTTP/1.1 414 ")
    time.sleep(0.2)
    assert all(entry["status"] == 200 for entry in server.access_log())


def test_a_head_in_small_pieces_is_bounded_too(serve: Callable[..., Server]) -> None:
    """Read by read, the count goes on until the head is complete: 431 once it is past the
    bound, however it was cut."""
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for number in range(serving.MAX_HEAD_BYTES // 1000 + 20):
                sock.sendall(f"X-H{number % 90}: ".encode() + b"a" * 990 + b"\r\n")
                time.sleep(0.002)
        with contextlib.suppress(ConnectionResetError):
            answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 ")
    time.sleep(0.2)
    assert all(entry["status"] == 200 for entry in server.access_log())


def test_keep_alive_requests_each_get_their_own_bound(serve: Callable[..., Server]) -> None:
    """The head count starts again with every request on a connection: many ordinary
    requests on one connection, more bytes than the bound in total, are all answered."""
    server = serve()
    with httpx.Client() as client:
        for _ in range(30):
            response = client.get(f"{server.url}/health", headers={"x-pad": "a" * 2000})
            assert response.status_code == 200


@pytest.mark.parametrize("size", [40_000, 200_000])
def test_a_head_that_arrives_whole_is_a_431_too(serve: Callable[..., Server], size: int) -> None:
    """The server bounds only a head still arriving; one that fits a single read reaches the
    app's own check. Either way the answer is 431."""
    server = serve()
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    assert raw_request(server.port, head).startswith(b"HTTP/1.1 431 ")


def test_200_headers_are_a_431(serve: Callable[..., Server]) -> None:
    server = serve()
    headers = "".join(f"X-H{i}: v\r\n" for i in range(200)).encode()
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    assert raw_request(server.port, head).startswith(b"HTTP/1.1 431 ")


def test_forwarded_for_counts_only_from_a_trusted_proxy(serve: Callable[..., Server]) -> None:
    """By default nothing local chooses the address the limiter counts; a configured
    proxy's X-Forwarded-For is believed."""
    forwarded = {"x-forwarded-for": "203.0.113.9"}
    plain = serve()
    assert httpx.get(f"{plain.url}/health", headers=forwarded).status_code == 200
    behind = serve(AUTHSERVER_TRUSTED_PROXIES="127.0.0.1/32, ::1")
    assert httpx.get(f"{behind.url}/health", headers=forwarded).status_code == 200
    time.sleep(0.2)
    assert [e["client_ip"] for e in plain.access_log() if e["path"] == "/health"][-1] == (
        "127.0.0.1"
    )
    assert [e["client_ip"] for e in behind.access_log() if e["path"] == "/health"][-1] == (
        "203.0.113.9"
    )


def test_uvicorn_options_follow_the_settings(settings: Settings) -> None:
    options = serving.uvicorn_options(settings)
    assert options["proxy_headers"] is False
    assert options["http"] is serving.BoundedHttpToolsProtocol
    trusted = serving.uvicorn_options(settings.replace(trusted_proxies=("10.0.0.0/8",)))
    assert trusted["proxy_headers"] is True
    assert trusted["forwarded_allow_ips"] == ["10.0.0.0/8"]


# -- through the ASGI app --------------------------------------------------------------------


def test_the_app_refuses_too_many_headers(client: TestClient) -> None:
    many = {f"x-h{i}": "v" for i in range(web.MAX_HEADER_COUNT + 1)}
    assert client.get("/health", headers=many).status_code == 431
    few = {f"x-h{i}": "v" for i in range(web.MAX_HEADER_COUNT - 10)}
    assert client.get("/health", headers=few).status_code == 200


def test_the_app_refuses_too_large_headers(client: TestClient) -> None:
    big = {"x-big": "a" * 10_000_000}
    assert client.get("/health", headers=big).status_code == 431
    assert client.get("/health", headers={"x-big": "a" * 8_000}).status_code == 200
