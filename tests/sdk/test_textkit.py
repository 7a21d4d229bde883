"""Tests for the stdlib-only text algorithms behind text.summarize and text.analyze."""

from __future__ import annotations

import dataclasses

import pytest

from democratic_ai.sdk.examples.textkit import Analysis, Summary, analyze, summarize

ARTICLE = (
    "Solar panels convert sunlight into electricity. "
    "My neighbour owns a red bicycle. "
    "Modern solar panels convert more sunlight into electricity than older solar panels. "
    "Lunch was pasta today! "
    "Are solar panels worth the electricity they produce?"
)

SAMPLES = {
    "en": "The weather is nice today and we are going to the park with our friends.",
    "de": "Das Wetter ist heute schön und wir gehen mit unseren Freunden in den Park.",
    "fr": "Il fait beau aujourd'hui et nous allons au parc avec nos amis dans la ville.",
    "es": "El tiempo es bueno hoy y vamos al parque con nuestros amigos de la ciudad.",
    "ja": "今日は天気が良いので、友達と公園に行きます。とても楽しいです。",
}


def test_summary_never_exceeds_max_length() -> None:
    texts = [ARTICLE, SAMPLES["ja"] * 3, "Supercalifragilisticexpialidocious " * 5, "Hi."]
    for text in texts:
        for max_length in range(1, 400):
            result = summarize(text, max_length=max_length)
            assert len(result.summary) <= max_length, (text[:20], max_length, result.summary)
            assert result.summary, (text[:20], max_length)


def test_highest_scoring_sentence_is_picked() -> None:
    # Only the middle sentence repeats a word, so it outscores the first despite the lead bonus.
    text = "The meeting started late. Coffee drinkers love coffee. The printer broke again."
    assert summarize(text, max_length=30).summary == "Coffee drinkers love coffee."
    # With room for two, the runner-up (first sentence) joins, and original order is kept.
    assert summarize(text, max_length=60).summary == ("The meeting started late. Coffee drinkers love coffee.")


def test_off_topic_sentences_are_left_out_and_order_is_preserved() -> None:
    result = summarize(ARTICLE, max_length=200)
    assert "bicycle" not in result.summary
    assert "pasta" not in result.summary
    positions = [ARTICLE.index(s) for s in ("Solar panels convert", "Modern solar", "Are solar")]
    found = [result.summary.find(s) for s in ("Solar panels convert", "Modern solar", "Are solar")]
    assert all(f >= 0 for f in found), result.summary
    assert found == sorted(found) and positions == sorted(positions)


def test_first_sentence_wins_a_tie() -> None:
    text = "Cats sleep. Dogs bark. Birds sing."
    assert summarize(text, max_length=11).summary == "Cats sleep."


def test_compression_ratio_is_summary_over_text_length() -> None:
    result = summarize(ARTICLE, max_length=120)
    assert result.compression_ratio == round(len(result.summary) / len(ARTICLE), 3)
    assert 0 < result.compression_ratio < 1


def test_short_text_is_returned_whole() -> None:
    text = "One sentence. Another sentence."
    result = summarize(text, max_length=100)
    assert result.summary == text
    assert result.compression_ratio == 1.0


def test_overlong_best_sentence_is_truncated_at_a_word_boundary() -> None:
    text = "The quick brown fox jumps over the lazy dog near the river bank."
    result = summarize(text, max_length=25)
    assert result.summary == "The quick brown fox…"
    assert len(result.summary) <= 25


def test_truncation_without_spaces_cuts_characters() -> None:
    text = "日本語の文章はスペースを使わないので単語の境界がありません。"
    result = summarize(text, max_length=10)
    assert result.summary == text[:9] + "…"


def test_abbreviations_do_not_split_sentences() -> None:
    text = "Dr. Smith likes fruit, e.g. apples and pears. He eats them daily."
    assert analyze(text).sentence_count == 2


def test_empty_text() -> None:
    assert summarize("") == Summary(summary="", compression_ratio=0.0)
    result = analyze("")
    assert (result.word_count, result.sentence_count, result.language) == (0, 0, "unknown")
    assert result.average_sentence_length == 0.0


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="max_length must be at least 1"):
        summarize(ARTICLE, max_length=0)
    with pytest.raises(ValueError, match="top_k must not be negative"):
        analyze(ARTICLE, top_k=-1)


@pytest.mark.parametrize("language", sorted(SAMPLES))
def test_language_guess(language: str) -> None:
    assert analyze(SAMPLES[language]).language == language


def test_language_unknown_without_stopwords_or_with_kanji_only() -> None:
    assert analyze("Xylophone quartz zebra 42.").language == "unknown"
    assert analyze("我们今天去公园散步。").language == "unknown"


def test_counts_on_known_text() -> None:
    text = "The cat sat. The dog ran! Did it rain?"
    result = analyze(text)
    assert result.word_count == 9
    assert result.sentence_count == 3
    assert result.character_count == len(text) == 38
    assert result.average_sentence_length == 3.0


def test_japanese_words_are_script_runs() -> None:
    result = analyze("私は東京に住んでいます。毎日電車で会社に行きます。")
    # 私/は/東京/に/住/んでいます/毎日電車/で/会社/に/行/きます
    assert result.word_count == 12
    assert result.sentence_count == 2
    assert result.average_sentence_length == 6.0
    assert result.keywords == ("会社", "東京", "毎日電車")


def test_keywords_by_frequency_then_alphabetically() -> None:
    text = "Apple banana apple. Cherry banana APPLE date! The ox and the apple."
    result = analyze(text, top_k=4)
    # apple 4, banana 2, then cherry and date once each; "the", "and" are stopwords, "ox" short.
    assert result.keywords == ("apple", "banana", "cherry", "date")
    assert analyze(text, top_k=2).keywords == ("apple", "banana")
    assert analyze(text, top_k=0).keywords == ()


def test_results_are_frozen() -> None:
    result = analyze(ARTICLE)
    assert isinstance(result, Analysis)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.word_count = 0  # type: ignore[misc]
