"""Configuration from environment variables: one place that reads them (a typed pydantic
model, Environment, validated at load), checks how they go together, and builds the
resources. Secrets are handed to Dagster as EnvVar, so only their names reach
the UI and the run config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dagster import EnvVar
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent_pipeline.agents import DEFAULT_AGENT, load_agent
from agent_pipeline.agents.keywords import DEFAULT_INTERESTS
from agent_pipeline.agents.llm import (
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_CALLS_PER_RUN,
    DEFAULT_MODEL,
)
from agent_pipeline.agents.sources import SourceError, check_source, parse_sources, source_label
from agent_pipeline.emails import parse_address, parse_address_list
from agent_pipeline.errors import ConfigurationError
from agent_pipeline.logs import LEVELS, LogSettings
from agent_pipeline.resources import AgentResource, AgentRunsStore, DigestSettings, RedisStore, Smtp
from agent_pipeline.resources.agent import DEFAULT_BACKLOG_MAX_AGE_HOURS, DEFAULT_CACHE_TTL_SECONDS
from agent_pipeline.resources.agent_runs import parse_database_url
from agent_pipeline.resources.digest import DEFAULT_ALERT_REPEAT_MINUTES
from agent_pipeline.resources.retention import (
    DEFAULT_AGENT_RUNS_DAYS,
    DEFAULT_DAGSTER_RUN_DAYS,
    DEFAULT_RESULT_COMPACT_DAYS,
    Retention,
)
from agent_pipeline.resources.smtp import check_login_is_encrypted
from agent_pipeline.text import safe_url

# Five days: at most 864 windows, under the 1,000 above which Dagster's partitions view stops
# drawing its graph ("might crash the browser"). Longer on request (WINDOW_HISTORY_DAYS).
DEFAULT_HISTORY_DAYS = 5
MAX_HISTORY_DAYS = 366
DEFAULT_CATCH_UP_HOURS = 24
# A week: a longer silence between alerts about a broken agent helps nobody.
MAX_ALERT_REPEAT_MINUTES = 7 * 24 * 60
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
MAX_PORT = 65535
# Used only while SMTP_HOST is unset and mail goes to the outbox folder.
OUTBOX_EMAIL_FROM = "agent-pipeline@example.com"
OUTBOX_EMAIL_TO = "you@example.com"
DEFAULT_WEBSERVER_URL = "http://localhost:3000"
PER_MILLION_TOKENS = Field(default=None, ge=0, le=1e6)


class Environment(BaseModel):
    """Every variable this project reads, typed and constrained, each documented in
    .env.example. Unset or empty means the default; read_environment names a bad one."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    DATABASE_URL: str | None = None
    REDIS_URL: str | None = None
    SMTP_HOST: str | None = None
    SMTP_CATCHER: str | None = None
    SMTP_PORT: int | None = Field(default=None, ge=1, le=MAX_PORT)
    SMTP_SECURITY: Literal["starttls", "ssl", "none"] = "starttls"
    SMTP_USERNAME: str | None = None
    SMTP_PASSWORD: str | None = None
    SMTP_TIMEOUT: float = Field(default=30.0, gt=0, le=3600)
    SMTP_CA_FILE: str | None = None
    SMTP_RETRIES: int = Field(default=3, ge=0, le=10)
    SMTP_RETRY_BACKOFF: float = Field(default=2.0, ge=0, le=3600)
    EMAIL_FROM: str | None = None
    EMAIL_TO: str | None = None
    EMAIL_ONLY_NEW: bool = True
    # none: a backfill's runs send no email; each: every backfilled window is emailed.
    BACKFILL_EMAIL: Literal["none", "each"] = "none"
    ALERT_EMAIL_TO: str | None = None
    ALERT_REPEAT_MINUTES: int = Field(
        default=DEFAULT_ALERT_REPEAT_MINUTES, ge=1, le=MAX_ALERT_REPEAT_MINUTES
    )
    DAGSTER_WEBSERVER_URL: str = DEFAULT_WEBSERVER_URL
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    LOG_FILE: str | None = None
    # false: an op's events go to Dagster's log (and LOG_FILE) only, not to stdout as well.
    LOG_STDOUT: bool = True
    LOG_FILE_MAX_BYTES: int = Field(default=LogSettings.file_max_bytes, ge=1024)
    # At least 1: Python's RotatingFileHandler never rotates with no backups to keep.
    LOG_FILE_BACKUPS: int = Field(default=LogSettings.file_backups, ge=1, le=1000)
    AGENT: str = DEFAULT_AGENT
    AGENT_INTERESTS: str = DEFAULT_INTERESTS
    AGENT_CACHE_TTL: int = Field(default=DEFAULT_CACHE_TTL_SECONDS, ge=1)
    AGENT_PIPELINE_HOME: str = ".agent_pipeline"
    # At most a year: 52,560 windows, under the 100,000 partitions Dagster advises as a limit.
    WINDOW_HISTORY_DAYS: int = Field(default=DEFAULT_HISTORY_DAYS, ge=1, le=MAX_HISTORY_DAYS)
    # buffer: every tick requests its window, whatever is running; skip: a tick that finds a
    # run in progress records its window as skipped and leaves it to the catch-up sensor.
    OVERLAP_POLICY: Literal["buffer", "skip"] = "buffer"
    CATCH_UP_HOURS: int = Field(default=DEFAULT_CATCH_UP_HOURS, ge=0)
    DAGSTER_RUN_RETENTION_DAYS: int = Field(default=DEFAULT_DAGSTER_RUN_DAYS, ge=0)
    RESULT_COMPACT_DAYS: int = Field(default=DEFAULT_RESULT_COMPACT_DAYS, ge=0)
    AGENT_RUNS_RETENTION_DAYS: int = Field(default=DEFAULT_AGENT_RUNS_DAYS, ge=0)
    AGENT_SOURCES: str = ""
    # Items scored under it stay out of the digest (unset: the built-in scorer's minimum).
    DIGEST_MIN_SCORE: float | None = Field(default=None, ge=0)
    # Default: llm when LLM_API_KEY is set, else keyword.
    AGENT_SCORER: Literal["llm", "keyword"] | None = None
    LLM_BASE_URL: str = DEFAULT_BASE_URL
    LLM_API_KEY: str | None = None
    LLM_MODEL: str = DEFAULT_MODEL
    LLM_CONCURRENCY: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=64)
    # Prices per million tokens; with both, each run's cost is shown and stored.
    LLM_PRICE_INPUT: float | None = PER_MILLION_TOKENS
    LLM_PRICE_OUTPUT: float | None = PER_MILLION_TOKENS
    # Requests a run may make (0: no limit), and the most the LLM may cost per UTC day in the
    # prices' currency (unset: no limit). What a run leaves unscored waits in the backlog.
    LLM_MAX_CALLS_PER_RUN: int = Field(default=DEFAULT_MAX_CALLS_PER_RUN, ge=0)
    LLM_DAILY_BUDGET: float | None = Field(default=None, ge=0)
    BACKLOG_MAX_AGE_HOURS: int = Field(default=DEFAULT_BACKLOG_MAX_AGE_HOURS, ge=1, le=24 * 30)

    @field_validator("SMTP_SECURITY", "BACKFILL_EMAIL", "OVERLAP_POLICY", "AGENT_SCORER",
                     mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


ENVIRONMENT_VARIABLES = tuple(Environment.model_fields)


def read_environment(env: Mapping[str, str] = os.environ) -> Environment:
    """The project's variables from env, validated; a ConfigurationError names the first bad
    one and says what is wrong with it."""
    values = {
        name: env[name].strip() for name in ENVIRONMENT_VARIABLES if (env.get(name) or "").strip()
    }
    try:
        return Environment.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigurationError(str(error["loc"][0]), _problem(error)) from None


@dataclass(frozen=True)
class CodeLocationSettings:
    """What definitions.py builds the code location from."""

    resources: dict[str, Any]
    log: LogSettings
    overlap_policy: str
    catch_up_hours: int


def code_location_settings(env: Mapping[str, str] = os.environ) -> CodeLocationSettings:
    """Everything the code location's load reads of the variables, read at once: a
    ConfigurationError names the first bad one."""
    return CodeLocationSettings(
        resources=resources_from_env(env),
        log=log_settings(env),
        overlap_policy=overlap_policy(env),
        catch_up_hours=catch_up_hours(env),
    )


def _problem(error: Mapping[str, Any]) -> str:
    """Pydantic's error in this project's words: what is wrong, with the value given."""
    given, limits = error.get("input"), error.get("ctx") or {}
    kind = error["type"]
    bounds = {
        "greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, limit = bounds[kind]
        return f"must be {words} {limits[limit]:g}, got {given}"
    if kind in ("int_parsing", "int_from_float"):
        return f"{given!r} is not a whole number"
    if kind == "float_parsing":
        return f"{given!r} is not a number"
    if kind == "bool_parsing":
        return f"{given!r} is not true or false"
    if kind == "literal_error":
        choices = str(limits.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{given!r} is not one of {choices}"
    return f"{given!r}: {error['msg']}"


def local_data_dir(env: Mapping[str, str]) -> Path:
    """Where the zero-setup defaults keep their files: the SQLite agent_runs database and
    the email outbox. AGENT_PIPELINE_HOME, else .agent_pipeline in the working directory."""
    return Path(read_environment(env).AGENT_PIPELINE_HOME).resolve()


def _secret(config: Environment, name: str) -> Any:
    """An EnvVar for a variable that is set: Dagster reads the value, the UI shows the name."""
    return EnvVar(name) if getattr(config, name) else None


def window_history_days(env: Mapping[str, str] = os.environ) -> int:
    """How many days back the window partitions start (WINDOW_HISTORY_DAYS)."""
    return read_environment(env).WINDOW_HISTORY_DAYS


def configured_agent(env: Mapping[str, str] = os.environ) -> str:
    """The agent the code location runs (AGENT), as its name or module:callable."""
    return read_environment(env).AGENT


def overlap_policy(env: Mapping[str, str] = os.environ) -> str:
    """What a tick does while a run of agent_job is in progress (OVERLAP_POLICY)."""
    return read_environment(env).OVERLAP_POLICY


def catch_up_hours(env: Mapping[str, str] = os.environ) -> int:
    """How far back the catch-up sensor looks for windows without a run (CATCH_UP_HOURS); 0
    turns it off. At most the window history: older windows do not exist."""
    config = read_environment(env)
    if config.CATCH_UP_HOURS > config.WINDOW_HISTORY_DAYS * 24:
        raise ConfigurationError(
            "CATCH_UP_HOURS",
            f"must be at most {config.WINDOW_HISTORY_DAYS * 24} (WINDOW_HISTORY_DAYS in "
            f"hours), got {config.CATCH_UP_HOURS}",
        )
    return config.CATCH_UP_HOURS


def retention_from_env(env: Mapping[str, str] = os.environ) -> Retention:
    """How long runs, results and rows are kept; 0 keeps them for ever."""
    config = read_environment(env)
    hours = catch_up_hours(env)
    if config.DAGSTER_RUN_RETENTION_DAYS and config.DAGSTER_RUN_RETENTION_DAYS * 24 <= hours:
        # The catch-up sensor would launch again the windows whose runs were deleted.
        raise ConfigurationError(
            "DAGSTER_RUN_RETENTION_DAYS", f"must be 0 or longer than CATCH_UP_HOURS ({hours} h)"
        )
    history = config.WINDOW_HISTORY_DAYS
    if config.AGENT_RUNS_RETENTION_DAYS and config.AGENT_RUNS_RETENTION_DAYS <= history:
        # A window that can still be launched keeps its row: it holds the window's email claim.
        raise ConfigurationError(
            "AGENT_RUNS_RETENTION_DAYS", f"must be 0 or more than WINDOW_HISTORY_DAYS ({history})"
        )
    return Retention(
        dagster_run_days=config.DAGSTER_RUN_RETENTION_DAYS,
        result_compact_days=config.RESULT_COMPACT_DAYS,
        agent_runs_days=config.AGENT_RUNS_RETENTION_DAYS,
    )


def log_settings(env: Mapping[str, str] = os.environ) -> LogSettings:
    """LOG_LEVEL, LOG_FILE, LOG_FILE_MAX_BYTES, LOG_FILE_BACKUPS and LOG_STDOUT."""
    config = read_environment(env)
    if config.LOG_FILE:
        _check_log_file(Path(config.LOG_FILE))
    return LogSettings(
        level=LEVELS[config.LOG_LEVEL],
        file=config.LOG_FILE,
        file_max_bytes=config.LOG_FILE_MAX_BYTES,
        file_backups=config.LOG_FILE_BACKUPS,
        stdout=config.LOG_STDOUT,
    )


def _check_log_file(path: Path) -> None:
    """Fail at load, not in every run, when LOG_FILE cannot be written."""
    if path.is_dir():
        raise ConfigurationError("LOG_FILE", f"{str(path)!r} is a folder, not a file")
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigurationError(
            "LOG_FILE", f"cannot write {str(path)!r}: {folder} is not a writable folder"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigurationError("LOG_FILE", f"cannot write {str(path)!r}")


def smtp_from_env(env: Mapping[str, str], outbox_dir: Path) -> Smtp:
    """SMTP_HOST's server; while it is unset, SMTP_CATCHER's mail catcher, else the outbox."""
    config = read_environment(env)
    if config.SMTP_CA_FILE and not Path(config.SMTP_CA_FILE).is_file():
        raise ConfigurationError("SMTP_CA_FILE", f"{config.SMTP_CA_FILE!r} is not a file")
    common: dict[str, Any] = {
        "timeout": config.SMTP_TIMEOUT,
        "ca_file": config.SMTP_CA_FILE,
        "retries": config.SMTP_RETRIES,
        "retry_backoff_seconds": config.SMTP_RETRY_BACKOFF,
        "outbox_dir": str(outbox_dir),
    }
    if not config.SMTP_HOST and config.SMTP_CATCHER:
        # A catcher takes everything over plain SMTP without a login: nothing to protect.
        catcher_host, catcher_port = _host_and_port(config.SMTP_CATCHER, "SMTP_CATCHER")
        return Smtp(host=catcher_host, port=catcher_port, security="none", **common)
    # Fail at load, not at the first run.
    check_login_is_encrypted(config.SMTP_HOST or "", config.SMTP_SECURITY, config.SMTP_USERNAME)
    return Smtp(
        host=config.SMTP_HOST,
        port=config.SMTP_PORT or DEFAULT_PORTS[config.SMTP_SECURITY],
        security=config.SMTP_SECURITY,
        username=config.SMTP_USERNAME,
        password=_secret(config, "SMTP_PASSWORD"),
        **common,
    )


def _host_and_port(value: str, name: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 1 <= int(port) <= MAX_PORT:
        raise ConfigurationError(name, f"{value!r} is not host:port, such as mailpit:1025")
    return host, int(port)


def alert_recipients(env: Mapping[str, str] = os.environ) -> list[str]:
    """ALERT_EMAIL_TO, else EMAIL_TO; none (alerts off) when neither is set. The outbox's
    stand-in recipient does not count: nobody reads it."""
    config = read_environment(env)
    if config.ALERT_EMAIL_TO:
        return parse_address_list(config.ALERT_EMAIL_TO, "ALERT_EMAIL_TO")
    if config.EMAIL_TO:
        return parse_address_list(config.EMAIL_TO, "EMAIL_TO")
    return []


def webserver_url(env: Mapping[str, str] = os.environ) -> str:
    """The Dagster UI as email readers reach it (DAGSTER_WEBSERVER_URL); `make dev`'s by
    default."""
    url = read_environment(env).DAGSTER_WEBSERVER_URL
    if safe_url(url) is None:
        raise ConfigurationError(
            "DAGSTER_WEBSERVER_URL",
            f"{url!r} is not an http(s) URL such as {DEFAULT_WEBSERVER_URL}",
        )
    return url


def check_sources(text: str) -> None:
    """A ConfigurationError naming the first AGENT_SOURCES entry that is no usable URL or
    path (its label only: a URL's query string may hold a token)."""
    for position, source in enumerate(parse_sources(text), start=1):
        try:
            check_source(source)
        except SourceError as exc:
            raise ConfigurationError(
                "AGENT_SOURCES", f"entry {position} ({source_label(source)!r}): {exc}"
            ) from None


def resources_from_env(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The job's resources, configured from env; a ConfigurationError names a bad variable."""
    config = read_environment(env)
    log_settings(env)  # fail at load, naming the LOG_ variable
    data_dir = local_data_dir(env)

    if config.DATABASE_URL:
        parse_database_url(config.DATABASE_URL)  # fail at load, naming DATABASE_URL
        agent_runs = AgentRunsStore(database_url=EnvVar("DATABASE_URL"))
    else:
        agent_runs = AgentRunsStore(database_url=f"sqlite:///{data_dir / 'agent_runs.sqlite3'}")

    if config.REDIS_URL and not config.REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError("REDIS_URL", "must start with redis://, rediss:// or unix://")
    redis = RedisStore(url=EnvVar("REDIS_URL")) if config.REDIS_URL else RedisStore()

    smtp = smtp_from_env(env, data_dir / "outbox")
    if config.SMTP_HOST and not config.EMAIL_FROM:
        raise ConfigurationError("EMAIL_FROM", "must be set when SMTP_HOST is set")
    if config.SMTP_HOST and not config.EMAIL_TO:
        raise ConfigurationError("EMAIL_TO", "must be set when SMTP_HOST is set")
    digest = DigestSettings(
        email_from=parse_address(config.EMAIL_FROM or OUTBOX_EMAIL_FROM, "EMAIL_FROM"),
        email_to=", ".join(parse_address_list(config.EMAIL_TO or OUTBOX_EMAIL_TO, "EMAIL_TO")),
        only_new=config.EMAIL_ONLY_NEW,
        backfill_email=config.BACKFILL_EMAIL,
        alert_email_to=", ".join(alert_recipients(env)),
        alert_repeat_minutes=config.ALERT_REPEAT_MINUTES,
        webserver_url=webserver_url(env),
    )

    load_agent(config.AGENT)  # fail at load, naming AGENT
    scorer = config.AGENT_SCORER or ("llm" if config.LLM_API_KEY else "keyword")
    if scorer == "llm" and not config.LLM_API_KEY:
        raise ConfigurationError("LLM_API_KEY", "must be set when AGENT_SCORER is llm")
    if config.AGENT == "triage" and not config.AGENT_SOURCES:
        raise ConfigurationError(
            "AGENT_SOURCES", "must name at least one feed URL or file for the triage agent"
        )
    check_sources(config.AGENT_SOURCES)
    if not config.LLM_BASE_URL.startswith(("http://", "https://")):
        raise ConfigurationError("LLM_BASE_URL", "must be an http(s) URL")
    if config.LLM_DAILY_BUDGET is not None and (
        config.LLM_PRICE_INPUT is None or config.LLM_PRICE_OUTPUT is None
    ):
        raise ConfigurationError(
            "LLM_DAILY_BUDGET",
            "needs LLM_PRICE_INPUT and LLM_PRICE_OUTPUT: without prices no spend is counted",
        )
    agent = AgentResource(
        # Feed URLs often carry tokens: an EnvVar keeps them out of the UI's resource config.
        sources=_secret(config, "AGENT_SOURCES") or "",
        scorer=scorer,
        llm_base_url=config.LLM_BASE_URL,
        llm_api_key=_secret(config, "LLM_API_KEY"),
        llm_model=config.LLM_MODEL,
        llm_concurrency=config.LLM_CONCURRENCY,
        llm_price_input=config.LLM_PRICE_INPUT,
        llm_price_output=config.LLM_PRICE_OUTPUT,
        llm_max_calls_per_run=config.LLM_MAX_CALLS_PER_RUN,
        llm_daily_budget=config.LLM_DAILY_BUDGET,
        backlog_max_age_hours=config.BACKLOG_MAX_AGE_HOURS,
        min_score=config.DIGEST_MIN_SCORE,
        agent=config.AGENT,
        interests=config.AGENT_INTERESTS,
        cache_ttl_seconds=config.AGENT_CACHE_TTL,
    )
    return {
        "retention": retention_from_env(env),
        "agent_runs": agent_runs,
        "redis": redis,
        "smtp": smtp,
        "digest": digest,
        "agent": agent,
    }
