"""The envelope of every event: ``Meta``'s bytes on the wire, and the upcast registry's rules."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from democratic_ai.contracts import billing_events, identity_events
from democratic_ai.contracts.envelope import Meta, Upcasters


def test_meta_on_the_wire_is_as_it_always_was() -> None:
    """The bytes an IDENTITY writer appended before ``Meta`` moved decode to the same event and
    encode back to the same bytes; a ``meta`` without its defaults reads them as defaults."""
    written = (
        b'{"type":"tenant.created","name":"Acme","v":1,"tenant_id":"acme","meta":{"at":"2025-03-04T05:06:07Z",'
        b'"actor":"user:u1","ip":"10.0.0.1","user_agent":"curl/8"}}'
    )
    event = identity_events.decode_event(written)
    assert event == identity_events.TenantCreated(
        tenant_id="acme",
        name="Acme",
        meta=Meta(at=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC), actor="user:u1", ip="10.0.0.1", user_agent="curl/8"),
    )
    assert identity_events.encode_event(event) == written
    bare = identity_events.decode_event(
        b'{"type":"tenant.created","tenant_id":"acme","meta":{"at":"2025-03-04T05:06:07Z"},"name":"A"}'
    )
    assert bare.meta == Meta(at=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC), actor="system", ip="", user_agent="")
    # Billing events hold the very same envelope.
    cancelled = billing_events.decode_event(
        b'{"type":"subscription.cancelled","v":1,"tenant_id":"acme","meta":{"at":"2025-03-04T05:06:07Z"}}'
    )
    assert type(cancelled.meta) is Meta and cancelled.meta == bare.meta


def test_meta_keeps_its_limits() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"meta\.ip"):
        identity_events.decode_event(
            msgspec.json.encode(
                {
                    "type": "tenant.created",
                    "tenant_id": "acme",
                    "name": "A",
                    "meta": {"at": "2025-03-04T05:06:07Z", "ip": "x" * 10_000},
                }
            )
        )


class _Event(msgspec.Struct, frozen=True):
    v: int
    trail: tuple[int, ...] = ()


def _step(event: _Event) -> _Event:
    return msgspec.structs.replace(event, v=event.v + 1, trail=(*event.trail, event.v))


def test_upcasters_lift_one_version_at_a_time_to_the_current_one() -> None:
    upcast = Upcasters("TEST", 3, {1: _step, 2: _step})
    assert upcast(_Event(v=1)) == _Event(v=3, trail=(1, 2))
    assert upcast(_Event(v=2)) == _Event(v=3, trail=(2,))
    assert upcast(_Event(v=3)) == _Event(v=3)
    assert upcast(_Event(v=7)) == _Event(v=7)  # newer than this reader: read as it is
    for never in (0, -1):
        with pytest.raises(
            msgspec.ValidationError, match=rf"^TEST event version {never} does not exist \(current: 3\)$"
        ):
            upcast(_Event(v=never))
    assert Upcasters("FIRST", 1)(_Event(v=1)) == _Event(v=1)


@pytest.mark.parametrize(
    "steps", [{1: _step}, {2: _step}, {1: _step, 2: _step, 3: _step}, {0: _step, 1: _step, 2: _step}]
)
def test_upcasters_refuse_a_registry_with_a_gap_or_a_stray_step(steps: dict) -> None:
    with pytest.raises(ValueError, match="must lift each version from 1 to 2"):
        Upcasters("TEST", 3, steps)
