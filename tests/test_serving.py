"""How `authserver serve` runs uvicorn: oversized request heads are refused with 431, and
`X-Forwarded-For` counts only from a configured proxy. Run against a real uvicorn process
started through `serving.run` (what `serve` calls), and through the ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver import serving, web
from authserver.app import create_app
from authserver.db import Database
from authserver.keystore import KeyStoreError
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


# -- prepared answers: the JWKS and discovery written by the protocol ---------------------------

DOCUMENTS = (
    "/jwks.json",
    "/.well-known/openid-configuration",
    "/.well-known/oauth-authorization-server",
)
#: The date header uvicorn would add (it renews the list every second).
DATE = b"Sat, 05 Dec 2026 12:00:00 GMT"
#: What may differ between two answers to the same request.
PER_ANSWER = {b"date", b"x-request-id"}


class MemoryTransport(asyncio.Transport):
    """One client connection in memory: keeps what the server writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}
        return extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    def same_as(self, other: Answer) -> bool:
        def stable(answer: Answer) -> list[tuple[bytes, bytes]]:
            return sorted((n, v) for n, v in answer.headers if n not in PER_ANSWER)

        return (self.status, stable(self), self.body) == (other.status, stable(other), other.body)


def parse_answers(raw: bytes, *, bodies: bool = True) -> list[Answer]:
    """The whole answers in `raw` (`bodies=False`: answers to HEAD, which have none)."""
    answers = []
    while b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = [(n.lower(), v) for n, _, v in (line.partition(b": ") for line in lines)]
        length = int(next(v for n, v in headers if n == b"content-length")) if bodies else 0
        if len(rest) < length:
            break
        answers.append(Answer(int(status_line.split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return answers


def request_head(path: str, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1:8000", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Connection:
    """`serve`'s protocol over a `MemoryTransport`, with the lifespan state `serve` hands it,
    in front of the app; `app_paths` lists the requests the app itself answered."""

    def __init__(self, app: Starlette, settings: Settings, state: dict[str, Any]) -> None:
        import uvicorn
        from uvicorn.server import ServerState

        self.app_paths: list[str] = []

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.app_paths.append(scope["path"])
            await app(scope, receive, send)

        options = serving.uvicorn_options(settings)
        config = uvicorn.Config(counted, lifespan="off", log_level="warning", **options)
        config.load()
        server_state = ServerState()
        server_state.default_headers = [(b"date", DATE)]
        self.transport = MemoryTransport()
        self.protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=server_state, app_state=state
        )
        self.protocol.connection_made(self.transport)

    async def send(self, raw: bytes, answers: int = 1, *, bodies: bool = True) -> list[Answer]:
        self.transport.written.clear()
        self.protocol.data_received(raw)
        for _ in range(2000):
            parsed = parse_answers(bytes(self.transport.written), bodies=bodies)
            if len(parsed) >= answers:
                return parsed
            await asyncio.sleep(0.001)
        raise AssertionError(f"no answer: {bytes(self.transport.written)[:300]!r}")


def on_connection(app: Starlette, settings: Settings, test: Callable[[Connection], Any]) -> None:
    async def run() -> None:
        async with app.router.lifespan_context(app) as state:
            await test(Connection(app, settings, dict(state or {})))

    asyncio.run(run())


@pytest.mark.parametrize("path", DOCUMENTS)
def test_public_documents_are_answered_as_the_app_answers_them(
    app: Starlette, settings: Settings, path: str
) -> None:
    async def test(connection: Connection) -> None:
        [prepared] = await connection.send(request_head(path, "User-Agent: rp", "Accept: */*"))
        assert connection.app_paths == []
        [from_app] = await connection.send(request_head(path, "User-Agent: rp", "X-Probe: 1"))
        assert connection.app_paths == [path]
        assert prepared.status == 200
        assert prepared.same_as(from_app)
        assert prepared.header(b"x-content-type-options") == b"nosniff"
        assert prepared.header(b"access-control-allow-origin") == b"*"
        assert prepared.header(b"x-request-id") != from_app.header(b"x-request-id")
        assert prepared.header(b"date") == from_app.header(b"date") == DATE

    on_connection(app, settings, test)


def test_prepared_answers_are_logged_and_counted_like_the_apps(
    app: Starlette, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async def test(connection: Connection) -> None:
        with caplog.at_level("INFO", logger="authserver.access"):
            [answer] = await connection.send(request_head("/jwks.json", "X-Request-ID: rp-42"))
        assert connection.app_paths == []
        assert answer.header(b"x-request-id") == b"rp-42"
        [line] = [r for r in caplog.records if r.name == "authserver.access"]
        assert line.fields["request_id"] == "rp-42"  # type: ignore[attr-defined]
        assert (line.fields["path"], line.fields["status"]) == ("/jwks.json", 200)  # type: ignore[attr-defined]
        assert line.fields["client_ip"] == "127.0.0.1"  # type: ignore[attr-defined]
        samples = app.state.metrics.registry.get_sample_value
        counted = {"method": "GET", "endpoint": "jwks", "status": "200"}
        assert samples("authserver_http_requests_total", counted) == 1
        await connection.send(request_head("/jwks.json", "X-Probe: 1"))
        assert connection.app_paths == ["/jwks.json"]
        assert samples("authserver_http_requests_total", counted) == 2

    on_connection(app, settings, test)


@pytest.mark.parametrize(
    "head",
    [
        request_head("/jwks.json?x=1"),
        request_head("/jwks.json", method="HEAD"),
        request_head("/jwks.json", method="POST"),
        request_head("/jwks.json", "Connection: close"),
        request_head("/jwks.json", version="1.0"),
        request_head("/jwks.json", "If-None-Match: x"),
        request_head("/jwks.json", "Content-Length: 0"),
        request_head("/jwks.json/"),
        request_head("/%6Awks.json"),
        request_head("/jwks.json", *(f"Accept: a{i}" for i in range(web.MAX_HEADER_COUNT + 1))),
        request_head("/jwks.json", "Accept: " + "a" * web.MAX_HEADER_BYTES),
    ],
    ids=[
        "query", "head", "post", "close", "http10", "conditional", "body", "slash",
        "escaped", "too-many-headers", "too-large-headers",
    ],
)  # fmt: skip
def test_anything_but_a_plain_get_goes_to_the_app(
    app: Starlette, settings: Settings, head: bytes
) -> None:
    async def test(connection: Connection) -> None:
        await connection.send(head, bodies=not head.startswith(b"HEAD"))
        assert len(connection.app_paths) == 1

    on_connection(app, settings, test)


def test_a_forwarded_request_goes_to_the_app_behind_a_trusted_proxy(settings: Settings) -> None:
    behind = settings.replace(trusted_proxies=("127.0.0.1",))
    application = create_app(behind)
    forwarded = request_head("/jwks.json", "X-Forwarded-For: 203.0.113.9")

    async def test(connection: Connection) -> None:
        await connection.send(forwarded)
        assert len(connection.app_paths) == 1
        await connection.send(request_head("/jwks.json"))
        assert len(connection.app_paths) == 1

    try:
        on_connection(application, behind, test)
    finally:
        application.state.db.dispose()


def test_pipelined_answers_keep_their_order(app: Starlette, settings: Settings) -> None:
    """A prepared answer never overtakes the app's answer to an earlier request."""

    async def test(connection: Connection) -> None:
        both = request_head("/health") + request_head("/jwks.json")
        health, jwks = await connection.send(both, answers=2)
        assert health.body == b'{"status":"ok"}'
        assert b'"keys"' in jwks.body
        assert connection.app_paths[0] == "/health"

    on_connection(app, settings, test)


def test_a_rotated_key_is_published_at_once(app: Starlette, settings: Settings) -> None:
    async def test(connection: Connection) -> None:
        [before] = await connection.send(request_head("/jwks.json"))
        added = app.state.keystore.rotate()
        [after] = await connection.send(request_head("/jwks.json"))
        assert connection.app_paths == []
        assert added.kid.encode() not in before.body
        assert added.kid.encode() in after.body

    on_connection(app, settings, test)


def test_the_app_answers_while_the_key_store_must_look_again(
    app: Starlette, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database key store is read in the threadpool, never by the protocol."""
    monkeypatch.setattr(type(app.state.keystore), "answers_from_memory", lambda self: False)

    async def test(connection: Connection) -> None:
        [answer] = await connection.send(request_head("/jwks.json"))
        assert answer.status == 200
        assert connection.app_paths == ["/jwks.json"]

    on_connection(app, settings, test)


def test_a_failing_key_store_leaves_the_answer_to_the_app(
    app: Starlette, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app turns the failure into its own error page; the protocol never sees it."""

    def unreadable(self: Any) -> tuple[str, ...]:
        raise KeyStoreError("the manifest cannot be read")

    async def test(connection: Connection) -> None:
        monkeypatch.setattr(type(app.state.keystore), "published_kids", unreadable)
        [answer] = await connection.send(request_head("/jwks.json"))
        assert connection.app_paths == ["/jwks.json"]
        assert answer.status == 500

    on_connection(app, settings, test)
