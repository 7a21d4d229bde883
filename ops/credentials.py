"""The platform's own secrets, generated on first start and kept under ``<data-dir>/credentials``.

One file per secret, each readable by its owner only (0600, in a 0700 folder), so a process can
be handed exactly the credential of its role (``DAI_BUS_CREDENTIAL_FILE``):

    gateway.credential, hub.credential, projections.credential, busauth.credential,
    operator.credential, sys.credential   dai-role.<role>.<secret>: the users of nats.conf
    bus-issuer.seed                        the nkey seed that signs the auth callout's answers
    kek                                    the key-encryption key of the secrets at rest
    modules/<module>.credential            the credentials of the platform's own modules

In production the operator supplies them instead: the same strings, in these files or in the
environment variables nats.conf names.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import nkeys

from democratic_ai.services.identity import KeyEncryptionKey

__all__ = ["ROLES", "PlatformCredentials"]

# Every platform user of nats.conf; ``sys`` lives in the system account.
ROLES = ("gateway", "hub", "projections", "busauth", "operator", "sys")


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def _ensure(path: Path, make: str) -> str:
    """The secret stored at ``path``, written from ``make`` if the file does not exist yet."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        try:
            _write_secret(path, make)
        except FileExistsError:
            pass  # another process created it first: use theirs
        return path.read_text().strip()


@dataclass(frozen=True, slots=True)
class PlatformCredentials:
    """The credentials folder of a data dir."""

    folder: Path

    @classmethod
    def ensure(cls, data_dir: Path) -> PlatformCredentials:
        """Load the data dir's credentials, generating the missing ones."""
        folder = Path(data_dir).absolute() / "credentials"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        (folder / "modules").mkdir(mode=0o700, exist_ok=True)
        for role in ROLES:
            _ensure(folder / f"{role}.credential", f"dai-role.{role}.{secrets.token_urlsafe(32)}")
        _ensure(folder / "bus-issuer.seed", nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT).decode())
        _ensure(folder / "kek", KeyEncryptionKey.generate().to_text())
        return cls(folder)

    def file(self, role: str) -> Path:
        """The credential file of a platform role."""
        if role not in ROLES:
            raise ValueError(f"unknown platform role {role!r}; the roles are {', '.join(ROLES)}.")
        return self.folder / f"{role}.credential"

    def credential(self, role: str) -> str:
        return self.file(role).read_text().strip()

    @property
    def issuer_seed_file(self) -> Path:
        return self.folder / "bus-issuer.seed"

    @property
    def issuer_public_key(self) -> str:
        seed = self.issuer_seed_file.read_text().strip().encode()
        return nkeys.from_seed(bytearray(seed)).public_key.decode()

    @property
    def kek_file(self) -> Path:
        return self.folder / "kek"

    def module_file(self, module_id: str) -> Path:
        return self.folder / "modules" / f"{module_id}.credential"

    def server_environment(self) -> dict[str, str]:
        """The variables nats.conf reads: every role's password and the callout's issuer key."""
        env = {f"DAI_BUS_{role.upper()}": self.credential(role) for role in ROLES}
        env["DAI_BUS_ISSUER"] = self.issuer_public_key
        return env
