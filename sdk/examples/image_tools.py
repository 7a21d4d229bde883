"""The example module ``image-tools``: ``image.upscale`` streams its progress, then the upscaled PNG.

As the seed's ``upscale_stream``: a base64 image in, a scale of 2 to 4, progress while it works,
and the result as a base64 PNG in the last chunk. The upscaling is Pillow's Lanczos filter in
passes of at most 2x each (4x is 2x twice), which keeps each pass's kernel small and gives the
stream real steps to report; every pass runs in a worker thread so the event loop keeps serving
other calls — and so a cancel takes effect at the next step.

Run it on its own with ``dai module run democratic_ai.sdk.examples.image_tools:ImageTools``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from collections.abc import AsyncIterator

from PIL import Image, UnidentifiedImageError

from democratic_ai.sdk import CallError, Chunk, Module, capability

__all__ = ["ImageTools", "upscale_passes"]

# 2048 x 2048: the result of a larger image would not fit the bus's 8 MB messages as base64 PNG.
MAX_OUTPUT_PIXELS = 2048 * 2048
MAX_RESULT_BYTES = 6 * 1024 * 1024  # base64 text of the PNG; leaves room under the 8 MB limit
MAX_IMAGE_CHARACTERS = 4_000_000  # the input's base64 image (about 3 MB of PNG)
# The largest input the schema allows: the image, and room for the rest of the JSON object.
MAX_INPUT_BYTES = MAX_IMAGE_CHARACTERS + 1024
_MODES = ("RGB", "RGBA", "L", "LA")


def upscale_passes(scale: int) -> list[float]:
    """The factors of the passes that make ``scale``: 2 → [2], 3 → [2, 1.5], 4 → [2, 2]."""
    factors: list[float] = []
    remaining = float(scale)
    while remaining > 1.0:
        factor = min(2.0, remaining)
        factors.append(factor)
        remaining /= factor
    return factors


class ImageTools(Module):
    """Image upscaling with progress, in pure Pillow."""

    module_id = "image-tools"
    name = "Image tools"
    version = "1.0.0"

    @capability(
        "image.upscale",
        input_schema={
            "type": "object",
            "properties": {
                "image": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_IMAGE_CHARACTERS,
                    "contentEncoding": "base64",
                },
                "scale": {"type": "integer", "minimum": 2, "maximum": 4, "default": 2},
            },
            "required": ["image"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "image": {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png"},
                "width": {"type": "integer", "minimum": 1},
                "height": {"type": "integer", "minimum": 1},
            },
            "required": ["image", "width", "height"],
        },
        description="Upscale an image 2-4x (Lanczos), streaming progress and then the PNG as base64.",
        max_input_bytes=MAX_INPUT_BYTES,
    )
    async def upscale(self, image: str, scale: int = 2) -> AsyncIterator[Chunk]:
        picture = await asyncio.to_thread(_open, image, scale)
        yield Chunk(progress=0.1, message=f"decoded a {picture.width}x{picture.height} image")
        target = (picture.width * scale, picture.height * scale)
        passes = upscale_passes(scale)
        for number, factor in enumerate(passes, start=1):
            last = number == len(passes)
            size = target if last else (round(picture.width * factor), round(picture.height * factor))
            picture = await asyncio.to_thread(picture.resize, size, Image.Resampling.LANCZOS)
            yield Chunk(
                progress=0.1 + 0.8 * number / len(passes),
                message=f"upscaling... pass {number} of {len(passes)}: {picture.width}x{picture.height}",
            )
        encoded = await asyncio.to_thread(_png_base64, picture)
        if len(encoded) > MAX_RESULT_BYTES:
            raise CallError(
                "PAYLOAD_TOO_LARGE",
                f"the upscaled PNG is {len(encoded)} bytes as base64; upscale a smaller image",
                {"max_bytes": MAX_RESULT_BYTES},
            )
        yield Chunk({"image": encoded, "width": picture.width, "height": picture.height}, progress=1.0, message="done")


def _open(encoded: str, scale: int) -> Image.Image:
    """Decode and check the input image; only its header is read before the size is known to fit."""
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise CallError(
            "VALIDATION_FAILED", "input $.image: not valid base64", {"where": "input", "path": "$.image"}
        ) from None
    try:
        picture: Image.Image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise CallError(
            "VALIDATION_FAILED", "input $.image: not an image Pillow can read", {"where": "input", "path": "$.image"}
        ) from None
    if picture.width * picture.height * scale * scale > MAX_OUTPUT_PIXELS:
        raise CallError(
            "VALIDATION_FAILED",
            f"input $.image: {picture.width}x{picture.height} upscaled {scale}x exceeds {MAX_OUTPUT_PIXELS} pixels",
            {"where": "input", "path": "$.image", "max_output_pixels": MAX_OUTPUT_PIXELS},
        )
    # Palette and exotic modes do not resample well; work in a plain mode with or without alpha.
    if picture.mode not in _MODES:
        picture = picture.convert("RGBA" if "A" in picture.getbands() or "transparency" in picture.info else "RGB")
    picture.load()
    return picture


def _png_base64(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
