"""agent_pipeline: a Dagster code location that runs an AI agent every 10 minutes."""
