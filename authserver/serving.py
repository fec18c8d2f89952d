"""How `authserver serve` runs uvicorn: request-head limits and whose forwarding to believe.

The server runs uvicorn's httptools protocol (the fast C parser `uvicorn[standard]` picks by
default), bounded: httptools buffers a header of any size and hands it to the app, so
`BoundedHttpToolsProtocol` counts the bytes of a request head while it is still arriving and
refuses one that grows past `MAX_HEAD_BYTES` before the app sees it: 414 (RFC 9110
§15.5.15) when its URL is longer than the app allows (`web.MAX_URL_BYTES`), otherwise 431
(RFC 6585 §5), and closes the connection. A head that arrives whole in one read can slip
past this bound; `web.BodySizeLimitMiddleware` counts and measures the headers again and
answers 414 or 431 in the format of the endpoint asked.

The JWKS and discovery are the most requested documents and the same for every caller, so
the protocol writes them itself, from the bytes the app encoded (`PreparedAnswers`, handed
over in the lifespan state), with everything the app's middleware adds: security headers,
the request id, the access line and the metrics. Only a plain request takes that path: a
keep-alive HTTP/1.1 GET of the exact path with no query, no body, no header outside
`PLAIN_HEADERS`, nothing else in flight on the connection and its writes not paused; the
app answers everything else, so the two answers are the same request for request.

`X-Forwarded-For` is believed only from `AUTHSERVER_TRUSTED_PROXIES`; with none configured
uvicorn's proxy-headers middleware is off and the peer address is the client's address.
"""

from __future__ import annotations

import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from authserver.oauth.discovery import Headers, PublicDocuments
from authserver.observability import Metrics, configure_logging, record_request, request_id
from authserver.settings import Settings
from authserver.web import MAX_HEADER_BYTES, MAX_URL_BYTES, headers_over_limit, security_headers

#: The most of a request head (request line and headers) the server buffers.
MAX_HEAD_BYTES = MAX_HEADER_BYTES + MAX_URL_BYTES

_REFUSALS = {
    414: b"414 URI Too Long",
    431: b"431 Request Header Fields Too Large",
}


#: The lifespan state key of the app's `PreparedAnswers`.
PREPARED = "authserver.prepared_answers"

#: Request headers that change nothing in a public document's answer. A request with any
#: other header (a body, conditions, forwarding from a trusted proxy) goes to the app.
PLAIN_HEADERS = frozenset(
    (b"host", b"user-agent", b"accept", b"accept-encoding", b"accept-language", b"connection",
     b"cache-control", b"pragma", b"origin", b"referer", b"x-request-id")
)  # fmt: skip


class PreparedAnswers:
    """What the server may answer without the app (see the module's docstring)."""

    def __init__(
        self, documents: PublicDocuments, metrics: Metrics, *, https: bool, trusts_proxies: bool
    ) -> None:
        self.documents = documents
        self.metrics = metrics
        self.security = b"".join(b"%s: %s\r\n" % header for header in security_headers(https))
        self.plain = PLAIN_HEADERS if trusts_proxies else PLAIN_HEADERS | {b"x-forwarded-for"}
        #: Encoded heads by the `id` of the headers they encode (kept alive alongside).
        self._heads: dict[int, tuple[Headers, bytes]] = {}

    def find(
        self, url: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[Any, bytes, bytes] | None:
        """The route, encoded headers and body for a plain request of `url`, if prepared."""
        for name, _ in headers:
            if name not in self.plain:
                return None
        if headers_over_limit(headers):
            return None
        found = self.documents.prepared(url)
        if found is None:
            return None
        route, body, own = found
        cached = self._heads.get(id(own))
        if cached is None or cached[0] is not own:
            if len(self._heads) > 16:
                self._heads.clear()
            head = b"".join(b"%s: %s\r\n" % header for header in own) + self.security
            cached = self._heads[id(own)] = (own, head)
        return route, cached[1], body

    def answered(
        self, route: Any, path: bytes, client: Any, request_id: str, started: float
    ) -> None:
        """The access line and the metrics, as `RequestLogMiddleware` records them."""
        scope = {"method": "GET", "path": path.decode("ascii"), "client": client, "endpoint": route}
        record_request(self.metrics, scope, request_id, 200, time.perf_counter() - started)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on the request head it buffers, answering
    plain requests for prepared documents itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0
        self._prepared: tuple[Any, bytes, bytes] | None = None
        self._answers: PreparedAnswers | None = self.app_state.get(PREPARED)
        #: uvicorn's default headers (the date), encoded again when it swaps the list.
        self._defaults: tuple[Any, bytes] = (None, b"")

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            return
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._reading_head and self._head_bytes > MAX_HEAD_BYTES and self.parser is not None:
            self._refuse(414 if len(getattr(self, "url", b"")) > MAX_URL_BYTES else 431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._prepared = self._plain_request()
        if self._prepared is None:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._prepared is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._prepared is None:
            super().on_message_complete()
        else:
            self._answer(*self._prepared)
        self._reading_head = True
        self._head_bytes = 0

    def _plain_request(self) -> tuple[Any, bytes, bytes] | None:
        if self._answers is None or self.flow.write_paused or self.parser.get_method() != b"GET":
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None
        if self.parser.get_http_version() != "1.1" or not self.parser.should_keep_alive():
            return None
        try:
            return self._answers.find(self.url, self.headers)
        except Exception:
            return None  # the app answers, and reports the failure its own way

    def _answer(self, route: Any, head: bytes, body: bytes) -> None:
        started = time.perf_counter()
        self._prepared = None
        answers: PreparedAnswers = self._answers  # type: ignore[assignment]
        incoming = next((v for n, v in self.headers if n == b"x-request-id"), b"")
        this_id = request_id(incoming.decode("latin-1"))
        defaults = self.server_state.default_headers
        if defaults is not self._defaults[0]:
            self._defaults = (defaults, b"".join(b"%s: %s\r\n" % header for header in defaults))
        self.transport.write(
            b"HTTP/1.1 200 OK\r\n%s%sx-request-id: %s\r\n\r\n%s"
            % (self._defaults[1], head, this_id.encode("latin-1"), body)
        )
        answers.answered(route, self.url, self.client, this_id, started)
        self.on_response_complete()

    def _refuse(self, status: int) -> None:
        reason = _REFUSALS[status]
        body = reason[4:] + b"\n"
        self.transport.write(
            b"HTTP/1.1 " + reason + b"\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()
        self.parser = None  # type: ignore[assignment]


def run(
    settings: Settings, *, host: str, port: int, workers: int = 1, reload: bool = False
) -> None:
    """Serve the app (built from the environment in each worker) until stopped."""
    import uvicorn

    configure_logging(settings.log_format)
    uvicorn.run(
        "authserver.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        reload=reload,
        log_level="warning",
        **uvicorn_options(settings),
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` from the settings."""
    proxies = list(settings.trusted_proxies)
    return {
        "http": BoundedHttpToolsProtocol,
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or [],
        "server_header": False,
    }
