"""NATS JWTs: the claims the server and the authorization service exchange in an auth callout.

A NATS JWT is an ordinary three-part JWT whose algorithm is ``ed25519-nkey``: it is signed with
an nkey (an Ed25519 key written in NATS' base32 form, e.g. ``A…`` for an account). The server
signs the authorization request with its own key (``N…``); the service answers with an
authorization response, signed by the issuer account key that nats.conf names, carrying the
user JWT (the permissions of the connection), signed by the same key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from typing import Any

import nkeys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["InvalidClaims", "Signer", "decode_request"]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


class InvalidClaims(ValueError):
    """A JWT that is malformed or whose signature does not verify."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _public_key(encoded: str) -> Ed25519PublicKey:
    """The Ed25519 key of a public nkey: base32 of a prefix byte, 32 key bytes and a CRC16."""
    try:
        raw = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
    except (binascii.Error, ValueError):
        raise InvalidClaims(f"{encoded!r} is not a public nkey") from None
    if len(raw) != 35:
        raise InvalidClaims(f"{encoded!r} is not a public nkey")
    return Ed25519PublicKey.from_public_bytes(raw[1:33])


def decode_request(token: str) -> dict[str, Any]:
    """The claims of an authorization request, after checking the server's signature."""
    try:
        header, body, signature = token.split(".")
        claims = json.loads(_unb64(body))
        issuer = claims["iss"]
        _public_key(issuer).verify(_unb64(signature), f"{header}.{body}".encode())
    except InvalidSignature:
        raise InvalidClaims("the authorization request's signature does not verify") from None
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidClaims("the authorization request is not a NATS JWT") from None
    if not isinstance(claims.get("nats"), dict):
        raise InvalidClaims("the authorization request carries no nats claims")
    return claims


class Signer:
    """Signs NATS JWTs with an account nkey seed (``SA…``)."""

    def __init__(self, seed: str) -> None:
        self._keys = nkeys.from_seed(bytearray(seed.strip().encode()))
        self.public_key: str = self._keys.public_key.decode()

    def encode(self, claims: dict[str, Any]) -> str:
        body = {**claims, "iat": int(time.time()), "iss": self.public_key}
        # jti: a unique id for the token, derived from its claims.
        body["jti"] = (
            base64.b32encode(hashlib.sha512(json.dumps(body, sort_keys=True).encode()).digest()[:32])
            .decode()
            .rstrip("=")
        )
        header = _b64(json.dumps(_HEADER).encode())
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        signature = self._keys.sign(f"{header}.{payload}".encode())
        return f"{header}.{payload}.{_b64(signature)}"

    def user(self, user_nkey: str, account: str, name: str, permissions: dict[str, Any]) -> str:
        """A user JWT: who the connection is and what it may publish and subscribe to."""
        return self.encode(
            {
                "sub": user_nkey,
                "aud": account,
                "name": name,
                "nats": {**permissions, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2},
            }
        )

    def response(self, user_nkey: str, server_id: str, *, user_jwt: str = "", error: str = "") -> str:
        """The answer to an authorization request: the user JWT, or why the connection is refused."""
        nats: dict[str, Any] = {"type": "authorization_response", "version": 2}
        if user_jwt:
            nats["jwt"] = user_jwt
        else:
            nats["error"] = error or "not authorized"
        return self.encode({"sub": user_nkey, "aud": server_id, "nats": nats})
