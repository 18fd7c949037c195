"""Structured logs, from structlog. An op's events are bound with the Dagster run id, the
window, the agent and the op, and each goes to three places: Dagster (the run's logs in the
UI, and Dagster's console logger on stderr) as a line a person reads, the event and its own
fields (`Ranked  top=5 outcomes=24`; Dagster shows the run and the op beside it); stdout,
for container log collectors, and, when LOG_FILE is set, a file rotated by size, as one JSON
object per line with every field. Records of the plain `logging` loggers under
`agent_pipeline` (the resources' retry warnings) reach stdout and the file as JSON too, in
every process that has loaded definitions.py.

Where a person reads stdout and stderr in one terminal (make dev), LOG_STDOUT=false leaves
Dagster's line alone for the events it prints. The rotating file expects one writer at a
time, which the run queue's max_concurrent_runs: 1 gives."""

from __future__ import annotations

import json
import logging
import re
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
# Left out of the line Dagster shows: its own columns and the run's tags say them.
SHOWN_BY_DAGSTER = frozenset({"level", "timestamp", "run_id", "window", "agent", "op"})
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


# Characters that break a line or that a terminal acts on (C1 controls such as CSI), and lone
# surrogates (from a feed's JSON), which no UTF-8 output can write: the C0 controls, which
# JSON escapes, and the rest, which it leaves raw with ensure_ascii off.
_C0_BUT_NEWLINE = "\x00-\x09\x0b-\x1f"
_RAW_IN_JSON_CHARS = "\x7f-\x9f\u2028\u2029\ud800-\udfff"
_CONTROL = re.compile(f"[{_C0_BUT_NEWLINE}\n{_RAW_IN_JSON_CHARS}]")
_RAW_IN_JSON = re.compile(f"[{_RAW_IN_JSON_CHARS}]")
# In a traceback, which keeps its lines: every one of them but the newline.
_CONTROL_BUT_NEWLINE = re.compile(f"[{_C0_BUT_NEWLINE}{_RAW_IN_JSON_CHARS}]")
# A field value is printed bare only without these, which could blur where it ends.
_NEEDS_QUOTES = re.compile(r'[\s"=\\]')


def _escape(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def _json(value: Any) -> str:
    """JSON that stays one line and inert in a terminal; non-ASCII text stays readable."""
    return _RAW_IN_JSON.sub(_escape, json.dumps(value, ensure_ascii=False, default=str))


def _json_line(event: dict[str, Any]) -> str:
    # The event first: it is what a reader looks for. Newlines and quotes in agent text are
    # escaped by JSON, so one event is always one line.
    ordered = {key: event[key] for key in FIRST_KEYS if key in event}
    ordered.update((key, value) for key, value in event.items() if key not in ordered)
    return _json(ordered)


def _bare_or_quoted(value: Any) -> str:
    if isinstance(value, str) and value and not (
        _NEEDS_QUOTES.search(value) or _CONTROL.search(value)
    ):
        return value
    return _json(value)


def readable_line(event: dict[str, Any]) -> str:
    """The event as a person reads it, as structlog's console renderer lays it out: its text,
    then its own fields as key=value (a string JSON-quoted when it holds spaces, quotes or
    control characters, so a field's end is plain); a traceback on the lines below. Text
    with control characters is quoted too: an agent's words never start a line of their own."""
    fields = [
        f"{_bare_or_quoted(str(key))}={_bare_or_quoted(value)}" for key, value in event.items()
        if key not in SHOWN_BY_DAGSTER and key not in ("event", "exception")
    ]
    line = str(event.get("event", ""))
    if _CONTROL.search(line):
        line = _json(line)
    if fields:
        line += "  " + " ".join(fields)
    if event.get("exception"):
        # Indented, and escaped but for its newlines: an exception's message (an agent's
        # words, maybe) cannot pass for a log line of its own or drive the terminal.
        traceback = _CONTROL_BUT_NEWLINE.sub(_escape, str(event["exception"]))
        line += "".join(f"\n    {part}" for part in traceback.splitlines())
    return line


def _render(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, str]:
    """structlog's last step: both renderings, handed to _Outputs' methods as keywords."""
    return {"json_line": _json_line(event), "readable": readable_line(event)}


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
    """structlog's "logger": hands the readable line to Dagster's log and the JSON line to
    the outputs."""

    def __init__(self, dagster_log: Any, output: logging.Logger):
        self._dagster_log = dagster_log
        self._output = output

    def _emit(self, level: int, json_line: str, readable: str) -> None:
        if self._dagster_log is not None:
            self._dagster_log.log(level, readable)
        self._output.log(
            level, json_line,
            extra={"json_line": json_line, "in_dagster": self._dagster_log is not None},
        )

    def debug(self, **lines: str) -> None:
        self._emit(logging.DEBUG, **lines)

    def info(self, **lines: str) -> None:
        self._emit(logging.INFO, **lines)

    def warning(self, **lines: str) -> None:
        self._emit(logging.WARNING, **lines)

    def error(self, **lines: str) -> None:
        self._emit(logging.ERROR, **lines)

    def critical(self, **lines: str) -> None:
        self._emit(logging.CRITICAL, **lines)

    exception = error


def event_logger(
    dagster_log: Any, settings: LogSettings, **bound: Any
) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger writing each event with bound's fields to dagster_log (None: to
    the outputs only) as a readable line, and to stdout and the log file as a JSON line."""
    logger = structlog.wrap_logger(
        _Outputs(dagster_log, configure_output(settings)),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(settings.level),
        cache_logger_on_first_use=False,
    )
    return logger.bind(**bound)
