"""The digest email: built here from plain values, delivered by the Smtp resource.
Nothing the agent wrote is trusted: it is escaped in HTML and never reaches a header."""

from __future__ import annotations

import email.policy
import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from agent_pipeline.errors import ConfigurationError
from agent_pipeline.partitions import window_bounds
from agent_pipeline.ranking import safe_url

WINDOW_HEADER = "X-Agent-Pipeline-Window"


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


def build_digest_email(
    *,
    partition_key: str,
    top: Sequence[Mapping[str, Any]],
    sender: str,
    recipients: Sequence[str],
) -> EmailMessage:
    """The top-five email of the window partition_key names: a plain-text part and an HTML
    part."""
    label = window_label(*window_bounds(partition_key))
    message = EmailMessage()
    message["Subject"] = f"agent_pipeline: top {len(top)} for {label}"
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="agent-pipeline.local")
    message[WINDOW_HEADER] = partition_key
    message.set_content(_text_body(label, top))
    message.add_alternative(_html_body(label, top), subtype="html")
    return message


def _text_body(label: str, top: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"Top {len(top)} for {label}", ""]
    if not top:
        lines.append("The agent found nothing this window.")
    for rank, outcome in enumerate(top, start=1):
        lines.append(f"{rank}. {outcome['title']}  (score {outcome['score']:g})")
        url = safe_url(outcome.get("url"))
        if url:
            lines.append(f"   {url}")
        if outcome.get("summary"):
            lines.append(f"   {outcome['summary']}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _html_body(label: str, top: Sequence[Mapping[str, Any]]) -> str:
    def esc(value: Any) -> str:
        return html.escape(str(value), quote=True)

    rows = []
    for rank, outcome in enumerate(top, start=1):
        title = esc(outcome["title"])
        url = safe_url(outcome.get("url"))
        if url:
            title = f'<a href="{esc(url)}" rel="noopener noreferrer">{title}</a>'
        summary = f"<br><small>{esc(outcome['summary'])}</small>" if outcome.get("summary") else ""
        score = esc(format(outcome["score"], "g"))
        rows.append(f"<tr><td>{rank}</td><td>{score}</td><td>{title}{summary}</td></tr>")
    body = (
        "<table><thead><tr><th>#</th><th>Score</th><th>Item</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p>The agent found nothing this window.</p>"
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>Top {len(top)} for {esc(label)}</title></head>"
        f"<body><h1>Top {len(top)} for {esc(label)}</h1>{body}</body></html>\n"
    )
