"""A module instance answers the NATS micro protocol, so ``nats micro ls|info|stats`` shows it.

It answers ``$SRV.PING|INFO|STATS``, ``$SRV.<verb>.<module>`` and ``$SRV.<verb>.<module>.<instance>``
with the JSON of the protocol (``io.nats.micro.v1.*_response``, as nats.go and nats.py write it),
and lists each capability route as an endpoint with its request, error and latency figures.

nats-py's ``nats.micro.Service`` is not used for the calls themselves: its endpoint awaits the
handler inside the subscription callback, one request at a time per subject, and counts an
error only when the handler raises — our module serves calls concurrently and answers failures
with MCP ERROR messages. So the module keeps its own subscriptions (the subjects and queue
groups of :mod:`democratic_ai.contracts.subjects`, unchanged) and reports into :class:`Endpoint`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["Endpoint", "MicroService"]

PREFIX = "$SRV"
VERBS = ("PING", "INFO", "STATS")
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")
_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Endpoint:
    """One subscription of the module, and what it has served so far."""

    name: str  # letters, digits, '-' and '_', as the protocol asks: "text_summarize", "text_summarize-direct"
    subject: str
    queue_group: str
    metadata: dict[str, str] = field(default_factory=dict)
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_time: int = 0  # nanoseconds, summed over requests

    def record(self, elapsed_ns: int, error: str | None = None) -> None:
        self.num_requests += 1
        self.processing_time += elapsed_ns
        if error is not None:
            self.num_errors += 1
            self.last_error = error

    def info(self) -> dict[str, object]:
        return {"name": self.name, "subject": self.subject, "queue_group": self.queue_group, "metadata": self.metadata}

    def stats(self) -> dict[str, object]:
        return {
            "name": self.name,
            "subject": self.subject,
            "queue_group": self.queue_group,
            "num_requests": self.num_requests,
            "num_errors": self.num_errors,
            "last_error": self.last_error,
            "processing_time": self.processing_time,
            "average_processing_time": self.processing_time // self.num_requests if self.num_requests else 0,
            "data": None,  # custom per-endpoint statistics: none; nats.py expects the key
        }


class MicroService:
    """The ``$SRV`` side of one module instance: name = module id, id = instance id."""

    def __init__(
        self, *, name: str, instance_id: str, version: str, description: str, endpoints: list[Endpoint]
    ) -> None:
        self.name = name
        self.id = instance_id
        # The protocol wants SemVer; a module may say anything, so the original stays in the metadata.
        self.version = version if _SEMVER.fullmatch(version) else "0.0.0"
        self.metadata = {"module_id": name, "module_version": version}
        self.description = description
        self.endpoints = endpoints
        self.started = datetime.now(UTC)
        self._subscriptions: list[Subscription] = []

    async def start(self, nc: NATS) -> None:
        self.started = datetime.now(UTC)
        # Five subscriptions instead of nine: the verb is the second token. The bare verbs are named
        # one by one, not as "$SRV.*": the bus grants a module exactly those, and NATS refuses a
        # wildcard subscription wider than what it grants.
        own = (f"{PREFIX}.*.{self.name}", f"{PREFIX}.*.{self.name}.{self.id}")
        for subject in (*(f"{PREFIX}.{verb}" for verb in VERBS), *own):
            self._subscriptions.append(await nc.subscribe(subject, cb=self._on_request))

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()

    def _identity(self, kind: str) -> dict[str, object]:
        return {
            "type": f"io.nats.micro.v1.{kind}_response",
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "metadata": self.metadata,
        }

    def answer(self, verb: str) -> dict[str, object] | None:
        """The response document for ``verb``, or ``None`` for a verb the protocol does not define."""
        if verb == "PING":
            return self._identity("ping")
        if verb == "INFO":
            return {
                **self._identity("info"),
                "description": self.description,
                "endpoints": [endpoint.info() for endpoint in self.endpoints],
            }
        if verb == "STATS":
            return {
                **self._identity("stats"),
                "started": self.started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "endpoints": [endpoint.stats() for endpoint in self.endpoints],
            }
        return None

    async def _on_request(self, msg: Msg) -> None:
        document = self.answer(msg.subject.split(".")[1])
        if document is not None and msg.reply:
            await msg.respond(_encode(document))
