from __future__ import annotations

from dagster import Definitions

from agent_pipeline.jobs import agent_job
from agent_pipeline.schedules import agent_job_schedule
from agent_pipeline.settings import resources_from_env

defs = Definitions(
    jobs=[agent_job],
    schedules=[agent_job_schedule],
    resources=resources_from_env(),
)
