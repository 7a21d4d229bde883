"""What a module registration may say: checked before an event is appended, and again when folded.

The capabilities end up in the bus permissions of the module's connection, so a name that is
not a plain capability (a wildcard, an empty token) must never get that far — not through the
API, and not through an event someone managed to append by other means.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from democratic_ai.contracts import subjects

from .errors import Invalid

__all__ = ["MAX_CAPABILITIES", "MAX_NAME_LENGTH", "check_capabilities", "check_module_id", "check_name"]

MAX_NAME_LENGTH = 200
MAX_CAPABILITIES = 64


def check_module_id(module_id: object) -> str:
    """``module_id`` if it is one subject token; raises :class:`Invalid` naming the field."""
    if not isinstance(module_id, str):
        raise Invalid("module_id must be a string", field="module_id")
    try:
        return subjects.validate_token(module_id, "module_id")
    except subjects.InvalidSubjectToken as exc:
        raise Invalid(str(exc), field="module_id") from None


def check_name(name: object) -> str:
    """A display name: at most 200 characters, none of them control characters (NUL included)."""
    if not isinstance(name, str):
        raise Invalid("name must be a string", field="name")
    if len(name) > MAX_NAME_LENGTH:
        raise Invalid(f"name is longer than {MAX_NAME_LENGTH} characters", field="name", max_length=MAX_NAME_LENGTH)
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise Invalid("name must not contain control characters", field="name")
    return name.strip()


def check_capabilities(capabilities: Iterable[object]) -> tuple[str, ...]:
    """Sorted, distinct capability names, at most 64; raises :class:`Invalid` naming the bad one."""
    if isinstance(capabilities, str):
        raise Invalid("capabilities must be a list of capability names", field="capabilities")
    names: set[str] = set()
    for position, capability in enumerate(capabilities):
        if not isinstance(capability, str):
            raise Invalid("a capability must be a string", field=f"capabilities[{position}]")
        try:
            names.add(subjects.validate_capability(capability))
        except subjects.InvalidSubjectToken as exc:
            raise Invalid(str(exc), field=f"capabilities[{position}]") from None
        if len(names) > MAX_CAPABILITIES:
            raise Invalid(f"a module registers at most {MAX_CAPABILITIES} capabilities", field="capabilities",
                          max_items=MAX_CAPABILITIES)
    return tuple(sorted(names))
