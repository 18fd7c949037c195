"""AgentResource: which agent runs, and its settings."""

from __future__ import annotations

from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field, model_validator

from agent_pipeline.agents import DEFAULT_AGENT, Agent, AgentSettings, load_agent
from agent_pipeline.agents.keywords import DEFAULT_INTERESTS
from agent_pipeline.agents.llm import (
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_CALLS_PER_RUN,
    DEFAULT_MODEL,
    LlmSettings,
    Prices,
)

# What AGENT_CACHE_TTL defaults to: a week.
DEFAULT_CACHE_TTL_SECONDS = 7 * 24 * 3600
DEFAULT_BACKLOG_MAX_AGE_HOURS = 24


# On the built-in scorers' 0-100 scale: 0.1 is the keyword scorer's smallest step (an item
# that mentions no interest scores 0); the LLM is asked for 0 (not at all) to 100 (must
# read), and under 20 is little more than a passing mention.
DEFAULT_MIN_SCORES = {"keyword": 0.1, "llm": 20.0}


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

    llm_max_calls_per_run: int = Field(
        default=DEFAULT_MAX_CALLS_PER_RUN, ge=0,
        description="LLM_MAX_CALLS_PER_RUN: requests a run may make; 0 means no limit.",
    )
    llm_daily_budget: float | None = Field(
        default=None, ge=0,
        description="LLM_DAILY_BUDGET: the most the LLM may cost per UTC day, in the prices' "
        "currency; unset means no limit.",
    )
    backlog_max_age_hours: int = Field(
        default=DEFAULT_BACKLOG_MAX_AGE_HOURS, ge=1,
        description="BACKLOG_MAX_AGE_HOURS: an item left unscored longer leaves the backlog.",
    )
    min_score: float | None = Field(
        default=None, ge=0,
        description="DIGEST_MIN_SCORE: items scored under it stay out of the digest; unset: "
        "the scorer's own minimum.",
    )

    @model_validator(mode="after")
    def _budget_needs_prices(self) -> AgentResource:
        if self.llm_daily_budget is not None and (
            self.llm_price_input is None or self.llm_price_output is None
        ):
            raise ValueError(
                "LLM_DAILY_BUDGET needs LLM_PRICE_INPUT and LLM_PRICE_OUTPUT to count spend"
            )
        return self

    def load(self) -> Agent:
        return load_agent(self.agent)

    def digest_min_score(self) -> float | None:
        """The lowest score a digest lists: DIGEST_MIN_SCORE, else the built-in scorer's own
        (the keyword scorer: any mention of an interest; the LLM: what its prompt calls
        related); a custom agent's scale is its own, so it has none unless set."""
        if self.min_score is not None:
            return self.min_score
        if self.agent.strip() in ("keywords", "triage"):
            return DEFAULT_MIN_SCORES["llm" if self.agent.strip() == "triage" and
                                      self.scorer == "llm" else "keyword"]
        return None

    def settings(self) -> AgentSettings:
        """What the agent is told. The LLM's settings, with the API key, go only to the
        built-in triage agent when it scores with the LLM: no other agent needs them, so none
        gets them."""
        llm = None
        if self.agent.strip() == "triage" and self.scorer == "llm":
            priced = self.llm_price_input is not None and self.llm_price_output is not None
            llm = LlmSettings(
                base_url=self.llm_base_url, api_key=self.llm_api_key or "",
                model=self.llm_model, concurrency=self.llm_concurrency,
                prices=Prices(self.llm_price_input, self.llm_price_output) if priced else None,
                max_calls_per_run=self.llm_max_calls_per_run,
                daily_budget=self.llm_daily_budget,
            )
        return AgentSettings(
            interests=self.interests,
            sources=self.sources,
            scorer=self.scorer,
            llm=llm,
            backlog_max_age_hours=self.backlog_max_age_hours,
        )
