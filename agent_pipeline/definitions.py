"""The code location: agent_job and retention_job, their schedules and sensors, and the
resources, all configured from the environment."""

from __future__ import annotations

from dagster import DagsterInvalidDefinitionError

from agent_pipeline.errors import ConfigurationError
from agent_pipeline.settings import code_location_settings

# First, before the modules below read the variables (jobs.py, the partitions' history):
# Dagster shows an error of its own as it is, where it wraps any other in a generic "error
# occurred during the loading" ahead of a stack trace; a bad variable is the first line of
# the load error, in the UI and the terminal.
try:
    settings = code_location_settings()
except ConfigurationError as error:
    raise DagsterInvalidDefinitionError(str(error)) from None

from dagster import Definitions

from agent_pipeline.jobs import agent_job, retention_job
from agent_pipeline.logs import configure_output
from agent_pipeline.schedules import (
    build_agent_job_schedule,
    build_catch_up_sensor,
    retention_job_schedule,
)
from agent_pipeline.sensors import (
    agent_job_failure_alert,
    agent_job_recovery_alert,
    agent_runs_on_run_failure,
    agent_runs_sweeper,
)

# The package's plain logging records (the resources' warnings) become JSON lines on stdout
# and in LOG_FILE in every process that loads the code location, the code server included.
configure_output(settings.log)

defs = Definitions(
    jobs=[agent_job, retention_job],
    schedules=[build_agent_job_schedule(settings.overlap_policy), retention_job_schedule],
    sensors=[
        build_catch_up_sensor(settings.catch_up_hours),
        agent_runs_on_run_failure,
        agent_job_failure_alert,
        agent_job_recovery_alert,
        agent_runs_sweeper,
    ],
    resources=settings.resources,
)
