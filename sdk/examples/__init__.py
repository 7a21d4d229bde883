"""Example modules that ship with the platform and start with ``dai up``."""

from __future__ import annotations

from .text_tools import TextTools

__all__ = ["TextTools"]
