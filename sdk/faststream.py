"""Serve a module's capabilities from a FastStream app: ``serve(app, module)``.

A module author who already runs a FastStream app (a ``NatsBroker`` in a ``FastStream``) keeps
it, and the same app serves the module too:

    bus = BusOptions.from_env()  # NATS_URL and the module's credential, as `dai module run` reads them
    broker = NatsBroker(**broker_arguments(bus))
    app = FastStream(broker)
    serve(app, Shout(Shout.config_for_credential(bus.credential)))

Each route of the module (:meth:`~democratic_ai.sdk.Module.routes`: a capability's shared route in
its queue group and its direct route, the event topics, the instance's control subject) becomes a
subscriber of the broker, so it runs under the broker's connection and middlewares and shows in
the app's AsyncAPI document beside the author's own handlers. What a subscriber takes it hands, as
the NATS message it is, to the module — the same code that serves ``dai module run``'s calls: the
input and output schemas, the MCP answer and its record, the metering headers (``compute_ms``,
``bytes_in``), ttl, priority and concurrency, streaming with its credit window, CANCEL. The app's
hooks tie the module's life to the app's: it attaches to the broker's connection before the
subscribers start, announces its manifest and heartbeats once they have, and on shutdown stops
taking calls, leaves, and lets the calls in progress finish before the broker drains.

The subscribers never answer themselves (``no_reply``): the module's answer is a protobuf MCP
message that it publishes — record first, then reply — and a streamed call's answers go to the
caller's inbox. So a FastStream handler's return value, response publishers and ``@publisher``
decorators do not apply to them, and FastStream's decoding is never asked for (the body stays
bytes). A subscriber hands each message on and returns at once: calls run concurrently under the
module's own scheduler (``ModuleConfig.max_concurrency``, priority aging), which is why a broker
middleware sees a call arrive but not how long it ran — the module's metering says that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypedDict

from faststream import FastStream
from faststream.nats import NatsBroker, NatsMessage, NatsSecurity, NatsToken, NatsUserPassword
from faststream.nats.subscriber.usecases import CoreSubscriber
from nats.aio.msg import Msg

from democratic_ai.contracts import subjects
from democratic_ai.contracts.bus import BusOptions, role_of

from .credentials import parse_module_credential
from .module import Module, Route

__all__ = ["BrokerArguments", "FastStreamModule", "broker_arguments", "serve"]

_DEFAULT_INBOX = "_INBOX"  # nats-py's, for a connection under a platform role's credential


class BrokerArguments(TypedDict):
    """The arguments of ``NatsBroker`` that put it on the platform's bus: ``NatsBroker(**arguments)``."""

    servers: list[str]
    security: NatsSecurity
    inbox_prefix: str
    name: str  # the connection's name, as the server's monitoring shows it
    max_reconnect_attempts: int  # -1: never give up on the bus, as `dai module run` never does


def broker_arguments(bus: BusOptions | None = None) -> BrokerArguments:
    """Where the bus is and the credential to present, for a ``NatsBroker``.

    ``bus`` defaults to :meth:`BusOptions.from_env` (``NATS_URL``, ``DAI_BUS_CREDENTIAL`` or
    ``DAI_BUS_CREDENTIAL_FILE``, ``NATS_CA_FILE``). A module credential is presented as a token,
    which the bus hands to the platform's authorization service (the auth callout), and its
    connection takes the only inbox prefix the bus lets a module subscribe to; a platform role's
    credential (say, the operator's, in development) is presented as its user and password.
    """
    bus = bus or BusOptions.from_env()
    tls = bus.connect_kwargs().get("tls")
    role = role_of(bus.credential)
    if role is not None:
        security: NatsSecurity = NatsUserPassword(role, bus.credential, ssl_context=tls)
        inbox, name = _DEFAULT_INBOX, f"dai-faststream-{role}"
    else:
        module_id = parse_module_credential(bus.credential).module_id
        security = NatsToken(bus.credential, ssl_context=tls)
        inbox, name = subjects.module_inbox(module_id), f"dai-module-{module_id}"
    return {
        "servers": bus.servers,
        "security": security,
        "inbox_prefix": inbox,
        "name": name,
        "max_reconnect_attempts": -1,
    }


class FastStreamModule:
    """A module whose routes are subscribers of a FastStream ``NatsBroker``.

    Constructing it declares the subscribers on ``broker``; they start and stop with the broker.
    :meth:`attach` (before the broker starts), :meth:`begin` (after) and :meth:`stop` (before it
    stops) are the module's side of the life cycle: :func:`serve` makes them hooks of a FastStream
    app, and a host without one (FastStream's FastAPI integration, a test) calls them itself.
    """

    def __init__(self, broker: NatsBroker, module: Module) -> None:
        self.broker = broker
        self.module = module
        self.subscribers: list[CoreSubscriber] = [self._declare(route) for route in module.routes()]

    def _declare(self, route: Route) -> CoreSubscriber:
        if route.endpoint is not None:
            name, description = route.endpoint.name, route.endpoint.metadata.get("description") or None
        elif subjects.is_control(route.subject):
            name, description = "control", "CANCEL and credit of this instance's streamed calls"
        else:
            name, description = "events", f"events for {self.module.module_id}'s handlers"
        subscriber = self.broker.subscriber(
            route.subject,
            queue=route.queue,
            no_reply=True,
            title=f"{self.module.module_id}:{name}",
            description=description,
        )
        subscriber(_handing_to(self.broker, route.deliver, name))
        return subscriber

    async def attach(self) -> None:
        """Connect the broker (it would on start) and give the module its connection: no call finds it unready."""
        self.module.attach(await self.broker.connect())

    async def begin(self) -> None:
        """Once the broker's subscribers are live: the module's micro service, announcement and heartbeats."""
        await self.module.begin()

    async def stop(self, grace: float = 10.0) -> None:
        """Take no more calls, leave, and give the calls in progress up to ``grace`` seconds."""
        for subscriber in self.subscribers:
            await subscriber.stop()
        await self.module.stop(grace)


def _handing_to(
    broker: NatsBroker, deliver: Callable[[Msg], Awaitable[None]], name: str
) -> Callable[[], Awaitable[None]]:
    """The subscriber's handler: the raw NATS message to the module, which answers it itself.

    It takes no arguments, and reads the message from the broker's context: an argument injected
    with ``Context("message")`` (the annotation ``faststream.nats.annotations.NatsMessage``) would
    be resolved by FastDepends in a worker thread on every call, which cut the calls a module
    serves to about a tenth (``tests/bench/bench_faststream.py``).
    """

    async def hand_on() -> None:
        message: NatsMessage = broker.context.get_local("message")
        await deliver(message.raw_message)

    hand_on.__name__ = hand_on.__qualname__ = name  # how FastStream's logs and AsyncAPI document name it
    return hand_on


def serve(app: FastStream, module: Module, broker: NatsBroker | None = None, grace: float = 10.0) -> FastStreamModule:
    """Serve ``module`` from ``app``: on ``broker`` (default: the app's first), with the app's life cycle.

    ``grace`` is how long, on shutdown, the calls in progress may take to finish.
    """
    if broker is None:
        if not isinstance(app.broker, NatsBroker):
            raise TypeError(
                "serve() needs a FastStream app on a NatsBroker (or broker=, one of the app's NatsBrokers)."
            )
        broker = app.broker
    served = FastStreamModule(broker, module)

    async def stop() -> None:
        await served.stop(grace)

    app.on_startup(served.attach)
    app.after_startup(served.begin)
    app.on_shutdown(stop)
    return served
