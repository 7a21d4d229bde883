"""What a module registration may say, checked before an event is appended, with the field named.

The rules themselves belong to the events (``contracts.identity_events``), which check them
again whenever one is built or decoded; here they become :class:`Invalid` errors that say
which field of the request broke which rule.
"""

from __future__ import annotations

from collections.abc import Iterable

from democratic_ai.contracts import subjects
from democratic_ai.contracts.identity_events import MAX_MODULE_CAPABILITIES, check_module_name

from .errors import Invalid

__all__ = ["check_capabilities", "check_module_id", "check_name"]


def check_module_id(module_id: object) -> str:
    """``module_id`` if it is one subject token; raises :class:`Invalid` naming the field."""
    if not isinstance(module_id, str):
        raise Invalid("module_id must be a string", field="module_id")
    try:
        return subjects.validate_token(module_id, "module_id")
    except subjects.InvalidSubjectToken as exc:
        raise Invalid(str(exc), field="module_id") from None


def check_name(name: object) -> str:
    """A display name, stripped: at most 200 characters, none of them control characters (NUL included)."""
    if not isinstance(name, str):
        raise Invalid("name must be a string", field="name")
    try:
        return check_module_name(name).strip()
    except ValueError as exc:
        raise Invalid(str(exc), field="name") from None


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
        if len(names) > MAX_MODULE_CAPABILITIES:
            raise Invalid(
                f"a module registers at most {MAX_MODULE_CAPABILITIES} capabilities",
                field="capabilities",
                max_items=MAX_MODULE_CAPABILITIES,
            )
    return tuple(sorted(names))
