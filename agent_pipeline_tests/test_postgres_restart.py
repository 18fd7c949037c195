"""A Postgres restart (`pg_ctl restart -m fast`, every session ended at once), between two
calls and during one, costs the project's store and Dagster's storages a reconnect: the call
succeeds, nothing it wrote is lost or written twice, and a whole run goes through on its first
try. Against a throwaway cluster of this module's own (never the machine's shared server),
restarted for real."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import psycopg2
import pytest
from dagster import DagsterInstance
from dagster._core.events.log import EventLogEntry
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from agent_pipeline.engine import storage as engine_storage
from agent_pipeline.jobs import agent_job
from agent_pipeline.resources.agent_runs import AgentRunsStore
from agent_pipeline.settings import resources_from_env
from agent_pipeline_tests.helpers import opened_store, window_keys
from agent_pipeline_tests.services import (
    TcpProxy,
    free_port,
    postgres_answers,
    restart_postgres,
    throwaway_postgres,
)
from agent_pipeline_tests.topology import instance_from_config, production_storage


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def restartable_url(cluster: str) -> Iterator[str]:
    """A database of this test's own on the throwaway cluster."""
    name = f"restart_{uuid.uuid4().hex[:8]}"
    wait_until_up(cluster)
    admin = psycopg2.connect(cluster)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield make_url(cluster).set(database=name).render_as_string(hide_password=False)
    admin.close()
    wait_until_up(cluster)  # a restart a failed test started may still be going on
    admin = psycopg2.connect(cluster)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def wait_until_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while not postgres_answers(url):
        assert time.monotonic() < deadline, "the throwaway Postgres did not come back"
        time.sleep(0.05)


def restart_when_sent(engine: Engine, url: str, statement_start: str) -> list[float]:
    """The first time engine is about to send a statement starting so, restart Postgres, and
    let the statement go once the server has ended the session it goes on: the statement
    meets a server shutting down, down or starting up. The moments it did so."""
    restarts: list[float] = []

    def restart(_conn, _cursor, statement, *_args):
        if not restarts and statement.lstrip().startswith(statement_start):
            restarts.append(time.monotonic())
            restart_postgres(url, wait=False)
            deadline = time.monotonic() + 30
            while postgres_answers(url) and time.monotonic() < deadline:
                time.sleep(0.01)

    event.listen(engine, "before_cursor_execute", restart)
    return restarts


# -- AgentRunsStore ---------------------------------------------------------------------------


@pytest.fixture
def store(restartable_url: str) -> Iterator[AgentRunsStore]:
    with opened_store(restartable_url) as store:
        yield store


def test_the_store_survives_a_restart_between_two_calls(store, restartable_url):
    row_id = store.get_or_create_row("run-1", "w1", "keywords")
    restart_postgres(restartable_url)
    assert store.claim_email(row_id)
    store.record_email_sent(row_id)
    assert store.get_row(row_id)["email_status"] == "sent"
    assert [r["id"] for r in store.runs_for_window("w1")] == [row_id]


def test_a_claim_cut_off_by_a_restart_is_redone_and_taken_once(store, restartable_url):
    first = store.get_or_create_row("run-1", "w1", "keywords")
    second = store.get_or_create_row("run-2", "w1", "keywords")
    restarts = restart_when_sent(store.engine, restartable_url, "UPDATE agent_runs")
    assert store.claim_email(first)
    assert restarts  # the claim's UPDATE met the restart
    assert not store.claim_email(second) and not store.claim_email(first)
    assert {r["id"]: r["email_status"] for r in store.runs_for_window("w1")} == {
        first: "sending", second: "not_sent",
    }


def test_a_claim_that_took_effect_with_its_answer_lost_is_this_rows_claim(restartable_url):
    """The connection drops after the claim's COMMIT reached the server and before its answer
    came back: the claim made again finds its own row sending, and sends (the window's email
    neither twice nor not at all)."""
    database = make_url(restartable_url)
    proxy_port = free_port()
    proxy = TcpProxy(proxy_port, database.port)
    through_proxy = database.set(port=proxy_port)
    try:
        with opened_store(through_proxy.render_as_string(hide_password=False)) as store:
            first = store.get_or_create_row("run-1", "w1", "keywords")
            second = store.get_or_create_row("run-2", "w1", "keywords")
            cut = proxy.cut_after(b"COMMIT")
            assert store.claim_email(first)
            assert cut.is_set()  # the claim's answer was lost
            assert not store.claim_email(second)
            assert {r["id"]: r["email_status"] for r in store.runs_for_window("w1")} == {
                first: "sending", second: "not_sent",
            }
    finally:
        proxy.close()


def test_a_row_written_across_a_restart_is_written_once(store, restartable_url):
    restarts = restart_when_sent(store.engine, restartable_url, "INSERT INTO agent_runs")
    row_id = store.get_or_create_row("run-1", "w1", "keywords")
    assert restarts
    store.complete_run(row_id, {"top_five": []})
    rows = store.runs_for_window("w1")
    assert [(r["id"], r["status"]) for r in rows] == [(row_id, "succeeded")]


# -- Dagster's storages, ours and stock ---------------------------------------------------------


def storage_config(kind: str, url: str) -> dict:
    if kind == "pooled":
        return production_storage(url)
    return {"storage": {"postgres": {"postgres_url": url}}}


def log_line(run_id: str, n: int) -> EventLogEntry:
    return EventLogEntry(
        error_info=None, level=logging.INFO, user_message=f"line {n}", run_id=run_id,
        timestamp=time.time(),
    )


@pytest.fixture(params=["pooled", "stock"])
def instance(request, restartable_url, tmp_path, monkeypatch) -> Iterator[DagsterInstance]:
    # However long the restart takes, the pooled connection counts as just used and is not
    # checked: the statement itself meets the dropped connection.
    monkeypatch.setattr(engine_storage, "PING_AFTER_IDLE_SECONDS", 3600.0)
    with instance_from_config(tmp_path, storage_config(request.param, restartable_url)) as inst:
        yield inst


def test_run_queries_and_event_writes_survive_a_restart_between_them(instance, restartable_url):
    assert instance.get_runs(limit=1) == []
    run_id = uuid.uuid4().hex
    instance.event_log_storage.store_event(log_line(run_id, 0))
    restart_postgres(restartable_url)
    assert instance.get_runs(limit=1) == []
    restart_postgres(restartable_url)
    for n in range(1, 4):
        instance.event_log_storage.store_event(log_line(run_id, n))
    messages = [e.user_message for e in instance.all_logs(run_id)]
    assert messages == [f"line {n}" for n in range(4)]


@pytest.mark.parametrize(
    "kind",
    [
        "pooled",
        pytest.param("stock", marks=pytest.mark.xfail(
            strict=True, reason="dagster-postgres retries connecting, not a statement cut off"
        )),
    ],
)
def test_an_event_write_cut_off_by_a_restart_is_sent_again(
    kind, restartable_url, tmp_path
):
    with instance_from_config(tmp_path, storage_config(kind, restartable_url)) as instance:
        run_id = uuid.uuid4().hex
        instance.event_log_storage.store_event(log_line(run_id, 0))
        restarts = restart_when_sent(
            instance.event_log_storage._engine, restartable_url, "INSERT INTO event_logs"
        )
        instance.event_log_storage.store_event(log_line(run_id, 1))
        assert restarts
        messages = [e.user_message for e in instance.all_logs(run_id)]
        assert messages == ["line 0", "line 1"]


# -- whole runs ---------------------------------------------------------------------------------


def event_kinds(instance: DagsterInstance, run_id: str) -> Counter:
    return Counter(
        e.dagster_event.event_type_value if e.dagster_event else "log line"
        for e in instance.all_logs(run_id)
    )


def held_run(instance: DagsterInstance, window: str, flag) -> tuple[threading.Thread, dict]:
    """agent_job of window in a thread, its agent held while flag exists."""
    outcome: dict = {}

    def execute():
        outcome["result"] = agent_job.execute_in_process(
            partition_key=window, resources=resources_from_env(os.environ), instance=instance,
            raise_on_error=False,
        )

    thread = threading.Thread(target=execute)
    thread.start()
    return thread, outcome


def in_the_agent(instance: DagsterInstance) -> bool:
    runs = instance.get_runs(limit=1)
    return bool(runs) and any(
        e.step_key == "run_agent" and e.dagster_event
        and e.dagster_event.event_type_value == "STEP_START"
        for e in instance.all_logs(runs[0].run_id)
    )


@pytest.mark.slow
def test_a_run_held_in_its_agent_while_postgres_restarts_succeeds_on_its_first_try(
    production_env, restartable_url, smtp_server, tmp_path
):
    # On our pooled storages only: stock dagster-postgres failed 3 of 5 such runs (it retries
    # connecting, not a statement the restart cut off; the strict test above shows that part),
    # so it makes no promise here to hold it to.
    flag = tmp_path / "hold"
    production_env.setenv("DATABASE_URL", restartable_url)
    production_env.setenv("AGENT", "agent_pipeline_tests.sample_agents:hang_while_flagged")
    production_env.setenv("HANG_FLAG", str(flag))
    warm, plain, restarted = window_keys(3)
    home = tmp_path / "dagster"
    home.mkdir()
    with instance_from_config(home, storage_config("pooled", restartable_url)) as inst:
        # The yardstick: a run without a restart, after one whose email it looks back on.
        for window in (warm, plain):
            result = agent_job.execute_in_process(
                partition_key=window, resources=resources_from_env(os.environ), instance=inst
            )
            assert result.success
        expected = event_kinds(inst, result.run_id)

        flag.touch()
        thread, outcome = held_run(inst, restarted, flag)
        deadline = time.monotonic() + 60
        while not in_the_agent(inst):
            assert time.monotonic() < deadline and thread.is_alive(), "the run did not start"
            time.sleep(0.1)
        # The agent returns as Postgres restarts: the ops' writes and the run's events meet
        # a server shutting down, down, then starting up.
        restart = restart_postgres(restartable_url, wait=False)
        while postgres_answers(restartable_url):
            time.sleep(0.01)
        flag.unlink()
        restart.wait(60)
        thread.join(120)
        assert not thread.is_alive(), "the run did not end within 2 minutes of the restart"
        result = outcome["result"]
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        assert event_kinds(inst, result.run_id) == expected

    with opened_store(restartable_url) as store:
        [row] = store.runs_for_window(restarted)
    assert row["status"] == "succeeded" and row["email_status"] == "sent"
    assert len(smtp_server.received) == 3  # one for each window


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pooled", "stock"])
def test_the_run_after_a_restart_succeeds_on_its_first_try(
    kind, production_env, restartable_url, smtp_server, tmp_path
):
    production_env.setenv("DATABASE_URL", restartable_url)
    first, second = window_keys(2)
    with instance_from_config(tmp_path, storage_config(kind, restartable_url)) as instance:
        resources = resources_from_env(os.environ)
        assert agent_job.execute_in_process(
            partition_key=first, resources=resources, instance=instance
        ).success
        restart_postgres(restartable_url)
        time.sleep(3)  # idle, as between two scheduled runs: the pooled connections age
        result = agent_job.execute_in_process(
            partition_key=second, resources=resources, instance=instance
        )
        assert result.success
    assert len(smtp_server.received) == 2
