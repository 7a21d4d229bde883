"""Passwords: argon2id at OWASP's parameters or stronger, and a policy with clear reasons."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["PASSWORD_HASHER", "PasswordRejected", "check_policy", "hash_password", "verify_password"]

# OWASP's minimum for argon2id is m=19 MiB, t=2, p=1; this is that floor.
PASSWORD_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

MIN_LENGTH = 12
MAX_LENGTH = 128  # argon2 takes any length, but a cap stops multi-megabyte "passwords"


class PasswordRejected(ValueError):
    """A password the policy refuses; ``rule`` names the rule for programs."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def check_policy(password: str, *, email: str = "") -> None:
    """Raise :class:`PasswordRejected` unless ``password`` is acceptable."""
    if len(password) < MIN_LENGTH:
        raise PasswordRejected("min_length", f"the password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordRejected("max_length", f"the password must have at most {MAX_LENGTH} characters")
    if len(set(password)) < 5:
        raise PasswordRejected("too_simple", "the password must use at least 5 different characters")
    local = email.split("@", 1)[0].lower()
    if len(local) >= 4 and local in password.lower():
        raise PasswordRejected("contains_email", "the password must not contain the e-mail address")


async def hash_password(password: str) -> str:
    # argon2 is deliberately slow: keep it off the event loop.
    return await asyncio.to_thread(PASSWORD_HASHER.hash, password)


async def verify_password(password_hash: str, password: str) -> tuple[bool, bool]:
    """``(matches, needs_rehash)``; never raises for a wrong password or a damaged hash."""

    def verify() -> tuple[bool, bool]:
        try:
            PASSWORD_HASHER.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False, False
        return True, PASSWORD_HASHER.check_needs_rehash(password_hash)

    return await asyncio.to_thread(verify)
