"""Logs, request ids, health and readiness.

One structured line per request carries a request id: an incoming `X-Request-ID` is kept when
it looks sane (so a proxy's id follows the request), otherwise a fresh one is made; either way
it is echoed back.
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import os
import re
import sys
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authserver.security import new_token

access_log = logging.getLogger("authserver.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


#: One encoder for every line: `json.dumps(..., default=str)` builds a new one per call.
_LOG_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    #: The formatted time of the last second seen: every line in a second shares it.
    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"))
        entry: dict[str, Any] = {
            "time": self._second[1],
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _LOG_ENCODER.encode(entry)


def configure_logging(log_format: str | None) -> None:
    """`text` on a terminal, `json` otherwise, unless the setting says which."""
    chosen = log_format or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler()
    if chosen == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("authserver")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


class Metrics:
    """Request counts and latencies per endpoint, in a registry owned by one app.

    Labels use the endpoint's name, never the raw path, so ids in URLs cannot blow up
    cardinality. Each worker process keeps its own numbers. With `PROMETHEUS_MULTIPROC_DIR`
    set (prometheus-client's multiprocess mode, for `serve --workers N` behind one port),
    every worker writes them to files in that folder and `/metrics` answers the sum of all
    workers; otherwise scrape each process on its own port.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "authserver_http_requests",
            "HTTP requests answered",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "authserver_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["endpoint"],
            registry=self.registry,
        )
        #: The labelled series by (method, endpoint, status), looked up once: `labels()`
        #: builds and locks on every call. Bounded like the labels themselves.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        endpoint = getattr(scope.get("endpoint"), "__name__", "unmatched")
        key = (scope["method"], endpoint, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                self.requests.labels(scope["method"], endpoint, str(status)),
                self.latency.labels(endpoint),
            )
        series[0].inc()
        series[1].observe(seconds)


#: A request id names a log line, it guards nothing: a random prefix drawn once per process
#: and a counter make it unique without a system call per request.
_ID_PREFIX = new_token(9)
_ID_COUNTER = itertools.count(1)


def request_id(incoming: str) -> str:
    """The caller's `X-Request-ID` when it looks sane, otherwise a fresh one."""
    if REQUEST_ID.match(incoming):
        return incoming
    return f"{_ID_PREFIX}.{next(_ID_COUNTER):x}"


def record_request(
    metrics: Metrics, scope: Scope, request_id: str, status: int, elapsed: float
) -> None:
    """What every answered request leaves behind: its metric series and its access line."""
    metrics.observe(scope, status, elapsed)
    log_request(scope, request_id, status, elapsed)


def log_request(scope: Scope, request_id: str, status: int, elapsed: float) -> None:
    """The access line, made as `Logger.info` makes it but without looking up the caller's
    file and line, which the line does not show."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": request_id,
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "duration_ms": round(elapsed * 1000, 2),
        "client_ip": (scope.get("client") or ("", 0))[0],
    }
    record = access_log.makeRecord(
        access_log.name,
        logging.INFO,
        __file__,
        0,
        "%s %s %s",
        (scope["method"], scope["path"], status),
        None,
        extra={"fields": fields},
    )
    access_log.handle(record)


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
        scope.setdefault("state", {})["request_id"] = this_id = request_id(incoming)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message["headers"] = list(message.get("headers", ()))
                if any(name.lower() == b"x-request-id" for name, _ in headers):
                    MutableHeaders(scope=message)["X-Request-ID"] = this_id
                else:
                    headers.append((b"x-request-id", this_id.encode("latin-1")))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            record_request(self.metrics, scope, this_id, status, time.perf_counter() - started)


async def metrics(request: Request) -> Response:
    """Prometheus text; with `AUTHSERVER_METRICS_TOKEN` set, only for `Bearer <token>`
    (compared in constant time). The other way to keep it private is a proxy rule."""
    token = request.app.state.settings.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return Response(
                "Unauthorized", 401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'}
            )
    registry = request.app.state.metrics.registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    """Ready when the database answers; a load balancer stops routing here when it does not."""
    try:
        await run_in_threadpool(request.app.state.db.ping)
    except Exception:
        logging.getLogger("authserver.ready").warning("database not reachable", exc_info=True)
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
    return JSONResponse({"status": "ready", "database": "ok"})
