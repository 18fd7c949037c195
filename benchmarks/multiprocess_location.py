"""agent_job with Dagster's default multiprocess executor instead of in_process_executor, for
the backfill benchmark's comparison only (no schedule: nothing runs but the backfill)."""

from dagster import Definitions, multiprocess_executor

from agent_pipeline.jobs import agent_job
from agent_pipeline.settings import resources_from_env

defs = Definitions(
    jobs=[
        agent_job.graph.to_job(
            name=agent_job.name,
            description=agent_job.description,
            partitions_def=agent_job.partitions_def,
            executor_def=multiprocess_executor,
            hooks=agent_job.hook_defs,
        )
    ],
    resources=resources_from_env(),
)
