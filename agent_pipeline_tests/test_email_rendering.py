"""The digest email as a reader sees it: its HTML part rendered by headless Chromium."""

from __future__ import annotations

import os
import shutil
from email import message_from_bytes, policy

import pytest

from agent_pipeline.agents import AgentCache
from agent_pipeline.agents.keywords import DEFAULT_INTERESTS, keywords_agent
from agent_pipeline.emails import build_digest_email
from agent_pipeline.ranking import rank_outcomes, validate_outcomes
from agent_pipeline_tests.browser import chromium
from agent_pipeline_tests.helpers import agent_context

from .topology import REPO

REFERENCE_SCREENSHOT = REPO / "docs" / "digest-email.png"
RUN_URL = "http://localhost:3000/runs/4b1e7c52-0c1e-4f0e-9d1b-2f3a7e8c9d10"
# Wider than the email's 600 px column, as a desktop mail client's reading pane.
DESKTOP = {"width": 680, "height": 900}
PHONE = {"width": 375, "height": 700}


@pytest.fixture(scope="module")
def browser():
    with chromium() as running:
        yield running


def html_part(top) -> str:
    """The HTML part of the digest, as a mail client receives it."""
    message = build_digest_email(
        partition_key="2026-11-26-09:30",
        top=top,
        sender="agent@example.com",
        recipients=["you@example.com"],
        run_url=RUN_URL,
    )
    received = message_from_bytes(message.as_bytes(), policy=policy.default)
    return received.get_body(("html",)).get_content()


def default_agent_top_five():
    outcomes = keywords_agent(agent_context(AgentCache(None, 60), DEFAULT_INTERESTS))
    return rank_outcomes(validate_outcomes(list(outcomes)).outcomes).top


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def open_email(browser, html: str, viewport: dict, **options):
    """A page holding the email; every request it makes is recorded and refused."""
    page = browser.new_page(viewport=viewport, **options)
    requests: list[str] = []

    def refuse(route):
        requests.append(route.request.url)
        route.abort()

    page.route("**/*", refuse)
    page.set_content(html, wait_until="load")
    return page, requests


def test_the_digest_renders_in_chromium(browser, tmp_path):
    top = default_agent_top_five()
    assert len(top) == 5
    page, requests = open_email(browser, html_part(top), DESKTOP)
    png = page.screenshot(full_page=True)
    (tmp_path / "digest-email.png").write_bytes(png)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(tmp_path / "digest-email.png", REFERENCE_SCREENSHOT)

    width, height = png_size(png)
    content = page.evaluate(
        "({width: document.documentElement.scrollWidth,"
        " height: document.documentElement.scrollHeight,"
        " text: document.body.innerText})"
    )
    # The whole page went into the picture, and it is a page of five cards, not a blank
    # or a runaway one.
    assert (width, height) == (DESKTOP["width"], content["height"])
    assert 600 < height < 2000
    for outcome in top:
        assert outcome["title"] in content["text"]
    assert "Open this run in Dagster" in content["text"]
    assert requests == []  # nothing remote: no fonts, images or trackers

    # On a phone the column shrinks instead of scrolling sideways.
    phone, _ = open_email(browser, html_part(top), PHONE)
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_dark_mode_clients_get_dark_colours(browser):
    light, _ = open_email(browser, html_part(default_agent_top_five()), DESKTOP)
    dark, _ = open_email(
        browser, html_part(default_agent_top_five()), DESKTOP, color_scheme="dark"
    )
    background = "getComputedStyle(document.body).backgroundColor"
    assert light.evaluate(background) == "rgb(243, 244, 247)"
    assert dark.evaluate(background) == "rgb(17, 19, 24)"


def test_no_script_from_the_agent_runs(browser):
    payloads = [
        "<script>window.ran = 'script'</script>",
        "<img src=x onerror=\"window.ran = 'onerror'\">",
        "<svg onload=\"window.ran = 'svg'\"></svg>",
        "</div></td></tr></table><script>window.ran = 'breakout'</script>",
        "<iframe src=\"javascript:parent.ran = 'iframe'\"></iframe>",
    ]
    top = [
        {
            "title": f"{payload} title {n}",
            "score": 50 - n,
            "url": "javascript:window.ran='link'",
            "summary": payload,
            "source": payload,
            "reason": payload,
        }
        for n, payload in enumerate(payloads)
    ]
    page, requests = open_email(browser, html_part(top), DESKTOP)
    assert page.evaluate("typeof window.ran") == "undefined"
    assert page.evaluate("document.querySelectorAll('script, img, svg, iframe').length") == 0
    text = page.evaluate("document.body.innerText")
    for payload in payloads:
        assert payload in text  # shown as the text it is
    assert requests == []
