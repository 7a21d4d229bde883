"""The one append to the event log: optimistic concurrency on a subject, deduplication by message id.

Every command that records an event — identity, billing, the call-limit leases of admission —
appends through :func:`append`. With ``expected`` the server stores the message only if the last
message on its subject has that stream sequence (``Nats-Expected-Last-Subject-Sequence``; 0: the
subject is empty), so of two writers that decided on the same state only one succeeds; the other
gets :class:`AppendConflict` and decides again (or maps it to its own error: identity and billing
answer 409, admission catches up with the winner and retries, bootstrap treats "already there"
as done).

With ``msg_id`` (``Nats-Msg-Id``) a retried append within the stream's duplicate window is
dropped by the server, which answers with the sequence of the message already stored — so the
retry returns the same sequence as the first append (the ack's ``duplicate`` flag is not passed
on: no caller needs to tell them apart). A retry that repeats ``expected`` as well is checked
against the subject first: once the first append landed, it raises :class:`AppendConflict`.

Errors::

    nats.js.errors.APIError
     └── BadRequestError
          └── AppendConflict       the subject moved past ``expected`` (JetStream err_code 10071, or 10164 in a cluster)

:class:`AppendConflict` is a :class:`~nats.js.errors.BadRequestError`, so code that handled the
server's refusal as a bad request before still does. Every other error of ``js.publish`` (other
refusals, timeouts, no stream) passes through unchanged.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from .headers import NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MSG_ID
from .streams import WRONG_LAST_SEQUENCE

__all__ = ["AppendConflict", "append"]


class AppendConflict(BadRequestError):
    """The subject's last sequence was not the expected one: another writer appended first."""


async def append(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    *,
    expected: int | None = None,
    msg_id: str | None = None,
    timeout: float | None = None,
) -> int:
    """Append ``data`` to ``subject``; return its stream sequence.

    ``expected``: the subject's last sequence this append was decided on (0 for an empty
    subject), else no check. ``msg_id``: the message id a retry repeats, so the log keeps one.
    ``timeout``: seconds to wait for the server's ack (the JetStream context's default if None).
    Raises :class:`AppendConflict` when the subject has moved past ``expected``.
    """
    headers: dict[str, str] = {}
    if expected is not None:
        headers[NATS_EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)
    if msg_id is not None:
        headers[NATS_MSG_ID] = msg_id
    try:
        ack = await js.publish(subject, data, timeout=timeout, headers=headers or None)
    except BadRequestError as exc:
        if exc.err_code in WRONG_LAST_SEQUENCE:
            raise AppendConflict(
                code=exc.code, description=exc.description, err_code=exc.err_code, stream=exc.stream, seq=exc.seq
            ) from None
        raise
    return ack.seq
