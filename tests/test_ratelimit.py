"""The kv backends and the fixed-window limiter (docs/security.md I71, I73, items 94 and 100)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from authserver.kv import LocalKV, RedisKV, open_kv
from authserver.ratelimit import RateLimiter
from authserver.services import Services
from tests.conftest import IN_CI, TEST_REDIS_URL


class Clock:
    """Wall-clock seconds; the default is a multiple of both 60 and 900."""

    def __init__(self, now: float = 1_700_000_100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def kv_log() -> Iterator[Recorder]:
    recorder = Recorder()
    logger = logging.getLogger("authserver.kv")
    logger.addHandler(recorder)
    yield recorder
    logger.removeHandler(recorder)


def test_local_counter_expires_after_its_ttl() -> None:
    clock = Clock()
    kv = LocalKV(clock)

    counts = [kv.incr("k", 10) for _ in range(3)]
    clock.now += 10

    assert counts == [1, 2, 3]
    assert kv.incr("k", 10) == 1


def test_local_set_if_absent_is_a_replay_cache() -> None:
    clock = Clock()
    kv = LocalKV(clock)

    first, replay = kv.set_if_absent("jti-1", 60), kv.set_if_absent("jti-1", 60)
    clock.now += 61

    assert (first, replay) == (True, False)
    assert kv.set_if_absent("jti-1", 60) is True


def test_local_sweeps_expired_entries() -> None:
    """Item 100: memory stays flat under a stream of one-off keys (new IPs, emails)."""
    clock = Clock()
    kv = LocalKV(clock)
    for n in range(LocalKV.SWEEP_EVERY - 1):
        kv.incr(f"old-{n}", 5)
    clock.now += 6

    kv.incr("new", 5)

    assert len(kv) == 1


def test_local_counts_every_parallel_increment() -> None:
    """I71: fifty parallel attempts are fifty counts."""
    kv = LocalKV()
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda _: kv.incr("k", 60), range(50)))

    assert sorted(results) == list(range(1, 51))


def test_limiter_refuses_past_the_limit_until_the_window_ends() -> None:
    clock = Clock(1_700_000_110.0)
    limiter = RateLimiter(LocalKV(clock), clock)

    answers = [limiter.check("login-ip", "10.0.0.1", 3, 60) for _ in range(4)]
    other_key = limiter.check("login-ip", "10.0.0.2", 3, 60)
    other_kind = limiter.check("token", "10.0.0.1", 3, 60)
    clock.now += 50

    assert answers[:3] == [None, None, None]
    assert answers[3] == 50
    assert (other_key, other_kind) == (None, None)
    assert limiter.check("login-ip", "10.0.0.1", 3, 60) is None


def test_forgive_gives_back_one_attempt() -> None:
    limiter = RateLimiter(LocalKV(), Clock())

    limiter.check("login-account", "a@example.com", 2, 900)
    limiter.check("login-account", "a@example.com", 2, 900)
    limiter.forgive("login-account", "a@example.com", 900)

    assert limiter.check("login-account", "a@example.com", 2, 900) is None
    assert limiter.check("login-account", "a@example.com", 2, 900) == 900


def test_keys_do_not_reveal_emails_or_ips() -> None:
    """Redis holds hashes, never the addresses people typed."""
    kv = LocalKV()
    limiter = RateLimiter(kv, Clock())

    limiter.check("login-account", "alice@example.com", 5, 900)

    assert all("alice" not in key for key in kv._items)


def test_open_kv_is_local_without_redis() -> None:
    assert isinstance(open_kv(None), LocalKV)


def test_unreachable_redis_falls_back_and_warns_once(kv_log: Recorder) -> None:
    """I73: with Redis down, counters and replay markers keep working in this process."""
    kv = RedisKV.from_url("redis://127.0.0.1:1/0")
    try:
        counts = [kv.incr("k", 60) for _ in range(3)]
        markers = [kv.set_if_absent("jti", 60), kv.set_if_absent("jti", 60)]
    finally:
        kv.close()

    assert counts == [1, 2, 3]
    assert markers == [True, False]
    assert kv.degraded
    assert len(kv_log.messages) == 1
    assert "Redis unreachable" in kv_log.messages[0]


class FlakyRedis:
    """Stands in for a Redis that is down until `up` is set."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0
        self.marked: set[str] = set()

    def set(self, key: str, value: int, *, nx: bool, ex: int) -> bool | None:
        self.calls += 1
        if not self.up:
            raise redis.ConnectionError("refused")
        if key in self.marked:
            return None
        self.marked.add(key)
        return True

    def close(self) -> None:
        pass


def test_redis_is_left_alone_while_down_and_used_again_when_back(kv_log: Recorder) -> None:
    """One timeout per few seconds during an outage, not one per request; then shared again."""
    clock = Clock()
    flaky = FlakyRedis()
    kv = RedisKV(flaky, LocalKV(clock), retry_after=5, clock=clock)  # type: ignore[arg-type]

    kv.set_if_absent("a", 60)
    kv.set_if_absent("b", 60)
    calls_while_down = flaky.calls
    flaky.up = True
    clock.now += 6
    kv.set_if_absent("c", 60)

    assert calls_while_down == 1
    assert flaky.marked == {"authserver:c"}
    assert not kv.degraded
    assert [m.split(" (")[0].split(":")[0] for m in kv_log.messages] == [
        "Redis unreachable",
        "Redis answers again",
    ]


@pytest.fixture
def redis_url() -> str:
    """AUTHSERVER_TEST_REDIS_URL; unset → skip. Set but unreachable fails in CI (it must not
    skip silently there) and skips elsewhere."""
    if not TEST_REDIS_URL:
        pytest.skip("AUTHSERVER_TEST_REDIS_URL is not set")
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis at {TEST_REDIS_URL} is unreachable: {exc}")
        pytest.skip(f"Redis is not reachable at {TEST_REDIS_URL}")
    finally:
        client.close()
    return TEST_REDIS_URL


@pytest.fixture
def shared_pair(redis_url: str) -> Iterator[tuple[RedisKV, RedisKV]]:
    """Two instances' backends on one Redis, under a prefix no other test uses."""
    prefix = f"authserver-test:{uuid.uuid4().hex}:"
    first, second = RedisKV.from_url(redis_url), RedisKV.from_url(redis_url)
    first._prefix = second._prefix = prefix
    yield first, second
    for key in first.client.scan_iter(f"{prefix}*"):
        first.client.delete(key)
    first.close()
    second.close()


def test_redis_counters_are_shared_between_instances(
    shared_pair: tuple[RedisKV, RedisKV],
) -> None:
    """Item 100: limits hold across instances, not per process."""
    first, second = shared_pair

    counts = [first.incr("k", 60), second.incr("k", 60), first.incr("k", 60, -1)]
    ttl = first.client.ttl(first._prefix + "k")

    assert counts == [1, 2, 1]
    assert 0 < ttl <= 60
    assert not first.degraded


def test_redis_set_if_absent_is_shared(shared_pair: tuple[RedisKV, RedisKV]) -> None:
    first, second = shared_pair

    assert first.set_if_absent("jti", 30) is True
    assert second.set_if_absent("jti", 30) is False
    assert 0 < first.client.ttl(first._prefix + "jti") <= 30


def test_redis_counts_every_parallel_attempt(shared_pair: tuple[RedisKV, RedisKV]) -> None:
    """I71 across instances: fifty parallel increments from two processes are fifty."""
    first, second = shared_pair
    barrier = threading.Barrier(10)

    def hit(n: int) -> int:
        if n < 10:
            barrier.wait()
        return (first if n % 2 else second).incr("burst", 60)

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(hit, range(50)))

    assert sorted(results) == list(range(1, 51))


def test_redis_backed_limiter(redis_url: str) -> None:
    kv = RedisKV.from_url(redis_url)
    kv._prefix = f"authserver-test:{uuid.uuid4().hex}:"
    limiter = RateLimiter(kv)
    try:
        answers = [limiter.check("login-ip", "10.0.0.9", 2, 60) for _ in range(3)]
    finally:
        for key in kv.client.scan_iter(f"{kv._prefix}*"):
            kv.client.delete(key)
        limiter.close()

    assert answers[:2] == [None, None]
    assert answers[2] is not None
    assert 1 <= answers[2] <= 60


def test_app_limiters_start_each_test_at_the_start_of_a_window(services: Services) -> None:
    """The suite's clock alignment (tests/conftest.py) reaches the app's limiter, so tests
    that spend a whole budget never see a window roll over midway."""
    remaining = services.limiter._bucket("x", "k", 900)[1]
    assert remaining > 900 - 60
