"""OIDC Back-Channel Logout 1.0 (docs/security.md P117-P121): a real HTTP receiver on
127.0.0.1 (a trusted loopback host of the outbound client) checks every logout token with
PyJWT against the server's JWKS, the way a relying party does.

The delivery worker is driven by hand (`backchannel.deliver_due` with a chosen clock): the
app's lifespan, which would run it in the background too, is entered only by the test that
shows the background worker delivering on its own.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver import db
from authserver.db import current_session
from authserver.oauth import backchannel, clients, token_format, tokens
from authserver.oauth.backchannel import BackchannelLogout
from authserver.services import Services
from authserver.sessions import models as sessions
from authserver.settings import Settings
from authserver.users.models import User
from tests import factories
from tests.conftest import ISSUER, Api, audit_events, csrf_token
from tests.oauth.conftest import RP, SCOPE, Flow

API = "/api/v1"


@dataclass
class Receiver:
    """A relying party's back-channel logout endpoint: a thread HTTP server that is bound
    from the start (so its port is reserved: connecting is refused while it is down) and
    answers once `start` is called. It validates each logout token as OIDC Back-Channel
    Logout §2.6 says, with PyJWT and the keys of the JWKS it was given."""

    server: http.server.HTTPServer
    jwks: jwt.PyJWKSet | None = None
    audience: str = ""
    valid: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/backchannel-logout"

    def start(self) -> None:
        self.server.server_activate()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def validate(self, token: str) -> dict[str, Any]:
        assert self.jwks is not None
        header = jwt.get_unverified_header(token)
        if header.get("typ") != "logout+jwt":
            raise jwt.InvalidTokenError("not a logout token")
        key = next(k for k in self.jwks.keys if k.key_id == header["kid"])
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[header["alg"]],
            audience=self.audience,
            issuer=ISSUER,
            options={"require": ["iss", "aud", "iat", "exp", "jti"]},
        )
        if set(claims.get("events", {})) != {backchannel.EVENT}:
            raise jwt.InvalidTokenError("no back-channel logout event")
        if "nonce" in claims or not (claims.get("sid") or claims.get("sub")):
            raise jwt.InvalidTokenError("a nonce, or neither sid nor sub")
        return claims

    def answer(self, body: bytes) -> int:
        [token] = parse_qs(body.decode())["logout_token"]
        try:
            self.valid.append(self.validate(token))
        except (jwt.InvalidTokenError, StopIteration) as error:
            self.refused.append(str(error))
            return 400
        return 200


def _handler(receiver: Callable[[], Receiver]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            assert self.headers["content-type"] == "application/x-www-form-urlencoded"
            status = receiver().answer(body)
            self.send_response(status)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []
    server = http.server.HTTPServer(
        ("127.0.0.1", 0), _handler(lambda: holder[0]), bind_and_activate=False
    )
    server.server_bind()
    holder.append(Receiver(server))
    yield holder[0]
    if holder[0].thread is not None:
        server.shutdown()
    server.server_close()


@pytest.fixture
def settings(settings: Settings, receiver: Receiver) -> Settings:
    """The receiver's host is one the operator trusts, so plain http to it is allowed."""
    return settings.replace(trusted_hosts=(f"127.0.0.1:{receiver.port}",))


@pytest.fixture
def client(app: Starlette) -> TestClient:
    """The app without its lifespan: no background worker competes with the test's steps."""
    return TestClient(app, base_url=ISSUER, follow_redirects=False)


@pytest.fixture
def bc_rp(
    make: factories.Factory, services: Services, receiver: Receiver, client: TestClient
) -> RP:
    """A relying party registered for back-channel logout at the receiver, which now knows
    the JWKS and its own client_id."""
    created, secret = make.client(
        name="Logout Listener", redirect_uris=["https://rp.example/cb"], scope=SCOPE
    )

    def register() -> None:
        found = clients.get(created.id)
        assert found is not None
        backchannel.register(found, services.fetcher, receiver.uri, True)

    services.db.call(register)
    receiver.jwks = jwt.PyJWKSet.from_dict(client.get("/jwks.json").json())
    receiver.audience = created.id
    return RP(created, secret, "https://rp.example/cb")


def hold_tokens(services: Services, rp: RP, user: User, session_id: str) -> None:
    """The client got tokens in this session (a token family bound to it)."""

    def grant() -> None:
        now = db.utcnow()
        tokens.open_family(
            client_id=rp.id,
            end_user=token_format.EndUser(user, session_id, now),
            code_id=None,
            scope="openid",
            now=now,
            ttl=3600,
        )

    services.db.call(grant)


def signed_in(services: Services, rp: RP, user: User) -> str:
    """A browser session of `user` in which `rp` holds tokens; its id."""
    login, _ = services.db.call(
        sessions.start, services.digester, services.settings, user_id=user.id
    )
    hold_tokens(services, rp, user, login.id)
    return login.id


def outbox(services: Services) -> list[BackchannelLogout]:
    def read() -> list[BackchannelLogout]:
        return list(current_session().scalars(select(BackchannelLogout)))

    return services.db.call(read)


def later(seconds: float) -> datetime:
    return db.utcnow() + timedelta(seconds=seconds)


# -- discovery and registration ---------------------------------------------------------------


def test_discovery_advertises_back_channel_logout_only_when_it_is_on(
    client: TestClient, app_with: Callable[..., TestClient]
) -> None:
    document = client.get("/.well-known/openid-configuration").json()
    assert document["backchannel_logout_supported"] is True
    assert document["backchannel_logout_session_supported"] is True
    assert "sid" in document["claims_supported"]
    off = app_with(backchannel_logout=False).get("/.well-known/openid-configuration").json()
    assert "backchannel_logout_supported" not in off
    assert "backchannel_logout_session_supported" not in off


def test_a_client_registers_its_back_channel_logout_uri(
    client: TestClient, receiver: Receiver
) -> None:
    body = {
        "redirect_uris": ["https://rp.example/cb"],
        "backchannel_logout_uri": receiver.uri,
        "backchannel_logout_session_required": True,
    }
    created = client.post("/register", json=body)
    assert created.status_code == 201, created.text
    registered = created.json()
    assert registered["backchannel_logout_uri"] == receiver.uri
    assert registered["backchannel_logout_session_required"] is True
    token = registered["registration_access_token"]
    path = f"/register/{registered['client_id']}"
    read = client.get(path, headers={"Authorization": f"Bearer {token}"}).json()
    assert read["backchannel_logout_uri"] == receiver.uri
    replaced = client.put(
        path,
        json={"client_id": registered["client_id"], "redirect_uris": ["https://rp.example/cb"]},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert "backchannel_logout_uri" not in replaced


@pytest.mark.parametrize(
    "uri",
    [
        "http://rp.example/logout",
        "http://127.0.0.1:1/logout",
        "https://rp.example/logout#fragment",
        "https://user:pass@rp.example/logout",
        "https://10.0.0.7/logout",
        "https://169.254.169.254/latest",
        "ftp://rp.example/logout",
        "not a url",
        42,
    ],
)
def test_registration_refuses_a_back_channel_logout_uri_the_server_would_not_post_to(
    client: TestClient, uri: Any
) -> None:
    body = {"redirect_uris": ["https://rp.example/cb"], "backchannel_logout_uri": uri}
    response = client.post("/register", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client_metadata"
    assert "backchannel_logout_uri" in response.json()["error_description"]


def test_registration_refuses_a_session_flag_that_is_not_a_boolean_or_has_no_uri(
    client: TestClient, receiver: Receiver
) -> None:
    base = {"redirect_uris": ["https://rp.example/cb"]}
    for extra in (
        {"backchannel_logout_uri": receiver.uri, "backchannel_logout_session_required": "yes"},
        {"backchannel_logout_session_required": True},
    ):
        response = client.post("/register", json={**base, **extra})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_client_metadata"


def test_the_admin_api_sets_checks_and_clears_the_back_channel_logout_uri(
    api: Api, admin: factories.Person, receiver: Receiver
) -> None:
    body = {
        "client_name": "Listener",
        "redirect_uris": ["https://rp.example/cb"],
        "backchannel_logout_uri": "http://rp.example/logout",
    }
    refused = api.call("POST", f"{API}/clients", admin.token, body)
    assert refused.status_code == 400, refused.text
    assert "backchannel_logout_uri" in refused.json()["detail"]
    body["backchannel_logout_uri"] = receiver.uri
    created = api.call("POST", f"{API}/clients", admin.token, body)
    assert created.status_code == 201, created.text
    assert created.json()["backchannel_logout_uri"] == receiver.uri
    assert created.json()["backchannel_logout_session_required"] is False
    path = f"{API}/clients/{created.json()['client_id']}"
    flagged = api.call("PATCH", path, admin.token, {"backchannel_logout_session_required": True})
    assert flagged.json()["backchannel_logout_uri"] == receiver.uri
    assert flagged.json()["backchannel_logout_session_required"] is True
    bad = api.call("PATCH", path, admin.token, {"backchannel_logout_uri": "https://x/#f"})
    assert bad.status_code == 400
    cleared = api.call("PATCH", path, admin.token, {"backchannel_logout_uri": ""})
    assert cleared.status_code == 200, cleared.text
    assert "backchannel_logout_uri" not in cleared.json()


# -- delivery -------------------------------------------------------------------------------


def test_logout_posts_a_logout_token_the_receiver_validates_with_the_jwks(
    flow: Flow,
    client: TestClient,
    bc_rp: RP,
    user: User,
    services: Services,
    receiver: Receiver,
) -> None:
    receiver.start()
    login = flow.sign_in_directly(user)
    id_token = flow.tokens(bc_rp, user)["id_token"]
    response = client.get("/logout", params={"id_token_hint": id_token, "client_id": bc_rp.id})
    assert response.status_code == 200, response.text
    assert receiver.valid == []  # the person was answered before anything was sent
    assert [(row.client_id, row.session_id) for row in outbox(services)] == [(bc_rp.id, login.id)]

    step = backchannel.deliver_due(services)

    assert (step.sent, step.failed) == (1, 0)
    [claims] = receiver.valid
    id_claims = jwt.decode(id_token, options={"verify_signature": False})
    assert claims["sid"] == id_claims["sid"] == login.id
    assert claims["sub"] == id_claims["sub"] == user.id
    assert claims["aud"] == bc_rp.id
    assert claims["exp"] - claims["iat"] == backchannel.TOKEN_TTL
    assert outbox(services) == []
    assert backchannel.deliver_due(services).sent == 0


def test_a_receiver_that_is_down_gets_the_token_after_it_comes_back(
    bc_rp: RP, user: User, services: Services, receiver: Receiver
) -> None:
    session_id = signed_in(services, bc_rp, user)
    assert services.db.call(sessions.end, services.app_access, session_id)
    now = db.utcnow()

    first = backchannel.deliver_due(services, now=now)

    assert (first.sent, first.failed, first.dropped) == (0, 1, 0)
    [row] = outbox(services)
    assert row.attempts == 1
    assert row.lease is None
    assert row.last_error
    assert row.next_attempt_at == now + timedelta(seconds=backchannel.backoff(1))
    assert backchannel.deliver_due(services, now=now).failed == 0  # not due yet

    receiver.start()
    again = backchannel.deliver_due(services, now=row.next_attempt_at)

    assert again.sent == 1
    assert [claims["sid"] for claims in receiver.valid] == [session_id]
    assert outbox(services) == []


def test_the_background_worker_delivers_without_anyone_waiting(
    client: TestClient, bc_rp: RP, user: User, services: Services, receiver: Receiver
) -> None:
    receiver.start()
    session_id = signed_in(services, bc_rp, user)
    with client:  # the lifespan runs the worker
        services.db.call(sessions.end, services.app_access, session_id)
        deadline = time.monotonic() + 30
        while not (receiver.valid or receiver.refused) and time.monotonic() < deadline:
            time.sleep(0.1)
    pending = [(row.attempts, row.last_error) for row in outbox(services)]
    assert [claims["sid"] for claims in receiver.valid] == [session_id], (receiver, pending)


def test_a_worker_gives_up_after_the_last_attempt_with_an_audit_event(
    bc_rp: RP, user: User, services: Services, receiver: Receiver
) -> None:
    session_id = signed_in(services, bc_rp, user)
    services.db.call(sessions.end, services.app_access, session_id)
    now = db.utcnow()
    for attempt in range(1, backchannel.MAX_ATTEMPTS + 1):
        step = backchannel.deliver_due(services, now=now)
        assert step.failed == 1
        assert step.dropped == (1 if attempt == backchannel.MAX_ATTEMPTS else 0)
        now += timedelta(seconds=backchannel.MAX_DELAY)
    assert outbox(services) == []
    [event] = audit_events(services, "backchannel_logout.dropped")
    assert event.target_id == bc_rp.id
    assert event.details["session_id"] == session_id


def test_a_lease_keeps_two_workers_from_sending_one_row(
    bc_rp: RP, user: User, services: Services
) -> None:
    services.db.call(sessions.end, services.app_access, signed_in(services, bc_rp, user))
    now = db.utcnow()
    first = services.db.call(backchannel.claim, now)
    assert first is not None
    assert services.db.call(backchannel.claim, now) is None
    # The first worker died mid-send: once its lease runs out another takes the row over,
    # and the first can no longer settle it.
    second = services.db.call(backchannel.claim, now + timedelta(seconds=backchannel.LEASE_SECONDS))
    assert second is not None
    assert second.id == first.id
    assert second.attempts == 2
    assert not services.db.call(backchannel.delivered, first)
    assert not services.db.call(backchannel.failed, first, "late", now)
    assert [row.lease for row in outbox(services)] == [second.lease]
    assert services.db.call(backchannel.delivered, second)
    assert outbox(services) == []


def test_workers_running_at_once_send_each_token_once(
    make: factories.Factory, bc_rp: RP, services: Services, receiver: Receiver
) -> None:
    receiver.start()
    ended = []
    for number in range(6):
        person = make.user(email=f"p{number}@example.com")
        session_id = signed_in(services, bc_rp, person)
        services.db.call(sessions.end, services.app_access, session_id)
        ended.append(session_id)
    barrier = threading.Barrier(3)
    steps: list[backchannel.Step] = []

    def work() -> None:
        barrier.wait()
        steps.append(backchannel.deliver_due(services))

    workers = [threading.Thread(target=work) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert sum(step.sent for step in steps) == 6
    assert sorted(claims["sid"] for claims in receiver.valid) == sorted(ended)


# -- every way a session ends ----------------------------------------------------------------


def _api_end_mine(api: Api, person: factories.Person, session_id: str, **_: Any) -> None:
    response = api.call("DELETE", f"{API}/sessions/{session_id}", person.token)
    assert response.status_code == 204, response.text


def _api_end_others(api: Api, person: factories.Person, **_: Any) -> None:
    response = api.call("DELETE", f"{API}/sessions", person.token)
    assert response.status_code == 200, response.text


def _admin_end(api: Api, person: factories.Person, session_id: str, admin: Any, **_: Any) -> None:
    path = f"{API}/users/{person.user.id}/sessions/{session_id}"
    assert api.call("DELETE", path, admin.token).status_code == 204


def _admin_deactivates(api: Api, person: factories.Person, admin: Any, **_: Any) -> None:
    path = f"{API}/users/{person.user.id}/deactivate"
    response = api.call("POST", path, admin.token)
    assert response.status_code in (200, 204), response.text


def _password_change(api: Api, person: factories.Person, **_: Any) -> None:
    body = {"current_password": factories.PASSWORD, "new_password": "a brand new passphrase 42"}
    response = api.call("POST", f"{API}/users/me/password", person.token, body)
    assert response.status_code == 204, response.text


@pytest.mark.parametrize(
    "end",
    [_api_end_mine, _api_end_others, _admin_end, _admin_deactivates, _password_change],
    ids=["api-end-mine", "api-end-others", "admin-ends", "admin-deactivates", "password-change"],
)
def test_every_api_path_that_ends_a_session_queues_a_logout(
    end: Callable[..., None],
    api: Api,
    person: Callable[..., factories.Person],
    admin: factories.Person,
    bc_rp: RP,
    services: Services,
) -> None:
    someone = person("sam@example.com")
    session_id = signed_in(services, bc_rp, someone.user)
    end(api=api, person=someone, session_id=session_id, admin=admin)
    assert [(row.client_id, row.session_id, row.user_id) for row in outbox(services)] == [
        (bc_rp.id, session_id, someone.user.id)
    ]


def _browser(client: TestClient, user: User) -> str:
    """Sign in at /login; the new session's id."""
    page = client.get("/login")
    data = {"csrf_token": csrf_token(page), "email": user.email, "password": factories.PASSWORD}
    assert client.post("/login", data=data).status_code == 303
    return sessions_of_user(client, user)[-1]


def sessions_of_user(client: TestClient, user: User) -> list[str]:
    services: Services = client.app.state.services  # type: ignore[attr-defined]

    def read() -> list[str]:
        query = (
            select(sessions.LoginSession.id)
            .where(sessions.LoginSession.user_id == user.id)
            .where(sessions.LoginSession.ended_at.is_(None))
            .order_by(sessions.LoginSession.created_at)
        )
        return list(current_session().scalars(query))

    return services.db.call(read)


@pytest.mark.parametrize("action", ["end-one", "end-others", "sign-in-again"])
def test_the_account_page_and_a_new_sign_in_queue_a_logout(
    action: str,
    client: TestClient,
    make: factories.Factory,
    bc_rp: RP,
    services: Services,
) -> None:
    user = make.user(email="ada@example.com")
    other = signed_in(services, bc_rp, user)
    here = _browser(client, user)
    hold_tokens(services, bc_rp, user, here)
    if action == "sign-in-again":
        _browser(client, user)
        ended = here
    else:
        path = (
            f"/account/sessions/{other}/end"
            if action == "end-one"
            else "/account/sessions/end-others"
        )
        token = csrf_token(client.get("/account"))
        assert client.post(path, data={"csrf_token": token}).status_code == 303
        ended = other
    assert [row.session_id for row in outbox(services)] == [ended]


def test_nothing_is_queued_for_clients_without_a_uri_or_when_turned_off(
    app_with: Callable[..., TestClient],
    make: factories.Factory,
    rp: RP,
    bc_rp: RP,
    user: User,
    services: Services,
) -> None:
    plain = signed_in(services, rp, user)
    services.db.call(sessions.end, services.app_access, plain)
    assert outbox(services) == []
    off: Services = app_with(backchannel_logout=False).app.state.services  # type: ignore[attr-defined]
    session_id = signed_in(off, bc_rp, user)
    assert off.db.call(sessions.end, off.app_access, session_id)
    assert outbox(services) == []
