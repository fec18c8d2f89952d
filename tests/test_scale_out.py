"""Many instances as one server: real uvicorn processes on one PostgreSQL and one Redis.

Each server reaches PostgreSQL and Redis through a TCP proxy this module controls, so a test
can cut either mid-traffic without touching the real services (docs/security.md L88,
L91, I73, L94).
The servers keep their keys in the database (`AUTHSERVER_KEYS_STORE=database`), each in its
own empty working folder: nothing is shared but the database and Redis.

PostgreSQL: AUTHSERVER_TEST_POSTGRES_URL, else AUTHSERVER_TEST_DATABASE_URL when it is
PostgreSQL, else (in CI only) the CI database `test`. Redis: AUTHSERVER_TEST_REDIS_URL, else
(in CI only) redis://127.0.0.1:6379/0. Outside CI with neither configured the module skips.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
import redis
from sqlalchemy import select as sql_select
from sqlalchemy import text
from sqlalchemy.engine import make_url

from authserver.app import build_services
from authserver.audit import AuditEvent
from authserver.db import Database
from authserver.keystore import DB_REFRESH_SECONDS, SigningKey
from authserver.models import Base
from authserver.services import Services
from authserver.sessions.pages import ACCOUNT_WINDOW
from authserver.settings import Settings
from tests import factories, servers
from tests.conftest import (
    IN_CI,
    POSTGRES_URL,
    TEST_DATABASE_URL,
    TEST_REDIS_URL,
    sign_in_by_form,
)
from tests.servers import Server

pytestmark = pytest.mark.postgres

ISSUER = "http://127.0.0.1:8000"  # the load balancer's address; each test talks to a server
CALLBACK = "https://app.example.com/cb"
PASSPHRASE = "scale-out test passphrase"
ACTIVATION_DELAY = 3
ACCOUNT_LIMIT = 4
SERVER_ERROR = re.compile(r'"status":\s*500\b')


def _configured(variable: str, ci_default: str) -> str:
    url = os.environ.get(variable)
    if variable == "AUTHSERVER_TEST_POSTGRES_URL" and not url:
        url = TEST_DATABASE_URL if (TEST_DATABASE_URL or "").startswith("postgresql") else None
    if variable == "AUTHSERVER_TEST_REDIS_URL" and not url:
        url = TEST_REDIS_URL
    if url:
        return url
    if IN_CI:
        return ci_default
    pytest.skip(f"no {variable} configured (outside CI the scale-out tests need one)")


def _reachable_postgres() -> str:
    url = _configured("AUTHSERVER_TEST_POSTGRES_URL", POSTGRES_URL)
    database = Database(url)
    try:
        database.ping()
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {url} is unreachable: {exc}")
    finally:
        database.dispose()
    return url


def _reachable_redis() -> str:
    url = _configured("AUTHSERVER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {url} is unreachable: {exc}")
    finally:
        client.close()
    return url


# -- a TCP proxy the tests control --------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target. `down()` cuts every open connection and
    refuses new ones (accepted, then closed at once) until `up()`; `delay` slows each
    chunk forwarded, to keep a request in flight; `received` counts the chunks read, so a
    test can tell that something went through."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._down = False
        self.delay = 0.0
        self.received = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def down(self) -> None:
        with self._lock:
            self._down = True
            for sock in self._open:
                _close(sock)
            self._open.clear()

    def up(self) -> None:
        with self._lock:
            self._down = False

    def close(self) -> None:
        self._closed = True
        self.down()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refuse = self._down
            if refuse:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select(list(peers), [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    with self._lock:
                        self.received += 1
                    if self.delay:
                        time.sleep(self.delay)
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._open.difference_update((a, b))
            _close(a)
            _close(b)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# -- servers ------------------------------------------------------------------------------


def _rss_kib(server: Server) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def _start(folder: Path, env: dict[str, str], workers: int = 1) -> Server:
    return servers.start(
        folder, env, args=["--timeout-graceful-shutdown", "15", "--workers", str(workers)]
    )


def _proxied(url: str, port: int) -> str:
    parts = make_url(url)
    return parts.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


@dataclass
class Cluster:
    """Two servers, what they run on, and a view of the same storage for the tests."""

    a: Server
    b: Server
    database_url: str
    redis_url: str
    db_proxy: TcpProxy
    redis_proxy: TcpProxy
    env: dict[str, str]
    services: Services
    make: factories.Factory
    folder: Path
    extra: list[Server] = field(default_factory=list)

    @property
    def both(self) -> tuple[Server, Server]:
        return self.a, self.b

    def start(
        self, name: str, db_proxy: TcpProxy | None = None, workers: int = 1, **overrides: str
    ) -> Server:
        env = {**self.env, **overrides}
        if db_proxy is not None:
            env["AUTHSERVER_DATABASE_URL"] = _proxied(self.database_url, db_proxy.port)
        server = _start(self.folder / name, env, workers)
        self.extra.append(server)
        servers.wait_healthy([server])
        return server


def _server_env(database_url: str, redis_url: str) -> dict[str, str]:
    return servers.environment(
        ISSUER,
        database_url,
        AUTHSERVER_REDIS_URL=redis_url,
        AUTHSERVER_KEYS_STORE="database",
        AUTHSERVER_KEYS_PASSPHRASE=PASSPHRASE,
        AUTHSERVER_KEY_ACTIVATION_DELAY=str(ACTIVATION_DELAY),
        AUTHSERVER_LOGIN_RATE_PER_IP="100000",
        AUTHSERVER_LOGIN_RATE_PER_ACCOUNT=str(ACCOUNT_LIMIT),
        AUTHSERVER_TOKEN_RATE_PER_CLIENT="100000",
        AUTHSERVER_PURGE_INTERVAL="0",
        AUTHSERVER_DB_POOL_TIMEOUT="2",
    )


def _empty(database: Database) -> None:
    with database.engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    database_url = _reachable_postgres()
    redis_url = _reachable_redis()
    database = Database(database_url)
    Base.metadata.create_all(database.engine)
    _empty(database)
    db_proxy = TcpProxy(make_url(database_url).port or 5432)
    redis_parts = urlsplit(redis_url)
    redis_proxy = TcpProxy(redis_parts.port or 6379)
    proxied_redis = f"redis://127.0.0.1:{redis_proxy.port}{redis_parts.path}"
    env = _server_env(_proxied(database_url, db_proxy.port), proxied_redis)
    folder = tmp_path_factory.mktemp("scale-out")
    pair = [_start(folder / name, env) for name in ("a", "b")]  # started together: one ring
    try:
        servers.wait_healthy(pair)
        settings = Settings.from_mapping(
            {**env, "AUTHSERVER_DATABASE_URL": database_url, "AUTHSERVER_REDIS_URL": redis_url}
        )
        services = build_services(settings)
        yield Cluster(
            *pair, database_url, redis_url, db_proxy, redis_proxy, env, services,
            factories.Factory(services), folder,
        )  # fmt: skip
        services.db.dispose()
        services.keystore.close()
    finally:
        for server in pair:
            server.stop()
        db_proxy.close()
        redis_proxy.close()
        _empty(database)
        database.dispose()
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter("authserver:*"):
            client.delete(key)
        client.close()


@pytest.fixture
def cleanup(cluster: Cluster) -> Iterator[Cluster]:
    """Extra servers a test starts stop with it; proxies come back up."""
    yield cluster
    for server in cluster.extra:
        server.stop()
    cluster.extra.clear()
    cluster.db_proxy.up()
    cluster.db_proxy.delay = 0
    cluster.redis_proxy.up()


# -- the flows ----------------------------------------------------------------------------


@dataclass
class App:
    id: str
    secret: str

    @property
    def basic(self) -> tuple[str, str]:
        return (self.id, self.secret)


def _app(cluster: Cluster, **fields: Any) -> App:
    client, secret = cluster.make.client(
        name="Scale-out app", redirect_uris=[CALLBACK], skip_consent=True,
        grant_types=["authorization_code", "refresh_token", "client_credentials"],
        scope="openid email offline_access", **fields,
    )  # fmt: skip
    assert secret is not None
    return App(client.id, secret)


def _authorize_url(app: App) -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(os.urandom(40)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    query = {
        "response_type": "code", "client_id": app.id, "redirect_uri": CALLBACK,
        "scope": "openid email offline_access", "state": "s", "nonce": "n",
        "code_challenge": challenge.rstrip(b"=").decode(), "code_challenge_method": "S256",
    }  # fmt: skip
    return "/authorize?" + urlencode(query), verifier


def _code(browser: httpx.Client, app: App) -> tuple[str, str]:
    url, verifier = _authorize_url(app)
    response = browser.get(url)
    assert response.status_code in (302, 303), response.text
    params = parse_qs(urlsplit(response.headers["location"]).query)
    return params["code"][0], verifier


def _tokens(cluster: Cluster, app: App, *, code_at: Server, redeem_at: Server) -> dict[str, Any]:
    user = cluster.make.user()
    with httpx.Client(base_url=code_at.url, timeout=15) as browser:
        assert sign_in_by_form(browser, user.email).status_code == 303
        code, verifier = _code(browser, app)
    response = redeem_at.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
              "code_verifier": verifier},
        auth=app.basic,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def _introspect(server: Server, app: App, token: str) -> dict[str, Any]:
    response = server.post("/introspect", data={"token": token}, auth=app.basic)
    assert response.status_code == 200, response.text
    return response.json()


def _refresh(server: Server, app: App, refresh_token: str) -> httpx.Response:
    return server.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=app.basic,
    )  # fmt: skip


def _client_token(server: Server, app: App) -> httpx.Response:
    return server.post("/token", data={"grant_type": "client_credentials"}, auth=app.basic)


def _kids(server: Server) -> set[str]:
    return {key["kid"] for key in server.get("/jwks.json").json()["keys"]}


def _count(cluster: Cluster, table: str) -> int:
    with cluster.services.db.engine.connect() as connection:
        return int(connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())  # noqa: S608


# -- one server, many processes -----------------------------------------------------------


def test_both_serve_the_same_jwks_from_the_database_without_a_shared_folder(
    cluster: Cluster,
) -> None:
    """docs/security.md L92: no instance has a key folder; both publish one ring."""
    assert cluster.a.get("/jwks.json").json() == cluster.b.get("/jwks.json").json()
    for server in cluster.both:
        assert not (server.folder / "keys").exists()
    app = _app(cluster)
    token = _client_token(cluster.a, app).json()["access_token"]
    assert _introspect(cluster.b, app, token)["active"] is True


def test_a_code_from_one_is_redeemed_at_the_other(cluster: Cluster) -> None:
    app = _app(cluster)
    tokens = _tokens(cluster, app, code_at=cluster.a, redeem_at=cluster.b)
    assert tokens["token_type"].lower() == "bearer"
    assert (
        cluster.a.get(
            "/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        ).status_code
        == 200
    )


def test_refreshed_on_one_and_revoked_on_the_other_is_inactive_at_the_first(
    cluster: Cluster,
) -> None:
    """docs/security.md K83."""
    app = _app(cluster)
    first = _tokens(cluster, app, code_at=cluster.a, redeem_at=cluster.a)
    refreshed = _refresh(cluster.a, app, first["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    successor = refreshed.json()

    revoked = cluster.b.post("/revoke", data={"token": successor["refresh_token"]}, auth=app.basic)
    assert revoked.status_code == 200

    assert _introspect(cluster.a, app, successor["refresh_token"]) == {"active": False}
    assert _introspect(cluster.a, app, successor["access_token"]) == {"active": False}
    assert _refresh(cluster.a, app, successor["refresh_token"]).status_code == 400


def test_one_refresh_token_raced_across_both_yields_one_successor(cluster: Cluster) -> None:
    """docs/security.md K82: the rotation is one conditional UPDATE in the shared database."""
    app = _app(cluster)
    for _ in range(3):
        refresh_token = _tokens(cluster, app, code_at=cluster.a, redeem_at=cluster.b)[
            "refresh_token"
        ]
        barrier = threading.Barrier(4)

        def race(
            server: Server, token: str = refresh_token, barrier: threading.Barrier = barrier
        ) -> httpx.Response:
            barrier.wait()
            return _refresh(server, app, token)

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(race, [cluster.a, cluster.b, cluster.a, cluster.b]))
        assert {answer.status_code for answer in answers} <= {200, 400}, [a.text for a in answers]
        successors = {a.json()["refresh_token"] for a in answers if a.status_code == 200}
        assert len(successors) == 1  # the same one inside the retry window, never two


def _early_in_a_window(window: int, needed: float = 60) -> None:
    """The servers count attempts in windows aligned to the wall clock (`ratelimit`), and
    their clock is not the test's to freeze: a test that spends a budget starts with at least
    `needed` seconds of the window left (waiting for the next one if need be), so the count
    cannot start over midway."""
    servers.until(
        lambda: window - time.time() % window >= needed,
        timeout=needed + 5,
        what="a rate-limit window with time to spare",
    )


def test_a_sign_in_rate_limit_counts_attempts_sent_to_both(cluster: Cluster) -> None:
    """docs/security.md I71, M100: the counters live in Redis, shared by every process."""
    user = cluster.make.user()
    _early_in_a_window(ACCOUNT_WINDOW)
    for attempt in range(ACCOUNT_LIMIT):
        server = cluster.both[attempt % 2]
        with httpx.Client(base_url=server.url, timeout=15) as browser:
            assert sign_in_by_form(browser, user.email, "wrong password").status_code == 400
    for server in cluster.both:
        with httpx.Client(base_url=server.url, timeout=15) as browser:
            assert sign_in_by_form(browser, user.email).status_code == 429


def test_a_key_rotated_through_the_cli_is_published_by_both_and_then_signs_at_both(
    cluster: Cluster,
) -> None:
    """docs/security.md K86, L93: published everywhere before it signs anywhere."""
    app = _app(cluster)
    env = {**cluster.env, "AUTHSERVER_DATABASE_URL": cluster.database_url}
    result = subprocess.run(
        [sys.executable, "-m", "authserver.cli", "keys", "rotate", "--alg", "RS256", "--json"],
        env=env, cwd=cluster.folder, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    new = json.loads(result.stdout)
    assert new["activates_at"] - new["created_at"] == ACTIVATION_DELAY

    published = {server.url: None for server in cluster.both}
    while time.time() < new["activates_at"]:
        for server in cluster.both:
            kid = jwt.get_unverified_header(_client_token(server, app).json()["access_token"])[
                "kid"
            ]
            if time.time() < new["activates_at"] - 0.5:
                assert kid != new["kid"], "signed with a key before its activation time"
            if new["kid"] in _kids(server) and published[server.url] is None:
                published[server.url] = time.time()
        time.sleep(0.2)
    for server_url, seen in published.items():
        assert seen is not None, f"{server_url} did not publish the key before it signs"
        assert seen - new["created_at"] <= DB_REFRESH_SECONDS + 1.5

    for server in cluster.both:

        def signed_with_the_new_key(server: Server = server) -> str | None:
            token = str(_client_token(server, app).json()["access_token"])
            return token if jwt.get_unverified_header(token)["kid"] == new["kid"] else None

        token = servers.until(
            signed_with_the_new_key, timeout=DB_REFRESH_SECONDS + 3, what="the new key signs"
        )
        assert _introspect(cluster.b if server is cluster.a else cluster.a, app, token)["active"]


# -- faults -------------------------------------------------------------------------------


def test_redis_down_sign_in_and_tokens_keep_working_with_per_process_limits(
    cleanup: Cluster,
) -> None:
    """docs/security.md I73, L94."""
    cluster = cleanup
    app = _app(cluster)
    cluster.redis_proxy.down()
    try:
        tokens = _tokens(cluster, app, code_at=cluster.a, redeem_at=cluster.b)
        assert _refresh(cluster.b, app, tokens["refresh_token"]).status_code == 200
        for server in cluster.both:
            assert _client_token(server, app).status_code == 200

        # Counting falls back to each process: A refuses after its own limit, B still counts.
        user = cluster.make.user()
        _early_in_a_window(ACCOUNT_WINDOW)
        for _ in range(ACCOUNT_LIMIT):
            with httpx.Client(base_url=cluster.a.url, timeout=15) as browser:
                sign_in_by_form(browser, user.email, "wrong password")
        with httpx.Client(base_url=cluster.a.url, timeout=15) as browser:
            assert sign_in_by_form(browser, user.email).status_code == 429
        with httpx.Client(base_url=cluster.b.url, timeout=15) as browser:
            assert sign_in_by_form(browser, user.email).status_code == 303
    finally:
        cluster.redis_proxy.up()
    assert "Redis unreachable" in cluster.a.log_text()


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert int(response.headers["retry-after"]) > 0


def test_database_down_mid_traffic_is_503_with_retry_after_and_then_recovers(
    cleanup: Cluster,
) -> None:
    """docs/security.md L88, L91: 503 + Retry-After everywhere, nothing issued, never active."""
    cluster = cleanup
    app = _app(cluster)
    tokens = _tokens(cluster, app, code_at=cluster.a, redeem_at=cluster.b)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    user = cluster.make.user()
    signed_in = httpx.Client(base_url=cluster.a.url, timeout=15)
    assert sign_in_by_form(signed_in, user.email).status_code == 303
    rows_before: dict[str, int] = {}
    statuses: Counter[int] = Counter()
    refused_by: set[str] = set()
    wrong: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            for server in cluster.both:
                response = _client_token(server, app)
                statuses[response.status_code] += 1
                if response.status_code == 503:
                    refused_by.add(server.url)
                if response.status_code == 503 and (
                    not response.headers.get("retry-after")
                    or response.json().get("error") != "temporarily_unavailable"
                ):
                    wrong.append(response.text)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        servers.until(lambda: statuses[200] > 0, what="the traffic gets tokens")
        cluster.db_proxy.down()
        both = {server.url for server in cluster.both}
        servers.until(lambda: refused_by == both, what="both servers notice the database is gone")
        for table in ("access_tokens", "refresh_tokens", "authorization_codes", "login_sessions"):
            rows_before[table] = _count(cluster, table)
        for server in cluster.both:
            for response in (
                _client_token(server, app),
                _refresh(server, app, tokens["refresh_token"]),
                server.post("/introspect", data={"token": tokens["access_token"]}, auth=app.basic),
                server.post("/revoke", data={"token": tokens["refresh_token"]}, auth=app.basic),
                server.get(
                    "/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
                ),
            ):
                _assert_unavailable(response)
                assert response.headers["content-type"].startswith("application/json")
                assert response.json().get("active") is not True
            assert server.get("/ready").status_code == 503
            api = server.get("/api/v1/users/me", headers=bearer)
            _assert_unavailable(api)
            assert api.headers["content-type"].startswith("application/problem+json")
            with httpx.Client(base_url=server.url, timeout=15) as browser:
                answer = sign_in_by_form(browser, user.email)
                _assert_unavailable(answer)
                assert answer.headers["content-type"].startswith("text/html")
                assert "temporarily unavailable" in answer.text
        # /authorize cannot check the client: an error page, never a code (nor a redirect).
        for server in cluster.both:
            answer = signed_in.get(server.url + _authorize_url(app)[0])
            _assert_unavailable(answer)
            assert answer.headers["content-type"].startswith("text/html")
        sent = statuses.total()
        servers.until(lambda: statuses.total() >= sent + 4, what="more traffic meets the outage")
        rows_during = {table: _count(cluster, table) for table in rows_before}
        assert rows_during == rows_before  # nothing issued, nothing half-written
    finally:
        cluster.db_proxy.up()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and cluster.a.get("/ready").status_code != 200:
            time.sleep(0.2)
        served = statuses[200]
        while time.monotonic() < deadline and statuses[200] < served + 2:
            time.sleep(0.1)  # the traffic gets tokens again (checked below, after the join)
        stop.set()
        worker.join()
        signed_in.close()

    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0
    assert statuses[200] > 0
    assert wrong == []
    for server in cluster.both:
        assert server.get("/ready").status_code == 200
        assert _client_token(server, app).status_code == 200
        assert _introspect(server, app, tokens["access_token"])["active"] is True
    for server in cluster.both:
        assert not SERVER_ERROR.search(server.log_text())


def test_a_statement_that_times_out_releases_its_connection(cleanup: Cluster) -> None:
    """docs/security.md M99. The pool holds one connection and one overflow: had a cancelled
    statement kept its connection, the third request would find the pool empty and fail
    waiting for it (TimeoutError) instead of having its own statement cancelled."""
    cluster = cleanup
    app = _app(cluster)
    solo = cluster.start(
        "solo-timeout", AUTHSERVER_DB_POOL_SIZE="1", AUTHSERVER_DB_STATEMENT_TIMEOUT="1"
    )
    assert _client_token(solo, app).status_code == 200
    with cluster.services.db.engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(text("LOCK TABLE access_tokens IN ACCESS EXCLUSIVE MODE"))
        for _ in range(4):
            _assert_unavailable(_client_token(solo, app))
        transaction.rollback()
    assert _client_token(solo, app).status_code == 200
    log = solo.log_text()
    assert log.count("database unavailable: OperationalError") == 4
    assert "database unavailable: TimeoutError" not in log


def test_sigterm_lets_in_flight_requests_finish(cleanup: Cluster) -> None:
    """docs/security.md L92."""
    cluster = cleanup
    app = _app(cluster)
    slow = TcpProxy(make_url(cluster.database_url).port or 5432)
    try:
        solo = cluster.start("solo-sigterm", db_proxy=slow)
        assert _client_token(solo, app).status_code == 200
        front = TcpProxy(solo.port)
        via_front = dataclasses.replace(solo, url=f"http://127.0.0.1:{front.port}")
        slow.delay = 0.25
        result: dict[str, httpx.Response] = {}
        request = threading.Thread(target=lambda: result.update(r=_client_token(via_front, app)))
        request.start()
        servers.until(lambda: front.received > 0, what="the request reaches the server")
        arrived = slow.received
        servers.until(lambda: slow.received > arrived, what="the request waits on the database")
        solo.process.send_signal(signal.SIGTERM)
        request.join(timeout=30)
        assert result["r"].status_code == 200
        # uvicorn finishes the requests in flight, then re-raises the signal it caught.
        assert solo.process.wait(timeout=20) in (0, -signal.SIGTERM)
        assert not SERVER_ERROR.search(solo.log_text())
        front.close()
    finally:
        slow.close()


def test_metrics_of_all_workers_behind_one_port_in_multiprocess_mode(
    cleanup: Cluster, tmp_path: Path
) -> None:
    """/metrics is per process; with PROMETHEUS_MULTIPROC_DIR any worker answers the sum."""
    cluster = cleanup
    folder = tmp_path / "prometheus"
    folder.mkdir()
    server = cluster.start("workers", workers=2, PROMETHEUS_MULTIPROC_DIR=str(folder))
    before = _health_count(server)
    sent = 0
    with ThreadPoolExecutor(4) as pool:
        while sent < 400:  # until both workers have answered (the kernel picks the worker)
            assert set(pool.map(lambda _: server.get("/health").status_code, range(20))) == {200}
            sent += 20
            if len({p.name for p in folder.glob("counter_*.db")}) >= 2:
                break
    assert len({p.name for p in folder.glob("counter_*.db")}) == 2
    for _ in range(4):
        assert _health_count(server) == before + sent


def _health_count(server: Server) -> float:
    text = server.get("/metrics").text
    line = re.search(
        r'^authserver_http_requests_total\{endpoint="health",method="GET",status="200"\} (\S+)$',
        text,
        re.M,
    )
    return float(line.group(1)) if line else 0.0


# -- load ---------------------------------------------------------------------------------


def test_a_short_soak_keeps_memory_flat_and_answers_without_errors(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """docs/security.md M100, bounded: 2,000 mixed requests over two servers, reported."""
    app = _app(cluster)
    user_tokens = _tokens(cluster, app, code_at=cluster.a, redeem_at=cluster.b)
    bearer = {"Authorization": f"Bearer {user_tokens['access_token']}"}
    issued: list[str] = []

    def one(n: int) -> tuple[str, int]:
        server = cluster.both[n % 2]
        kind = ("token", "introspect", "jwks", "discovery", "userinfo", "health")[n % 6]
        if kind == "token":
            response = _client_token(server, app)
            if response.status_code == 200:
                issued.append(response.json()["access_token"])
        elif kind == "introspect":
            token = random.choice(issued) if issued else user_tokens["access_token"]
            response = server.post("/introspect", data={"token": token}, auth=app.basic)
        elif kind == "jwks":
            response = server.get("/jwks.json")
        elif kind == "discovery":
            response = server.get("/.well-known/openid-configuration")
        elif kind == "userinfo":
            response = server.get("/userinfo", headers=bearer)
        else:
            response = server.get("/health")
        return kind, response.status_code

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(300)))  # warm-up: pools, caches, imports
        before = {server.url: _rss_kib(server) for server in cluster.both}
        started = time.monotonic()
        results = list(pool.map(one, range(300, 2300)))
        elapsed = time.monotonic() - started
    after = {server.url: _rss_kib(server) for server in cluster.both}

    outcomes = Counter(f"{kind} {status}" for kind, status in results)
    report = {
        "requests": len(results),
        "seconds": round(elapsed, 1),
        "outcomes": dict(sorted(outcomes.items())),
        "rss_kib_before": before,
        "rss_kib_after": after,
    }
    path = tmp_path_factory.mktemp("soak") / "soak-report.json"
    path.write_text(json.dumps(report, indent=2))
    print("\nsoak report:", json.dumps(report, indent=2), f"\n(written to {path})")

    assert all(status == 200 for _, status in results), outcomes
    for url in before:
        assert after[url] - before[url] < 30 * 1024, report  # flat: under 30 MiB of growth
    for server in cluster.both:
        assert not SERVER_ERROR.search(server.log_text())


# -- automatic rotation -------------------------------------------------------------------


def test_automatic_rotation_across_two_instances(cleanup: Cluster) -> None:
    """Period 10 s, activation delay 4 s, tokens live 6 s: over three periods the JWKS of
    both always holds the key of every unexpired token, and each period has one key."""
    cluster = cleanup
    app = _app(cluster)
    options = {
        "AUTHSERVER_KEY_ROTATION_PERIOD": "10s",
        "AUTHSERVER_KEY_ACTIVATION_DELAY": "4",
        "AUTHSERVER_ACCESS_TOKEN_TTL": "6",
        "AUTHSERVER_ID_TOKEN_TTL": "6",
    }
    rotating = [cluster.start("rot-a", **options), cluster.start("rot-b", **options)]
    live: list[tuple[str, int, str]] = []  # (kid, exp, token)
    kids_seen: set[str] = set()
    older_key_verified = 0  # tokens signed by a key that no longer signs, verified
    deadline = time.time() + 32
    while time.time() < deadline:
        signing = set()
        for server in rotating:
            token = _client_token(server, app).json()["access_token"]
            claims = jwt.decode(token, options={"verify_signature": False})
            signing.add(jwt.get_unverified_header(token)["kid"])
            live.append((jwt.get_unverified_header(token)["kid"], claims["exp"], token))
        for server in rotating:
            jwks = server.get("/jwks.json").json()
            fetched = time.time()
            live = [entry for entry in live if entry[1] > fetched + 0.5]  # unexpired tokens
            published = {key["kid"]: key for key in jwks["keys"]}
            for kid, _, token in live:
                assert kid in published, f"{server.url} dropped {kid} while a token lives"
                key = jwt.PyJWK(published[kid]).key
                # the signature, not the clock: the token was live when the JWKS was fetched
                jwt.decode(token, key, algorithms=["RS256"],
                           options={"verify_aud": False, "verify_exp": False})  # fmt: skip
                older_key_verified += kid not in signing
            kids_seen |= set(published)
        time.sleep(0.5)

    with cluster.services.db.engine.connect() as connection:
        rows = connection.execute(
            sql_select(SigningKey.alg, SigningKey.rotation_slot).where(
                SigningKey.rotation_slot.is_not(None)
            )
        ).all()
        rotated = (
            connection.execute(
                sql_select(AuditEvent.details).where(AuditEvent.event == "key.rotated")
            )
            .scalars()
            .all()
        )
    assert max(Counter(rows).values()) == 1  # the ring: one key per algorithm and period
    periods = Counter((details["alg"], details["period"]) for details in rotated)
    assert len(periods) >= 4  # RS256 and ES256 in at least two periods
    assert max(periods.values()) == 1  # each made once: never by both instances
    assert len(kids_seen) >= 4
    assert older_key_verified > 0  # tokens signed before a rotation verified after it
