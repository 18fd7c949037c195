from agent_pipeline.resources.agent import AgentResource
from agent_pipeline.resources.agent_runs import AgentRunsStore
from agent_pipeline.resources.digest import DigestSettings
from agent_pipeline.resources.redis import RedisStore
from agent_pipeline.resources.retention import Retention
from agent_pipeline.resources.smtp import Smtp

__all__ = ["AgentResource", "AgentRunsStore", "DigestSettings", "RedisStore", "Retention", "Smtp"]
