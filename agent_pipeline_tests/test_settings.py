from __future__ import annotations

import pytest
from dagster import EnvVar

from agent_pipeline.errors import ConfigurationError
from agent_pipeline.settings import resources_from_env, window_history_days


def test_defaults_need_nothing(tmp_path):
    resources = resources_from_env({"AGENT_PIPELINE_HOME": str(tmp_path)})
    assert resources["agent_runs"].database_url == f"sqlite:///{tmp_path / 'agent_runs.sqlite3'}"
    assert resources["redis"].url is None
    smtp = resources["smtp"]
    assert smtp.host is None and smtp.outbox_dir == str(tmp_path / "outbox")
    assert resources["digest"].recipients() == ["you@example.com"]
    assert resources["agent"].agent == "keywords"


def test_secrets_and_urls_are_passed_as_env_vars_not_values(tmp_path):
    env = {
        "DATABASE_URL": "postgresql://user:db-secret@db:5432/agent",
        "REDIS_URL": "redis://:redis-secret@cache:6379/0",
        "SMTP_HOST": "mail.example.com",
        "SMTP_USERNAME": "agent",
        "SMTP_PASSWORD": "smtp-secret",
        "EMAIL_FROM": "agent@example.com",
        "EMAIL_TO": "a@example.com,b@example.com",
    }
    resources = resources_from_env(env)
    assert resources["agent_runs"].database_url == EnvVar("DATABASE_URL")
    assert resources["redis"].url == EnvVar("REDIS_URL")
    assert resources["smtp"].password == EnvVar("SMTP_PASSWORD")
    assert resources["smtp"].port == 587 and resources["smtp"].security == "starttls"
    assert resources["digest"].recipients() == ["a@example.com", "b@example.com"]


@pytest.mark.parametrize("security, port", [("ssl", 465), ("none", 25), ("STARTTLS", 587)])
def test_the_default_port_follows_the_security_mode(security, port):
    env = {"SMTP_SECURITY": security}
    assert resources_from_env(env)["smtp"].port == port


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"DATABASE_URL": "::nonsense::"}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"SMTP_SECURITY": "tls1.3"}, "SMTP_SECURITY"),
        ({"SMTP_PORT": "twenty-five"}, "SMTP_PORT"),
        ({"SMTP_PORT": "0"}, "SMTP_PORT"),
        ({"SMTP_PORT": "99999"}, "SMTP_PORT"),
        ({"SMTP_CATCHER": "mailpit"}, "SMTP_CATCHER"),
        ({"SMTP_CATCHER": "mailpit:70000"}, "SMTP_CATCHER"),
        ({"SMTP_HOST": "mail", "EMAIL_TO": "a@example.com"}, "EMAIL_FROM"),
        ({"SMTP_HOST": "mail", "EMAIL_FROM": "a@example.com"}, "EMAIL_TO"),
        ({"EMAIL_TO": "a@example.com; b@example.com"}, "EMAIL_TO"),
        ({"AGENT_CACHE_TTL": "-5"}, "AGENT_CACHE_TTL"),
        ({"ALERT_REPEAT_MINUTES": "0"}, "ALERT_REPEAT_MINUTES"),
        ({"ALERT_REPEAT_MINUTES": "hourly"}, "ALERT_REPEAT_MINUTES"),
        ({"WINDOW_HISTORY_DAYS": "a week"}, "WINDOW_HISTORY_DAYS"),
        ({"WINDOW_HISTORY_DAYS": "3650"}, "WINDOW_HISTORY_DAYS"),
        ({"AGENT": "nosuchagent"}, "AGENT"),
        ({"AGENT": "no_such_package.agents:run"}, "AGENT"),
        ({"SMTP_CA_FILE": "/no/such/ca.pem"}, "SMTP_CA_FILE"),
        ({"AGENT_SCORER": "llm"}, "LLM_API_KEY"),
        ({"AGENT_SCORER": "magic"}, "AGENT_SCORER"),
        ({"AGENT": "triage"}, "AGENT_SOURCES"),
        ({"LLM_BASE_URL": "localhost:11434"}, "LLM_BASE_URL"),
        ({"LLM_PRICE_INPUT": "cheap"}, "LLM_PRICE_INPUT"),
        ({"LLM_CONCURRENCY": "1000"}, "LLM_CONCURRENCY"),
        ({"LLM_MAX_CALLS_PER_RUN": "-1"}, "LLM_MAX_CALLS_PER_RUN"),
        ({"LLM_DAILY_BUDGET": "lots"}, "LLM_DAILY_BUDGET"),
        ({"LLM_DAILY_BUDGET": "1", "LLM_PRICE_INPUT": "0.15"}, "LLM_DAILY_BUDGET"),
        ({"BACKLOG_MAX_AGE_HOURS": "0"}, "BACKLOG_MAX_AGE_HOURS"),
        ({"DATABASE_URL": "postgresql://u:p@host:port/db"}, "DATABASE_URL"),
        ({"ALERT_EMAIL_TO": "oncall"}, "ALERT_EMAIL_TO"),
        ({"DAGSTER_WEBSERVER_URL": "dagster.example.com"}, "DAGSTER_WEBSERVER_URL"),
        ({"DAGSTER_WEBSERVER_URL": "javascript:alert(1)"}, "DAGSTER_WEBSERVER_URL"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"BACKFILL_EMAIL": "sometimes"}, "BACKFILL_EMAIL"),
        ({"LOG_FILE_BACKUPS": "many"}, "LOG_FILE_BACKUPS"),
        ({"LOG_FILE_BACKUPS": "0"}, "LOG_FILE_BACKUPS"),
        ({"LOG_FILE": "/etc/passwd/agent.log"}, "LOG_FILE"),
        ({"LOG_FILE": "/tmp"}, "LOG_FILE"),
    ],
)
def test_bad_settings_name_the_variable(env, variable):
    with pytest.raises(ConfigurationError) as failure:
        window_history_days(env)
        resources_from_env(env)
    assert failure.value.variable == variable
    assert str(failure.value).startswith(f"{variable}: ")


REAL_SERVER = {"EMAIL_FROM": "agent@example.com", "EMAIL_TO": "a@example.com"}


def test_a_port_out_of_range_names_the_variable_and_the_range():
    with pytest.raises(ConfigurationError) as failure:
        resources_from_env({"SMTP_PORT": "99999"})
    assert str(failure.value) == "SMTP_PORT: must be at most 65535, got 99999"


@pytest.mark.parametrize("host", ["mail.invalid", "192.0.2.1"])
def test_a_plain_login_to_another_machine_is_refused_at_load(host):
    # Loading connects to nothing; mail.invalid would not resolve even if it did.
    env = {"SMTP_HOST": host, "SMTP_SECURITY": "none", "SMTP_USERNAME": "agent",
           "SMTP_PASSWORD": "secret", **REAL_SERVER}
    with pytest.raises(ConfigurationError) as failure:
        resources_from_env(env)
    assert failure.value.variable == "SMTP_SECURITY"
    assert "SMTP_USERNAME" in str(failure.value) and "use starttls or ssl" in str(failure.value)
    # Encrypted, or without a login, the same host is fine.
    assert resources_from_env({**env, "SMTP_SECURITY": "starttls"})["smtp"].host == host
    assert resources_from_env({**env, "SMTP_USERNAME": ""})["smtp"].username is None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_a_plain_login_to_a_loopback_relay_is_allowed(host):
    env = {"SMTP_HOST": host, "SMTP_SECURITY": "none", "SMTP_USERNAME": "agent", **REAL_SERVER}
    smtp = resources_from_env(env)["smtp"]
    assert (smtp.host, smtp.security, smtp.username) == (host, "none", "agent")


def test_a_mail_catcher_takes_the_mail_while_smtp_host_is_unset():
    env = {"SMTP_CATCHER": "mailpit:1025", "SMTP_USERNAME": "agent"}
    smtp = resources_from_env(env)["smtp"]
    assert (smtp.host, smtp.port, smtp.security, smtp.username) == ("mailpit", 1025, "none", None)
    # SMTP_HOST wins, with the app's defaults.
    smtp = resources_from_env({**env, "SMTP_HOST": "mail.example.com", **REAL_SERVER})["smtp"]
    assert (smtp.host, smtp.port, smtp.security) == ("mail.example.com", 587, "starttls")


@pytest.mark.parametrize(
    "env, alert_recipients",
    [
        ({}, []),  # the outbox's stand-in recipient gets no alerts
        ({"EMAIL_TO": "team@example.com"}, ["team@example.com"]),
        (
            {"EMAIL_TO": "team@example.com", "ALERT_EMAIL_TO": "a@example.com, b@example.com"},
            ["a@example.com", "b@example.com"],
        ),
    ],
)
def test_alerts_go_to_alert_email_to_else_email_to(env, alert_recipients):
    assert resources_from_env(env)["digest"].alert_recipients() == alert_recipients


def test_the_webserver_url_defaults_to_make_dev():
    assert resources_from_env({})["digest"].webserver_url == "http://localhost:3000"
    env = {"DAGSTER_WEBSERVER_URL": "https://dagster.example.com/"}
    assert resources_from_env(env)["digest"].webserver_url == "https://dagster.example.com/"


LOAD_ERROR_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries {
    locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "env, problem",
    [
        ({"SMTP_HOST": "mail.example.com", "SMTP_PORT": "99999"},
         "SMTP_PORT: must be at most 65535, got 99999"),
        ({"EMAIL_TO": "a@example.com; b@example.com"},
         "EMAIL_TO: 'a@example.com; b@example.com' is not an email address or a "
         "comma-separated list of them"),
    ],
)
def test_a_bad_setting_is_the_first_line_of_the_uis_load_error(tmp_path, env, problem):
    """What the UI shows as the code location's load error: the variable and what is wrong
    with it, first, not Dagster's generic wrapper and a stack trace."""
    from agent_pipeline_tests.services import free_port
    from agent_pipeline_tests.topology import (
        Processes,
        graphql,
        process_env,
        wait_for,
        wait_for_webserver,
    )

    def load_error():
        (entry,) = graphql(port, LOAD_ERROR_QUERY)["workspaceOrError"]["locationEntries"]
        return entry["locationOrLoadError"]

    port = free_port()
    processes = Processes(tmp_path, process_env(env, tmp_path))
    try:
        processes.start("webserver", "dagster-webserver", "-h", "127.0.0.1", "-p", str(port),
                        "-m", "agent_pipeline.definitions")
        wait_for_webserver(port)
        error = wait_for(load_error, "the code location was not loaded", 60, processes)
    finally:
        processes.stop_all()
    assert error["__typename"] == "PythonError"
    first_line = error["message"].splitlines()[0]
    assert first_line.endswith(f"Error: {problem}")


def test_the_llm_scorer_is_the_default_with_a_key_and_the_key_is_an_env_var():
    env = {"LLM_API_KEY": "sk-x", "AGENT": "triage", "AGENT_SOURCES": "a.xml"}
    agent = resources_from_env(env)["agent"]
    assert agent.scorer == "llm" and agent.llm_api_key == EnvVar("LLM_API_KEY")
    assert resources_from_env({})["agent"].scorer == "keyword"


@pytest.mark.parametrize(
    "sources, problem",
    [
        ("https://ok.example.org/rss, http://feeds.example.org:abc/rss?token=s3cret",
         "entry 2 ('http://feeds.example.org:abc/rss'): not a valid URL"),
        ("http://feeds.example.org:99999/rss", "entry 1 ('http://feeds.example.org:99999/rss')"),
        ("gopher://feeds.example.org/", "unsupported scheme 'gopher'"),
    ],
)
def test_a_bad_source_is_named_at_load_without_its_query(sources, problem):
    env = {"AGENT": "triage", "AGENT_SOURCES": sources}
    with pytest.raises(ConfigurationError) as failure:
        resources_from_env(env)
    assert failure.value.variable == "AGENT_SOURCES"
    assert problem in str(failure.value) and "s3cret" not in str(failure.value)


def test_alert_repeat_minutes_defaults_to_an_hour():
    assert resources_from_env({})["digest"].alert_repeat_minutes == 60
    assert resources_from_env({"ALERT_REPEAT_MINUTES": " 15 "})["digest"].alert_repeat_minutes == 15


def test_typed_values_are_taken_as_typed():
    """Each variable is read by its type: a float is a float (SMTP_TIMEOUT=2.5 was refused as
    no whole number), a free model's price of 0 is a price (not "no price"), and a choice is
    taken in any case."""
    resources = resources_from_env({
        "SMTP_TIMEOUT": "2.5", "SMTP_SECURITY": "SSL",
        "LLM_PRICE_INPUT": "0", "LLM_PRICE_OUTPUT": "0.6",
    })
    assert resources["smtp"].timeout == 2.5 and resources["smtp"].security == "ssl"
    assert resources["smtp"].port == 465
    assert resources["agent"].llm_price_input == 0.0
    assert resources["agent"].llm_price_output == 0.6
    unpriced = resources_from_env({})["agent"]
    assert unpriced.llm_price_input is None and unpriced.llm_price_output is None


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SMTP_TIMEOUT": "0"}, "SMTP_TIMEOUT: must be more than 0, got 0"),
        ({"SMTP_TIMEOUT": "soon"}, "SMTP_TIMEOUT: 'soon' is not a number"),
        ({"EMAIL_ONLY_NEW": "maybe"}, "EMAIL_ONLY_NEW: 'maybe' is not true or false"),
        ({"OVERLAP_POLICY": "queue"}, "OVERLAP_POLICY: 'queue' is not one of buffer, skip"),
        ({"LLM_PRICE_INPUT": "-1"}, "LLM_PRICE_INPUT: must be at least 0, got -1"),
    ],
)
def test_a_bad_value_is_named_with_what_was_given(env, message):
    with pytest.raises(ConfigurationError) as failure:
        resources_from_env(env)
    assert str(failure.value) == message
