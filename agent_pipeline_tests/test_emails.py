from __future__ import annotations

from email import message_from_bytes, policy

import pytest

from agent_pipeline.emails import (
    WINDOW_HEADER,
    build_digest_email,
    parse_address,
    parse_address_list,
)
from agent_pipeline.errors import ConfigurationError
from agent_pipeline.ranking import validate_outcomes


def build(top, recipients=("a@example.com", "b@example.com")):
    return build_digest_email(
        partition_key="2026-11-26-09:30",
        top=top,
        sender="Agent <agent@example.com>",
        recipients=list(recipients),
    )


def parts(message):
    """Round-trip through bytes, as a receiving server would see it."""
    received = message_from_bytes(message.as_bytes(), policy=policy.default)
    text = received.get_body(("plain",)).get_content()
    html = received.get_body(("html",)).get_content()
    return received, text, html


def test_headers_name_the_window_and_the_people():
    top = [{"title": f"Item {n}", "score": 10.0 - n} for n in range(5)]
    received, text, html = parts(build(top))
    assert received["Subject"] == "agent_pipeline: top 5 for 2026-11-26 09:30–09:40 UTC"
    assert received["From"] == "Agent <agent@example.com>"
    assert received["To"] == "a@example.com, b@example.com"
    assert received[WINDOW_HEADER] == "2026-11-26-09:30"
    assert received["Date"].datetime.tzinfo is not None and received["Message-ID"]
    assert [line.split(".")[0] for line in text.splitlines() if line[:1].isdigit()] == [
        "1", "2", "3", "4", "5",
    ]
    for n in range(5):
        assert f"Item {n}" in text and f"Item {n}" in html


def test_agent_text_is_escaped_and_only_http_links_are_made():
    hostile = validate_outcomes(
        [
            {
                "title": '<script>alert("x")</script> & co',
                "score": 2,
                "url": "https://example.org/?a=1&b=\"2\"",
                "summary": "<img src=x onerror=alert(1)>",
            },
            {"title": "click me", "score": 1, "url": "javascript:alert(1)"},
        ]
    ).outcomes
    # Also a hostile URL that reached the builder without validation.
    hostile.append({"title": "raw", "score": 0.5, "url": "javascript:alert(2)"})
    _, text, html = parts(build(hostile))
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert 'href="https://example.org/?a=1&amp;b=&quot;2&quot;"' in html
    assert "javascript:" not in html and "javascript:" not in text
    assert html.count("<a ") == 1


def test_titles_never_reach_headers():
    top = validate_outcomes([{"title": "Hi\r\nBcc: victim@example.com", "score": 1}]).outcomes
    received, _, _ = parts(build(top))
    assert received["Bcc"] is None
    assert "victim" not in received["Subject"]


def test_empty_top_still_reads_well():
    _, text, html = parts(build([]))
    assert "found nothing" in text and "found nothing" in html


@pytest.mark.parametrize(
    "value, expected",
    [
        ("a@example.com", "a@example.com"),
        ("  Ann <ann@example.com> ", "Ann <ann@example.com>"),
    ],
)
def test_parse_address(value, expected):
    assert parse_address(value, "EMAIL_FROM") == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-an-address",
        "a@localhost",
        "a@example.com, b@example.com",
        "a@example.com\r\nBcc: x@example.com",
        "@example.com",
        "a b@example.com",
    ],
)
def test_parse_address_rejects_and_names_the_variable(value):
    with pytest.raises(ConfigurationError, match="^EMAIL_FROM: "):
        parse_address(value, "EMAIL_FROM")


def test_parse_address_list():
    assert parse_address_list("a@example.com, b@example.com,", "EMAIL_TO") == [
        "a@example.com",
        "b@example.com",
    ]
    with pytest.raises(ConfigurationError, match="EMAIL_TO: names no address"):
        parse_address_list(" , ", "EMAIL_TO")
    assert parse_address_list('"Doe, Jo" <jo@example.com>, b@example.com', "EMAIL_TO") == [
        '"Doe, Jo" <jo@example.com>',
        "b@example.com",
    ]
    with pytest.raises(ConfigurationError, match="EMAIL_TO: 'a@example.com, nope' is not"):
        parse_address_list("a@example.com, nope", "EMAIL_TO")
    with pytest.raises(ConfigurationError, match="EMAIL_TO: .* is not"):
        parse_address_list("a@example.com; b@example.com", "EMAIL_TO")
