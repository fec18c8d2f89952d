"""The one outbound HTTP client: docs/security.md F53 (SSRF), sizes, timeouts, caching."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import respx

from authserver import fetch
from authserver.fetch import Fetcher, FetchError
from tests.tls_server import Answer, TlsServer, tls_server

DOC = {"keys": []}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TlsServer]:
    with tls_server(tmp_path, names=["docs.test"]) as running:
        running.answers["/doc"] = Answer(body=json.dumps(DOC).encode())
        yield running


def trusting(server: TlsServer, *trusted: str, **options: object) -> Fetcher:
    return Fetcher(trusted_hosts=trusted, ssl_context=server.ssl_context(), **options)  # type: ignore[arg-type]


# -- the trusted-host path, over real TLS --------------------------------------------------


def test_a_trusted_loopback_host_is_fetched_over_verified_tls(server: TlsServer) -> None:
    fetcher = trusting(server, f"127.0.0.1:{server.port}")
    assert fetcher.json(f"{server.origin}/doc") == DOC


def test_ssl_cert_file_is_how_a_developer_trusts_their_ca(
    server: TlsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
    fetcher = Fetcher(trusted_hosts=[f"127.0.0.1:{server.port}"])
    assert fetcher.json(f"{server.origin}/doc") == DOC


def test_an_untrusted_certificate_is_refused(server: TlsServer) -> None:
    fetcher = Fetcher(trusted_hosts=[f"127.0.0.1:{server.port}"])
    with pytest.raises(FetchError):
        fetcher.json(f"{server.origin}/doc")


def test_a_name_connects_to_the_checked_address_with_sni_and_host_of_the_name(
    server: TlsServer,
) -> None:
    """The resolver answers once; the connection goes to that address while TLS verifies
    the certificate for the name and the Host header carries it."""
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    fetcher = trusting(server, f"docs.test:{server.port}", resolve=resolve)
    assert fetcher.json(f"https://docs.test:{server.port}/doc") == DOC
    assert asked == ["docs.test"]
    assert server.hits == [f"docs.test:{server.port} /doc"]


def test_trusted_hosts_are_the_only_ones_for_metadata_documents(server: TlsServer) -> None:
    fetcher = trusting(server, f"127.0.0.1:{server.port}")
    with pytest.raises(FetchError, match="not one this server fetches"):
        fetcher.json("https://client.example/doc", trusted_only=True)
    other_port = Fetcher(trusted_hosts=["127.0.0.1:1"], ssl_context=server.ssl_context())
    with pytest.raises(FetchError):
        other_port.json(f"{server.origin}/doc")
    assert server.hits == []


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/doc",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/doc",
        "https://[fd00:ec2::254]/doc",
        "https://[::ffff:127.0.0.1]/doc",
        "https://2130706433/doc",
        "https://0177.0.0.1/doc",
        "https://0x7f.1/doc",
        "https://10.1.2.3/doc",
        "https://192.168.0.1/doc",
        "https://100.64.0.1/doc",
        "https://0.0.0.0/doc",
        "https://224.0.0.1/doc",
        "http://client.example/doc",
        "https://user@client.example/doc",
        "file:///etc/passwd",
    ],
)
def test_non_public_and_non_https_urls_are_refused_before_connecting(url: str) -> None:
    def resolve(host: str, port: int) -> list[str]:
        raise AssertionError(f"resolved {host}")

    with pytest.raises(FetchError):
        Fetcher(resolve=resolve).json(url)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.5", "169.254.169.254", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1",
     "2002:a00:1::", "100.100.0.1", "fd00:ec2::254"],
)  # fmt: skip
def test_a_name_resolving_to_a_non_public_address_is_refused(
    server: TlsServer, address: str
) -> None:
    fetcher = Fetcher(resolve=lambda host, port: ["93.184.215.14", address])
    with pytest.raises(FetchError, match="non-public address"):
        fetcher.json("https://client.example/doc")


def test_rebinding_to_loopback_never_reaches_the_local_server(server: TlsServer) -> None:
    """A public-looking name that answers 127.0.0.1: the local server sees nothing."""
    fetcher = trusting(server, resolve=lambda host, port: ["127.0.0.1"])
    with pytest.raises(FetchError, match="non-public address"):
        fetcher.json(f"https://docs.test:{server.port}/doc")
    assert server.hits == []


def test_a_redirect_is_an_error_and_is_not_followed(server: TlsServer) -> None:
    server.answers["/moved"] = Answer(302, b"", {"Location": "https://10.0.0.1/doc"})
    fetcher = trusting(server, f"127.0.0.1:{server.port}")
    with pytest.raises(FetchError, match="redirect"):
        fetcher.json(f"{server.origin}/moved")
    assert server.hits == [f"127.0.0.1:{server.port} /moved"]


@pytest.mark.parametrize("chunked", [False, True])
def test_a_too_large_body_is_refused(server: TlsServer, chunked: bool) -> None:
    server.answers["/big"] = Answer(body=b" " * (fetch.MAX_BYTES + 1), chunked=chunked)
    fetcher = trusting(server, f"127.0.0.1:{server.port}")
    with pytest.raises(FetchError, match="too large"):
        fetcher.json(f"{server.origin}/big")


def test_a_slow_server_times_out(server: TlsServer) -> None:
    server.answers["/slow"] = Answer(delay=1.5)
    fetcher = trusting(server, f"127.0.0.1:{server.port}", timeout=httpx.Timeout(0.3))
    with pytest.raises(FetchError, match="too long"):
        fetcher.json(f"{server.origin}/slow")


def test_a_server_dripping_its_headers_meets_the_deadline(server: TlsServer) -> None:
    """Each byte comes within the read timeout; the whole fetch still ends on time."""
    server.answers["/drip"] = Answer(drip=0.05)
    fetcher = trusting(server, f"127.0.0.1:{server.port}", timeout=httpx.Timeout(0.5), deadline=1.0)
    started = time.monotonic()
    with pytest.raises(FetchError, match="too long"):
        fetcher.json(f"{server.origin}/drip")
    assert time.monotonic() - started < 3


# -- shapes and caching (respx) ------------------------------------------------------------

URL = "https://client.example/doc"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fetcher(clock: Clock) -> Fetcher:
    return Fetcher(clock=clock)


@respx.mock
@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(200, content=b"not json"), "not JSON"),
        (httpx.Response(404, json={}), "HTTP 404"),
        (httpx.Response(500, json={}), "HTTP 500"),
        (httpx.Response(301, headers={"Location": "https://127.0.0.1/"}), "redirect"),
        (httpx.Response(200, headers={"Content-Length": "9999999"}, content=b"{}"), "too large"),
    ],
)
def test_unusable_answers_are_one_error_with_a_reason(
    fetcher: Fetcher, response: httpx.Response, reason: str
) -> None:
    respx.get(URL).mock(return_value=response)
    with pytest.raises(FetchError, match=reason):
        fetcher.json(URL)


@respx.mock
def test_a_connection_failure_is_a_fetch_error(fetcher: Fetcher) -> None:
    respx.get(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(FetchError, match="ConnectError"):
        fetcher.json(URL)


@respx.mock
def test_answers_are_cached_within_the_floor_and_ceiling(fetcher: Fetcher, clock: Clock) -> None:
    route = respx.get(URL).mock(
        return_value=httpx.Response(200, json=DOC, headers={"Cache-Control": "max-age=5"})
    )
    assert fetcher.json(URL) == DOC
    clock.now += fetch.CACHE_FLOOR - 1
    assert fetcher.json(URL) == DOC
    assert route.call_count == 1
    clock.now += 2
    fetcher.json(URL)
    assert route.call_count == 2


@respx.mock
def test_max_age_beyond_the_ceiling_is_cut(fetcher: Fetcher, clock: Clock) -> None:
    route = respx.get(URL).mock(
        return_value=httpx.Response(200, json=DOC, headers={"Cache-Control": "max-age=99999999"})
    )
    fetcher.json(URL)
    clock.now += fetch.CACHE_CEILING + 1
    fetcher.json(URL)
    assert route.call_count == 2


@respx.mock
def test_no_store_is_not_cached(fetcher: Fetcher) -> None:
    route = respx.get(URL).mock(
        return_value=httpx.Response(200, json=DOC, headers={"Cache-Control": "no-store"})
    )
    fetcher.json(URL)
    fetcher.json(URL)
    assert route.call_count == 2


@respx.mock
def test_failures_are_remembered_briefly(fetcher: Fetcher, clock: Clock) -> None:
    route = respx.get(URL).mock(return_value=httpx.Response(500))
    for _ in range(3):
        with pytest.raises(FetchError):
            fetcher.json(URL)
    assert route.call_count == 1
    clock.now += fetch.NEGATIVE_TTL + 1
    route.mock(return_value=httpx.Response(200, json=DOC))
    assert fetcher.json(URL) == DOC


@respx.mock
def test_a_refresh_refetches_at_most_once_per_floor(fetcher: Fetcher, clock: Clock) -> None:
    route = respx.get(URL).mock(return_value=httpx.Response(200, json=DOC))
    fetcher.json(URL)
    fetcher.json(URL, refresh=True)
    assert route.call_count == 1
    clock.now += fetch.REFRESH_FLOOR
    fetcher.json(URL, refresh=True)
    assert route.call_count == 2


@respx.mock
def test_compressed_answers_are_not_asked_for(fetcher: Fetcher) -> None:
    route = respx.get(URL).mock(return_value=httpx.Response(200, json=DOC))
    fetcher.json(URL)
    assert route.calls.last.request.headers["accept-encoding"] == "identity"


def test_is_public_unwraps_embedded_ipv4() -> None:
    assert fetch.is_public(ipaddress.ip_address("93.184.215.14"))
    assert fetch.is_public(ipaddress.ip_address("2606:2800:21f:cb07:6820:80da:af6b:8b2c"))
    assert not fetch.is_public(ipaddress.ip_address("::ffff:169.254.169.254"))
    assert not fetch.is_public(ipaddress.ip_address("2001:0:4136:e378:8000:63bf:3fff:fdd2"))


@pytest.mark.parametrize("entry", ["https://x.example", "x.example/path", "a@b", "x.example:99999"])
def test_bad_trusted_host_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="host"):
        fetch.parse_trusted_hosts([entry])


# -- plain http: only a trusted loopback host (AUTHSERVER_TRUSTED_HOSTS) ---------------------


class _JsonPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer(b'{"ok": true}')

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer(b'{"got": "' + body + b'"}')

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JsonPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_plain_http_is_fetched_only_from_a_trusted_loopback_host(http_server: int) -> None:
    url = f"http://127.0.0.1:{http_server}/doc"
    with pytest.raises(FetchError, match="Only https"):
        Fetcher().json(url)
    with pytest.raises(FetchError, match="Only https"):
        Fetcher(more_trusted_hosts=["127.0.0.1:1"]).json(url)
    trusting_it = Fetcher(more_trusted_hosts=[f"127.0.0.1:{http_server}"])
    assert trusting_it.json(url) == {"ok": True}
    assert trusting_it.call("POST", url, form=[("a", "b")]) == (200, {"got": "a=b"})


def test_plain_http_is_never_fetched_from_a_trusted_host_that_is_not_loopback() -> None:
    fetcher = Fetcher(more_trusted_hosts=["idp.example:80", "10.0.0.5:80"])
    for url in ("http://idp.example/doc", "http://10.0.0.5/doc"):
        with pytest.raises(FetchError, match="Only https"):
            fetcher.check_url(url)


def test_more_trusted_hosts_do_not_restrict_metadata_documents() -> None:
    fetcher = Fetcher(more_trusted_hosts=["idp.example"])
    fetcher.check_url("https://client.example/doc", trusted_only=True)
    restricted = Fetcher(trusted_hosts=["docs.example"], more_trusted_hosts=["idp.example"])
    with pytest.raises(FetchError, match="not one this server fetches documents from"):
        restricted.check_url("https://idp.example/doc", trusted_only=True)
