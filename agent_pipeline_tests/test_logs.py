"""Structured logs bound with the run, window, agent and op: lines a person reads in the run's
Dagster logs, JSON lines on stdout and in the rotating LOG_FILE."""

from __future__ import annotations

import json
import logging

import pytest

from agent_pipeline.agents.llm import SYSTEM_PROMPT
from agent_pipeline.errors import ConfigurationError
from agent_pipeline.logs import LogSettings, configure_output, event_logger, readable_line
from agent_pipeline.settings import log_settings
from agent_pipeline_tests.feed_server import RSS2, FeedServer
from agent_pipeline_tests.helpers import run_window, window_keys
from agent_pipeline_tests.llm_server import LoopbackLlm

OPS = ["record_run", "run_agent", "rank_top_five", "send_email"]


@pytest.fixture(autouse=True)
def fresh_outputs():
    """Each test's LOG_FILE gets handlers of its own; none are left open afterwards."""
    yield
    configure_output(LogSettings())  # back to stdout only


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_run_logs_json_lines_to_dagster_stdout_and_the_file(production_env, tmp_path, capfd):
    log_file = tmp_path / "logs" / "agent.log"
    production_env.setenv("LOG_FILE", str(log_file))
    (window,) = window_keys(1)
    result = run_window(window)
    assert result.success

    in_file = log_file.read_text().splitlines()
    events = [json.loads(line) for line in in_file]  # every line is one JSON object
    assert [e["op"] for e in events if e["event"] == "Run recorded in agent_runs"] == OPS[:1]
    assert {e["op"] for e in events} == set(OPS)
    for event in events:
        assert event["run_id"] == result.run_id
        assert event["window"] == window
        assert event["agent"] == "keywords"
        assert event["level"] in ("info", "warning") and event["timestamp"].endswith("Z")
    emailed = next(e for e in events if e["event"].startswith("Emailed the top 5"))
    assert emailed["recipients"] == 2 and emailed["op"] == "send_email"
    # The same events in the run's logs in Dagster, each a line a person reads: the event and
    # its own fields, not the run, window, agent and op that Dagster shows beside it.
    readable = [readable_line(event) for event in events]
    assert [line for line in result.logs if line in readable] == readable
    assert not any(line.startswith("{") for line in result.logs)
    ranked = next(line for line in result.logs if line.startswith("Ranked  "))
    assert "top=5 outcomes=" in ranked and "window" not in ranked and result.run_id not in ranked
    # The JSON lines on stdout too, for a log collector.
    stdout = capfd.readouterr().out
    assert all(line in stdout.splitlines() for line in in_file)


def test_log_stdout_false_prints_a_runs_events_once_in_dagsters_log(production_env, tmp_path,
                                                                     capfd):
    log_file = tmp_path / "agent.log"
    production_env.setenv("LOG_FILE", str(log_file))
    production_env.setenv("LOG_STDOUT", "false")
    result = run_window(window_keys(1)[0])
    assert result.success
    readable = [readable_line(event) for event in json_lines(log_file.read_text())]
    assert readable and [line for line in result.logs if line in readable] == readable
    assert json_lines(capfd.readouterr().out) == []  # not a second time on stdout
    # A warning of a resource's own, which Dagster's log does not carry, still reaches stdout.
    logging.getLogger("agent_pipeline.resources.redis").warning("Redis went away")
    (line,) = json_lines(capfd.readouterr().out)
    assert line["event"] == "Redis went away"


def test_log_level_filters_everywhere(production_env, tmp_path, capfd):
    log_file = tmp_path / "agent.log"
    production_env.setenv("LOG_FILE", str(log_file))
    production_env.setenv("LOG_LEVEL", "warning")
    production_env.setenv("AGENT", "agent_pipeline_tests.sample_agents:hostile")
    result = run_window(window_keys(1)[0])
    events = json_lines(log_file.read_text())
    assert events and {e["level"] for e in events} == {"warning"}
    assert any(e["event"].startswith("Dropped item") for e in events)
    assert {e["level"] for e in json_lines(capfd.readouterr().out)} == {"warning"}
    assert all(readable_line(event) in result.logs for event in events)
    assert not any(line.startswith(("Ranked", "Agent finished")) for line in result.logs)


def test_the_file_rotates_by_size_and_keeps_the_configured_count(production_env, tmp_path):
    log_file = tmp_path / "agent.log"
    production_env.setenv("LOG_FILE", str(log_file))
    production_env.setenv("LOG_FILE_MAX_BYTES", "2048")
    production_env.setenv("LOG_FILE_BACKUPS", "2")
    for window in window_keys(4):
        assert run_window(window).success
    files = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("agent.log"))
    assert files == ["agent.log", "agent.log.1", "agent.log.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 2048
        json_lines((tmp_path / name).read_text())  # whole lines only


def test_no_secret_and_no_prompt_reaches_the_logs(production_env, tmp_path):
    log_file = tmp_path / "agent.log"
    production_env.setenv("LOG_FILE", str(log_file))
    production_env.setenv("LOG_LEVEL", "DEBUG")
    routes = {"/rss2.xml?token=feed-secret-77": (200, "application/rss+xml", RSS2)}
    with FeedServer(routes) as feeds, LoopbackLlm() as llm:
        production_env.setenv("AGENT", "triage")
        production_env.setenv("AGENT_SOURCES", feeds.url("/rss2.xml?token=feed-secret-77"))
        production_env.setenv("LLM_BASE_URL", llm.base_url)
        production_env.setenv("LLM_API_KEY", "sk-live-secret-4242")
        result = run_window(window_keys(1)[0])
    assert result.success and llm.requests
    text = log_file.read_text() + "\n".join(result.logs)
    assert "Source http://127.0.0.1" in text  # the feed is named, without its query string
    for secret in ("sk-live-secret-4242", "feed-secret-77"):
        assert secret not in text
    assert SYSTEM_PROMPT[:60] not in text


def test_a_readable_line_keeps_agent_text_on_its_line_and_quotes_what_has_spaces():
    event = {"event": "Dropped item", "level": "warning", "run_id": "r", "op": "run_agent",
             "title": "Soup\nFAKE ERROR line", "why": "no title", "count": 3, "ok": None,
             "csi": "\x9b31m"}
    assert readable_line(event) == (
        'Dropped item  title="Soup\\nFAKE ERROR line" why="no title" count=3 ok=null '
        'csi="\\u009b31m"'
    )
    assert readable_line({"event": "line one\nline two"}) == '"line one\\nline two"'
    assert readable_line({"event": "x", "a\nb": 1, "t": "\ud800"}) == 'x  "a\\nb"=1 t="\\ud800"'
    # A traceback keeps its lines, each indented under the event; its message cannot pass
    # for a line of the log or drive the terminal.
    assert readable_line({"event": "boom", "exception": "Traceback:\nValueError: \x1b[2J\n"
                          "2026-12-05 - dagster - INFO - forged"}) == (
        "boom\n    Traceback:\n    ValueError: \\u001b[2J\n"
        "    2026-12-05 - dagster - INFO - forged"
    )


def test_a_lone_surrogate_from_a_feed_is_written_escaped(tmp_path):
    """A feed's JSON may decode to a lone surrogate, which no UTF-8 file takes as it is."""
    log_file = tmp_path / "agent.log"
    event_logger(None, LogSettings(file=str(log_file)), op="run_agent").info(
        "Dropped item", title="bad \ud800 title")
    (event,) = json_lines(log_file.read_text(encoding="utf-8"))
    assert event["title"] == "bad \ud800 title"


def test_plain_logging_records_of_the_package_become_json_lines(tmp_path):
    log_file = tmp_path / "agent.log"
    configure_output(LogSettings(file=str(log_file)))
    logging.getLogger("agent_pipeline.resources.smtp").warning("SMTP delivery failed (%s)", "x")
    (event,) = json_lines(log_file.read_text())
    assert event["event"] == "SMTP delivery failed (x)"
    assert event["level"] == "warning" and event["logger"] == "agent_pipeline.resources.smtp"
    assert event["timestamp"].endswith("Z")


@pytest.mark.parametrize(
    "name, value, problem",
    [
        ("LOG_LEVEL", "chatty", "'CHATTY' is not one of DEBUG, INFO, WARNING, ERROR"),
        ("LOG_FILE_MAX_BYTES", "10MB", "'10MB' is not a whole number"),
        ("LOG_FILE_MAX_BYTES", "10", "must be at least 1024"),
        ("LOG_FILE_BACKUPS", "0", "must be at least 1"),
    ],
)
def test_bad_log_settings_name_the_variable(name, value, problem):
    with pytest.raises(ConfigurationError, match=f"^{name}: {problem}"):
        log_settings({name: value})


def test_log_settings_defaults():
    assert log_settings({}) == LogSettings(logging.INFO, None, 10 * 1024 * 1024, 5)
