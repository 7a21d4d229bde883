"""Broadcast events: ``@event_handler("topic")`` marks a method that receives the events of a topic.

An event is an MCP message of type EVENT published once on ``mcp.evt.<tenant>.<topic>``: the MCP
stream records it from there and every module subscribed to the topic that is entitled to the
tenant's events receives it. Each handler gets each event once — the replicas of one module
share it in a queue group, as they share calls — and nobody answers. Handlers run outside the
module's concurrency slots; a failure is logged, never answered. Publish one with
:meth:`Client.publish_event <democratic_ai.sdk.Client.publish_event>`.

Who hears which tenant's events is decided by the tenant that owns the module
(``ModuleConfig.tenant``): a module owned by tenant ``acme`` subscribes ``mcp.evt.acme.<topic>``
and hears acme's events only; a platform module, owned by ``system``, subscribes
``mcp.evt.*.<topic>`` and hears every tenant's. The bus grants a module's connection exactly that
subject, so this is enforced by NATS, not just chosen by the SDK. ``Event.tenant_id`` is the
tenant of the subject the event came on (an event whose body names another is dropped), and a
handler's own calls and events default to that tenant (:mod:`.tenancy`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from democratic_ai.contracts import MCPMessage
from democratic_ai.contracts.subjects import validate_topic_pattern

__all__ = ["Event", "EventHandlerDefinition", "event_handler", "event_handlers_of"]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__dai_event_handler__"


@dataclass(frozen=True, slots=True)
class Event:
    """What an event handler receives."""

    topic: str
    tenant_id: str
    data: Any
    id: str
    source_module_id: str
    timestamp: datetime

    @classmethod
    def from_message(cls, message: MCPMessage, data: Any) -> Event:
        return cls(
            topic=message.action,
            tenant_id=message.context.tenant_id,
            data=data,
            id=message.id,
            source_module_id=message.source_module_id,
            timestamp=message.timestamp.ToDatetime(tzinfo=UTC),
        )


@dataclass(frozen=True, slots=True)
class EventHandlerDefinition:
    topic: str  # may hold NATS wildcards: "orders.*", "orders.>"
    method_name: str


def event_handler(topic: str) -> Callable[[F], F]:
    """Mark ``async def method(self, event: Event)`` as a handler of the events of ``topic``."""
    validate_topic_pattern(topic)

    def mark(method: F) -> F:
        if not inspect.iscoroutinefunction(method):
            raise TypeError(f"event handler {topic!r}: {method.__qualname__} must be an 'async def' method.")
        setattr(method, _MARK, EventHandlerDefinition(topic=topic, method_name=method.__name__))
        return method

    return mark


def event_handlers_of(obj: object) -> list[EventHandlerDefinition]:
    """The event handlers an object's class declares."""
    found = []
    for name in dir(type(obj)):
        definition = getattr(getattr(type(obj), name), _MARK, None)
        if isinstance(definition, EventHandlerDefinition):
            found.append(definition)
    return found
