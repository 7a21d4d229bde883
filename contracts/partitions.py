"""Partitions of a stream: a fixed number of buckets of its subjects, chosen by the server.

A stream's subject transform appends a partition token to every subject it stores:
``usage.acme.api_calls`` is stored as ``usage.acme.api_calls.15``, the token being the server's
``partition(16, 1)`` of the tenant (FNV-1a of the token, modulo 16). All of a tenant's events
land in one partition, so a worker that follows some partitions sees each of its tenants'
events in stream order, and N workers can split the partitions between them.

The token goes at the end so every filter written before it existed (``usage.>``,
``usage.acme.>``) still selects the same events. The number of partitions is fixed for a
stream's life — changing it would move tenants between partitions — while the number of
workers, each owning ``p % workers == worker``, can change at any time (see
``projections/partitions.py``).

Events stored before the transform was declared keep their subject without a token (the
*legacy* subjects, ``usage.acme.api_calls``); they count as partition 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import SubjectTransform
from nats.js.errors import NotFoundError

from .subjects import usage_subject

__all__ = ["USAGE_PARTITIONS", "PartitionScheme", "partition_targets"]

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


@dataclass(frozen=True, slots=True)
class PartitionScheme:
    """Subjects matching ``source`` (``usage.*.*``) get the partition of wildcard ``key`` appended."""

    source: str
    key: int  # which wildcard of ``source`` (1-based, as the server counts) is hashed
    count: int

    def __post_init__(self) -> None:
        wildcards = self.source.split(".").count("*")
        if not 1 <= self.key <= wildcards:
            raise ValueError(f"key must name one of the {wildcards} wildcards of {self.source!r}.")
        if self.count < 1:
            raise ValueError("a partition scheme needs at least one partition.")

    def transform(self) -> SubjectTransform:
        """The stream's ``subject_transform`` that appends the partition."""
        tokens, wildcard = [], 0
        for token in self.source.split("."):
            if token == "*":
                wildcard += 1
                token = f"{{{{wildcard({wildcard})}}}}"
            tokens.append(token)
        tokens.append(f"{{{{partition({self.count},{self.key})}}}}")
        return SubjectTransform(src=self.source, dest=".".join(tokens))

    def subjects(self, partition: int) -> list[str]:
        """The filter subjects of ``partition``: its token, and for partition 0 the legacy subjects."""
        if not 0 <= partition < self.count:
            raise ValueError(f"partition must be from 0 to {self.count - 1}, not {partition}.")
        subjects = [f"{self.source}.{partition}"]
        if partition == 0:
            subjects.append(self.source)
        return subjects

    def of_subject(self, subject: str) -> int:
        """The partition a stored subject belongs to (a legacy subject: 0)."""
        head, _, token = subject.rpartition(".")
        if head.count(".") == self.source.count(".") and token.isdigit():
            return int(token)
        return 0

    def of_key(self, key: str) -> int:
        """The partition the server gives a key (a tenant id): FNV-1a 32 of its bytes, modulo ``count``."""
        h = _FNV_OFFSET
        for byte in key.encode():
            h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
        return h % self.count

    def key_subjects(self, key: str) -> tuple[str, str]:
        """The subjects of one key: partitioned (``usage.acme.*.*``) and legacy (``usage.acme.*``)."""
        tokens = self.source.split(".")
        wildcard = 0
        for index, token in enumerate(tokens):
            if token == "*":
                wildcard += 1
                if wildcard == self.key:
                    tokens[index] = key
        legacy = ".".join(tokens)
        return f"{legacy}.*", legacy


async def partition_targets(
    js: JetStreamContext, stream: str, scheme: PartitionScheme, key: str | None = None
) -> dict[int, int]:
    """partition → the last sequence stored on its subjects (0: none): what its checkpoint must
    reach for a reader to see everything the stream holds now. With ``key``, only what that
    key's events need: its partition's position, and partition 0's for its legacy events."""
    if key is None:
        wanted = {p: scheme.subjects(p) for p in range(scheme.count)}
    else:
        partitioned, legacy = scheme.key_subjects(key)
        wanted = {scheme.of_key(key): [partitioned]}
        wanted.setdefault(0, []).append(legacy)
    return {p: max([await _last_sequence(js, stream, s) for s in subjects]) for p, subjects in wanted.items()}


async def _last_sequence(js: JetStreamContext, stream: str, subject: str) -> int:
    try:
        return (await js.get_last_msg(stream, subject)).seq or 0
    except NotFoundError:
        return 0


# Fixed for the stream's life: 16 partitions allow up to 16 usage workers.
USAGE_PARTITIONS = PartitionScheme(usage_subject("*", "*"), key=1, count=16)
