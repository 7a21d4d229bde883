"""TLS for client connections is one switch: a certificate and its key (``dai up --tls-cert/--tls-key``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from pathlib import Path

import nats
import nats.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from democratic_ai.contracts.bus import BusOptions, connect
from democratic_ai.ops.nats_server import NatsServer


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own authority, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dai test nats")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "nats.crt", folder / "nats.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_clients_connect_over_tls_with_the_servers_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)

    async def check(server: NatsServer) -> None:
        nc = await connect(server.bus("operator"), "test-tls")
        try:
            assert nc.connected_url is not None and nc.connected_url.scheme == "tls"
            assert (await nc.jetstream().account_info()).streams == 0
        finally:
            await nc.close()
        # Without the certificate authority the server's certificate is not trusted.
        untrusted = BusOptions(url=server.url, credential=server.credentials.credential("operator"))
        with pytest.raises((nats.errors.Error, OSError)):
            await connect(
                untrusted, "test-untrusted", connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0
            )
        # A plain-text client is refused: the server requires TLS.
        plain = BusOptions(
            url=server.url.replace("tls://", "nats://"), credential=server.credentials.credential("operator")
        )
        with pytest.raises((nats.errors.Error, OSError)):
            await connect(plain, "test-plain", connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0)

    with NatsServer(tmp_path / "data", port=0, tls=(cert, key)) as server:
        assert server.url.startswith("tls://127.0.0.1:")
        asyncio.run(check(server))
