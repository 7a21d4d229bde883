"""Toolsets: the capabilities an API key may call.

A toolset is a list of entries, each a capability name (``text.summarize``) or a family of them
(``text.*``: every capability whose name starts with ``text.``). A key with a toolset may call
only what it allows, on every transport — the call gate checks it (services/gateway/gate.py) —
and sees only those capabilities when it lists them. An empty toolset limits nothing: keys
issued without one, access tokens, and every key issued before toolsets existed.
"""

from __future__ import annotations

from collections.abc import Iterable

from .subjects import InvalidSubjectToken, validate_capability

__all__ = ["MAX_TOOLSET_ENTRIES", "check_toolset", "outside_of", "toolset_allows"]

MAX_TOOLSET_ENTRIES = 256
_FAMILY = ".*"


def check_toolset(entries: Iterable[str]) -> tuple[str, ...]:
    """``entries`` sorted, without repeats, if each is a capability name or ``<prefix>.*`` and
    there are at most :data:`MAX_TOOLSET_ENTRIES`; else ``ValueError`` naming the first bad entry."""
    checked = set()
    for entry in entries:
        name = entry.removesuffix(_FAMILY)
        try:
            validate_capability(name)
        except InvalidSubjectToken as exc:
            raise ValueError(f"toolset entry {entry!r}: {exc} A family of capabilities is 'text.*'.") from None
        checked.add(entry)
    if len(checked) > MAX_TOOLSET_ENTRIES:
        raise ValueError(f"a toolset holds at most {MAX_TOOLSET_ENTRIES} entries")
    return tuple(sorted(checked))


def toolset_allows(toolset: tuple[str, ...], capability: str) -> bool:
    """Whether ``toolset`` lets its holder call ``capability`` (an empty one allows everything)."""
    if not toolset or capability in toolset:
        return True
    return any(entry.endswith(_FAMILY) and capability.startswith(entry[:-1]) for entry in toolset)


def outside_of(toolset: tuple[str, ...], outer: tuple[str, ...]) -> list[str]:
    """The entries of ``toolset`` that ``outer`` does not allow: a key may not hand on more than
    it may call itself (a family only under a family at least as wide)."""
    if not outer:
        return []
    outside = []
    for entry in toolset:
        if entry.endswith(_FAMILY):
            prefix = entry[:-1]
            allowed = any(o.endswith(_FAMILY) and prefix.startswith(o[:-1]) for o in outer)
        else:
            allowed = toolset_allows(outer, entry)
        if not allowed:
            outside.append(entry)
    return outside
