"""This server as a relying party: the code flow to an upstream provider, from the request we
send to the person it names.

Authlib builds the protocol messages (`prepare_grant_uri`, `prepare_token_request`, the
client authentication encoders, the S256 challenge) and validates the ID token's claims
(`CodeIDToken`: iss, aud, exp, iat, nonce, azp, at_hash); joserfc checks the signature. Every
request goes through the one outbound client, `fetch.Fetcher`. Anything an upstream can get
wrong becomes `UpstreamError`, whose message is safe to show on our sign-in page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from authlib.common.security import generate_token
from authlib.common.urls import url_decode
from authlib.oauth2.auth import encode_client_secret_basic, encode_client_secret_post
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from authserver import jsonsafe
from authserver.federation.models import SUBJECT_MAX, IdentityProvider
from authserver.federation.providers import GITHUB_EMAILS, SecretBox, client_secret
from authserver.fetch import Fetcher, FetchError
from authserver.resource_server import TokenError, b64url_decode, verify_signature
from authserver.users.models import normalize_email

#: Signature algorithms accepted from an upstream: asymmetric only, so never `none` and never
#: an HMAC keyed with the client secret (docs/security.md N103).
ID_TOKEN_ALGS = ("RS256", "PS256", "ES256", "EdDSA")
LEEWAY = 60
#: RFC 8176 values passed on in our `amr` after `fed` when the upstream reports them.
KNOWN_AMR = {
    "face", "fpt", "geo", "hwk", "iris", "kba", "mca", "mfa", "otp", "pin", "pwd", "rba",
    "retina", "sc", "sms", "swk", "tel", "user", "vbm", "wia",
}  # fmt: skip
CALLBACK_PATH = "/login/federated/callback"


class UpstreamError(Exception):
    """The upstream sign-in failed; `message` is what the person reads."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Attempt:
    """One upstream authorization request's secrets, kept for the callback."""

    state: str = field(default_factory=lambda: generate_token(43))
    nonce: str = field(default_factory=lambda: generate_token(43))
    verifier: str = field(default_factory=lambda: generate_token(64))


@dataclass(frozen=True)
class Person:
    """Who the upstream says signed in."""

    subject: str
    email: str
    email_verified: bool
    name: str
    amr: tuple[str, ...]
    auth_time: datetime | None


@dataclass(frozen=True)
class _Client:
    """What Authlib's client authentication encoders read."""

    client_id: str
    client_secret: str


class Upstream:
    """The relying-party side, one per app (it holds the secret box and the fetcher)."""

    def __init__(self, fetcher: Fetcher, box: SecretBox, issuer: str) -> None:
        self.fetcher = fetcher
        self.box = box
        self.redirect_uri = issuer + CALLBACK_PATH

    def authorization_url(
        self,
        provider: IdentityProvider,
        attempt: Attempt,
        *,
        fresh: bool = False,
        max_age: int | None = None,
        login_hint: str = "",
    ) -> str:
        extra: dict[str, Any] = {
            "code_challenge": create_s256_code_challenge(attempt.verifier),
            "code_challenge_method": "S256",
        }
        if provider.kind == "oidc":
            extra["nonce"] = attempt.nonce
            if fresh:
                extra["prompt"] = "login"
            if max_age is not None:
                extra["max_age"] = str(max_age)
            if login_hint:
                extra["login_hint"] = login_hint
        elif login_hint:
            extra["login"] = login_hint
        return str(
            prepare_grant_uri(
                provider.authorization_endpoint,
                provider.client_id,
                "code",
                redirect_uri=self.redirect_uri,
                scope=provider.scopes,
                state=attempt.state,
                **extra,
            )
        )

    def sign_in(
        self, provider: IdentityProvider, code: str, attempt: Attempt, max_age: int | None
    ) -> Person:
        """Redeem the code and say who signed in. Blocking (fetches): call in a thread."""
        tokens = self._redeem(provider, code, attempt.verifier)
        access_token = tokens.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise UpstreamError(f"{provider.name} sent no access token.")
        if provider.kind == "github":
            return self._github(provider, access_token)
        return self._oidc(provider, tokens, access_token, attempt.nonce, max_age)

    # -- the token endpoint -------------------------------------------------------------

    def _redeem(self, provider: IdentityProvider, code: str, verifier: str) -> dict[str, Any]:
        body = prepare_token_request(
            "authorization_code", code=code, redirect_uri=self.redirect_uri, code_verifier=verifier
        )
        client = _Client(provider.client_id, client_secret(self.box, provider))
        headers: dict[str, str] = {"Content-Type": "application/x-www-form-urlencoded"}
        encode = (
            encode_client_secret_basic
            if provider.token_auth_method == "client_secret_basic"
            else encode_client_secret_post
        )
        _, headers, body = encode(client, "POST", provider.token_endpoint, headers, body)
        try:
            status, answer = self.fetcher.call(
                "POST",
                provider.token_endpoint,
                form=url_decode(str(body)),
                headers=headers,
                accept=(200, 400, 401),
            )
        except FetchError as error:
            raise UpstreamError(f"{provider.name} could not be reached ({error.reason})") from None
        if status != 200 or not isinstance(answer, dict) or "error" in answer:
            raise UpstreamError(f"{provider.name} refused to complete the sign-in.")
        token_type = answer.get("token_type", "bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise UpstreamError(f"{provider.name} sent a token of an unknown type.")
        return answer

    # -- OpenID Connect -----------------------------------------------------------------

    def _oidc(
        self,
        provider: IdentityProvider,
        tokens: dict[str, Any],
        access_token: str,
        nonce: str,
        max_age: int | None,
    ) -> Person:
        raw = tokens.get("id_token")
        if not isinstance(raw, str):
            raise UpstreamError(f"{provider.name} sent no ID token.")
        claims = self.verify_id_token(provider, raw, nonce, access_token)
        subject = claims["sub"]
        if not isinstance(subject, str) or not 0 < len(subject) <= SUBJECT_MAX:
            raise UpstreamError(f"{provider.name} sent an unusable subject.")
        profile = dict(claims)
        if provider.userinfo_endpoint and "email" not in claims:
            info = self._get(provider, provider.userinfo_endpoint, access_token)
            if not isinstance(info, dict) or info.get("sub") != subject:
                raise UpstreamError(f"{provider.name} described someone else.")
            wanted = ("email", "email_verified", "name")
            profile.update({k: v for k, v in info.items() if k in wanted})
        auth_time = _auth_time(claims.get("auth_time"))
        if max_age is not None and (
            auth_time is None or time.time() - auth_time.timestamp() > max_age + LEEWAY
        ):
            raise UpstreamError(f"{provider.name} did not confirm a fresh sign-in.")
        amr = claims.get("amr")
        return Person(
            subject=subject,
            email=_email(profile.get("email")),
            email_verified=profile.get("email_verified") is True,
            name=_text(profile.get("name")),
            amr=tuple(v for v in amr if v in KNOWN_AMR)[:4] if isinstance(amr, list) else (),
            auth_time=auth_time,
        )

    def verify_id_token(
        self, provider: IdentityProvider, raw: str, nonce: str, access_token: str | None = None
    ) -> dict[str, Any]:
        """OIDC Core §3.1.3.7: signed by a key of the provider's JWKS (refetched once for an
        unknown `kid`) with an allowed algorithm, then iss, aud, azp, exp, iat, nonce and
        at_hash as Authlib's `CodeIDToken` checks them."""
        refused = UpstreamError(f"The sign-in answer from {provider.name} could not be verified.")
        header = _header(raw)
        if header is None or header.get("alg") not in ID_TOKEN_ALGS or not provider.jwks_uri:
            raise refused
        kid = header.get("kid")
        key = self._key(provider.jwks_uri, header["alg"], kid, refresh=False)
        if key is None:
            key = self._key(provider.jwks_uri, header["alg"], kid, refresh=True)
        try:
            claims = verify_signature(raw, header, key)
        except TokenError:
            raise refused from None
        options: dict[str, Any] = {
            "iss": {"essential": True, "value": provider.issuer},
            "aud": {"essential": True, "value": provider.client_id},
            "nonce": {"essential": True, "value": nonce},
        }
        params = {"nonce": nonce, "client_id": provider.client_id}
        if access_token is not None and "at_hash" in claims:
            params["access_token"] = access_token
        token = CodeIDToken(claims, header, options, params)
        try:
            token.validate(now=int(time.time()), leeway=LEEWAY)
        except (JoseError, ValueError, TypeError, KeyError):
            raise refused from None
        return dict(claims)

    def _key(self, jwks_uri: str, alg: str, kid: Any, *, refresh: bool) -> Any:
        try:
            document = self.fetcher.json(jwks_uri, refresh=refresh)
            listed = document.get("keys") if isinstance(document, dict) else None
            usable = [
                key
                for key in (listed if isinstance(listed, list) else [])
                if isinstance(key, dict)
                and key.get("use", "sig") == "sig"
                and key.get("alg", alg) == alg
                and (kid is None or key.get("kid") == kid)
            ]
            if len(usable) != 1:
                return None
            keys = KeySet.import_key_set({"keys": usable})
            return keys.keys[0]
        except (FetchError, JoseError, ValueError, TypeError, KeyError):
            return None

    # -- GitHub ---------------------------------------------------------------------------

    def _github(self, provider: IdentityProvider, access_token: str) -> Person:
        """GitHub's REST API: `/user` for the stable numeric id, `/user/emails` for the
        primary address and whether GitHub verified it (`/user`'s `email` is only the public
        profile address, never treated as verified)."""
        user = self._get(provider, provider.userinfo_endpoint or "", access_token)
        if not isinstance(user, dict) or not isinstance(user.get("id"), int):
            raise UpstreamError(f"{provider.name} sent an unusable profile.")
        emails = self._get(provider, GITHUB_EMAILS, access_token)
        email, verified = "", False
        for entry in emails if isinstance(emails, list) else []:
            if isinstance(entry, dict) and entry.get("primary") is True:
                email, verified = _email(entry.get("email")), entry.get("verified") is True
                break
        return Person(
            subject=str(user["id"]),
            email=email,
            email_verified=verified and bool(email),
            name=_text(user.get("name")) or _text(user.get("login")),
            amr=(),
            auth_time=None,
        )

    def _get(self, provider: IdentityProvider, url: str, access_token: str) -> Any:
        headers = {"Authorization": f"Bearer {access_token}"}
        if provider.kind == "github":
            headers["Accept"] = "application/vnd.github+json"
            headers["X-GitHub-Api-Version"] = "2022-11-28"
        try:
            return self.fetcher.call("GET", url, headers=headers)[1]
        except FetchError as error:
            raise UpstreamError(f"{provider.name} could not be reached ({error.reason})") from None


def _header(raw: str) -> dict[str, Any] | None:
    if raw.count(".") != 2 or len(raw) > 16_384:
        return None
    try:
        header = jsonsafe.loads(b64url_decode(raw.split(".", 1)[0]), max_depth=2)
    except (ValueError, UnicodeDecodeError):
        return None
    return header if isinstance(header, dict) else None


def _auth_time(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 2**40:
        return datetime.fromtimestamp(int(value), UTC)
    return None


def _email(value: Any) -> str:
    return normalize_email(value) if isinstance(value, str) and 0 < len(value) <= 320 else ""


def _text(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    return "".join(ch for ch in value if ch.isprintable())[:200]
