"""``Module``: the base class a module author subclasses.

A started module subscribes each capability on two subjects — the capability route, shared by
every replica of every module that offers it (one queue group per capability), and its own
direct route — plus its instance's control subject (CANCEL and credit of streamed calls) and
the topics of its event handlers; it announces its manifest to the hub and heartbeats until it
stops. It is also a NATS micro service (:mod:`.micro`): each route is an endpoint, so
``nats micro ls|info|stats`` shows the module's instances and their request, error and latency figures.

A module belongs to a tenant (``ModuleConfig.tenant``, or the one its credential names:
:meth:`Module.config_for_credential`). It serves every tenant's calls, but hears only its own
tenant's events — a module owned by ``system``, a platform module, hears every tenant's. While it
serves a call, its client calls for the caller's tenant (:mod:`.tenancy`).

A call is answered once (request/reply) unless the caller asked to stream it (NATS header
``Dai-Stream``): then the module acknowledges at once with ACCEPTED and sends its answers to the
caller's inbox (:mod:`democratic_ai.sdk.streaming`). Either way the handler waits for one of
``max_concurrency`` slots (:mod:`democratic_ai.sdk.scheduling`), and a call whose ttl passed
before it got one is dropped without running. The ttl is counted on this process's monotonic
clock, from the time left that the caller sent with the call (:mod:`democratic_ai.contracts.deadlines`):
a caller whose clock is off does not make the module drop its calls.

A plain call not answered within ``presence.ACCEPT_AFTER`` (0.25 s) is acknowledged with ACCEPTED
too, ahead of its answer, if its caller asks (MCP header ``contracts.headers.MCP_ACCEPT_HELD``; the gateway
does). Both kinds of ACCEPTED name this instance, so that the caller can tell from its heartbeats
when it dies holding the call (``MODULE_UNAVAILABLE``). A module that stops leaves (``hub.leave``)
but heartbeats on, marked ``leaving``, until the calls it still runs are done.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, cast

import msgspec
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, NoRespondersError, TimeoutError

from democratic_ai.contracts import (
    DEFAULT_TTL_SECONDS,
    ErrorCode,
    MCPMessage,
    deadlines,
    decode,
    presence,
    streaming,
    subjects,
    tracing,
)
from democratic_ai.contracts.headers import DAI_STREAM, DAI_WINDOW, MCP_ACCEPT_HELD, MCP_BYTES_IN, MCP_COMPUTE_MS
from democratic_ai.contracts.messages import CANCEL, ERROR, STREAM_ACK
from democratic_ai.contracts.registry_events import ModuleManifest

from .capability import CapabilityDefinition, definitions_of
from .client import Client
from .credentials import parse_module_credential
from .errors import CredentialError
from .events import Event, EventHandlerDefinition, event_handlers_of
from .execution import Invocation
from .micro import Endpoint, MicroService
from .scheduling import Scheduler
from .signatures import check_handler
from .streaming import ChunkSender, elapsed_ms, last_data, stream_answers
from .tenancy import ModuleClient, serving, serving_tenant

__all__ = ["Module", "ModuleConfig", "Route"]

log = logging.getLogger(__name__)

_decode_json = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class ModuleConfig:
    heartbeat_interval: float = 1.0
    max_concurrency: int = 256  # handlers running at once; further calls wait their turn
    announce_retry: float = 2.0  # longest wait between announcements while no hub answers
    # Seconds of waiting for a slot that raise a call by one priority level, so that under
    # saturation a priority-0 call waits at most ~9 x this longer than a priority-9 one.
    priority_aging: float = 1.0
    # The tenant that owns the module: it hears that tenant's events only, unless it is "system".
    tenant: str = subjects.SYSTEM_TENANT

    def __post_init__(self) -> None:
        subjects.validate_token(self.tenant, "tenant")
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be a positive number of seconds.")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1.")
        if self.priority_aging <= 0:
            raise ValueError("priority_aging must be a positive number of seconds.")


@dataclass(frozen=True, slots=True)
class _Streamed:
    """A streamed call this instance holds, found by its correlation id for CANCEL and credit."""

    task: asyncio.Task[None]
    sender: ChunkSender
    tenant_id: str


@dataclass(frozen=True, slots=True)
class Route:
    """One subscription a started module needs: its subject, queue group ("" for none) and its callback."""

    subject: str
    queue: str
    deliver: Callable[[Msg], Awaitable[None]]
    endpoint: Endpoint | None = None  # a capability route's micro endpoint, which counts its calls


class Module:
    """A module author's capabilities, served on the bus.

    Subclass it, set ``module_id``, and decorate ``async def`` methods with ``@capability`` (and
    ``@event_handler``). ``start(nc)`` subscribes each capability in its queue group (and on its
    direct route), announces the manifest to the hub and heartbeats until ``stop()``, which leaves,
    lets the calls in progress finish (up to ``grace`` seconds) and unsubscribes. Each call is
    checked against its input schema, run under the caller's tenant (``current_tenant``), checked
    against its output schema, answered with the metering headers (compute ms, bytes) and recorded
    in the MCP log; a streamed call sends chunks within its credit window and obeys CANCEL.
    ``attach``, ``routes`` and ``begin`` are the three steps of ``start`` for a host that owns the
    subscriptions itself (:mod:`.faststream`).
    """

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
        for definition in self.capabilities.values():
            check_handler(type(self), definition)  # a mismatch fails here, not on every call
        self.event_handlers: list[EventHandlerDefinition] = event_handlers_of(self)
        if not self.capabilities and not self.event_handlers:
            raise TypeError(f"{type(self).__name__} declares no @capability or @event_handler method.")
        self.instance_id = f"{self.module_id}-{uuid.uuid4().hex[:12]}"
        self.scheduler = Scheduler(self.config.max_concurrency, self.config.priority_aging)
        self._nc: NATS | None = None
        self._control = subjects.control(self.module_id, self.instance_id)
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: dict[str, _Streamed] = {}
        self._background: list[asyncio.Task[None]] = []  # the heartbeat first, then the announcement
        self._micro: MicroService | None = None
        self._routes: list[Route] = []
        self._stopping = False
        self._cutting_short = False

    @property
    def manifest(self) -> ModuleManifest:
        return ModuleManifest(
            module_id=self.module_id,
            name=self.name or type(self).__name__,
            version=self.version,
            description=self.description or (type(self).__doc__ or "").strip(),
            capabilities=tuple(d.spec() for d in sorted(self.capabilities.values(), key=lambda d: d.action)),
        )

    @classmethod
    def config_for_credential(cls, credential: str, config: ModuleConfig | None = None) -> ModuleConfig:
        """``config`` (or the defaults) owned by the tenant ``credential`` names, if it is this module's.

        Raises :class:`~democratic_ai.sdk.errors.CredentialError` when the credential is malformed
        or was issued for another module id: the bus would refuse this module's subjects anyway,
        and a clear error at start beats a permissions violation on the first subscription.
        """
        named = parse_module_credential(credential)
        if named.module_id != cls.module_id:
            raise CredentialError(
                f"the credential is for module {named.module_id!r}, but {cls.__name__}.module_id is"
                f" {cls.module_id!r}: use the credential the platform issued for {cls.module_id!r}."
            )
        return replace(config or ModuleConfig(), tenant=named.tenant)

    @property
    def calls_in_progress(self) -> int:
        """Calls (and events) this instance is handling right now."""
        return len(self._tasks)

    @property
    def tenant(self) -> str:
        """The tenant that owns this module."""
        return self.config.tenant

    @property
    def current_tenant(self) -> str:
        """The tenant this code acts for: that of the call (or event) being served, else the module's own."""
        return serving_tenant() or self.tenant

    @property
    def client(self) -> Client:
        """A client for module-to-module calls, on the same subjects as every other call.

        Its calls carry :attr:`current_tenant` unless they name one (``tenant=``), and a module owned
        by a tenant may name only its own or its caller's; its events go to its own tenant, or for a
        ``system`` module to :attr:`current_tenant` (:mod:`.tenancy`).
        """
        if self._nc is None:
            raise RuntimeError("the module is not started.")
        return ModuleClient(self._nc, module_id=self.module_id, owner=self.tenant)

    async def start(self, nc: NATS) -> None:
        """Subscribe every capability and event topic, then announce and heartbeat in the background."""
        self.attach(nc)
        for route in self.routes():
            self._subscriptions.append(await nc.subscribe(route.subject, queue=route.queue, cb=route.deliver))
        await self.begin()

    def attach(self, nc: NATS) -> None:
        """Take ``nc`` for this module's work: its answers, records and calls go out on it.

        :meth:`start` is :meth:`attach`, subscribing :meth:`routes`, then :meth:`begin`. A host that
        makes the subscriptions its own way (a FastStream broker: :mod:`democratic_ai.sdk.faststream`)
        calls the three itself.
        """
        self._nc = nc
        self._stopping = False
        self._cutting_short = False

    def routes(self) -> list[Route]:
        """What the module must be subscribed to: each capability's two routes, its event topics, its control."""
        routes: list[Route] = []
        for definition in sorted(self.capabilities.values(), key=lambda d: d.action):
            action = definition.action
            endpoints = (
                Endpoint(
                    name=action.replace(".", "_"),
                    subject=subjects.call("*", action),
                    queue_group=subjects.capability_queue(action),
                    metadata={"capability": action, "route": "capability", "description": definition.description},
                ),
                Endpoint(
                    name=action.replace(".", "_") + "-direct",
                    subject=subjects.direct(self.module_id, "*", action),
                    queue_group=self.module_id,
                    metadata={"capability": action, "route": "direct", "description": definition.description},
                ),
            )
            for endpoint in endpoints:

                async def on_call(
                    msg: Msg, definition: CapabilityDefinition = definition, endpoint: Endpoint = endpoint
                ) -> None:
                    self._spawn(self._serve(definition, msg, endpoint, time.perf_counter_ns()))

                routes.append(Route(endpoint.subject, endpoint.queue_group, on_call, endpoint))
        for handler in self.event_handlers:

            async def on_event(msg: Msg, handler: EventHandlerDefinition = handler) -> None:
                self._spawn(self._deliver(handler, msg))

            # One queue group per handler: the replicas of this module share its events, while two
            # handlers whose topics overlap each still get every event (NATS picks one member per group).
            # The subject holds the events of this module's tenant, or of all tenants for a "system"
            # module: exactly what the bus lets its connection subscribe to.
            queue = subjects.event_queue(self.module_id, handler.method_name)
            subject = subjects.event(subjects.event_scope(self.tenant), handler.topic)
            routes.append(Route(subject, queue, on_event))
        routes.append(Route(self._control, "", self._on_control))
        self._routes = routes
        return routes

    async def begin(self) -> None:
        """Once the :meth:`routes` are subscribed: answer as a micro service, announce, heartbeat."""
        nc = self._nc
        if nc is None:
            raise RuntimeError("attach the module to a connection first.")
        self._micro = MicroService(
            name=self.module_id,
            instance_id=self.instance_id,
            version=self.version,
            description=self.manifest.description,
            endpoints=[route.endpoint for route in self._routes if route.endpoint is not None],
        )
        await self._micro.start(nc)
        # Twice: nats-py writes flush()'s PING straight to the socket, ahead of SUBs still in its
        # buffer, so one PONG does not prove the server has them and a call sent at once could
        # find "no responders". The second PING leaves after the SUBs the first wait flushed.
        await nc.flush()
        await nc.flush()
        self._background = [asyncio.create_task(self._heartbeat(nc), name=f"{self.module_id}-heartbeat")]
        if self.capabilities:  # a module that only listens to events has nothing to register
            self._background.append(asyncio.create_task(self._announce(nc), name=f"{self.module_id}-announce"))

    async def stop(self, grace: float = 10.0) -> None:
        """Leave: stop taking calls, say so, let calls in progress finish (up to ``grace``), cancel the rest."""
        if self._nc is None:
            return
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()
        if self._micro is not None:
            await self._micro.stop()
            self._micro = None
        # The loops also check this flag: on Python 3.11 a cancellation that lands just as a
        # request's answer arrives can be swallowed by asyncio.wait_for, and the loop would go on.
        # From now on the heartbeats say "leaving": callers of the calls still running must not
        # take this instance for dead while it finishes them.
        self._stopping = True
        heartbeat, others = self._background[:1], self._background[1:]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._nc.is_connected:
            leave = presence.Leave(module_id=self.module_id, instance_id=self.instance_id)
            await self._nc.publish(subjects.leave(self.module_id), presence.encode(leave))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        # Past the grace period, calls still running are cut short: streamed ones still record
        # their end (MODULE_UNAVAILABLE, with compute time) while the connection is open. Not
        # CANCELLED: no caller asked to stop, so none is billed for the work.
        self._cutting_short = True
        late = list(self._tasks)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for task in heartbeat:
            task.cancel()
        await asyncio.gather(*heartbeat, return_exceptions=True)
        self._background = []
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
        subject = subjects.announce(self.module_id)
        attempts = 0
        while not self._stopping:
            attempts += 1
            try:
                answer = await nc.request(subject, data, timeout=5.0)
            except ConnectionClosedError:
                return
            except (NoRespondersError, TimeoutError):
                # Python 3.11's wait_for (inside nats-py's request) drops a cancel that races with
                # the answer: honour it here, or stop() would wait for this task forever.
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    return
                # At start-up the hub may simply not be up yet: only persistence is worth a warning.
                level = logging.WARNING if attempts >= 3 else logging.DEBUG
                log.log(level, "no hub answered the announcement of %s; retrying", self.module_id)
            else:
                if answer.data == b"ok":
                    log.info("the hub registered %s: %s", self.module_id, ", ".join(sorted(self.capabilities)))
                    return
                log.error(
                    "the hub refused the manifest of %s: %s", self.module_id, answer.data.decode(errors="replace")
                )
                return
            # Start quickly (the hub may be starting alongside us), then back off.
            await asyncio.sleep(min(self.config.announce_retry, 0.1 * 2**attempts))

    async def _heartbeat(self, nc: NATS) -> None:
        subject = subjects.heartbeat(self.module_id)
        actions = tuple(sorted(self.capabilities))
        while True:  # until stop() cancels it, once the calls in progress are done
            beat = presence.Heartbeat(
                module_id=self.module_id,
                instance_id=self.instance_id,
                capabilities=actions,
                interval=self.config.heartbeat_interval,
                in_flight=len(self._tasks),
                leaving=self._stopping,
            )
            try:
                await nc.publish(subject, presence.encode(beat))
            except ConnectionClosedError:
                return  # the connection's owner closed it; nothing is left to announce on
            await asyncio.sleep(self.config.heartbeat_interval)

    async def _serve(self, definition: CapabilityDefinition, msg: Msg, endpoint: Endpoint, received_ns: int) -> None:
        nc = self._nc
        if nc is None:
            return
        try:
            request = decode(msg.data)
        except DecodeError:
            log.warning("dropped an unreadable call on %s", msg.subject)
            endpoint.record(time.perf_counter_ns() - received_ns, "dropped an unreadable call")
            return
        # When the call arrived, on the monotonic clock: its deadline counts from there.
        now = time.monotonic()
        headers = msg.headers
        deadline = deadlines.received(request, headers, now - (time.perf_counter_ns() - received_ns) / 1e9)
        if deadline is not None and now > deadline:
            # The caller stopped waiting: running the work now would only waste it.
            log.info("dropped expired call %s of %s", request.correlation_id, request.action)
            endpoint.record(time.perf_counter_ns() - received_ns, "dropped a call whose ttl had expired")
            return
        inbox = headers.get(DAI_STREAM) if headers else None
        if inbox:
            await self._serve_stream(definition, request, msg, inbox, deadline)
            endpoint.record(time.perf_counter_ns() - received_ns, None)
            return
        # Costs one timer per call whose caller asks; only a call still held after ACCEPT_AFTER says ACCEPTED.
        reply = msg.reply
        accepting = (
            asyncio.get_running_loop().call_later(presence.ACCEPT_AFTER, self._accept, nc, request, reply)
            if reply and MCP_ACCEPT_HELD in request.headers
            else None
        )
        try:
            if not (self.scheduler.try_acquire() or await self.scheduler.acquire(request.priority, deadline)):
                log.info(
                    "dropped call %s of %s: its ttl passed while it waited", request.correlation_id, request.action
                )
                endpoint.record(time.perf_counter_ns() - received_ns, "dropped a call whose ttl passed while it waited")
                return
            try:
                if tracing.tracing_enabled():
                    with tracing.tracer.start_as_current_span(
                        f"module {definition.action}", context=tracing.extract(headers)
                    ):
                        answer = await self._answer(definition, request)
                        # The answer names the span that made it: the call's usage continues from there.
                        tracing.inject(answer.headers)
                else:
                    answer = await self._answer(definition, request)
            finally:
                self.scheduler.release()
        finally:
            if accepting is not None:
                accepting.cancel()
        data = answer.SerializeToString()
        # The record goes out before the reply, on the same connection: by the time the
        # caller holds the answer, the log holds it too, and the call's usage can always be
        # re-derived from the log (projections/recovery.py).
        await nc.publish(subjects.record_response(request.context.tenant_id, request.action), data)
        if reply:
            await nc.publish(reply, data)
        failed = answer.type == ERROR
        endpoint.record(
            time.perf_counter_ns() - received_ns, f"{answer.error.code}: {answer.error.message}" if failed else None
        )

    def _accept(self, nc: NATS, request: MCPMessage, reply: str) -> None:
        """Tell the caller of a plain call that this instance holds it (its ttl may be long)."""
        accepted = streaming.accepted(request, self._control, source_module_id=self.module_id)
        self._spawn(_publish(nc, reply, accepted.SerializeToString()))

    async def _answer(self, definition: CapabilityDefinition, request: MCPMessage) -> MCPMessage:
        """Run the handler for a caller waiting for one answer: a streaming one gives its last data."""
        invocation = Invocation(self.module_id, definition, request)
        call, answer = invocation.start(getattr(self, definition.method_name))
        if answer is None:
            started = time.perf_counter()
            with serving(request.context.tenant_id):
                answer = await invocation.answer(last_data(call) if definition.streaming else call)
            answer.headers[MCP_COMPUTE_MS] = f"{elapsed_ms(started):.3f}"
        # The input's size travels with the answer, for metering.
        answer.headers[MCP_BYTES_IN] = str(invocation.input_bytes)
        return answer

    async def _serve_stream(
        self, definition: CapabilityDefinition, request: MCPMessage, msg: Msg, inbox: str, deadline: float | None
    ) -> None:
        """Acknowledge a streamed call at once, then run it when a slot is free, answering to ``inbox``."""
        nc = self._nc
        if nc is None:
            return
        try:
            window = min(max(int((msg.headers or {}).get(DAI_WINDOW, "")), 1), streaming.MAX_WINDOW)
        except ValueError:
            window = streaming.DEFAULT_WINDOW
        sender = ChunkSender(
            nc,
            request,
            inbox,
            window,
            source_module_id=self.module_id,
            credit_timeout=float(request.ttl or DEFAULT_TTL_SECONDS),
        )
        # Always a task: _spawn started this coroutine as one, and a CANCEL cancels exactly it.
        task = cast("asyncio.Task[None]", asyncio.current_task())
        self._streams[request.correlation_id] = _Streamed(task, sender, request.context.tenant_id)
        invocation = Invocation(self.module_id, definition, request)
        started: float | None = None  # when the handler got its slot; compute time counts from there
        try:
            if msg.reply:
                accepted = streaming.accepted(request, self._control, source_module_id=self.module_id)
                await nc.publish(msg.reply, accepted.SerializeToString())
            if not (self.scheduler.try_acquire() or await self.scheduler.acquire(request.priority, deadline)):
                log.info(
                    "dropped streamed call %s of %s: its ttl passed while it waited for a slot",
                    request.correlation_id,
                    request.action,
                )
                await sender.end(invocation.error(ErrorCode.TIMEOUT, "the ttl passed before a slot was free"), 0.0)
                return
            try:
                started = time.perf_counter()
                if tracing.tracing_enabled():
                    with tracing.tracer.start_as_current_span(
                        f"module stream {definition.action}", context=tracing.extract(msg.headers)
                    ):
                        await self._stream(invocation, sender, started)
                else:
                    await self._stream(invocation, sender, started)
            finally:
                self.scheduler.release()
        except asyncio.CancelledError:
            # The caller cancelled (or hung up), or this module is stopping: record how long the
            # handler ran until then.
            compute_ms = 0.0 if started is None else elapsed_ms(started)
            if self._cutting_short:
                end = invocation.error(ErrorCode.MODULE_UNAVAILABLE, "the module stopped before the call finished")
            else:
                end = invocation.error(ErrorCode.CANCELLED, "the caller cancelled the call")
            await sender.end(end, compute_ms)
        finally:
            self._streams.pop(request.correlation_id, None)

    async def _stream(self, invocation: Invocation, sender: ChunkSender, started: float) -> None:
        call, error = invocation.start(getattr(self, invocation.definition.method_name))
        if error is not None:
            await sender.end(error, elapsed_ms(started))
            return
        with serving(invocation.request.context.tenant_id):
            if invocation.definition.streaming:
                await stream_answers(invocation, call, sender, started)
            else:
                await sender.end(await invocation.answer(call), elapsed_ms(started))

    async def _on_control(self, msg: Msg) -> None:
        """CANCEL or credit for a streamed call of this instance."""
        try:
            message = decode(msg.data)
        except DecodeError:
            log.warning("ignored an unreadable control message")
            return
        streamed = self._streams.get(message.correlation_id)
        if streamed is None or streamed.tenant_id != message.context.tenant_id:
            return  # finished already, or not ours to touch
        if message.type == STREAM_ACK:
            streamed.sender.grant(message.sequence)
        elif message.type == CANCEL and not streamed.sender.ended:
            streamed.task.cancel()

    async def _deliver(self, handler: EventHandlerDefinition, msg: Msg) -> None:
        try:
            message = decode(msg.data)
            data = _decode_json(message.payload) if message.payload else None
        except (DecodeError, msgspec.DecodeError):
            log.warning("dropped an unreadable event on %s", msg.subject)
            return
        if message.context.tenant_id != msg.subject.split(".")[2]:
            # The subject is what the bus authorizes; a body claiming another tenant is forged.
            log.warning("dropped an event on %s that names tenant %r", msg.subject, message.context.tenant_id)
            return
        try:
            with serving(message.context.tenant_id):
                await getattr(self, handler.method_name)(Event.from_message(message, data))
        except Exception:
            # Nobody waits for an event's outcome, so the log is the only place a failure can go.
            log.exception("event handler %s of %s failed on event %s", handler.method_name, self.module_id, message.id)


async def _publish(nc: NATS, subject: str, data: bytes) -> None:
    try:
        await nc.publish(subject, data)
    except ConnectionClosedError:
        pass  # the connection's owner closed it; the caller will not hear from this instance again
