from __future__ import annotations

import re
from email import message_from_bytes, policy

import pytest
from markupsafe import escape

from agent_pipeline.emails import (
    WINDOW_HEADER,
    build_digest_email,
    cost_line,
    parse_address,
    parse_address_list,
    run_link,
)
from agent_pipeline.errors import ConfigurationError
from agent_pipeline.ranking import validate_outcomes

RUN_URL = "https://dagster.example.com/runs/5c6d"


def build(top, recipients=("a@example.com", "b@example.com"), run_url=None, agent_stats=None):
    return build_digest_email(
        partition_key="2026-11-26-09:30",
        top=top,
        sender="Agent <agent@example.com>",
        recipients=list(recipients),
        run_url=run_url,
        agent_stats=agent_stats,
    )


def parts(message):
    """Round-trip through bytes, as a receiving server would see it."""
    received = message_from_bytes(message.as_bytes(), policy=policy.default)
    text = received.get_body(("plain",)).get_content()
    html = received.get_body(("html",)).get_content()
    return received, text, html


def feed_item(n, **fields):
    return {
        "title": f"Item {n}",
        "score": 90.0 - 10 * n,
        "url": f"https://example.org/{n}",
        "source": "Example News",
        "published": "2026-11-01T08:00:00Z",
        "reason": f"reason {n}",
        **fields,
    }


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


def test_the_plain_text_part_carries_everything_the_html_part_does():
    top = [feed_item(n) for n in range(5)]
    _, text, _ = parts(build(top, run_url=RUN_URL))
    assert text.splitlines()[:6] == [
        "Top 5 for 2026-11-26 09:30–09:40 UTC",
        "",
        "1. Item 0",
        "   Score 90 · Example News · 01 Nov 2026, 08:00 UTC",
        "   reason 0",
        "   https://example.org/0",
    ]
    assert text.endswith(f"This run in Dagster: {RUN_URL}\n")
    # One blank line between items, none doubled.
    assert "\n\n\n" not in text


def test_each_item_shows_its_score_bar_source_published_time_and_reason():
    top = [feed_item(0), feed_item(1, score=45.5, published="Sun, 01 Nov 2026 09:15:00 +0100")]
    _, _, html = parts(build(top, run_url=RUN_URL))
    assert 'href="https://example.org/0"' in html
    assert "Example News · 01 Nov 2026, 08:00 UTC" in html
    assert "01 Nov 2026, 08:15 UTC" in html  # an RSS date, shown in UTC
    assert "reason 0" in html and "reason 1" in html
    # Scores on the built-in 0-100 scale are bars of that length.
    assert bar_pixels(html) == [144, 74]
    assert "score 90" in html and "score 45.5" in html
    assert f'href="{RUN_URL}"' in html


def bar_pixels(html: str) -> list[int]:
    """Each item's filled bar, in pixels of the 160 px track."""
    widths = []
    for kind, width in re.findall(r'<td class="(bar|track)" width="(\d+)"', html):
        if kind == "bar":
            widths.append(int(width))
        elif width == "160":  # a track with no bar before it
            widths.append(0)
    return widths


def test_scores_of_0_to_100_are_drawn_as_they_are():
    top = [feed_item(0, score=30), feed_item(1, score=0.4), feed_item(2, score=0)]
    # 30% of 160 px; a positive score is a sliver (1%, 2 px), zero is the bare track.
    assert bar_pixels(parts(build(top))[2]) == [48, 2, 0]


def test_scores_outside_0_to_100_are_drawn_against_the_best():
    top = [feed_item(0, score=250), feed_item(1, score=125), feed_item(2, score=-1)]
    assert bar_pixels(parts(build(top))[2]) == [160, 80, 0]


@pytest.mark.parametrize(
    "published", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "32 Foo 2026"]
)
def test_a_published_time_that_is_no_utc_date_is_shown_as_written(published):
    _, text, _ = parts(build([feed_item(0, published=published)]))
    assert f"Example News · {published}" in text


def test_an_item_without_reason_shows_its_summary_and_odd_fields_are_shown_as_text():
    top = [
        {"title": "A", "score": 1, "summary": "the summary " * 40, "published": "last Tuesday"},
        {"title": "B", "score": 1, "source": {"not": "text"}},
    ]
    _, text, html = parts(build(top))
    assert "the summary the summary" in html
    assert max(len(line) for line in text.splitlines()) < 260  # cut, one line
    assert "last Tuesday" in text  # not a date: shown as the feed wrote it
    assert "not" not in text.split("2. B")[1]  # a source that is no text is left out


def test_agent_text_is_escaped_and_only_http_links_are_made():
    hostile = validate_outcomes(
        [
            {
                "title": '<script>alert("x")</script> & co',
                "score": 2,
                "url": "https://example.org/?a=1&b=\"2\"",
                "summary": "<img src=x onerror=alert(1)>",
                "source": "<b>bold</b>",
                "reason": "</div><a href='https://evil.example'>win</a>",
            },
            {"title": "click me", "score": 1, "url": "javascript:alert(1)"},
        ]
    ).outcomes
    # Also a hostile URL that reached the builder without validation.
    hostile.append({"title": "raw", "score": 0.5, "url": "javascript:alert(2)"})
    _, text, html = parts(build(hostile))
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert escape('<script>alert("x")</script> & co') in html
    assert escape("</div><a href='https://evil.example'>win</a>") in html
    quoted_url = escape('https://example.org/?a=1&b="2"')
    assert f'href="{quoted_url}"' in html
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
    "webserver, run_id, expected",
    [
        ("http://localhost:3000", "abc", "http://localhost:3000/runs/abc"),
        ("https://dagster.example.com/", "abc", "https://dagster.example.com/runs/abc"),
        ("http://localhost:3000", None, None),
        (None, "abc", None),
    ],
)
def test_run_link(webserver, run_id, expected):
    assert run_link(webserver, run_id) == expected


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


@pytest.mark.parametrize(
    "stats, line",
    [
        ({"llm_calls": 30, "prompt_tokens": 1500, "completion_tokens": 300, "cost": 0.0021},
         "This digest cost 0.0021 (30 LLM calls, 1,800 tokens)."),
        ({"llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0},
         "This digest cost 0.0000 (0 LLM calls, 0 tokens)."),
        ({"llm_calls": 1, "prompt_tokens": 50, "completion_tokens": 10},
         "This digest took 1 LLM call, 60 tokens (no LLM price set)."),
        ({"sources": 2}, None),  # an agent without an LLM says nothing of one
        ({"llm_calls": 0}, None),  # the keyword scorer
        ({"llm_calls": "many", "cost": "free"}, None),  # an agent's odd stats are not shown
    ],
)
def test_the_footer_says_what_the_digest_cost(stats, line):
    assert cost_line(stats) == line
    _, text, html = parts(build([feed_item(1)], agent_stats=stats))
    if line:
        assert line in text and line in html
    else:
        assert "LLM call" not in text and "LLM call" not in html
