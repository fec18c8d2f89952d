"""The per-process cache of client registrations (`authserver.cache`, `clients.query`)."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from authserver.cache import TtlCache
from authserver.oauth import clients
from authserver.services import Services
from tests import factories


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_live_for_the_ttl_then_load_again() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(2.0, max_entries=10, clock=clock)
    loads = iter(range(10))
    assert cache.get("a", lambda: next(loads)) == 0
    clock.now += 1.9
    assert cache.get("a", lambda: next(loads)) == 0
    clock.now += 0.2
    assert cache.get("a", lambda: next(loads)) == 1


def test_forget_and_the_bound() -> None:
    cache: TtlCache[str, str] = TtlCache(60.0, max_entries=2)
    cache.get("a", lambda: "a1")
    cache.forget("a")
    assert cache.get("a", lambda: "a2") == "a2"
    cache.get("b", lambda: "b1")
    cache.get("c", lambda: "c1")
    assert cache.get("a", lambda: "a3") == "a3"


def test_a_forget_during_a_load_keeps_nothing() -> None:
    """A row changed while another thread read it must not be kept as it was."""
    cache: TtlCache[str, str] = TtlCache(60.0, max_entries=10)

    def load_while_changed() -> str:
        cache.forget("a")
        return "old"

    assert cache.get("a", load_while_changed) == "old"
    assert cache.get("a", lambda: "new") == "new"


def test_a_client_changed_through_the_orm_counts_at_once(
    make: factories.Factory, services: Services
) -> None:
    client, _ = make.client(name="Cached")
    assert services.db.call(clients.query, client.id) is not None

    def disable() -> None:
        found = clients.get(client.id)
        assert found is not None
        found.is_active = False

    services.db.call(disable)
    assert services.db.call(clients.query, client.id) is None


def test_a_change_by_another_instance_counts_within_the_bound(
    make: factories.Factory, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker's UPDATE does not pass through this process's ORM: it is seen once
    the entry is `CLIENT_CACHE_SECONDS` old."""
    clock = Clock()
    monkeypatch.setattr(
        clients, "_registrations", TtlCache(clients.CLIENT_CACHE_SECONDS, 10, clock=clock)
    )
    client, _ = make.client(name="Elsewhere")
    assert services.db.call(clients.query, client.id) is not None
    with services.db.engine.begin() as connection:
        connection.execute(
            update(clients.Client).where(clients.Client.id == client.id).values(is_active=False)
        )
    assert services.db.call(clients.query, client.id) is not None
    clock.now += clients.CLIENT_CACHE_SECONDS
    assert services.db.call(clients.query, client.id) is None


def test_query_returns_a_copy_bound_to_no_session(
    make: factories.Factory, services: Services
) -> None:
    client, _ = make.client(name="Unbound")
    found = services.db.call(clients.query, client.id)
    assert found is not None
    assert clients.inspect(found).session is None
