"""Structured logs: one JSON object per line, from structlog. An op's events are bound with
the Dagster run id, the window, the agent and the op, and each line goes to three places:
Dagster (the run's logs in the UI), stdout (for container log collectors) and, when
LOG_FILE is set, a file rotated by size. Records of the plain `logging` loggers under
`agent_pipeline` (the resources' retry warnings) reach stdout and the file as JSON too, in
every process that has loaded definitions.py.

Dagster's own console logger also prints each event of a run, ours included, as a
human-readable line on stderr, as it does for every Dagster job: collectors that want JSON
read stdout. Where a person reads both in one terminal (make dev), LOG_STDOUT=false leaves
Dagster's line alone for the events it prints. The rotating file expects one writer at a
time, which the run queue's max_concurrent_runs: 1 gives."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import structlog

# The package's stdlib logger: its handlers are the stdout and file outputs.
OUTPUT_LOGGER = "agent_pipeline"
FIRST_KEYS = ("event", "level", "timestamp")
LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
          "ERROR": logging.ERROR}


@dataclass(frozen=True)
class LogSettings:
    level: int = logging.INFO
    file: str | None = None
    file_max_bytes: int = 10 * 1024 * 1024
    file_backups: int = 5
    # False: an event that goes to Dagster's log is not written to stdout too, where Dagster's
    # console logger already prints it (make dev's terminal). Events with no Dagster log (the
    # resources' warnings) still are.
    stdout: bool = True


def _json_line(event: dict[str, Any]) -> str:
    # The event first: it is what a reader of the UI's log column sees. Non-ASCII stays
    # readable; newlines and quotes in agent text are escaped by JSON, so one event is always
    # one line.
    ordered = {key: event[key] for key in FIRST_KEYS if key in event}
    ordered.update((key, value) for key, value in event.items() if key not in ordered)
    return json.dumps(ordered, ensure_ascii=False, default=str)


class JsonLineFormatter(logging.Formatter):
    """Writes structlog's lines as they are, and renders plain logging records alike."""

    def format(self, record: logging.LogRecord) -> str:
        line = getattr(record, "json_line", None)
        if line is not None:
            return line
        event = {
            "event": record.getMessage(),
            "level": record.levelname.lower(),
            "logger": record.name,
            # As structlog's TimeStamper writes it: UTC with a Z.
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat()
            .replace("+00:00", "Z"),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return _json_line(event)


_configured: LogSettings | None = None


def configure_output(settings: LogSettings) -> logging.Logger:
    """The package logger with its stdout handler and, with settings.file, its rotating file
    handler; set up again only when the settings change."""
    global _configured
    logger = logging.getLogger(OUTPUT_LOGGER)
    if _configured == settings:
        return logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    stdout = logging.StreamHandler(sys.stdout)
    if not settings.stdout:
        stdout.addFilter(lambda record: not getattr(record, "in_dagster", False))
    handlers: list[logging.Handler] = [stdout]
    if settings.file:
        Path(settings.file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            RotatingFileHandler(
                settings.file,
                maxBytes=settings.file_max_bytes,
                backupCount=settings.file_backups,
                encoding="utf-8",
            )
        )
    for handler in handlers:
        handler.setFormatter(JsonLineFormatter())
        logger.addHandler(handler)
    logger.setLevel(settings.level)
    # Dagster's own handlers on the root logger would print each line a second time.
    logger.propagate = False
    _configured = settings
    return logger


class _Outputs:
    """structlog's "logger": hands each rendered line to Dagster's log and to the outputs."""

    def __init__(self, dagster_log: Any, output: logging.Logger):
        self._dagster_log = dagster_log
        self._output = output

    def _emit(self, level: int, line: str) -> None:
        if self._dagster_log is not None:
            self._dagster_log.log(level, line)
        self._output.log(
            level, line,
            extra={"json_line": line, "in_dagster": self._dagster_log is not None},
        )

    def debug(self, line: str) -> None:
        self._emit(logging.DEBUG, line)

    def info(self, line: str) -> None:
        self._emit(logging.INFO, line)

    def warning(self, line: str) -> None:
        self._emit(logging.WARNING, line)

    def error(self, line: str) -> None:
        self._emit(logging.ERROR, line)

    def critical(self, line: str) -> None:
        self._emit(logging.CRITICAL, line)

    exception = error


def event_logger(
    dagster_log: Any, settings: LogSettings, **bound: Any
) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger writing JSON lines with bound's fields to dagster_log (None: to the
    outputs only), stdout and the log file."""
    logger = structlog.wrap_logger(
        _Outputs(dagster_log, configure_output(settings)),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=lambda event, **_: _json_line(event)),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(settings.level),
        cache_logger_on_first_use=False,
    )
    return logger.bind(**bound)
