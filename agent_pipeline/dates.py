"""Times as feeds and agents write them: ISO 8601 or RFC 2822 ("Sun, 01 Nov 2026 08:00:00
GMT"), read in one place for the email and for the window's bounds."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

# Longer than any date a feed writes: a longer value is no date, and is not parsed.
MAX_DATE_CHARS = 60


def parse_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime, or None when value is no date; a date without a zone is UTC."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str) and value.strip() and len(value) <= MAX_DATE_CHARS:
        raw = value.strip()
        try:
            try:
                when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
    else:
        return None
    try:
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except (OverflowError, ValueError):  # year 1 at +05:00 has no UTC time
        return None
