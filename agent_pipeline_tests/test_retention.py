"""Retention on aged data: real runs of agent_job on the local (SQLite) Dagster instance that
`make dev` uses, made old, then the retention functions; and the store's batches on Postgres."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    execute_job,
    reconstructable,
)
from sqlalchemy import bindparam, create_engine, insert, select, text, update

from agent_pipeline import retention
from agent_pipeline.errors import ConfigurationError
from agent_pipeline.jobs import agent_job
from agent_pipeline.ranking import compact_result
from agent_pipeline.resources import Retention
from agent_pipeline.retention import apply_retention
from agent_pipeline.schema import agent_alerts, agent_runs
from agent_pipeline.settings import resources_from_env, retention_from_env
from agent_pipeline_tests.helpers import wait_for_runs, window_keys


def local_agent_job():
    """agent_job with the zero-setup resources (SQLite agent_runs, the outbox). A function of
    its own: Dagster caches what a reconstructable function returns, per function."""
    return Definitions(jobs=[agent_job], resources=resources_from_env(os.environ)).resolve_job_def(
        "agent_job"
    )


KEEP_ALL = Retention(dagster_run_days=0, result_compact_days=0, agent_runs_days=0)


def age_dagster_runs(home: Path, run_ids: list[str], days: int) -> None:
    """Move runs' creation back in the local instance's run storage."""
    with sqlite3.connect(home / "history" / "runs.db") as db:
        for run_id in run_ids:
            db.execute(
                "UPDATE runs SET create_timestamp = datetime(create_timestamp, ?) "
                "WHERE run_id = ?", (f"-{days} days", run_id),
            )


def footprint(instance: DagsterInstance, home: Path, run_id: str) -> dict[str, bool]:
    """Where a run leaves data on the local instance."""
    # SQLite storage keeps a run's events in a file of its own (reading a missing one would
    # create it).
    shard = home / "history" / "runs" / f"{run_id}.db"
    return {
        "run": instance.get_run_by_id(run_id) is not None,
        "event_shard": shard.exists(),
        "events": shard.exists() and bool(instance.all_logs(run_id)),
        "outputs": (Path(instance.storage_directory()) / run_id).is_dir(),
        "compute_logs": (home / "compute_logs" / run_id).is_dir(),
    }


@pytest.mark.slow
def test_old_runs_go_with_their_events_logs_and_outputs_recent_ones_stay(clean_env, tmp_path):
    home = tmp_path / "dagster"
    home.mkdir()
    job = reconstructable(local_agent_job)
    # Compute logs apart from the op outputs, as in this repository's dagster.yaml.
    compute_logs = {
        "module": "dagster._core.storage.local_compute_log_manager",
        "class": "LocalComputeLogManager",
        "config": {"base_dir": str(home / "compute_logs")},
    }
    overrides = {"compute_logs": compute_logs}
    with DagsterInstance.local_temp(str(home), overrides=overrides) as instance:
        run_ids = []
        for window in window_keys(3):
            with execute_job(job, instance, tags={"dagster/partition": window}) as result:
                assert result.success
                run_ids.append(result.run_id)
        old, recent = run_ids[:2], run_ids[2]
        for run_id in run_ids:
            assert set(footprint(instance, home, run_id).values()) == {True}, run_id
        age_dagster_runs(home, old, 31)

        store = resources_from_env(os.environ)["agent_runs"]
        store.open()
        try:
            report = apply_retention(
                instance, store, Retention(dagster_run_days=30), datetime.now(UTC)
            )
        finally:
            store.close()

        assert report.as_dict() == {
            "dagster_runs_deleted": 2,
            "compute_log_folders_deleted": 2,
            "op_output_folders_deleted": 2,
            "results_compacted": 0,  # the rows are new: only the Dagster runs were aged
            "agent_runs_deleted": 0,
            "alerts_deleted": 0,
            "finished": True,
        }
        for run_id in old:
            assert set(footprint(instance, home, run_id).values()) == {False}, run_id
        assert set(footprint(instance, home, recent).values()) == {True}


def test_a_run_still_going_is_never_deleted(tmp_path):
    home = tmp_path / "dagster"
    home.mkdir()
    with DagsterInstance.local_temp(str(home)) as instance:
        started, done = (
            instance.add_run(DagsterRun(job_name="agent_job", status=status))
            for status in (DagsterRunStatus.STARTED, DagsterRunStatus.SUCCESS)
        )
        age_dagster_runs(home, [started.run_id, done.run_id], 60)
        report = apply_retention(instance, None, Retention(
            dagster_run_days=30, result_compact_days=0, agent_runs_days=0,
        ), datetime.now(UTC))
        assert report.dagster_runs_deleted == 1
        assert instance.get_run_by_id(started.run_id) is not None
        assert instance.get_run_by_id(done.run_id) is None


def add_row(store, days_old: float, **values) -> int:
    started = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days_old)
    with store.engine.begin() as connection:
        return connection.execute(
            insert(agent_runs).values(
                started_at=started, completed_at=started, status="succeeded",
                partition_key=f"w{days_old}", email_status="sent", **values,
            ).returning(agent_runs.c.id)
        ).scalar_one()


def add_alert(store, days_old: float) -> None:
    created = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days_old)
    with store.engine.begin() as connection:
        connection.execute(insert(agent_alerts).values(
            alert_key=f"a{days_old}", dagster_run_id="r", error_message="e", attempts=1,
            created_at=created, status="sent",
        ))


FULL_RESULT = {
    "top_five": [{"title": "one", "score": 9}],
    "outcomes": [{"title": f"item {n}", "score": n} for n in range(300)],
    "outcomes_total": 300,
    "dropped": [{"reason": "no title"}],
    "dropped_total": 1,
    "warnings": ["a warning"],
    "agent_stats": {"llm_calls": 12, "cost": 0.25, "sources_failed": ["x"]},
}


def test_old_results_are_compacted_and_old_rows_deleted_in_batches(pg_store, monkeypatch):
    monkeypatch.setattr(retention, "ROW_BATCH", 2)  # several batches from a few rows
    ancient = [add_row(pg_store, 400 + n, result=FULL_RESULT) for n in range(5)]
    old = [add_row(pg_store, 40 + n, result=FULL_RESULT) for n in range(5)]
    recent = add_row(pg_store, 1, result=FULL_RESULT)
    for days in (400, 401, 402, 10):
        add_alert(pg_store, days)
    today = datetime.now(UTC).date()
    for days in (400, 10):  # the LLM's spend of those days
        pg_store.add_llm_spend(today - timedelta(days=days), 1, 50, 10, 0.01)

    policy = Retention(dagster_run_days=0, result_compact_days=30, agent_runs_days=365)
    report = apply_retention(DagsterInstance.ephemeral(), pg_store, policy, datetime.now(UTC))
    assert (report.results_compacted, report.agent_runs_deleted, report.alerts_deleted) == (
        10, 5, 3,  # the ancient rows were compacted first, then deleted
    )
    with pg_store.engine.connect() as connection:
        left = {
            row.id: row for row in connection.execute(select(agent_runs)).all()
        }
        alerts = connection.execute(select(agent_alerts.c.alert_key)).scalars().all()
    assert set(left) == {*old, recent}
    assert all(i not in left for i in ancient)
    for row_id in old:
        assert left[row_id].result == {
            "top_five": [{"title": "one", "score": 9}],
            "outcomes_total": 300, "dropped_total": 1,
            "agent_stats": {"llm_calls": 12, "cost": 0.25},
        }
        assert left[row_id].result_compacted_at is not None
    assert left[recent].result == FULL_RESULT and left[recent].result_compacted_at is None
    assert alerts == ["a10"]
    assert pg_store.llm_spend_on(today - timedelta(days=400)) == (0, 0.0)
    assert pg_store.llm_spend_on(today - timedelta(days=10)) == (1, 0.01)

    # A second pass finds nothing more to do.
    again = apply_retention(DagsterInstance.ephemeral(), pg_store, policy, datetime.now(UTC))
    assert (again.results_compacted, again.agent_runs_deleted, again.alerts_deleted) == (0, 0, 0)


def test_out_of_time_it_stops_and_says_so(pg_store):
    add_row(pg_store, 40, result=FULL_RESULT)
    policy = Retention(dagster_run_days=0, result_compact_days=30, agent_runs_days=0)
    report = apply_retention(
        DagsterInstance.ephemeral(), pg_store, policy, datetime.now(UTC), time_budget_seconds=0
    )
    assert report.finished is False and report.results_compacted == 0
    report = apply_retention(DagsterInstance.ephemeral(), pg_store, policy, datetime.now(UTC))
    assert report.finished is True and report.results_compacted == 1


def test_zero_keeps_everything(pg_store):
    row = add_row(pg_store, 1000, result=FULL_RESULT)
    report = apply_retention(DagsterInstance.ephemeral(), pg_store, KEEP_ALL, datetime.now(UTC))
    assert report.finished and pg_store.get_row(row)["result"] == FULL_RESULT


def test_a_compacted_result_keeps_what_the_email_and_the_dedupe_read():
    assert compact_result({"top_five": None, "outcomes_total": True}) == {"top_five": []}
    assert compact_result(FULL_RESULT)["top_five"] == FULL_RESULT["top_five"]


def test_retention_settings():
    assert retention_from_env({}) == Retention(
        dagster_run_days=30, result_compact_days=30, agent_runs_days=365
    )
    assert retention_from_env({
        "DAGSTER_RUN_RETENTION_DAYS": "0", "RESULT_COMPACT_DAYS": "0",
        "AGENT_RUNS_RETENTION_DAYS": "0",
    }) == KEEP_ALL
    with pytest.raises(ConfigurationError, match="AGENT_RUNS_RETENTION_DAYS.*WINDOW_HISTORY_DAYS"):
        retention_from_env({"AGENT_RUNS_RETENTION_DAYS": "14", "WINDOW_HISTORY_DAYS": "14"})
    with pytest.raises(ConfigurationError, match="DAGSTER_RUN_RETENTION_DAYS.*CATCH_UP_HOURS"):
        retention_from_env({"DAGSTER_RUN_RETENTION_DAYS": "1"})
    with pytest.raises(ConfigurationError, match="RESULT_COMPACT_DAYS"):
        retention_from_env({"RESULT_COMPACT_DAYS": "-1"})


@pytest.mark.slow
def test_the_retention_job_through_the_daemon_on_postgres(stack, postgres_url):
    """The production topology (Postgres storage, the queue, the daemon): aged runs and rows
    go when retention_job is launched as its schedule would, recent ones stay."""
    client, instance = stack["client"], stack["instance"]
    storage = Path(stack["env"]["DAGSTER_STORAGE_DIR"])
    keys = agent_job.partitions_def.get_partition_keys()[-170:-167]
    run_ids = [
        client.submit_job_execution(
            "agent_job", repository_location_name="agent_pipeline",
            tags={"dagster/partition": key},
        )
        for key in keys
    ]
    assert {r.dagster_run.status for r in wait_for_runs(stack, run_ids)} == {
        DagsterRunStatus.SUCCESS
    }
    old, recent = run_ids[:2], run_ids[2]
    engine = create_engine(postgres_url)

    def footprint(run_id: str) -> dict[str, bool]:
        with engine.connect() as connection:
            events = connection.execute(
                text("SELECT count(*) FROM event_logs WHERE run_id = :id"), {"id": run_id}
            ).scalar_one()
        return {
            "run": instance.get_run_by_id(run_id) is not None,
            "events": events > 0,
            "compute_logs": (storage / run_id).is_dir(),
            "outputs": (Path(instance.storage_directory()) / run_id).is_dir(),
        }

    assert all(set(footprint(run_id).values()) == {True} for run_id in run_ids)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE runs SET create_timestamp = create_timestamp - interval '31 days' "
                 "WHERE run_id IN :ids").bindparams(bindparam("ids", expanding=True)),
            {"ids": old},
        )
        connection.execute(
            update(agent_runs).where(agent_runs.c.dagster_run_id.in_(old))
            .values(started_at=agent_runs.c.started_at - timedelta(days=31))
        )
        connection.execute(
            update(agent_runs).where(agent_runs.c.dagster_run_id == old[0])
            .values(started_at=agent_runs.c.started_at - timedelta(days=400))
        )

    retention_run = client.submit_job_execution(
        "retention_job", repository_location_name="agent_pipeline"
    )
    (record,) = wait_for_runs(stack, [retention_run])
    assert record.dagster_run.status == DagsterRunStatus.SUCCESS, stack["processes"].logs()

    for run_id in old:
        assert set(footprint(run_id).values()) == {False}, run_id
    assert set(footprint(recent).values()) == {True}
    with engine.connect() as connection:
        rows = {
            row.dagster_run_id: row for row in connection.execute(select(agent_runs)).all()
        }
    engine.dispose()
    assert old[0] not in rows  # over a year old: deleted
    assert "outcomes" not in rows[old[1]].result and rows[old[1]].result_compacted_at
    assert len(rows[old[1]].result["top_five"]) == 5
    assert "outcomes" in rows[recent].result and rows[recent].result_compacted_at is None

    # What it removed, as the UI shows it on the op.
    (metadata,) = [
        event.dagster_event.step_output_data.metadata
        for event in instance.all_logs(retention_run)
        if event.dagster_event and event.dagster_event.is_successful_output
    ]
    assert metadata["dagster_runs_deleted"].value == 2
    assert metadata["results_compacted"].value == 2
    assert metadata["agent_runs_deleted"].value == 1
    assert metadata["finished"].value is True
