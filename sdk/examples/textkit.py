"""Small, dependency-free text algorithms behind the ``text.summarize`` and ``text.analyze``
example modules.

Everything here is plain standard-library Python: an extractive summarizer (word-frequency
sentence scoring) and a text analyzer (counts, keywords and a stopword-based language guess
for English, Japanese, German, French and Spanish). Results are deterministic.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

__all__ = ["Analysis", "Summary", "analyze", "join_sentences", "summarize", "summary_sentences"]

# --- character classes ----------------------------------------------------------------

_KANJI = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆"
_HIRAGANA = "\u3041-\u309f"
_KATAKANA = "\u30a0-\u30ff\uff66-\uff9f"  # includes the long-vowel mark ー and half-width kana
_JAPANESE = _KANJI + _HIRAGANA + _KATAKANA

# Japanese has no spaces, so a "word" is a run of one script (kanji / hiragana / katakana);
# any other script is a run of word characters, keeping inner apostrophes ("don't", "l'eau").
_TOKEN = re.compile(
    rf"[{_KANJI}]+|[{_HIRAGANA}]+|[{_KATAKANA}]+"
    rf"|[^\W{_JAPANESE}]+(?:['’][^\W{_JAPANESE}]+)*"
)
_KANA_CHAR = re.compile(rf"[{_HIRAGANA}{_KATAKANA}]")
_KANJI_CHAR = re.compile(rf"[{_KANJI}]")
_HIRAGANA_ONLY = re.compile(rf"[{_HIRAGANA}]+")

# A sentence ends at Latin punctuation followed by whitespace (or the end), at Japanese
# punctuation (no space follows it), or at a blank line (headings, list items).
_SENTENCE_END = re.compile(r"[.!?]+[\"'’”)\]]*(?=\s|$)|[。！？]+[」』）]*|\n\s*\n")
_CJK_CLOSERS = "。！？」』）"  # a sentence ending in one of these needs no space after it
_ABBREVIATIONS = frozenset("e.g i.e dr mr mrs ms prof sr jr st vs cf fig approx dept inc ltd co".split())

# --- stopwords ----------------------------------------------------------------------------

_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        """a about after all also am an and any are as at be because been before being but by
        can could did do does doing don't down during each few for from had has have having he
        her here hers him his how i i'm if in into is it it's its just me more most my no nor
        not now of off on once only or other our ours out over own same she should so some such
        than that the their them then there these they this those through to too under until up
        very was we were what when where which while who whom why will with would you
        your""".split()
    ),
    "de": frozenset(
        """aber als am an auch auf aus bei bin bis da das dass dem den der des die doch du durch
        ein eine einem einen einer es für hat haben ich ihr im in ist ja kann mit nach nicht noch
        nur oder sich sie sind so um und uns von vor war wie wir wird zu zum zur über""".split()
    ),
    "fr": frozenset(
        """à au aux avec c'est ce ces dans de des du elle en est et il ils je la le les leur lui
        mais me même mon ne nous on ou par pas plus pour qu'il que qui sa se ses son sont sur ta
        te tu un une vous était être""".split()
    ),
    "es": frozenset(
        """a al como con de del el ella en es esta está este fue ha la las le lo los más me mi muy
        no nos o para pero por que se ser si sin su sus también te tiene un una uno y ya
        yo""".split()
    ),
}
_LATIN_LANGUAGES = ("en", "de", "fr", "es")  # order breaks ties in the language guess

_LEAD_BONUS = 0.1  # opening sentences tend to state the topic
_ELLIPSIS = "…"


@dataclass(frozen=True, slots=True)
class Summary:
    """An extractive summary; ``compression_ratio`` is len(summary) / len(text)."""

    summary: str
    compression_ratio: float


@dataclass(frozen=True, slots=True)
class Analysis:
    """Basic statistics, keywords and a language guess for one text."""

    language: str
    word_count: int
    sentence_count: int
    character_count: int
    keywords: tuple[str, ...]
    average_sentence_length: float


# --- tokenizing ---------------------------------------------------------------------------


def _tokenize(text: str) -> list[str]:
    return [token.lower() for token in _TOKEN.findall(text)]


def _split_sentences(text: str) -> list[str]:
    """Split into sentences with whitespace collapsed; empty pieces are dropped."""
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if _ends_with_abbreviation(text[start : match.start()], match.group()):
            continue
        _append_sentence(sentences, text[start : match.end()])
        start = match.end()
    _append_sentence(sentences, text[start:])
    return sentences


def _ends_with_abbreviation(before: str, mark: str) -> bool:
    # "Dr. Smith" or "e.g. this" must not end a sentence; neither must an initial ("J. Smith").
    if mark != "." or not before.split():
        return False
    word = before.split()[-1].lstrip("(\"'“‘")
    return word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper())


def _append_sentence(sentences: list[str], chunk: str) -> None:
    sentence = " ".join(chunk.split())
    if sentence:
        sentences.append(sentence)


# --- language -----------------------------------------------------------------------------


def _guess_language(text: str, words: list[str]) -> str:
    letters = sum(ch.isalpha() for ch in text)
    if not letters:
        return "unknown"
    kana = len(_KANA_CHAR.findall(text))
    kanji = len(_KANJI_CHAR.findall(text))
    if (kana + kanji) / letters >= 0.3:
        # Kanji without any kana is more likely Chinese, which we do not claim to detect.
        return "ja" if kana else "unknown"
    hits = {lang: sum(word in _STOPWORDS[lang] for word in words) for lang in _LATIN_LANGUAGES}
    best = max(_LATIN_LANGUAGES, key=hits.__getitem__)
    # Require stopwords to be a noticeable share of the words, so code or lists of names
    # with a stray "in" are not called English.
    if hits[best] == 0 or hits[best] < 0.1 * len(words):
        return "unknown"
    return best


def _is_stopword(word: str, language: str) -> bool:
    if language == "ja":
        # Pure-hiragana runs are particles and inflections (は, に, ています): no content.
        return _HIRAGANA_ONLY.fullmatch(word) is not None
    return word in _STOPWORDS.get(language, _STOPWORDS["en"])


# --- summarize ----------------------------------------------------------------------------


def summarize(text: str, max_length: int = 100) -> Summary:
    """Extract the highest-scoring sentences, in original order, within ``max_length`` characters.

    Sentences are scored by the mean normalized frequency of their non-stopword words, with a
    small bonus for the first sentence. If the best sentence alone is longer than
    ``max_length`` it is cut at a word boundary and ends with "…". The summary never exceeds
    ``max_length`` characters.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    if not text.strip():
        return Summary(summary="", compression_ratio=0.0)
    summary = join_sentences(summary_sentences(text, max_length))
    return Summary(summary=summary, compression_ratio=round(len(summary) / len(text), 3))


def summary_sentences(text: str, max_length: int = 100) -> tuple[str, ...]:
    """The sentences :func:`summarize` joins, in original order: what its streaming form sends one by one."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    sentences = _split_sentences(text)
    if not sentences:
        return ()
    language = _guess_language(text, _tokenize(text))
    scores = _score_sentences(sentences, language)
    ranked = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    if len(sentences[ranked[0]]) > max_length:
        return (_truncate(sentences[ranked[0]], max_length),)
    return tuple(sentences[i] for i in _select(sentences, ranked, max_length))


def join_sentences(sentences: tuple[str, ...] | list[str]) -> str:
    """Join summary sentences: Japanese ones run on without a space, Latin ones need one."""
    parts: list[str] = []
    for sentence in sentences:
        if parts and parts[-1][-1] not in _CJK_CLOSERS:
            parts.append(" ")
        parts.append(sentence)
    return "".join(parts)


def _score_sentences(sentences: list[str], language: str) -> list[float]:
    content = [[w for w in _tokenize(s) if not _is_stopword(w, language)] for s in sentences]
    frequency = Counter(word for words in content for word in words)
    top = max(frequency.values(), default=1)
    scores = []
    for position, words in enumerate(content):
        # The mean, not the sum, so long sentences do not win merely by being long.
        score = sum(frequency[w] for w in words) / (top * len(words)) if words else 0.0
        scores.append(score + (_LEAD_BONUS if position == 0 else 0.0))
    return scores


def _select(sentences: list[str], ranked: list[int], max_length: int) -> list[int]:
    """Greedily take sentences in rank order while the joined summary still fits."""
    chosen: list[int] = []
    used = 0
    for index in ranked:
        if used + len(sentences[index]) > max_length:
            continue  # cannot fit even without a separator
        candidate = sorted([*chosen, index])
        joined = len(join_sentences([sentences[i] for i in candidate]))
        if joined <= max_length:
            chosen, used = candidate, joined
    return chosen


def _truncate(sentence: str, max_length: int) -> str:
    budget = max_length - len(_ELLIPSIS)
    head = sentence[:budget]
    # Back off to the last space unless the cut already falls on one; a head without spaces
    # (one long word, or Japanese) is cut mid-run since there is no better boundary.
    if not sentence[budget].isspace() and " " in head:
        head = head[: head.rfind(" ")]
    return head.rstrip(" ,;:-–—") + _ELLIPSIS


# --- analyze ------------------------------------------------------------------------------


def analyze(text: str, top_k: int = 5) -> Analysis:
    """Count words, sentences and characters, guess the language and pick ``top_k`` keywords.

    Keywords are the most frequent non-stopword words (lowercase, ties broken alphabetically)
    of at least three characters (two for Japanese, whose kanji compounds are short).
    """
    if top_k < 0:
        raise ValueError(f"top_k must not be negative, got {top_k}")
    words = _tokenize(text)
    sentence_count = len(_split_sentences(text))
    language = _guess_language(text, words)
    average = round(len(words) / sentence_count, 2) if sentence_count else 0.0
    return Analysis(
        language=language,
        word_count=len(words),
        sentence_count=sentence_count,
        character_count=len(text),
        keywords=_keywords(words, language, top_k),
        average_sentence_length=average,
    )


def _keywords(words: list[str], language: str, top_k: int) -> tuple[str, ...]:
    min_length = 2 if language == "ja" else 3
    counts = Counter(
        word for word in words if len(word) >= min_length and not word.isdigit() and not _is_stopword(word, language)
    )
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(word for word, _ in ranked[:top_k])
