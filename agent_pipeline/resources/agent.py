"""AgentResource: which agent runs, and its settings."""

from __future__ import annotations

from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field

from agent_pipeline.agents import DEFAULT_AGENT, Agent, AgentSettings, load_agent
from agent_pipeline.agents.keywords import DEFAULT_INTERESTS
from agent_pipeline.agents.llm import (
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_MODEL,
    LlmSettings,
)

# What AGENT_CACHE_TTL defaults to: a week.
DEFAULT_CACHE_TTL_SECONDS = 7 * 24 * 3600


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
        default=DEFAULT_CACHE_TTL_SECONDS,
        ge=1,
        description="AGENT_CACHE_TTL: seconds a cached score is kept.",
    )

    sources: str = Field(
        default="", description="AGENT_SOURCES: feed URLs, JSON endpoints or files (triage)."
    )
    scorer: Literal["llm", "keyword"] = Field(
        default="keyword", description="AGENT_SCORER: llm or keyword (triage)."
    )
    llm_base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="LLM_BASE_URL: an OpenAI-compatible API (OpenAI, Ollama, vLLM).",
    )
    llm_api_key: str | None = Field(default=None, description="LLM_API_KEY (an EnvVar).")
    llm_model: str = Field(default=DEFAULT_MODEL, description="LLM_MODEL.")
    llm_concurrency: int = Field(
        default=DEFAULT_CONCURRENCY, ge=1, le=64, description="LLM_CONCURRENCY: calls at once."
    )
    llm_price_input: float | None = Field(
        default=None, ge=0, description="LLM_PRICE_INPUT: price per million prompt tokens."
    )
    llm_price_output: float | None = Field(
        default=None, ge=0, description="LLM_PRICE_OUTPUT: price per million completion tokens."
    )

    def load(self) -> Agent:
        return load_agent(self.agent)

    def settings(self) -> AgentSettings:
        """What the agent is told. The LLM's settings, with the API key, go only to the
        built-in triage agent when it scores with the LLM: no other agent needs them, so none
        gets them."""
        llm = None
        if self.agent.strip() == "triage" and self.scorer == "llm":
            llm = LlmSettings(
                base_url=self.llm_base_url, api_key=self.llm_api_key or "",
                model=self.llm_model, concurrency=self.llm_concurrency,
            )
        return AgentSettings(
            interests=self.interests,
            sources=self.sources,
            scorer=self.scorer,
            llm=llm,
            llm_price_input=self.llm_price_input,
            llm_price_output=self.llm_price_output,
        )
