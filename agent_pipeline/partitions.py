"""The job's windows: 10-minute UTC time partitions over a rolling history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import TimeWindowPartitionsDefinition

WINDOW_CRON = "*/10 * * * *"
WINDOW_FORMAT = "%Y-%m-%d-%H:%M"


def window_partitions(history_days: int, now: datetime | None = None) -> TimeWindowPartitionsDefinition:
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
