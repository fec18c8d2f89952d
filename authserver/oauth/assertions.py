"""private_key_jwt client authentication (RFC 7523 §2.2 and §3, OIDC Core §9).

A client proves who it is with a short-lived JWT it signed with a private key; we hold only
its public keys, registered as `jwks` or published at `jwks_uri` (fetched through
`authserver.fetch`, cached, fetched again when a `kid` is unknown, at most once a minute).

What is refused (docs/security.md F53), each as 401 `invalid_client` by the caller:
an algorithm outside `SIGNING_ALGS` (so never `none` and never HS256 "signed" with a public
key), keys named by the token itself (`jwk`, `jku`, `x5u`, `x5c` headers are ignored), `iss`
or `sub` other than the client, an audience other than this server, a token living longer
than `MAX_LIFETIME` or expired beyond `LEEWAY`, `iat`/`nbf` more than `FUTURE` seconds
ahead, a missing `jti` or one seen before (the replay cache is the kv backend, so Redis
when configured: one use across every instance), and oversized assertions.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt.exceptions import InvalidKeyError, PyJWKError, PyJWTError

from authserver.errors import Invalid
from authserver.fetch import Fetcher, FetchError
from authserver.kv import KV

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SIGNING_ALGS = ("RS256", "PS256", "ES256", "EdDSA")
MAX_ASSERTION = 8192
MAX_LIFETIME = 300
LEEWAY = 30
FUTURE = 60
JTI_MAX = 256
JWKS_MAX_KEYS = 20
JWKS_MAX_BYTES = 16 * 1024
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
#: Authlib's endpoint names, and the URLs a client may also name as the audience.
ENDPOINT_PATHS = {"token": "/token", "revocation": "/revoke", "introspection": "/introspect"}


class AssertionFailed(Exception):
    """The assertion does not authenticate the client; the message is the description."""


def unverified_subject(assertion: str) -> str:
    """The client an assertion claims to come from (`sub`, RFC 7523 §3 B), read before
    the client and its keys are known; nothing in it is trusted until `verify`."""
    if len(assertion) > MAX_ASSERTION:
        raise AssertionFailed("The client assertion is too large.")
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except PyJWTError:
        raise AssertionFailed("The client assertion is not a JWT.") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AssertionFailed("The client assertion has no sub.")
    return subject


def check_key_source(jwks: Any, jwks_uri: str | None) -> None:
    """Registration: public keys or an https URL for them, never both, never a private key."""
    if jwks is not None and jwks_uri is not None:
        raise Invalid("Register either jwks or jwks_uri, not both.")
    if jwks_uri is not None:
        parts = urlsplit(jwks_uri)
        if (
            parts.scheme != "https"
            or not parts.hostname
            or parts.fragment
            or "@" in parts.netloc
            or len(jwks_uri) > 2000
        ):
            raise Invalid("The jwks_uri must be an https URL without user info or fragment.")
    if jwks is None:
        return
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not 0 < len(keys) <= JWKS_MAX_KEYS:
        raise Invalid(f'The jwks must be {{"keys": [...]}} with 1 to {JWKS_MAX_KEYS} keys.')
    if len(json.dumps(jwks)) > JWKS_MAX_BYTES:
        raise Invalid("The jwks is too large.")
    for key in keys:
        if not isinstance(key, dict) or PRIVATE_MEMBERS & key.keys():
            raise Invalid("The jwks must hold public keys only.")
        try:
            parsed = jwt.PyJWK(key)
        except (PyJWKError, InvalidKeyError, ValueError, TypeError):
            raise Invalid("The jwks holds a key that cannot be read.") from None
        if parsed.algorithm_name not in SIGNING_ALGS:
            raise Invalid(f"Keys must be for one of {', '.join(SIGNING_ALGS)}.")


class AssertionVerifier:
    def __init__(
        self,
        fetcher: Fetcher,
        kv: KV,
        issuer: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetcher = fetcher
        self._kv = kv
        self._issuer = issuer
        self._clock = clock

    def verify(self, client: Any, assertion: str, endpoint: str) -> None:
        """Raise `AssertionFailed` unless `assertion` authenticates `client` at `endpoint`."""
        try:
            header = jwt.get_unverified_header(assertion)
        except PyJWTError:
            raise AssertionFailed("The client assertion is not a JWT.") from None
        alg = header.get("alg")
        if alg not in SIGNING_ALGS:
            raise AssertionFailed(
                f"The client assertion must be signed with {', '.join(SIGNING_ALGS)}."
            )
        kid = header.get("kid")
        claims = self._verified_claims(client, assertion, alg, kid)
        self._check_claims(client.id, claims, endpoint)

    def _verified_claims(self, client: Any, assertion: str, alg: str, kid: Any) -> dict[str, Any]:
        keys = self._keys(client, alg, kid, refresh=False)
        if not keys and client.jwks_uri:
            keys = self._keys(client, alg, kid, refresh=True)
        for key in keys:
            try:
                return dict(
                    jwt.decode(
                        assertion,
                        key,
                        algorithms=[alg],
                        options={
                            "verify_aud": False,
                            "verify_exp": False,
                            "verify_iat": False,
                            "verify_nbf": False,
                            "verify_iss": False,
                        },
                    )
                )
            except PyJWTError:
                continue
        raise AssertionFailed("The client assertion's signature does not verify.")

    def _keys(self, client: Any, alg: str, kid: Any, *, refresh: bool) -> list[Any]:
        """The client's public keys that could have made this signature."""
        if client.jwks:
            jwks = client.jwks
        elif client.jwks_uri:
            try:
                jwks = self._fetcher.json(client.jwks_uri, refresh=refresh)
            except FetchError as error:
                raise AssertionFailed(f"The client's jwks_uri: {error.reason}") from None
        else:
            raise AssertionFailed("The client has no registered keys.")
        found = []
        listed = jwks.get("keys") if isinstance(jwks, dict) else None
        for key in listed if isinstance(listed, list) else []:
            if not isinstance(key, dict) or PRIVATE_MEMBERS & key.keys():
                continue
            if key.get("use", "sig") != "sig" or key.get("alg", alg) != alg:
                continue
            if kid is not None and key.get("kid") != kid:
                continue
            try:
                found.append(jwt.PyJWK(key, algorithm=alg).key)
            except (PyJWKError, InvalidKeyError, ValueError, TypeError):
                continue
        return found

    def _check_claims(self, client_id: str, claims: dict[str, Any], endpoint: str) -> None:
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            raise AssertionFailed("The client assertion's iss and sub must be the client_id.")
        audience = claims.get("aud")
        if isinstance(audience, list) and len(audience) == 1:
            audience = audience[0]
        allowed = {
            self._issuer,
            f"{self._issuer}/token",
            f"{self._issuer}{ENDPOINT_PATHS.get(endpoint, '/token')}",
        }
        if not isinstance(audience, str) or audience not in allowed:
            raise AssertionFailed("The client assertion's aud must be this server.")
        now = self._clock()
        expires = _number(claims, "exp")
        if expires is None:
            raise AssertionFailed("The client assertion has no exp.")
        if expires < now - LEEWAY:
            raise AssertionFailed("The client assertion has expired.")
        issued = _number(claims, "iat")
        if expires - (issued if issued is not None else now) > MAX_LIFETIME + LEEWAY:
            raise AssertionFailed(f"The client assertion may live at most {MAX_LIFETIME} s.")
        for name in ("iat", "nbf"):
            moment = _number(claims, name)
            if moment is not None and moment > now + FUTURE:
                raise AssertionFailed(f"The client assertion's {name} is in the future.")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= JTI_MAX:
            raise AssertionFailed("The client assertion needs a jti.")
        key = hashlib.sha256(f"{client_id}\0{jti}".encode()).hexdigest()[:40]
        ttl = max(1, int(expires - now) + LEEWAY + 1)
        if not self._kv.set_if_absent(f"assertion-jti:{key}", ttl):
            raise AssertionFailed("The client assertion was used before.")


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AssertionFailed(f"The client assertion's {name} must be a number.")
    return float(value)
