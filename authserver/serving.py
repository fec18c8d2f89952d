"""How `authserver serve` runs uvicorn: request-head limits and whose forwarding to believe.

The server runs uvicorn's httptools protocol (the fast C parser `uvicorn[standard]` picks by
default), bounded: httptools buffers a header of any size and hands it to the app, so
`BoundedHttpToolsProtocol` counts the bytes of a request head while it is still arriving and
refuses one that grows past `MAX_HEAD_BYTES` before the app sees it: 414 (RFC 9110
§15.5.15) when its URL is longer than the app allows (`web.MAX_URL_BYTES`), otherwise 431
(RFC 6585 §5), and closes the connection. A head that arrives whole in one read can slip
past this bound; `web.BodySizeLimitMiddleware` counts and measures the headers again and
answers 414 or 431 in the format of the endpoint asked.

`X-Forwarded-For` is believed only from `AUTHSERVER_TRUSTED_PROXIES`; with none configured
uvicorn's proxy-headers middleware is off and the peer address is the client's address.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from authserver.observability import configure_logging
from authserver.settings import Settings
from authserver.web import MAX_HEADER_BYTES, MAX_URL_BYTES

#: The most of a request head (request line and headers) the server buffers.
MAX_HEAD_BYTES = MAX_HEADER_BYTES + MAX_URL_BYTES

_REFUSALS = {
    414: b"414 URI Too Long",
    431: b"431 Request Header Fields Too Large",
}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on the request head it buffers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0

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
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0

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
