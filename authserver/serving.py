"""How `authserver serve` runs uvicorn: request-head limits and whose forwarding to believe.

uvicorn's two HTTP implementations differ on oversized request heads. httptools (the
default with `uvicorn[standard]`) buffers a header of any size and hands it to the app;
h11 refuses a head that grows past `h11_max_incomplete_event_size`, but uvicorn answers
that with a 400 although h11 says 431. So the server runs h11, bounded, and answers what h11
hints (RFC 6585 §5: 431 Request Header Fields Too Large). A head that arrives whole in one
read can slip past h11's bound; `web.BodySizeLimitMiddleware` counts and measures the
headers again and answers 431 too.

`X-Forwarded-For` is believed only from `AUTHSERVER_TRUSTED_PROXIES`; with none configured
uvicorn's proxy-headers middleware is off and the peer address is the client's address.
"""

from __future__ import annotations

from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from authserver.observability import configure_logging
from authserver.settings import Settings
from authserver.web import MAX_HEADER_BYTES, MAX_URL_BYTES

#: The most of a request head (request line and headers) the server buffers.
MAX_HEAD_BYTES = MAX_HEADER_BYTES + MAX_URL_BYTES


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering 431 (not 400) when the request head is too large."""

    def send_400_response(self, msg: str) -> None:
        if len(self.conn.trailing_data[0]) <= MAX_HEAD_BYTES:
            super().send_400_response(msg)
            return
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        for event in (
            h11.Response(
                status_code=431, headers=headers, reason=b"Request Header Fields Too Large"
            ),
            h11.Data(data=b"Request header fields too large"),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


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
        "http": BoundedH11Protocol,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or [],
        "server_header": False,
    }
