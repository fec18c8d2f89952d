"""The one outbound HTTP client: every document the server fetches goes through `Fetcher`.

Whoever names a URL to us (a client ID metadata document, a client's `jwks_uri`) could aim
the server at its own network: a database port, 127.0.0.1, the cloud metadata service. So a
fetch is https only, follows no redirect, reads at most `max_bytes` within a deadline, and
connects only to public addresses (docs/security.md F53). The address check happens on the
address actually connected to: `_GuardedBackend` resolves the host once, refuses when any
resolved address is not public, and opens the TCP connection to the checked address itself,
while TLS still sends the host name as SNI and verifies the certificate for it (httpcore does
both from the URL's host), so a second DNS answer can never slip in between check and use.

Operators name trusted hosts (`AUTHSERVER_TRUSTED_HOSTS`, and `AUTHSERVER_CLIENT_METADATA_HOSTS`
which also restricts where metadata documents come from): those may sit on a loopback or
private address (a developer serving a document from their laptop, an identity provider on
the company network), and a trusted host on a loopback address may even be plain http (a
second server started by a test); https stays mandatory for every other host.

Besides cached documents (`json`), `call` makes one uncached request with a form body or
extra headers (an upstream token endpoint, a userinfo or user API, a client's back-channel
logout URI, whose answer need not be JSON) under the same checks.

Answers are cached by URL, honouring `Cache-Control` between a floor and a ceiling;
failures are cached briefly, so a broken or hostile URL is not fetched on every request.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import certifi
import httpcore
import httpx

from authserver import jsonsafe

log = logging.getLogger("authserver.fetch")

MAX_BYTES = 64 * 1024
CONNECT_TIMEOUT = 3.0
#: Addresses tried per fetch, so that a name with many dead addresses cannot hold a worker.
CONNECT_ATTEMPTS = 2
READ_TIMEOUT = 5.0
#: The whole fetch, however slowly a server drips its bytes.
DEADLINE = 10.0
CACHE_FLOOR = 60
CACHE_CEILING = 24 * 3600
CACHE_DEFAULT = 300
NEGATIVE_TTL = 30
#: A forced refresh (an unknown `kid`) happens at most this often per URL.
REFRESH_FLOOR = 60
CACHE_SIZE = 1000
URL_MAX = 2000
METADATA_ADDRESSES = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254")}
_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}", re.IGNORECASE)

Resolver = Callable[[str, int], list[str]]


class FetchError(Exception):
    """A document could not be fetched; `reason` is safe to show to the client that named
    the URL (it never echoes what the remote server said)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise FetchError(f"The host {host} could not be resolved.") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host name spells literally, including the decimal, octal and hex IPv4
    forms (`2130706433`, `0177.0.0.1`, `0x7f.1`) that `inet_aton` and so the resolver accept."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast only: no loopback, private (RFC 1918, ULA), link-local,
    CGNAT, multicast, unspecified, reserved or cloud metadata address, also when an IPv6
    address carries one of them (IPv4-mapped, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return is_public(embedded)
        if address.teredo is not None:
            return is_public(address.teredo[1])
    if address in METADATA_ADDRESSES:
        return False
    return address.is_global and not address.is_multicast and not address.is_unspecified


LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def parse_trusted_hosts(entries: Iterable[str]) -> frozenset[tuple[str, int]]:
    """`host` or `host:port` (`[v6]:port`) entries as (host, port); no port means 443."""
    parsed = set()
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            parts = urlsplit(f"https://{entry}")
            host, port = parts.hostname, parts.port or 443
        except ValueError:
            raise ValueError(f"{raw!r} is not a host or host:port") from None
        if not host or parts.path or parts.query or parts.username or "@" in entry:
            raise ValueError(f"{raw!r} is not a host or host:port")
        parsed.add((host, port))
    return frozenset(parsed)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection that ends `deadline` seconds after it was opened, however slowly the
    server drips its headers or body: each read and write gets at most the time left."""

    def __init__(self, inner: httpcore.NetworkStream, ends_at: float) -> None:
        self._inner = inner
        self._ends_at = ends_at

    def _left(self, timeout: float | None) -> float:
        left = self._ends_at - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the fetch deadline has passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, self._left(timeout))
        return _DeadlineStream(tls, self._ends_at)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's TCP connect, to a resolved and checked address of the requested host."""

    def __init__(
        self,
        resolve: Resolver,
        trusted: frozenset[tuple[str, int]],
        inner: httpcore.NetworkBackend,
        deadline: float,
    ) -> None:
        self._resolve = resolve
        self._trusted = trusted
        self._inner = inner
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._resolve(host, port)
        if not addresses:
            raise FetchError(f"The host {host} could not be resolved.")
        if (host.lower(), port) not in self._trusted:
            for address in addresses:
                if not is_public(ipaddress.ip_address(address.split("%", 1)[0])):
                    raise FetchError(f"The host {host} resolves to a non-public address.")
        ends_at = time.monotonic() + self._deadline
        error: Exception | None = None
        for address in addresses[:CONNECT_ATTEMPTS]:
            try:
                stream = self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
                return _DeadlineStream(stream, ends_at)
            except httpcore.ConnectError as exc:
                error = exc
        raise FetchError(f"Could not connect to {host}.") from error

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise FetchError("Unix sockets are not fetched.")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool that connects through `_GuardedBackend`.

    httpx takes no network backend, so the pool it built is replaced by one that does; the
    rest of the transport (request and response mapping, error mapping) stays httpx's.
    Connections are not kept alive: each fetch gets its own, and so its own deadline."""

    def __init__(self, backend: _GuardedBackend, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, retries=0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=20,
            max_keepalive_connections=0,
            network_backend=backend,
        )


def default_ssl_context() -> ssl.SSLContext:
    """Certificates verified for the host name, against `SSL_CERT_FILE` when set (how a
    developer trusts their own local CA), else the certifi bundle."""
    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())


def cache_lifetime(cache_control: str | None) -> int:
    """Seconds to keep an answer: 0 for `no-store`/`no-cache`, else `max-age` within the
    floor and ceiling, else a default."""
    directives = {}
    for part in (cache_control or "").lower().split(","):
        name, _, value = part.strip().partition("=")
        directives[name] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0
    try:
        max_age = int(directives["max-age"])
    except (KeyError, ValueError):
        return CACHE_DEFAULT
    return min(max(max_age, CACHE_FLOOR), CACHE_CEILING)


@dataclass(frozen=True)
class _Entry:
    value: Any
    fetched_at: float
    expires_at: float


class _Cache:
    """A bounded, lock-guarded map that forgets its oldest entries first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> _Entry | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and entry.expires_at <= now:
                del self._items[key]
                return None
            return entry

    def put(self, key: str, entry: _Entry) -> None:
        with self._lock:
            self._items[key] = entry
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


class Fetcher:
    """Fetches small JSON documents safely, with a positive and a negative cache.

    Thread-safe: the protocol calls it from the worker threads of units of work."""

    def __init__(
        self,
        *,
        trusted_hosts: Sequence[str] = (),
        more_trusted_hosts: Sequence[str] = (),
        resolve: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_bytes: int = MAX_BYTES,
        timeout: httpx.Timeout | None = None,
        deadline: float = DEADLINE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: Only these serve metadata documents, when any are named.
        self.metadata_hosts = parse_trusted_hosts(trusted_hosts)
        self.trusted = self.metadata_hosts | parse_trusted_hosts(more_trusted_hosts)
        self._max_bytes = max_bytes
        self._clock = clock
        self._cache = _Cache(CACHE_SIZE)
        self._failures = _Cache(CACHE_SIZE)
        backend = _GuardedBackend(
            resolve or (lambda host, port: system_resolver(host, port)),
            self.trusted,
            httpcore.SyncBackend(),
            deadline,
        )
        self._http = httpx.Client(
            transport=_GuardedTransport(backend, ssl_context or default_ssl_context()),
            timeout=timeout
            or httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT, pool=CONNECT_TIMEOUT),
            follow_redirects=False,
            trust_env=False,
            headers={
                "Accept": "application/json",
                "Accept-Encoding": "identity",
                "User-Agent": "authserver",
            },
        )

    def json(self, url: str, *, trusted_only: bool = False, refresh: bool = False) -> Any:
        """The JSON document at `url`, from the cache when fresh.

        `trusted_only`: when the operator named trusted hosts, only they are fetched (client
        ID metadata documents). `refresh`: fetch again unless the cached copy is younger
        than `REFRESH_FLOOR` (a signing key the cached set does not have yet)."""
        self.check_url(url, trusted_only=trusted_only)
        now = self._clock()
        cached = self._cache.get(url, now)
        if cached is not None and not (refresh and now - cached.fetched_at >= REFRESH_FLOOR):
            return cached.value
        failed = self._failures.get(url, now)
        if failed is not None:
            raise FetchError(failed.value)
        try:
            _, value, lifetime = self._fetch(url)
        except FetchError as error:
            log.info("fetch of %s failed: %s", url, error.reason)
            self._failures.put(url, _Entry(error.reason, now, now + NEGATIVE_TTL))
            raise
        if lifetime:
            self._cache.put(url, _Entry(value, now, now + lifetime))
        else:
            self._cache.drop(url)
        return value

    def check_url(self, url: str, *, trusted_only: bool = False) -> None:
        """Refuse, before any connection, what can be refused from the URL alone."""
        if len(url) > URL_MAX:
            raise FetchError("The URL is too long.")
        try:
            parts = urlsplit(url)
            port = parts.port or 443
        except ValueError:
            raise FetchError("The URL is malformed.") from None
        if parts.scheme not in {"https", "http"} or not parts.hostname:
            raise FetchError("Only https URLs are fetched.")
        if parts.username is not None or parts.password is not None or parts.fragment:
            raise FetchError("The URL must have no user info and no fragment.")
        host = parts.hostname.lower()
        if parts.scheme == "http":
            port = parts.port or 80
            if host not in LOOPBACK_NAMES or (host, port) not in self.trusted:
                raise FetchError("Only https URLs are fetched.")
        trusted = (host, port) in self.trusted
        if trusted_only and self.metadata_hosts and (host, port) not in self.metadata_hosts:
            raise FetchError(f"The host {host} is not one this server fetches documents from.")
        address = literal_address(host)
        if address is not None and not trusted and not is_public(address):
            raise FetchError(f"The host {host} is not a public address.")

    def call(
        self,
        method: str,
        url: str,
        *,
        form: Sequence[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        accept: Collection[int] = (200,),
        parse: bool = True,
    ) -> tuple[int, Any]:
        """One uncached request (a token endpoint POST, a GET with a bearer token): the status
        and the JSON body, for any status in `accept`; without `parse` the body is read
        (within the cap) but not parsed, and None stands for it. Same checks, caps and
        deadline as `json`; neither the form nor the headers are ever logged."""
        self.check_url(url)
        try:
            answer = self._fetch(
                url, method=method, form=form, headers=headers, accept=accept, parse=parse
            )
            return answer[:2]
        except FetchError as error:
            log.info("%s %s failed: %s", method, url, error.reason)
            raise

    def _fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        form: Sequence[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        accept: Collection[int] = (200,),
        parse: bool = True,
    ) -> tuple[int, Any, int]:
        try:
            body_form = dict(form) if form is not None else None
            with self._http.stream(method, url, data=body_form, headers=headers) as response:
                if response.is_redirect:
                    raise FetchError("The URL redirects; redirects are not followed.")
                if response.status_code not in accept:
                    raise FetchError(f"The URL answered HTTP {response.status_code}.")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self._max_bytes:
                    raise FetchError("The document is too large.")
                body = bytearray()
                for chunk in response.iter_raw():
                    body.extend(chunk)
                    if len(body) > self._max_bytes:
                        raise FetchError("The document is too large.")
                lifetime = cache_lifetime(response.headers.get("cache-control"))
        except httpx.TimeoutException:
            raise FetchError("The server took too long to answer.") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"The document could not be fetched ({type(exc).__name__}).") from None
        if not parse:
            return response.status_code, None, lifetime
        try:
            value = jsonsafe.loads(bytes(body), max_bytes=self._max_bytes)
        except (ValueError, UnicodeDecodeError):
            raise FetchError("The document is not JSON.") from None
        return response.status_code, value, lifetime

    def close(self) -> None:
        self._http.close()
