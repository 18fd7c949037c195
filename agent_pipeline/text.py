"""Text from the outside world (agents, feeds, LLM replies, errors), made safe for where it
goes: one line for an email or a log, plain text from HTML, a link, and
what every store accepts. The one place that cleans text; it knows nothing else of the project.

Postgres rejects NUL characters in TEXT and JSONB, and lone surrogates (what undecodable bytes
become with errors="surrogateescape") in any UTF-8 text. Every function looks at a bounded
prefix only, so a huge value costs no more than a long one."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

# What an item's title, summary and link may hold, wherever they come from or go to.
MAX_TITLE_CHARS = 300
MAX_SUMMARY_CHARS = 2_000
MAX_URL_CHARS = 2_048

_SURROGATES = re.compile(r"[\ud800-\udfff]")
# C0/C1 control characters, CR and LF included: none of them belongs in one line, and CR/LF
# is how a value breaks out of an email header.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
# Markdown: pipes end a table cell, brackets and angle brackets could form links or HTML.
# Elements whose content is no text a reader sees.
_HIDDEN_ELEMENTS = frozenset({"script", "style", "template", "noscript"})


def storable_text(text: str) -> str:
    """text without NUL characters, each lone surrogate replaced by U+FFFD."""
    return _SURROGATES.sub("\ufffd", text.replace("\x00", ""))


def _one_line(text: str) -> str:
    """text storable, control characters as spaces, whitespace collapsed."""
    return " ".join(_CONTROL_CHARS.sub(" ", storable_text(text)).split())


def clean_text(value: str, limit: int) -> str:
    """One line of text: control characters become spaces, whitespace collapses, and the
    result is cut to limit characters (an ellipsis marks the cut)."""
    text = _one_line(value[: limit * 8])
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def one_line(value: Any, limit: int) -> str:
    """clean_text of a value that may not be a string at all ("" then)."""
    return clean_text(value, limit) if isinstance(value, str) else ""


class _TextOfHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _HIDDEN_ELEMENTS:
            self._hidden_depth += 1
        self.parts.append(" ")  # a tag separates words: <p>a</p><p>b</p> is "a b"

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_ELEMENTS and self._hidden_depth:
            self._hidden_depth -= 1
        self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.parts.append(data)


def html_to_text(value: Any, limit: int) -> str:
    """The text a reader sees of a value that may hold HTML (a feed's title or summary): tags
    dropped, entities decoded, scripts and styles left out, one line of at most limit
    characters. Parsed by the standard library's HTML parser, never by a pattern."""
    parser = _TextOfHtml()
    parser.feed(str(value or "")[: limit * 8])
    parser.close()
    return _one_line("".join(parser.parts))[:limit].rstrip()


def safe_url(value: Any) -> str | None:
    """The URL if it is an absolute http(s) URL fit for a link, else None."""
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS:
        return None
    url = value.strip()
    # Not printable: control characters, NUL, lone surrogates and every space but " ".
    if not url.isprintable() or " " in url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url
