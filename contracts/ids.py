"""Message ids: UUIDv4-formatted strings at a tenth of the cost of ``str(uuid.uuid4())``.

Every call makes two or three ids (request, response or error), and ``uuid.uuid4()`` reads 16
bytes from the kernel each time: about 2.4 µs and a syscall per id, a measurable part of the
call path. An id here is a per-process random prefix of 74 bits followed by a 48-bit counter,
laid out as a version-4, variant-10 UUID, so it stays a valid UUID for every reader of the log:

    xxxxxxxx-xxxx-4xxx-Vxxx-cccccccccccc     x: random, V: 8, 9, a or b, c: the counter

Ids are unique, not secret: two ids of one process show how many ids it made in between.
Nothing uses a message id as a credential (keys and tokens come from ``secrets``).
"""

from __future__ import annotations

import itertools
import os
import secrets

__all__ = ["new_id"]

_COUNTER_BITS = 48
_COUNTER_LIMIT = 1 << _COUNTER_BITS
_RANDOM_BITS = 74

_prefix = ""
_counter: itertools.count[int] = itertools.count()


def _reseed() -> None:
    """Draw a new random prefix and restart the counter.

    Runs at import, in a forked child (which would otherwise repeat its parent's ids), and in
    the unlikely event that one prefix has used up all 2**48 of its counter values.
    """
    global _prefix, _counter
    bits = secrets.randbits(_RANDOM_BITS)
    high = bits >> 14  # 60 bits: the first three groups, with the version nibble inserted
    low = bits & 0x3FFF  # 14 bits: the fourth group, under the two variant bits 10
    head = f"{high >> 12:012x}"
    _prefix = f"{head[:8]}-{head[8:]}-4{high & 0xFFF:03x}-{0x8000 | low:04x}-"
    _counter = itertools.count()


def new_id() -> str:
    """A new id, unique across processes (random prefix) and within one (counter)."""
    n = next(_counter)
    if n >= _COUNTER_LIMIT:
        _reseed()
        n = next(_counter)
    return f"{_prefix}{n:012x}"


_reseed()
os.register_at_fork(after_in_child=_reseed)
