"""The project's own errors: each names what is wrong and, where it comes from the
environment, the variable to fix."""

from __future__ import annotations

from agent_pipeline.text import storable_text

# An error kept in a row or an alert: one line of at most this many characters.
ERROR_MESSAGE_LIMIT = 4_000


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


class NoRankedResultError(AgentPipelineError):
    """send_email ran without a ranked top five in its run's row or those of the runs it
    re-executes."""


def describe_error(exc: BaseException) -> str:
    """One line for a row's or an alert's error: the exception's type and message, bounded."""
    message = storable_text(str(exc).strip() or repr(exc))
    line = f"{type(exc).__name__}: {message}"
    if len(line) > ERROR_MESSAGE_LIMIT:
        line = line[: ERROR_MESSAGE_LIMIT - 1] + "…"
    return line
