from __future__ import annotations

from dagster import DefaultScheduleStatus, build_schedule_from_partitioned_job

from agent_pipeline.jobs import agent_job

# Each tick runs the window that has just closed: the 10:40 tick runs 10:30-10:40.
agent_job_schedule = build_schedule_from_partitioned_job(
    agent_job,
    name="agent_job_schedule",
    description="Runs agent_job every 10 minutes (UTC) for the window that just closed.",
    default_status=DefaultScheduleStatus.RUNNING,
)
