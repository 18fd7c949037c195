"""The one text module: HTML to text with a real parser, one line."""

from __future__ import annotations

import pytest

from agent_pipeline.text import html_to_text, one_line


@pytest.mark.parametrize(
    "html, text",
    [
        ("<p>Hello <b>world</b></p>", "Hello world"),
        ("<p>one</p><p>two</p>", "one two"),
        ("Fish &amp; chips &lt;3 &#233;t&eacute;", "Fish & chips <3 été"),
        # What a script or a style holds is no text a reader sees (a regex kept it).
        ("a<script>alert('<b>x</b>')</script>b", "a b"),
        ("<style>p { color: red }</style>visible", "visible"),
        ("an <script>unclosed script never ends", "an"),
        ("a < b and c > d", "a < b and c > d"),
        ("line\r\nbreak\x00\x1b", "line break"),
        (None, ""),
    ],
)
def test_html_to_text(html, text):
    assert html_to_text(html, 100) == text


def test_html_to_text_is_bounded():
    # Only a prefix is parsed: a 7 MB value costs what a short one does.
    assert html_to_text("<i>x</i>" * 1_000_000, 10) == "x x x x x"
    assert len(html_to_text("word " * 1_000_000, 50)) <= 50


def test_one_line():
    assert one_line("a\nBcc: x@example.com", 100) == "a Bcc: x@example.com"
    assert one_line(42, 100) == ""
