"""A software WebAuthn authenticator for tests: an ES256 key and the bytes an authenticator
and a browser would produce (authenticatorData, clientDataJSON, the signature)."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from webauthn.helpers import bytes_to_base64url

from authserver.mfa.models import Passkey

UP, UV, BE, BS = 0x01, 0x04, 0x08, 0x10


@dataclass
class SoftAuthenticator:
    rp_id: str
    origin: str
    credential_id: bytes = field(default_factory=lambda: hashlib.sha256(b"cred").digest())
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    counter: int = 0

    def cose_public_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,
                3: -7,
                -1: 1,
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    def passkey_for(self, user_id: str) -> Passkey:
        return Passkey(
            user_id=user_id,
            credential_id=bytes_to_base64url(self.credential_id),
            public_key=self.cose_public_key(),
            sign_count=0,
            backup_eligible=False,
            backed_up=False,
            name="Test key",
        )

    def assertion(
        self,
        challenge_b64: str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        flags: int = UP | UV,
        user_handle: bytes | None = None,
    ) -> dict[str, Any]:
        self.counter += 1
        auth_data = (
            hashlib.sha256((rp_id or self.rp_id).encode()).digest()
            + bytes([flags])
            + struct.pack(">I", self.counter)
        )
        client_data = json.dumps(
            {"type": "webauthn.get", "challenge": challenge_b64, "origin": origin or self.origin}
        ).encode()
        signature = self.key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        response: dict[str, Any] = {
            "clientDataJSON": bytes_to_base64url(client_data),
            "authenticatorData": bytes_to_base64url(auth_data),
            "signature": bytes_to_base64url(signature),
        }
        if user_handle is not None:
            response["userHandle"] = bytes_to_base64url(user_handle)
        credential_id = bytes_to_base64url(self.credential_id)
        return {
            "id": credential_id,
            "rawId": credential_id,
            "type": "public-key",
            "response": response,
            "clientExtensionResults": {},
        }
