"""What an event of the log carries besides its own facts: who did it and when, and its schema version.

:class:`Meta` is the audit envelope of every command's event (IDENTITY and BILLING events hold
it in ``meta``): when, by whom (``user:<id>``, ``api_key:<id>`` or ``system``), from which
address and client. Its JSON is part of every such event on the wire, so its fields and their
order are fixed; a new field must have a default, so older events still decode.

Every event also carries ``v``, the version of its type's schema. The log is never rewritten:
a reader lifts an old event to today's version on read with the type's :class:`Upcasters`,
one version at a time (``upcast_v1_v2``, then ``upcast_v2_v3`` …), each step a plain function
of the event family's module (``registry_events`` has them). A version newer than the reader
knows is read as its current one, unknown fields ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Protocol, TypeVar

import msgspec

from .fields import Id, Text

__all__ = ["Meta", "Upcasters", "Versioned"]


class Meta(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    actor: Id = "system"  # "user:<id>", "api_key:<id>" or "system"
    ip: Id = ""
    user_agent: Text = ""


class Versioned(Protocol):
    """An event with a schema version: every event struct of the log (its ``v`` field)."""

    @property
    def v(self) -> int: ...


E = TypeVar("E", bound=Versioned)


@dataclass(frozen=True, slots=True)
class Upcasters(Generic[E]):
    """The upcast registry of one event family: version → the step that lifts an event of that
    version to the next one, applied until the event is at ``current``.

    ``family`` names the stream in the error for a version that never existed.
    """

    family: str
    current: int
    steps: Mapping[int, Callable[[E], E]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [version for version in range(1, self.current) if version not in self.steps]
        if missing or any(not 1 <= version < self.current for version in self.steps):
            raise ValueError(
                f"The {self.family} upcasters must lift each version from 1 to {self.current - 1} "
                f"one step; they have steps for {sorted(self.steps)}."
            )

    def __call__(self, event: E) -> E:
        """``event`` lifted to :attr:`current`; one at or past it is returned as it is.

        Raises ``msgspec.ValidationError`` for a version that never existed (0 or less).
        """
        while event.v < self.current:
            step = self.steps.get(event.v)
            if step is None:
                raise msgspec.ValidationError(
                    f"{self.family} event version {event.v} does not exist (current: {self.current})"
                )
            event = step(event)
        return event
