"""The digest email: rendered here from plain values and the package's templates
(templates/digest.html and digest.txt), delivered by the Smtp resource. Nothing the agent
wrote is trusted: it is escaped in HTML, links are http(s) only, and it never reaches a
header."""

from __future__ import annotations

import email.policy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import jinja2

from agent_pipeline.dates import parse_timestamp
from agent_pipeline.errors import ConfigurationError
from agent_pipeline.partitions import window_bounds
from agent_pipeline.text import MAX_TITLE_CHARS, clean_text, one_line, safe_url

WINDOW_HEADER = "X-Agent-Pipeline-Window"
# The agent's one-line reason, or the start of the summary when it gave none.
MAX_REASON_CHARS = 240
# The preview line clients show after the subject.
PREHEADER_CHARS = 150


def _addresses(value: str, variable: str) -> list[str]:
    """Addresses from one address-list header value, parsed as a mail client would."""
    if "\r" in value or "\n" in value:
        raise ConfigurationError(variable, "contains a line break")
    header = email.policy.default.header_factory("To", value)
    addresses = list(header.addresses)
    bad = [a for a in addresses if not a.username or "." not in a.domain]
    if header.defects or bad:
        raise ConfigurationError(
            variable,
            f"{value.strip()!r} is not an email address or a comma-separated list of them",
        )
    return [str(address) for address in addresses]


def parse_address(value: str, variable: str) -> str:
    """One address (`a@b.c` or `Name <a@b.c>`), or a ConfigurationError naming variable."""
    addresses = _addresses(value, variable)
    if len(addresses) != 1:
        raise ConfigurationError(variable, f"{value.strip()!r} is not one email address")
    return addresses[0]


def parse_address_list(value: str, variable: str) -> list[str]:
    """Comma-separated addresses; at least one."""
    if not value.replace(",", "").strip():
        raise ConfigurationError(variable, "names no address")
    return _addresses(value.strip().strip(","), variable)


def window_label(window_start: datetime, window_end: datetime) -> str:
    return f"{window_start:%Y-%m-%d %H:%M}–{window_end:%H:%M} UTC"


def run_link(webserver_url: str | None, run_id: str | None) -> str | None:
    """The run's page in the Dagster UI, when both are known."""
    if not webserver_url or not run_id:
        return None
    return f"{webserver_url.rstrip('/')}/runs/{run_id}"


def new_message(subject: str, sender: str, recipients: list[str]) -> EmailMessage:
    """An email with this project's headers; the subject must hold nothing from an agent."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="agent-pipeline.local")
    return message


def build_digest_email(
    *,
    partition_key: str,
    top: Sequence[Mapping[str, Any]],
    sender: str,
    recipients: Sequence[str],
    run_url: str | None = None,
    agent_stats: Mapping[str, Any] | None = None,
) -> EmailMessage:
    """The top-five email of the window partition_key names: a plain-text part and an HTML
    part, both rendered from the package's templates; its footer says what the LLM cost, when
    the agent's stats say."""
    label = window_label(*window_bounds(partition_key))
    subject = f"agent_pipeline: top {len(top)} for {label}"
    text, html_body = render_digest(
        label, top, subject=subject, run_url=run_url, cost=cost_line(agent_stats or {})
    )
    message = new_message(subject, sender, recipients)
    message[WINDOW_HEADER] = partition_key
    message.set_content(text)
    message.add_alternative(html_body, subtype="html")
    return message


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("agent_pipeline", "templates"),
    # On for digest.html, off for digest.txt: a plain-text part has nothing to escape.
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def render_digest(
    label: str,
    top: Sequence[Mapping[str, Any]],
    *,
    subject: str,
    run_url: str | None = None,
    cost: str | None = None,
) -> tuple[str, str]:
    """The plain-text and HTML bodies of a digest."""
    items = digest_items(top)
    preheader = " · ".join(f"{item.rank}. {item.title}" for item in items)
    values = {
        "items": items,
        "window": label,
        "subject": subject,
        "run_url": safe_url(run_url),
        "preheader": clean_text(preheader, PREHEADER_CHARS),
        "cost": cost,
    }
    text = _TEMPLATES.get_template("digest.txt").render(values)
    return text.strip() + "\n", _TEMPLATES.get_template("digest.html").render(values)


def cost_line(agent_stats: Mapping[str, Any]) -> str | None:
    """What the digest cost in LLM calls, from the run's stats (the triage agent's llm_calls,
    tokens and, with prices, cost); None when the agent made no LLM report."""
    calls = agent_stats.get("llm_calls")
    if not isinstance(calls, int) or isinstance(calls, bool):
        return None
    tokens = sum(
        value for key in ("prompt_tokens", "completion_tokens")
        if isinstance(value := agent_stats.get(key), int)
    )
    work = f"{calls:,} LLM call{'s' if calls != 1 else ''}, {tokens:,} tokens"
    cost = agent_stats.get("cost")
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        return f"This digest cost {cost:.4f} ({work})."
    if calls == 0:
        return None  # scored offline, or all from the cache, with no price to speak of
    return f"This digest took {work} (no LLM price set)."


@dataclass(frozen=True)
class DigestItem:
    """One ranked item as the email shows it: every field cleaned, one line each."""

    rank: int
    title: str
    url: str | None
    score: str
    # The score bar's length and colour: scores of 0-100 (every built-in scorer's scale) as
    # they are, any other scale relative to the best item.
    bar_percent: int
    bar_colour: str
    # Source and published time, whichever the item has.
    details: list[str]
    reason: str


def digest_items(top: Sequence[Mapping[str, Any]]) -> list[DigestItem]:
    scores = [float(outcome["score"]) for outcome in top]
    scale = 100.0 if all(0 <= score <= 100 for score in scores) else max(map(abs, scores))
    items = []
    for rank, (outcome, score) in enumerate(zip(top, scores, strict=True), start=1):
        # score / scale first: 100 * score overflows for a score near the float maximum.
        percent = max(0, min(100, round(score / scale * 100))) if scale else 0
        if score > 0 and percent == 0:
            percent = 1  # a positive score shows as a sliver, not as nothing
        details = [
            detail
            for detail in (one_line(outcome.get("source"), 80), _published(outcome))
            if detail
        ]
        reason = one_line(outcome.get("reason"), MAX_REASON_CHARS) or one_line(
            outcome.get("summary"), MAX_REASON_CHARS
        )
        items.append(
            DigestItem(
                rank=rank,
                title=clean_text(str(outcome["title"]), MAX_TITLE_CHARS),
                url=safe_url(outcome.get("url")),
                score=f"{round(score, 2):g}",
                bar_percent=percent,
                bar_colour=_bar_colour(percent),
                details=details,
                reason=reason,
            )
        )
    return items


def _bar_colour(percent: int) -> str:
    if percent >= 70:
        return "#1f9d55"
    if percent >= 40:
        return "#c27803"
    return "#7b8494"


def _published(outcome: Mapping[str, Any]) -> str:
    """The item's published time in UTC, or as the feed wrote it when it is no date."""
    raw = one_line(outcome.get("published"), 60)
    when = parse_timestamp(raw)
    return f"{when:%d %b %Y, %H:%M} UTC" if when else raw
