"""DPoP (RFC 9449): proofs of possession, checked the same way at /token and at every resource.

A client holding a private key sends, with each request, a `DPoP` header: a JWT signed by
that key, naming the public key in its header (`jwk`), and binding itself to this one
request (`htm`, `htu`), to now (`iat`), to itself alone (`jti`, single use through the kv
backend, so one use across every instance), and at a resource to the access token (`ath`).
A token issued against a proof carries the key's RFC 7638 thumbprint (`cnf.jkt`), and
only the holder of that key can use it (docs/security.md O).

What is refused (`invalid_dpop_proof`): a `typ` other than `dpop+jwt`, a symmetric or
`none` algorithm, a `jwk` holding private members or not matching the algorithm, a bad
signature, another method or URL (compared without query and fragment, §4.3), an `iat`
outside the window, a `jti` seen before, a wrong `ath`. With server nonces on, a proof
without a current nonce is `use_dpop_nonce` (§8), and the answer carries a fresh one.
Nonces are stateless (an HMAC of the time window under the server's secret), so every
worker accepts every other worker's nonce.

Plumbing: the authorization server and `resource_server.ResourceServer` (a third party's
API, with no database) both use it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from jwt.exceptions import InvalidKeyError, PyJWKError, PyJWTError

from authserver.kv import KV
from authserver.security import Digester
from authserver.settings import Settings

PROOF_TYPE = "dpop+jwt"
#: Asymmetric only: a proof made with a shared secret would prove nothing about a key.
ALGORITHMS = ("ES256", "RS256", "PS256", "EdDSA")
HEADER = "dpop"
NONCE_HEADER = "DPoP-Nonce"
MAX_PROOF = 4096
#: A proof is accepted this many seconds after its `iat`...
MAX_AGE = 60
#: ...and this far ahead of our clock (another machine's clock).
FUTURE = 30
JTI_MAX = 256
#: Seconds a server nonce stays current; the previous window's nonce is still accepted.
NONCE_WINDOW = 300
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
#: RFC 7638 §3.2: the members a thumbprint is computed over, per key type.
THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}
INVALID_PROOF = "invalid_dpop_proof"
USE_NONCE = "use_dpop_nonce"


class ProofError(Exception):
    """A refused proof: `error` is `invalid_dpop_proof` or `use_dpop_nonce`; `nonce` the
    one to use next, when the server has nonces on."""

    def __init__(self, description: str, error: str = INVALID_PROOF) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.nonce: str | None = None


@dataclass(frozen=True)
class Proof:
    """A verified proof: the thumbprint of the key that signed it, and its claims."""

    jkt: str
    claims: dict[str, Any]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK."""
    members = THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise ProofError("The proof's jwk is not an EC, RSA or OKP public key.")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def token_hash(access_token: str) -> str:
    """`ath` (§4.2): the base64url SHA-256 of the access token."""
    return b64url(hashlib.sha256(access_token.encode("ascii", "replace")).digest())


def target_uri(url: str) -> str:
    """`htu` as compared (§4.3): scheme and host lower-cased, no query, no fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", "", ""))


def is_thumbprint(value: object) -> bool:
    """A well-formed SHA-256 thumbprint (`dpop_jkt` at /authorize, §10)."""
    if not isinstance(value, str) or len(value) != 43:
        return False
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in value)


def bound_key(claims: Mapping[str, Any]) -> str | None:
    """The `cnf.jkt` an access token is bound to (§6.1), or None for a bearer token."""
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return jkt if isinstance(jkt, str) else None


def token_type(jkt: str | None) -> str:
    """The `token_type` of a token (§5, §6.2): `DPoP` when bound to a key, else `Bearer`."""
    return "DPoP" if jkt is not None else "Bearer"


def proof_header(headers: Any) -> str | None:
    """The one `DPoP` header of a request (§4.3: more than one is an error)."""
    values = headers.getlist(HEADER)
    if len(values) > 1:
        raise ProofError("Send exactly one DPoP header.")
    return values[0] if values else None


class Nonces:
    """Server-provided nonces (§8) that need no storage: the HMAC of the current time
    window under a key only this server knows, so every worker makes and accepts the same."""

    def __init__(
        self, key: bytes, *, window: int = NONCE_WINDOW, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key
        self._window = window
        self._clock = clock

    def current(self) -> str:
        return self._for(int(self._clock() // self._window))

    def accepts(self, nonce: object) -> bool:
        if not isinstance(nonce, str):
            return False
        now = int(self._clock() // self._window)
        return any(hmac.compare_digest(nonce, self._for(w)) for w in (now, now - 1))

    def _for(self, window: int) -> str:
        return b64url(hmac.new(self._key, str(window).encode(), hashlib.sha256).digest()[:24])


class ProofVerifier:
    """Checks proofs; `kv` is the single-use memory of `jti`s (shared through Redis when
    configured), `nonces` makes a current server nonce required."""

    def __init__(
        self, kv: KV, *, nonces: Nonces | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._kv = kv
        self.nonces = nonces
        self._clock = clock

    def fresh_nonce(self) -> str | None:
        return self.nonces.current() if self.nonces is not None else None

    def verify(
        self, proof: str | None, *, method: str, uri: str, access_token: str | None = None
    ) -> Proof:
        """The proof's key thumbprint, once `proof` is good for this request; `ProofError`
        otherwise (with the nonce to use next when nonces are on)."""
        try:
            return self._verify(proof, method, uri, access_token)
        except ProofError as error:
            error.nonce = self.fresh_nonce()
            raise

    def _verify(self, proof: str | None, method: str, uri: str, access_token: str | None) -> Proof:
        if not proof:
            raise ProofError("A DPoP proof is required.")
        if len(proof) > MAX_PROOF:
            raise ProofError("The DPoP proof is too large.")
        try:
            header = jwt.get_unverified_header(proof)
        except PyJWTError:
            raise ProofError("The DPoP proof is not a JWT.") from None
        if header.get("typ") != PROOF_TYPE:
            raise ProofError(f"The DPoP proof's typ must be {PROOF_TYPE}.")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise ProofError(f"The DPoP proof must be signed with {', '.join(ALGORITHMS)}.")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict) or PRIVATE_MEMBERS & jwk.keys():
            raise ProofError("The DPoP proof's jwk must be a public key.")
        jkt = thumbprint(jwk)
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
            claims = jwt.decode(
                proof,
                key,
                algorithms=[alg],
                options={"verify_aud": False, "verify_exp": False, "verify_iat": False},
            )
        except (PyJWKError, InvalidKeyError, PyJWTError, ValueError, TypeError):
            raise ProofError("The DPoP proof's signature does not verify.") from None
        self._check_claims(claims, method, uri, access_token)
        ttl = MAX_AGE + FUTURE + 1
        replay_key = hashlib.sha256(f"{jkt}\0{claims['jti']}".encode()).hexdigest()[:40]
        if not self._kv.set_if_absent(f"dpop-jti:{replay_key}", ttl):
            raise ProofError("The DPoP proof was used before.")
        return Proof(jkt, claims)

    def _check_claims(
        self, claims: dict[str, Any], method: str, uri: str, access_token: str | None
    ) -> None:
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= JTI_MAX:
            raise ProofError("The DPoP proof needs a jti.")
        if claims.get("htm") != method:
            raise ProofError("The DPoP proof is for another HTTP method.")
        htu = claims.get("htu")
        try:
            same = isinstance(htu, str) and target_uri(htu) == target_uri(uri)
        except ValueError:
            same = False
        if not same:
            raise ProofError("The DPoP proof is for another URL.")
        iat = claims.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            raise ProofError("The DPoP proof needs an iat.")
        now = self._clock()
        if not now - MAX_AGE <= iat <= now + FUTURE:
            raise ProofError("The DPoP proof's iat is too old or in the future.")
        if access_token is not None:
            ath = claims.get("ath")
            if not isinstance(ath, str) or not hmac.compare_digest(ath, token_hash(access_token)):
                raise ProofError("The DPoP proof's ath does not match the access token.")
        if self.nonces is not None and not self.nonces.accepts(claims.get("nonce")):
            raise ProofError("Use the server's DPoP nonce.", USE_NONCE)


def verifier(settings: Settings, kv: KV, digester: Digester) -> ProofVerifier | None:
    """The app's verifier: None while DPoP is off, with nonces under a key of their own
    while `dpop_nonce` is on."""
    if not settings.dpop:
        return None
    nonces = Nonces(digester.key("dpop_nonce")) if settings.dpop_nonce else None
    return ProofVerifier(kv, nonces=nonces)
