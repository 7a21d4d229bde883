"""The example module ``text-tools``: extractive summaries (also streamed) and text statistics.

Run it on its own with ``dai module run democratic_ai.sdk.examples.text_tools:TextTools``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from democratic_ai.sdk import Chunk, Module, capability

from .textkit import analyze, join_sentences, summarize, summary_sentences

__all__ = ["TextTools"]

# Scoring sentences is CPU work: texts above this size go to a worker thread so that one long
# document does not hold up every other call on the event loop.
_INLINE_LIMIT = 20_000

_SUMMARIZE_INPUT = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": 200_000},
        "max_length": {"type": "integer", "minimum": 10, "maximum": 5000, "default": 100},
    },
    "required": ["text"],
    "additionalProperties": False,
}


class TextTools(Module):
    """Extractive summaries and text statistics, in pure Python."""

    module_id = "text-tools"
    name = "Text tools"
    version = "1.0.0"

    @capability(
        "text.summarize",
        input_schema=_SUMMARIZE_INPUT,
        output_schema={
            "type": "object",
            "properties": {
                "summary": {"type": "string"},
                "compression_ratio": {"type": "number", "minimum": 0},
            },
            "required": ["summary", "compression_ratio"],
        },
        description="Summarise a text by picking its most representative sentences, within max_length characters.",
    )
    async def summarize(self, text: str, max_length: int = 100) -> dict[str, Any]:
        if len(text) > _INLINE_LIMIT:
            result = await asyncio.to_thread(summarize, text, max_length)
        else:
            result = summarize(text, max_length)
        return {"summary": result.summary, "compression_ratio": result.compression_ratio}

    @capability(
        "text.summarize.stream",
        input_schema=_SUMMARIZE_INPUT,
        output_schema={
            "type": "object",
            "properties": {
                "sentence": {"type": "string"},
                "summary": {"type": "string", "description": "the summary so far"},
            },
            "required": ["sentence", "summary"],
        },
        description="Summarise like text.summarize, streaming the summary one sentence at a time with progress.",
    )
    async def summarize_stream(self, text: str, max_length: int = 100) -> AsyncIterator[Chunk]:
        if len(text) > _INLINE_LIMIT:
            sentences = await asyncio.to_thread(summary_sentences, text, max_length)
        else:
            sentences = summary_sentences(text, max_length)
        for count, sentence in enumerate(sentences, start=1):
            yield Chunk(
                {"sentence": sentence, "summary": join_sentences(sentences[:count])},
                progress=count / len(sentences),
                message=f"sentence {count} of {len(sentences)}",
            )

    @capability(
        "text.analyze",
        input_schema={
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1, "maxLength": 200_000},
                "top_k": {"type": "integer", "minimum": 0, "maximum": 50, "default": 5},
            },
            "required": ["text"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "language": {"type": "string"},
                "word_count": {"type": "integer", "minimum": 0},
                "sentence_count": {"type": "integer", "minimum": 0},
                "character_count": {"type": "integer", "minimum": 0},
                "keywords": {"type": "array", "items": {"type": "string"}},
                "average_sentence_length": {"type": "number", "minimum": 0},
            },
            "required": ["language", "word_count", "sentence_count", "character_count", "keywords"],
        },
        description="Guess the language and count words and sentences; list the top keywords.",
    )
    async def analyze(self, text: str, top_k: int = 5) -> dict[str, Any]:
        if len(text) > _INLINE_LIMIT:
            result = await asyncio.to_thread(analyze, text, top_k)
        else:
            result = analyze(text, top_k)
        return {
            "language": result.language,
            "word_count": result.word_count,
            "sentence_count": result.sentence_count,
            "character_count": result.character_count,
            "keywords": list(result.keywords),
            "average_sentence_length": result.average_sentence_length,
        }
