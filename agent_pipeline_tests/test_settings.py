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
        ({"SMTP_HOST": "mail", "EMAIL_TO": "a@example.com"}, "EMAIL_FROM"),
        ({"SMTP_HOST": "mail", "EMAIL_FROM": "a@example.com"}, "EMAIL_TO"),
        ({"EMAIL_TO": "a@example.com; b@example.com"}, "EMAIL_TO"),
        ({"AGENT_CACHE_TTL": "-5"}, "AGENT_CACHE_TTL"),
        ({"WINDOW_HISTORY_DAYS": "a week"}, "WINDOW_HISTORY_DAYS"),
    ],
)
def test_bad_settings_name_the_variable(env, variable):
    with pytest.raises(ConfigurationError) as failure:
        resources_from_env(env)
        window_history_days(env)
    assert failure.value.variable == variable
    assert str(failure.value).startswith(f"{variable}: ")
