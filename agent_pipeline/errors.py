"""The project's own errors: each names what is wrong and, where it comes from the
environment, the variable to fix."""

from __future__ import annotations


class AgentPipelineError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigurationError(AgentPipelineError):
    """A setting is missing or malformed."""

    def __init__(self, variable: str, problem: str):
        self.variable = variable
        super().__init__(f"{variable}: {problem}")


class DatabaseUnavailableError(AgentPipelineError):
    """The agent_runs database cannot be reached."""


class AgentOutputError(AgentPipelineError):
    """The agent returned something that is not a list of outcomes at all."""
