"""``Module``: the base class a module author subclasses.

A started module subscribes each capability on two subjects — the capability route, shared by
every replica of every module that offers it (one queue group per capability), and its own
direct route — announces its manifest to the hub, and heartbeats until it stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, NoRespondersError, TimeoutError

from democratic_ai.contracts import (
    ErrorCode, MCPMessage, decode, error_reply, expired, presence, reply, subjects, tracing,
)
from democratic_ai.contracts.registry_events import ModuleManifest
from democratic_ai.contracts.usage_events import BYTES_IN_HEADER, COMPUTE_MS_HEADER

from .capability import CapabilityDefinition, definitions_of
from .client import Client
from .errors import CallError

__all__ = ["Module", "ModuleConfig"]

log = logging.getLogger(__name__)

_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class ModuleConfig:
    heartbeat_interval: float = 1.0
    max_concurrency: int = 256  # handlers running at once; further calls wait their turn
    announce_retry: float = 2.0  # longest wait between announcements while no hub answers

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be a positive number of seconds.")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1.")


class Module:
    """Subclass it, set ``module_id``, and decorate ``async def`` methods with ``@capability``."""

    module_id: ClassVar[str] = ""
    name: ClassVar[str] = ""
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = ""

    def __init__(self, config: ModuleConfig | None = None) -> None:
        if not self.module_id:
            raise TypeError(f"{type(self).__name__} must set the class attribute module_id.")
        subjects.validate_token(self.module_id, "module_id")
        self.config = config or ModuleConfig()
        self.capabilities: dict[str, CapabilityDefinition] = definitions_of(self)
        if not self.capabilities:
            raise TypeError(f"{type(self).__name__} declares no @capability method.")
        self.instance_id = f"{self.module_id}-{uuid.uuid4().hex[:12]}"
        self._nc: NATS | None = None
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.config.max_concurrency)
        self._background: list[asyncio.Task[None]] = []

    @property
    def manifest(self) -> ModuleManifest:
        return ModuleManifest(
            module_id=self.module_id,
            name=self.name or type(self).__name__,
            version=self.version,
            description=self.description or (type(self).__doc__ or "").strip(),
            capabilities=tuple(d.spec() for d in sorted(self.capabilities.values(), key=lambda d: d.action)),
        )

    @property
    def client(self) -> Client:
        """A client for module-to-module calls, on the same subjects as every other call."""
        if self._nc is None:
            raise RuntimeError("the module is not started.")
        return Client(self._nc, source_id=self.module_id)

    async def start(self, nc: NATS) -> None:
        """Subscribe every capability, then announce and heartbeat in the background."""
        self._nc = nc
        for definition in self.capabilities.values():
            action = definition.action

            async def on_call(msg: Msg, definition: CapabilityDefinition = definition) -> None:
                self._spawn(self._serve(definition, msg))

            self._subscriptions.append(
                await nc.subscribe(subjects.call("*", action), queue=subjects.capability_queue(action), cb=on_call)
            )
            self._subscriptions.append(
                await nc.subscribe(subjects.direct(self.module_id, "*", action), queue=self.module_id, cb=on_call)
            )
        await nc.flush()
        self._background = [
            asyncio.create_task(self._announce(nc), name=f"{self.module_id}-announce"),
            asyncio.create_task(self._heartbeat(nc), name=f"{self.module_id}-heartbeat"),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Leave: stop taking calls, say so, and let calls in progress finish (up to ``grace``)."""
        if self._nc is None:
            return
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._nc.is_connected:
            leave = presence.Leave(module_id=self.module_id, instance_id=self.instance_id)
            await self._nc.publish(subjects.leave(self.module_id), presence.encode(leave))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        if self._nc.is_connected:
            await self._nc.flush()
        self._nc = None

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, nc: NATS) -> None:
        """Tell the hub our manifest until it acknowledges; modules serve calls meanwhile."""
        data = msgspec.json.encode(self.manifest)
        attempts = 0
        while True:
            attempts += 1
            try:
                answer = await nc.request(subjects.ANNOUNCE, data, timeout=5.0)
            except ConnectionClosedError:
                return
            except (NoRespondersError, TimeoutError):
                # At start-up the hub may simply not be up yet: only persistence is worth a warning.
                level = logging.WARNING if attempts >= 3 else logging.DEBUG
                log.log(level, "no hub answered the announcement of %s; retrying", self.module_id)
            else:
                if answer.data == b"ok":
                    return
                log.error("the hub refused the manifest of %s: %s", self.module_id, answer.data.decode(errors="replace"))
                return
            # Start quickly (the hub may be starting alongside us), then back off.
            await asyncio.sleep(min(self.config.announce_retry, 0.1 * 2**attempts))

    async def _heartbeat(self, nc: NATS) -> None:
        subject = subjects.heartbeat(self.module_id)
        actions = tuple(sorted(self.capabilities))
        while True:
            beat = presence.Heartbeat(
                module_id=self.module_id,
                instance_id=self.instance_id,
                capabilities=actions,
                interval=self.config.heartbeat_interval,
                in_flight=len(self._tasks),
            )
            try:
                await nc.publish(subject, presence.encode(beat))
            except ConnectionClosedError:
                return  # the connection's owner closed it; nothing is left to announce on
            await asyncio.sleep(self.config.heartbeat_interval)

    async def _serve(self, definition: CapabilityDefinition, msg: Msg) -> None:
        nc = self._nc
        if nc is None:
            return
        try:
            request = decode(msg.data)
        except DecodeError:
            log.warning("dropped an unreadable call on %s", msg.subject)
            return
        if expired(request):
            # The caller stopped waiting: running the work now would only waste it.
            log.info("dropped expired call %s of %s", request.correlation_id, request.action)
            return
        async with self._slots:
            started = time.perf_counter_ns()
            if tracing.tracing_enabled():
                with tracing.tracer.start_as_current_span(
                    f"module {definition.action}", context=tracing.extract(msg.headers)
                ):
                    answer = await self._execute(definition, request)
            else:
                answer = await self._execute(definition, request)
            elapsed = time.perf_counter_ns() - started
        # What only the module can measure travels with its answer, for metering: the work
        # done (whole milliseconds, rounded up, as compute is billed) and the input's size.
        headers = answer.headers
        headers[COMPUTE_MS_HEADER] = str(-(-elapsed // 1_000_000))
        headers[BYTES_IN_HEADER] = str(len(request.payload))
        data = answer.SerializeToString()
        # The record goes out before the reply, on the same connection: by the time the
        # caller holds the answer, the log holds it too, and the call's usage can always be
        # re-derived from the log (services/metering/recovery.py).
        await nc.publish(subjects.record_response(request.context.tenant_id, request.action), data)
        if msg.reply:
            await nc.publish(msg.reply, data)

    async def _execute(self, definition: CapabilityDefinition, request: MCPMessage) -> MCPMessage:
        def fail(code: ErrorCode, text: str, **details: Any) -> MCPMessage:
            return error_reply(request, code, text, source_module_id=self.module_id, details=details)

        try:
            payload = _decode_json(request.payload) if request.payload else {}
        except msgspec.DecodeError as exc:
            return fail(ErrorCode.VALIDATION_FAILED, f"the payload is not valid JSON: {exc}", where="input", path="$")
        value, invalid = definition.input.check(payload)
        if invalid is not None:
            return fail(
                ErrorCode.VALIDATION_FAILED,
                f"input {invalid.path}: {invalid.message}",
                where="input",
                path=invalid.path,
                validator=invalid.validator,
            )
        handler = getattr(self, definition.method_name)
        try:
            if definition.takes_model:
                result = await handler(value)
            else:
                kwargs, problem = _keyword_arguments(definition, value)
                if problem is not None:
                    return fail(ErrorCode.VALIDATION_FAILED, problem[1], where="input", path=problem[0])
                result = await handler(**kwargs)
        except CallError as exc:
            code = ErrorCode(exc.code) if exc.code in ErrorCode.__members__ else ErrorCode.MODULE_ERROR
            return fail(code, exc.message, **exc.details)
        except Exception:
            # A handler's bug must not take the module down: answer, log, keep serving.
            log.exception("capability %s failed on call %s", definition.action, request.correlation_id)
            return fail(ErrorCode.MODULE_ERROR, f"the module {self.module_id!r} failed while handling {definition.action!r}")
        out = definition.output.dump(result)
        _, invalid = definition.output.check(out)
        if invalid is not None:
            log.error("capability %s returned output that breaks its schema: %s", definition.action, invalid)
            return fail(
                ErrorCode.VALIDATION_FAILED,
                f"output {invalid.path}: {invalid.message}",
                where="output",
                path=invalid.path,
                validator=invalid.validator,
            )
        return reply(request, _encode_json(out), source_module_id=self.module_id)


def _keyword_arguments(
    definition: CapabilityDefinition, value: Any
) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """Map a JSON object onto the handler's parameters, or say which field does not fit."""
    if not isinstance(value, dict):
        return {}, ("$", "the input must be a JSON object")
    if not definition.takes_any_keyword:
        for key in value:
            if key not in definition.parameters:
                return {}, (f"$.{key}", f"input $.{key}: unexpected field")
    for name in definition.required:
        if name not in value:
            return {}, (f"$.{name}", f"input $.{name}: required field is missing")
    return value, None
