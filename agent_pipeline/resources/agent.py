"""AgentResource: which agent runs, and its settings."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from agent_pipeline.agents import DEFAULT_AGENT, Agent, load_agent
from agent_pipeline.agents.keywords import DEFAULT_INTERESTS


class AgentResource(ConfigurableResource):
    """The agent the job runs (AGENT) and what it is told (AGENT_INTERESTS)."""

    agent: str = Field(
        default=DEFAULT_AGENT,
        description="AGENT: a built-in agent (keywords) or package.module:callable.",
    )
    interests: str = Field(
        default=DEFAULT_INTERESTS,
        description="AGENT_INTERESTS: what matters to the user, comma separated.",
    )
    cache_ttl_seconds: int = Field(
        default=7 * 24 * 3600, description="AGENT_CACHE_TTL: seconds a cached score is kept."
    )

    def load(self) -> Agent:
        return load_agent(self.agent)

    def settings(self) -> dict[str, str]:
        return {"interests": self.interests}
