"""The hub process: it accepts module announcements and answers who is online.

It is not on the call path — calls go straight from the router to the modules over NATS
queue groups. The hub owns what surrounds them: the registry (it is the REGISTRY stream's
writer) and presence (``hub.modules`` lists live instances). A module announces itself on
``hub.announce.<module>``; a manifest for any other module id is refused.
"""

from __future__ import annotations

import logging

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from democratic_ai.contracts import subjects
from democratic_ai.contracts.registry_events import ModuleManifest

from .presence import PresenceIndex
from .registry import InvalidManifest, Registrar, RegistryIndex

__all__ = ["Hub"]

log = logging.getLogger(__name__)

_decode_manifest = msgspec.json.Decoder(ModuleManifest).decode
ANNOUNCEMENT_RESULTS = ("registered", "unchanged", "refused")


class Hub:
    """The registry's writer and the answer to "who is online".

    It validates each announced manifest (a module may announce only itself), appends it to the
    REGISTRY stream, keeps the registry and presence indexes, and answers ``hub.modules``. It
    holds no call state: the router and the modules carry calls without it, so a hub restart
    stops no call.
    """

    def __init__(self) -> None:
        self.registry = RegistryIndex()
        self.presence = PresenceIndex()
        self._registrar: Registrar | None = None
        self._subscriptions: list[Subscription] = []
        # Announcements handled since start, by result: registered (a new manifest appended),
        # unchanged (the manifest the registry holds already), refused (invalid). See :mod:`.metrics`.
        self.announcements = dict.fromkeys(ANNOUNCEMENT_RESULTS, 0)

    async def start(self, nc: NATS) -> None:
        js = nc.jetstream()
        await self.registry.start(js)
        await self.presence.start(nc)
        self._registrar = Registrar(js, self.registry)
        self._subscriptions = [
            await nc.subscribe(subjects.announce("*"), queue="hub", cb=self._on_announce),
            await nc.subscribe(subjects.MODULES, queue="hub", cb=self._on_modules),
        ]
        await nc.flush()

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        await self.presence.stop()
        await self.registry.stop()

    async def _on_announce(self, msg: Msg) -> None:
        announcer = msg.subject.rsplit(".", 1)[-1]
        try:
            manifest = _decode_manifest(msg.data)
            if manifest.module_id != announcer:
                # The bus lets a module's connection publish on its own announce subject only, so
                # the subject, not the body, says who is speaking.
                raise InvalidManifest(
                    f"the manifest is for module {manifest.module_id!r} but was announced on {msg.subject!r};"
                    f" a module announces itself on {subjects.announce(manifest.module_id)!r}"
                )
            appended = await self._registrar.announce(manifest) if self._registrar else False
        except (msgspec.DecodeError, InvalidManifest) as exc:
            log.warning("refused a module announcement: %s", exc)
            self.announcements["refused"] += 1
            await msg.respond(f"refused: {exc}".encode())
            return
        self.announcements["registered" if appended else "unchanged"] += 1
        if appended:
            log.info("registered %s %s", manifest.module_id, manifest.version)
        await msg.respond(b"ok")

    async def _on_modules(self, msg: Msg) -> None:
        instances = self.presence.instances()
        await msg.respond(msgspec.json.encode(sorted(instances, key=lambda beat: beat.instance_id)))
