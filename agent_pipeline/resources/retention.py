"""Retention: how long each kind of data is kept, for the daily retention_job."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

DEFAULT_DAGSTER_RUN_DAYS = 30
DEFAULT_RESULT_COMPACT_DAYS = 30
DEFAULT_AGENT_RUNS_DAYS = 365


class Retention(ConfigurableResource):
    """Days each kind of data is kept; 0 keeps it for ever."""

    dagster_run_days: int = Field(
        default=DEFAULT_DAGSTER_RUN_DAYS, ge=0,
        description="DAGSTER_RUN_RETENTION_DAYS: Dagster runs older than this are deleted with "
        "their event logs, compute logs and stored op outputs.",
    )
    result_compact_days: int = Field(
        default=DEFAULT_RESULT_COMPACT_DAYS, ge=0,
        description="RESULT_COMPACT_DAYS: agent_runs.result older than this is cut down to "
        "the top five and the counts.",
    )
    agent_runs_days: int = Field(
        default=DEFAULT_AGENT_RUNS_DAYS, ge=0,
        description="AGENT_RUNS_RETENTION_DAYS: agent_runs and agent_alerts rows older than "
        "this are deleted.",
    )
