"""The job's windows: 10-minute UTC time partitions over a rolling history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import TimeWindowPartitionsDefinition

WINDOW_CRON = "*/10 * * * *"
WINDOW_FORMAT = "%Y-%m-%d-%H:%M"


def window_partitions(
    history_days: int, now: datetime | None = None
) -> TimeWindowPartitionsDefinition:
    """Windows from midnight UTC history_days ago. A rolling start keeps the partition set
    bounded (144 a day); starting at midnight keeps it stable within a day across the
    processes that load the code."""
    today = (now or datetime.now(UTC)).astimezone(UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    return TimeWindowPartitionsDefinition(
        start=today - timedelta(days=history_days),
        fmt=WINDOW_FORMAT,
        cron_schedule=WINDOW_CRON,
        timezone="UTC",
    )


WINDOW_LENGTH = timedelta(minutes=10)


def window_bounds(partition_key: str) -> tuple[datetime, datetime]:
    """Start and end (UTC) of the window a partition key names, e.g. 2026-11-26-09:30."""
    try:
        start = datetime.strptime(partition_key, WINDOW_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(
            f"{partition_key!r} is not a window key like 2026-11-26-09:30 ({WINDOW_FORMAT})"
        ) from None
    if start.minute % 10:
        raise ValueError(f"{partition_key!r} does not start a 10-minute window")
    return start, start + WINDOW_LENGTH


def last_closed_window(at: datetime) -> tuple[str, datetime]:
    """Key and start of the last window that has ended by `at`."""
    at = at.astimezone(UTC).replace(second=0, microsecond=0)
    end = at - timedelta(minutes=at.minute % 10)
    start = end - WINDOW_LENGTH
    return start.strftime(WINDOW_FORMAT), start


def closed_windows(since: datetime, until: datetime) -> list[str]:
    """Keys of the windows that start at or after `since` and have ended by `until`, oldest
    first."""
    since = since.astimezone(UTC)
    start = since.replace(second=0, microsecond=0)
    start += timedelta(minutes=-start.minute % 10)
    if start < since:
        start += WINDOW_LENGTH
    keys = []
    while start + WINDOW_LENGTH <= until:
        keys.append(start.strftime(WINDOW_FORMAT))
        start += WINDOW_LENGTH
    return keys
