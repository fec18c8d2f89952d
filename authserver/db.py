"""The database: declarative base, engine set-up, and the one way to run a unit of work.

Route functions are async; SQLAlchemy and Authlib are synchronous. `Database.run_sync` runs a
plain function in the threadpool inside one transaction and makes its session reachable through
`current_session()` (the only ambient state in the app), so that Authlib hooks that receive no
request can still reach storage.

Units of work wait for their turn on the event loop, first come first served, and only as
many run at once as the database can serve: one on SQLite, which has a single writer and
whose busy handler would otherwise put waiting threads to sleep for up to 100 ms at a time
(seconds-long p99 under load), and the pool size on PostgreSQL, so that no thread waits for
a connection checkout or times out on one.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import sqlite3
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar, cast

import anyio.to_thread
from anyio import CapacityLimiter
from sqlalchemy import DateTime, MetaData, Table, create_engine, event
from sqlalchemy.engine import CursorResult, Engine, Result, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

P = ParamSpec("P")
T = TypeVar("T")
#: Pooled PostgreSQL connections, and so units of work at once, per worker.
POOL_SIZE = 10

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


#: A keyset position in a listing: (created_at, id) of the last row already shown.
Position = tuple[datetime, str]
#: No row id is longer (uuids, client ids, jtis); a longer one needs no lookup to be absent.
ID_MAX = 64


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE touched. `Session.execute` is typed as returning a plain
    `Result`, but for these statements it is a `CursorResult`, which counts them."""
    return cast(CursorResult[Any], result).rowcount


_session: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "authserver_db_session", default=None
)


def current_session() -> Session:
    """The session of the unit of work running on this thread (see `Database.run_sync`)."""
    session = _session.get()
    if session is None:
        raise RuntimeError("no unit of work is running: call through Database.run_sync")
    return session


#: Seconds a request waits for a pooled connection before it is answered 503 (errors.py).
POOL_TIMEOUT = 5


def create_db_engine(
    url: str,
    *,
    pool_size: int = POOL_SIZE,
    pool_timeout: float = POOL_TIMEOUT,
    statement_timeout: float | None = None,
) -> Engine:
    """An engine tuned for the backend.

    SQLite gets WAL (readers never block the writer), foreign keys, a busy timeout, and
    `BEGIN IMMEDIATE` so that a transaction takes the write lock up front: deferred
    transactions that upgrade from read to write fail at once with "database is locked"
    instead of waiting, which turns races into 500s.

    Both get a bounded pool (`pool_size` plus as many overflow connections) and wait at most
    `pool_timeout` seconds for a connection: when every connection is busy, a request ends
    in a 503 with Retry-After instead of queueing for SQLAlchemy's default 30 s.

    On PostgreSQL a connection attempt gives up after `pool_timeout` seconds, and with
    `statement_timeout` the server cancels a statement running longer: the request ends in a
    503 and its connection goes back to the pool instead of being held by a stuck query.
    """
    pool = {"pool_size": pool_size, "max_overflow": pool_size, "pool_timeout": pool_timeout}
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **pool
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            # An AUTOCOMMIT connection (a migration's `autocommit_block`) runs each statement
            # on its own, so that pragmas such as `foreign_keys` take effect.
            if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                return
            # Straight to the driver: every unit of work begins here, and SQLAlchemy's
            # statement path (execution context, events, result) costs more than the BEGIN.
            # A failure still reaches the app as SQLAlchemy's error (a 503, see errors.py).
            try:
                connection.connection.driver_connection.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                raise DBAPIError.instance("BEGIN IMMEDIATE", (), error, sqlite3.Error) from error

        return engine
    connect_args: dict[str, Any] = {"connect_timeout": max(1, int(pool_timeout))}
    if statement_timeout:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **pool)


def table_of(model: type[Base]) -> Table:
    """The `Table` behind a mapped class, for Core statements built once on the hot path."""
    return cast(Table, model.__table__)


class Database:
    """The engine and the unit-of-work boundary; one per app, kept on `app.state`."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = POOL_SIZE,
        pool_timeout: float = POOL_TIMEOUT,
        statement_timeout: float | None = None,
    ) -> None:
        self.url = url
        self.engine = create_db_engine(
            url, pool_size=pool_size, pool_timeout=pool_timeout, statement_timeout=statement_timeout
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._concurrency = 1 if self.engine.dialect.name == "sqlite" else pool_size
        self._limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter]
        self._limiters = weakref.WeakKeyDictionary()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions() as session, session.begin():
            token = _session.set(session)
            try:
                yield session
            finally:
                _session.reset(token)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self.transaction():
            return fn(*args, **kwargs)

    async def run_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` in the threadpool inside one transaction, when its turn comes."""
        unit = functools.partial(self.call, fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(unit, limiter=self._limiter())

    def _limiter(self) -> CapacityLimiter:
        """One limiter per event loop (tests drive one app from several loops)."""
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None:
            limiter = self._limiters[loop] = CapacityLimiter(self._concurrency)
        return limiter

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()
