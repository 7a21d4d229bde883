"""The console speaks English, Japanese and Chinese: every message in all three, none missing."""

from __future__ import annotations

import json
import re
from importlib import resources

CONSOLE = resources.files("democratic_ai.services.gateway").joinpath("console")
LANGUAGES = ("en", "ja", "zh")
# t("key") and t("key", {...}) with a literal key; keys built at run time (t(`metric.${m}`)) are
# checked by the browser tests that show them.
_USED = re.compile(r"""\bt\(\s*"([a-z0-9_.]+)"\s*[,)]""")


def _catalogs() -> dict[str, dict[str, dict[str, str]]]:
    """part → language → messages."""
    found: dict[str, dict[str, dict[str, str]]] = {}
    for entry in CONSOLE.joinpath("i18n").iterdir():
        part, language, _ = entry.name.split(".")
        found.setdefault(part, {})[language] = json.loads(entry.read_text(encoding="utf-8"))
    return found


def _scripts() -> dict[str, str]:
    scripts = {}
    for folder in (CONSOLE, CONSOLE.joinpath("lib"), CONSOLE.joinpath("pages")):
        for entry in folder.iterdir():
            if entry.name.endswith(".js"):
                scripts[entry.name] = entry.read_text(encoding="utf-8")
    return scripts


def test_every_part_has_the_same_messages_in_every_language() -> None:
    catalogs = _catalogs()
    assert "shell" in catalogs
    for part, languages in catalogs.items():
        assert set(languages) == set(LANGUAGES), part
        english = set(languages["en"])
        for language in LANGUAGES:
            assert set(languages[language]) == english, (part, language, set(languages[language]) ^ english)
            assert all(text.strip() for text in languages[language].values()), (part, language)
            placeholders = {key: set(re.findall(r"\{\w+\}", text)) for key, text in languages[language].items()}
            for key, text in languages["en"].items():
                assert placeholders[key] == set(re.findall(r"\{\w+\}", text)), (part, language, key)


def test_every_message_a_script_asks_for_exists() -> None:
    known = {key for languages in _catalogs().values() for key in languages["en"]}
    used = {(name, key) for name, source in _scripts().items() for key in _USED.findall(source)}
    assert used, "the pattern finds the scripts' messages"
    assert sorted((name, key) for name, key in used if key not in known) == []


def test_every_page_in_the_shell_has_its_messages() -> None:
    shell = _scripts()["app.js"]
    pages = re.findall(r'import (\w+) from "\./pages/(\w+)\.js"', shell)
    catalogs = _catalogs()
    for _, path in pages:
        assert path in catalogs, f"pages/{path}.js has no i18n/{path}.<language>.json"
