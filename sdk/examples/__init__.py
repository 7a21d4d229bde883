"""Example modules that ship with the platform and start with ``dai up``."""

from __future__ import annotations

from .image_tools import ImageTools
from .text_tools import TextTools

__all__ = ["ImageTools", "TextTools"]
