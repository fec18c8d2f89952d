"""Redirect URIs a client may register (docs/security.md §1, G56; RFC 8252 §7.3 loopback)."""

from __future__ import annotations

import pytest

from authserver.errors import Invalid
from authserver.oauth.clients import validate_redirect_uri, validate_registration


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example.com/cb",
        "https://app.example.com/cb?a=1",
        "http://127.0.0.1/cb",
        "http://127.0.0.1:8080/cb",
        "http://[::1]/cb",
        "http://[::1]:8080/cb",
        "com.example.app:/callback",
    ],
)
def test_acceptable_redirect_uris(uri: str) -> None:
    assert validate_redirect_uri(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "http://app.example.com/cb",
        "http://localhost/cb",
        "http://127.0.0.1.evil.com/cb",
        "http://[::2]/cb",
        "https://app.example.com/cb#frag",
        "https://user@app.example.com/cb",
        "https://*.example.com/cb",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,hi",
        "/relative/cb",
        "myapp:/cb",
        "https://app.example.com/c b",
        "",
    ],
)
def test_refused_redirect_uris(uri: str) -> None:
    """docs/security.md G56: fragments, script schemes, wildcards, non-loopback http, relative."""
    with pytest.raises(Invalid):
        validate_redirect_uri(uri)


def test_private_key_jwt_needs_the_clients_public_keys() -> None:
    """A `private_key_jwt` client without keys could never authenticate, so registration
    refuses it clearly; the CLI and the API both register through `validate_registration`."""
    with pytest.raises(Invalid, match="jwks or jwks_uri"):
        validate_registration(
            redirect_uris=["https://app.example.com/cb"],
            grant_types=["authorization_code"],
            auth_method="private_key_jwt",
        )
