# First: the resource classes below are built with their config schemas inferred once.
import agent_pipeline.resources.config_schemas  # noqa: F401
from agent_pipeline.resources.agent import AgentResource
from agent_pipeline.resources.agent_runs import AgentRunsStore
from agent_pipeline.resources.digest import DigestSettings
from agent_pipeline.resources.redis import RedisStore
from agent_pipeline.resources.retention import Retention
from agent_pipeline.resources.smtp import Smtp

__all__ = ["AgentResource", "AgentRunsStore", "DigestSettings", "RedisStore", "Retention", "Smtp"]
