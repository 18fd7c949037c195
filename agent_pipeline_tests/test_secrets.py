"""Secrets stay secret: with marker values in SMTP_PASSWORD, LLM_API_KEY and the password of
DATABASE_URL, a run leaves them nowhere: not in the event log, the compute logs, the run
config, the stored outputs, the agent_runs rows or the process's own output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from dagster import DagsterInstance, execute_job, reconstructable
from sqlalchemy.engine import make_url

from agent_pipeline_tests.feed_server import JSON_ITEMS
from agent_pipeline_tests.helpers import SmtpCatcher, agent_job_from_env, rows, window_keys
from agent_pipeline_tests.llm_server import LoopbackLlm
from agent_pipeline_tests.services import free_port


def agent_job_with_secrets():
    """Dagster caches a reconstructed job per function for the whole process: this test's
    environment needs a function of its own."""
    return agent_job_from_env()


SNAPSHOT_SCRIPT = """
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster_shared.serdes import serialize_value
from agent_pipeline.definitions import defs
print(serialize_value(RepositorySnap.from_def(defs.get_repository_def())))
"""
SMTP_SECRET = "MARKER-smtp-5c1e7a"
LLM_SECRET = "MARKER-llm-9d2f44"
DB_SECRET = "MARKER-db-77b0c1"
MARKERS = (SMTP_SECRET, LLM_SECRET, DB_SECRET)


@pytest.mark.slow
def test_secrets_appear_nowhere(clean_env, postgres_url, redis_url, tmp_path, capfd, caplog):
    logins = []

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == SMTP_SECRET.encode()
        logins.append(ok)
        return AuthResult(success=ok, handled=False)

    # The triage agent with the LLM scorer, so that LLM_API_KEY really travels.
    llm = LoopbackLlm()
    llm.__enter__()
    (tmp_path / "items.json").write_bytes(JSON_ITEMS)
    catcher = SmtpCatcher("127.0.0.1", free_port())
    server = Controller(catcher, hostname=catcher.host, port=catcher.port,
                        authenticator=authenticate, auth_require_tls=False)
    server.start()
    # Trust auth ignores the password, but it travels through every place a URL can leak.
    database_url = make_url(postgres_url).set(password=DB_SECRET).render_as_string(False)
    for name, value in {
        "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "SMTP_HOST": catcher.host, "SMTP_PORT": str(catcher.port), "SMTP_SECURITY": "none",
        "SMTP_USERNAME": "agent", "SMTP_PASSWORD": SMTP_SECRET, "LLM_API_KEY": LLM_SECRET,
        "AGENT": "triage", "AGENT_SOURCES": str(tmp_path / "items.json"),
        "LLM_BASE_URL": llm.base_url,
        "EMAIL_FROM": "agent@example.com", "EMAIL_TO": "ann@example.com",
    }.items():
        clean_env.setenv(name, value)
    (window,) = window_keys(1)
    home = tmp_path / "dagster_home"
    home.mkdir()
    try:
        with DagsterInstance.local_temp(str(home)) as instance:
            job = reconstructable(agent_job_with_secrets)
            with execute_job(job, instance, tags={"dagster/partition": window}) as result:
                assert result.success
            run = instance.get_run_by_id(result.run_id)
            event_log = [entry.to_json() for entry in instance.all_logs(result.run_id)]
            places = {
                "run config": json.dumps(run.run_config),
                "run tags": json.dumps(run.tags),
                "event log": "\n".join(event_log),
            }
    finally:
        server.stop()
        llm.__exit__(None, None, None)

    assert logins == [True] and len(catcher.received) == 1  # the password was used
    assert {h["Authorization"] for h in llm.headers} == {f"Bearer {LLM_SECRET}"}  # the key too
    assert any("LOGS_CAPTURED" in entry or "STEP_SUCCESS" in entry for entry in event_log)
    places["agent_runs rows"] = json.dumps(rows(postgres_url), default=str)
    output = capfd.readouterr()
    places["stdout"], places["stderr"] = output.out, output.err
    places["python logs"] = "\n".join(record.getMessage() for record in caplog.records)
    places["email"] = catcher.received[0].message.as_string()
    # Every file the instance wrote: SQLite event and run storage, compute logs, IO outputs.
    for path in home.rglob("*"):
        if path.is_file():
            places[str(path.relative_to(home))] = path.read_bytes().decode("latin-1")
    # What the UI shows of the code location (resources and their config), loaded as the
    # code server loads it.
    snapshot = subprocess.run(
        [sys.executable, "-c", SNAPSHOT_SCRIPT], env=dict(os.environ), capture_output=True,
        text=True, check=True,
    ).stdout
    assert "SMTP_PASSWORD" in snapshot  # the resource config is there, by variable name
    places["code location snapshot"] = snapshot
    assert len(places) > 8
    leaks = [(place, marker) for place, text in places.items() for marker in MARKERS
             if marker in text]
    assert leaks == []
    assert os.environ["SMTP_PASSWORD"] == SMTP_SECRET  # the markers were really set
