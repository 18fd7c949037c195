"""Configuration from environment variables: one place that reads them, checks them, and
builds the resources. Secrets are handed to Dagster as EnvVar, so only their names reach
the UI and the run config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import EnvVar

from agent_pipeline.agents import DEFAULT_AGENT, load_agent
from agent_pipeline.agents.keywords import DEFAULT_INTERESTS
from agent_pipeline.agents.llm import DEFAULT_BASE_URL, DEFAULT_CONCURRENCY, DEFAULT_MODEL
from agent_pipeline.agents.sources import SourceError, check_source, parse_sources, source_label
from agent_pipeline.emails import parse_address, parse_address_list
from agent_pipeline.errors import ConfigurationError
from agent_pipeline.logs import LEVELS, LogSettings
from agent_pipeline.resources import AgentResource, AgentRunsStore, DigestSettings, Redis, Smtp
from agent_pipeline.resources.agent import DEFAULT_CACHE_TTL_SECONDS
from agent_pipeline.resources.agent_runs import parse_database_url
from agent_pipeline.resources.digest import DEFAULT_ALERT_REPEAT_MINUTES
from agent_pipeline.resources.retention import (
    DEFAULT_AGENT_RUNS_DAYS,
    DEFAULT_DAGSTER_RUN_DAYS,
    DEFAULT_RESULT_COMPACT_DAYS,
    Retention,
)
from agent_pipeline.resources.smtp import SECURITY_MODES, check_login_is_encrypted
from agent_pipeline.text import safe_url

# Every variable this project reads, each documented in .env.example.
ENVIRONMENT_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "SMTP_HOST",
    "SMTP_CATCHER",
    "SMTP_PORT",
    "SMTP_SECURITY",
    "SMTP_USERNAME",
    "SMTP_PASSWORD",
    "SMTP_TIMEOUT",
    "SMTP_CA_FILE",
    "SMTP_RETRIES",
    "SMTP_RETRY_BACKOFF",
    "EMAIL_FROM",
    "EMAIL_TO",
    "EMAIL_ONLY_NEW",
    "BACKFILL_EMAIL",
    "ALERT_EMAIL_TO",
    "ALERT_REPEAT_MINUTES",
    "DAGSTER_WEBSERVER_URL",
    "LOG_LEVEL",
    "LOG_FILE",
    "LOG_FILE_MAX_BYTES",
    "LOG_FILE_BACKUPS",
    "AGENT",
    "AGENT_INTERESTS",
    "AGENT_CACHE_TTL",
    "AGENT_PIPELINE_HOME",
    "WINDOW_HISTORY_DAYS",
    "OVERLAP_POLICY",
    "CATCH_UP_HOURS",
    "DAGSTER_RUN_RETENTION_DAYS",
    "RESULT_COMPACT_DAYS",
    "AGENT_RUNS_RETENTION_DAYS",
    "AGENT_SOURCES",
    "AGENT_SCORER",
    "LLM_BASE_URL",
    "LLM_API_KEY",
    "LLM_MODEL",
    "LLM_CONCURRENCY",
    "LLM_PRICE_INPUT",
    "LLM_PRICE_OUTPUT",
)
DEFAULT_HISTORY_DAYS = 14
BACKFILL_EMAIL_MODES = ("none", "each")
MAX_HISTORY_DAYS = 366
# buffer: every tick requests its window, whatever is running; skip: a tick that finds a run
# in progress records its window as skipped and leaves it to the catch-up sensor.
OVERLAP_POLICIES = ("buffer", "skip")
DEFAULT_CATCH_UP_HOURS = 24
# A week: a longer silence between alerts about a broken agent helps nobody.
MAX_ALERT_REPEAT_MINUTES = 7 * 24 * 60
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
MAX_PORT = 65535
# Used only while SMTP_HOST is unset and mail goes to the outbox folder.
OUTBOX_EMAIL_FROM = "agent-pipeline@example.com"
OUTBOX_EMAIL_TO = "you@example.com"
DEFAULT_WEBSERVER_URL = "http://localhost:3000"


def local_data_dir(env: Mapping[str, str]) -> Path:
    """Where the zero-setup defaults keep their files: the SQLite agent_runs database and
    the email outbox. AGENT_PIPELINE_HOME, else .agent_pipeline in the working directory."""
    return Path(env.get("AGENT_PIPELINE_HOME") or ".agent_pipeline").resolve()


def _int(
    env: Mapping[str, str], name: str, default: int, minimum: int = 1, maximum: int | None = None
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(name, f"{raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigurationError(name, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(name, f"must be at most {maximum}, got {value}")
    return value


def _float(
    env: Mapping[str, str], name: str, default: float, maximum: float = 3600.0, unit: str = "s"
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(name, f"{raw!r} is not a number") from None
    if not 0 <= value <= maximum:
        raise ConfigurationError(name, f"must be between 0 and {maximum:g}{unit}, got {raw}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(name, f"{raw!r} is not true or false")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of choices (the first is the default), or a ConfigurationError naming them."""
    raw = env.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise ConfigurationError(name, f"{raw!r} is not one of {', '.join(choices)}")
    return raw


def _secret(env: Mapping[str, str], name: str) -> Any:
    return EnvVar(name) if env.get(name) else None


def window_history_days(env: Mapping[str, str] = os.environ) -> int:
    """How many days back the window partitions start (WINDOW_HISTORY_DAYS). At most a year:
    52,560 windows, well under the 100,000 partitions Dagster advises as a limit."""
    return _int(env, "WINDOW_HISTORY_DAYS", DEFAULT_HISTORY_DAYS, maximum=MAX_HISTORY_DAYS)


def overlap_policy(env: Mapping[str, str] = os.environ) -> str:
    """What a tick does while a run of agent_job is in progress (OVERLAP_POLICY)."""
    return _choice(env, "OVERLAP_POLICY", OVERLAP_POLICIES)


def catch_up_hours(env: Mapping[str, str] = os.environ) -> int:
    """How far back the catch-up sensor looks for windows without a run (CATCH_UP_HOURS); 0
    turns it off. At most the window history: older windows do not exist."""
    return _int(
        env, "CATCH_UP_HOURS", DEFAULT_CATCH_UP_HOURS, minimum=0,
        maximum=window_history_days(env) * 24,
    )


def retention_from_env(env: Mapping[str, str] = os.environ) -> Retention:
    """How long runs, results and rows are kept; 0 keeps them for ever."""
    dagster_run_days = _int(
        env, "DAGSTER_RUN_RETENTION_DAYS", DEFAULT_DAGSTER_RUN_DAYS, minimum=0
    )
    if dagster_run_days and dagster_run_days * 24 <= catch_up_hours(env):
        # The catch-up sensor would launch again the windows whose runs were deleted.
        raise ConfigurationError(
            "DAGSTER_RUN_RETENTION_DAYS",
            f"must be 0 or longer than CATCH_UP_HOURS ({catch_up_hours(env)} h)",
        )
    agent_runs_days = _int(
        env, "AGENT_RUNS_RETENTION_DAYS", DEFAULT_AGENT_RUNS_DAYS, minimum=0
    )
    if agent_runs_days and agent_runs_days <= window_history_days(env):
        # A window that can still be launched keeps its row: it holds the window's email claim.
        raise ConfigurationError(
            "AGENT_RUNS_RETENTION_DAYS",
            f"must be 0 or more than WINDOW_HISTORY_DAYS ({window_history_days(env)})",
        )
    return Retention(
        dagster_run_days=dagster_run_days,
        result_compact_days=_int(
            env, "RESULT_COMPACT_DAYS", DEFAULT_RESULT_COMPACT_DAYS, minimum=0
        ),
        agent_runs_days=agent_runs_days,
    )


def log_settings(env: Mapping[str, str] = os.environ) -> LogSettings:
    """LOG_LEVEL, LOG_FILE, LOG_FILE_MAX_BYTES and LOG_FILE_BACKUPS."""
    level = env.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if level not in LEVELS:
        raise ConfigurationError("LOG_LEVEL", f"{level!r} is not one of {', '.join(LEVELS)}")
    log_file = env.get("LOG_FILE", "").strip() or None
    if log_file:
        _check_log_file(Path(log_file))
    return LogSettings(
        level=LEVELS[level],
        file=log_file,
        file_max_bytes=_int(env, "LOG_FILE_MAX_BYTES", LogSettings.file_max_bytes, minimum=1024),
        # At least 1: Python's RotatingFileHandler never rotates with no backups to keep.
        file_backups=_int(env, "LOG_FILE_BACKUPS", LogSettings.file_backups, maximum=1000),
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
    security = _choice(env, "SMTP_SECURITY", SECURITY_MODES)
    ca_file = env.get("SMTP_CA_FILE", "").strip() or None
    if ca_file and not Path(ca_file).is_file():
        raise ConfigurationError("SMTP_CA_FILE", f"{ca_file!r} is not a file")
    common: dict[str, Any] = {
        "timeout": float(_int(env, "SMTP_TIMEOUT", 30)),
        "ca_file": ca_file,
        "retries": _int(env, "SMTP_RETRIES", 3, minimum=0, maximum=10),
        "retry_backoff_seconds": _float(env, "SMTP_RETRY_BACKOFF", 2.0),
        "outbox_dir": str(outbox_dir),
    }
    port = _int(env, "SMTP_PORT", DEFAULT_PORTS[security], maximum=MAX_PORT)
    host = env.get("SMTP_HOST", "").strip()
    catcher = env.get("SMTP_CATCHER", "").strip()
    if not host and catcher:
        # A catcher takes everything over plain SMTP without a login: nothing to protect.
        catcher_host, catcher_port = _host_and_port(catcher, "SMTP_CATCHER")
        return Smtp(host=catcher_host, port=catcher_port, security="none", **common)
    username = env.get("SMTP_USERNAME") or None
    check_login_is_encrypted(host, security, username)  # fail at load, not at the first run
    return Smtp(
        host=host or None,
        port=port,
        security=security,
        username=username,
        password=_secret(env, "SMTP_PASSWORD"),
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
    if env.get("ALERT_EMAIL_TO", "").strip():
        return parse_address_list(env["ALERT_EMAIL_TO"], "ALERT_EMAIL_TO")
    if env.get("EMAIL_TO", "").strip():
        return parse_address_list(env["EMAIL_TO"], "EMAIL_TO")
    return []


def webserver_url(env: Mapping[str, str] = os.environ) -> str:
    """The Dagster UI as email readers reach it (DAGSTER_WEBSERVER_URL); `make dev`'s by
    default."""
    url = env.get("DAGSTER_WEBSERVER_URL", "").strip() or DEFAULT_WEBSERVER_URL
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
    log_settings(env)  # fail at load, naming the LOG_ variable
    data_dir = local_data_dir(env)

    database_url = env.get("DATABASE_URL", "").strip()
    if database_url:
        parse_database_url(database_url)  # fail at load, naming DATABASE_URL
        agent_runs = AgentRunsStore(database_url=EnvVar("DATABASE_URL"))
    else:
        agent_runs = AgentRunsStore(database_url=f"sqlite:///{data_dir / 'agent_runs.sqlite3'}")

    redis_url = env.get("REDIS_URL", "").strip()
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError("REDIS_URL", "must start with redis://, rediss:// or unix://")
    redis = Redis(url=EnvVar("REDIS_URL")) if redis_url else Redis()

    smtp_host = env.get("SMTP_HOST", "").strip()
    smtp = smtp_from_env(env, data_dir / "outbox")

    email_from = env.get("EMAIL_FROM", "").strip()
    email_to = env.get("EMAIL_TO", "").strip()
    if smtp_host and not email_from:
        raise ConfigurationError("EMAIL_FROM", "must be set when SMTP_HOST is set")
    if smtp_host and not email_to:
        raise ConfigurationError("EMAIL_TO", "must be set when SMTP_HOST is set")
    digest = DigestSettings(
        email_from=parse_address(email_from or OUTBOX_EMAIL_FROM, "EMAIL_FROM"),
        email_to=", ".join(parse_address_list(email_to or OUTBOX_EMAIL_TO, "EMAIL_TO")),
        only_new=_bool(env, "EMAIL_ONLY_NEW", True),
        backfill_email=_choice(env, "BACKFILL_EMAIL", BACKFILL_EMAIL_MODES),
        alert_email_to=", ".join(alert_recipients(env)),
        alert_repeat_minutes=_int(
            env, "ALERT_REPEAT_MINUTES", DEFAULT_ALERT_REPEAT_MINUTES,
            maximum=MAX_ALERT_REPEAT_MINUTES,
        ),
        webserver_url=webserver_url(env),
    )

    agent_spec = env.get("AGENT", "").strip() or DEFAULT_AGENT
    load_agent(agent_spec)  # fail at load, naming AGENT
    llm_key = env.get("LLM_API_KEY", "").strip()
    scorer = env.get("AGENT_SCORER", "").strip().lower() or ("llm" if llm_key else "keyword")
    if scorer not in ("llm", "keyword"):
        raise ConfigurationError("AGENT_SCORER", "must be llm or keyword")
    if scorer == "llm" and not llm_key:
        raise ConfigurationError("LLM_API_KEY", "must be set when AGENT_SCORER is llm")
    if agent_spec == "triage" and not env.get("AGENT_SOURCES", "").strip():
        raise ConfigurationError(
            "AGENT_SOURCES", "must name at least one feed URL or file for the triage agent"
        )
    check_sources(env.get("AGENT_SOURCES", ""))
    llm_base_url = env.get("LLM_BASE_URL", "").strip() or DEFAULT_BASE_URL
    if not llm_base_url.startswith(("http://", "https://")):
        raise ConfigurationError("LLM_BASE_URL", "must be an http(s) URL")
    per_million = {"maximum": 1e6, "unit": " per million tokens"}
    price_input = _float(env, "LLM_PRICE_INPUT", -1.0, **per_million)
    price_output = _float(env, "LLM_PRICE_OUTPUT", -1.0, **per_million)
    agent = AgentResource(
        # Feed URLs often carry tokens: an EnvVar keeps them out of the UI's resource config.
        sources=_secret(env, "AGENT_SOURCES") or "",
        scorer=scorer,
        llm_base_url=llm_base_url,
        llm_api_key=_secret(env, "LLM_API_KEY"),
        llm_model=env.get("LLM_MODEL", "").strip() or DEFAULT_MODEL,
        llm_concurrency=_int(env, "LLM_CONCURRENCY", DEFAULT_CONCURRENCY, maximum=64),
        llm_price_input=None if price_input < 0 else price_input,
        llm_price_output=None if price_output < 0 else price_output,
        agent=agent_spec,
        interests=env.get("AGENT_INTERESTS", "").strip() or DEFAULT_INTERESTS,
        cache_ttl_seconds=_int(env, "AGENT_CACHE_TTL", DEFAULT_CACHE_TTL_SECONDS),
    )
    return {
        "retention": retention_from_env(env),
        "agent_runs": agent_runs,
        "redis": redis,
        "smtp": smtp,
        "digest": digest,
        "agent": agent,
    }
