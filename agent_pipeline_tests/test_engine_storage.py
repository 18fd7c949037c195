"""The production instance's Postgres storages (agent_pipeline.engine.storage) keep their
connection: a run of agent_job opens a few connections instead of one per query; a connection
Postgres has dropped is replaced; a forked child never talks on its parent's."""

from __future__ import annotations

import os

import psycopg2
import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance
from dagster._core.errors import DagsterRunAlreadyExists
from dagster_postgres.run_storage import PostgresRunStorage
from sqlalchemy import event, text

from agent_pipeline.engine import storage as engine_storage
from agent_pipeline.engine.storage import PooledPostgresEventLogStorage
from agent_pipeline.jobs import agent_job
from agent_pipeline.ops import AGENT_TAG
from agent_pipeline.settings import resources_from_env
from agent_pipeline_tests.helpers import window_keys
from agent_pipeline_tests.topology import instance_from_config, production_storage


def run(instance: DagsterInstance, window: str) -> None:
    result = agent_job.execute_in_process(
        partition_key=window, resources=resources_from_env(os.environ), instance=instance
    )
    assert result.success


def connections_and_catalog_reads_of_one_run(
    instance: DagsterInstance, window: str
) -> tuple[int, int]:
    """Connections the run and event log storages opened during one run of agent_job, and
    their reads of Postgres' catalog (the tables' columns)."""
    opened, catalog_reads = [], []
    for engine in (instance.run_storage._engine, instance.event_log_storage._engine):
        event.listen(engine, "connect", lambda *_: opened.append(1))
        event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_:
                     catalog_reads.append(1) if "pg_catalog" in statement else None)
    run(instance, window)
    return len(opened), len(catalog_reads)


def test_a_run_reuses_its_connections_where_dagsters_storage_opens_one_per_query(
    production_env, postgres_url, tmp_path
):
    first, second = window_keys(2)
    (tmp_path / "dagster").mkdir()
    (tmp_path / "production").mkdir()
    dagster_own = {"storage": {"postgres": {"postgres_url": postgres_url}}}
    with instance_from_config(tmp_path / "dagster", dagster_own) as instance:
        connections, catalog_reads = connections_and_catalog_reads_of_one_run(instance, first)
        assert connections > 30 and catalog_reads >= 5
    production = production_storage(postgres_url)
    with instance_from_config(tmp_path / "production", production) as instance:
        assert isinstance(instance.event_log_storage, PooledPostgresEventLogStorage)
        run(instance, first)  # the schema checks' first answers
        assert connections_and_catalog_reads_of_one_run(instance, second) == (0, 0)
        assert len(instance.all_logs(instance.get_runs(limit=1)[0].run_id)) > 20


def backend_pids(instance: DagsterInstance) -> set[int]:
    """The Postgres backends the run and event log storages talk to."""
    pids = set()
    for storage in (instance.run_storage, instance.event_log_storage):
        with storage._engine.connect() as connection:
            pids.add(connection.execute(text("SELECT pg_backend_pid()")).scalar())
    return pids


def terminate(postgres_url: str, pids: set[int]) -> None:
    """Postgres drops these backends' connections, as a restart or an idle timeout would."""
    with psycopg2.connect(postgres_url) as admin, admin.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s) AS pid", (list(pids),))
    admin.close()


def test_a_connection_postgres_dropped_while_idle_is_replaced(
    production_env, postgres_url, tmp_path, monkeypatch
):
    first, second = window_keys(2)
    with instance_from_config(tmp_path, production_storage(postgres_url)) as instance:
        run(instance, first)
        held = backend_pids(instance)
        terminate(postgres_url, held)
        monkeypatch.setattr(engine_storage, "PING_AFTER_IDLE_SECONDS", 0.0)  # idle enough
        run(instance, second)  # no "server closed the connection unexpectedly"
        assert backend_pids(instance).isdisjoint(held)


def test_a_connection_dropped_within_its_busy_second_costs_a_reconnect_not_a_query(
    postgres_url, tmp_path, monkeypatch
):
    """Only idle connections are checked before use; a busy one Postgres dropped fails its
    statement, which is sent again on a new connection (engine.storage's connection class)."""
    # However slow this machine is between the two queries, the connection counts as busy.
    monkeypatch.setattr(engine_storage, "PING_AFTER_IDLE_SECONDS", 3600.0)
    with instance_from_config(tmp_path, production_storage(postgres_url)) as instance:
        held = backend_pids(instance)
        terminate(postgres_url, held)
        assert instance.get_runs(limit=1) == []
        assert backend_pids(instance).isdisjoint(held)


def test_a_forked_child_opens_its_own_connection(postgres_url, tmp_path):
    with instance_from_config(tmp_path, production_storage(postgres_url)) as instance:
        parents = backend_pids(instance)
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            try:
                os.write(write_end, ",".join(map(str, backend_pids(instance))).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as answer:
            childs = {int(pid) for pid in answer.read().split(",") if pid}
        os.waitpid(child, 0)
        assert len(childs) == 2 and childs.isdisjoint(parents)
        assert backend_pids(instance) == parents  # the parent's are untouched


@pytest.mark.parametrize("storage", ["run_storage", "event_log_storage"])
def test_dispose_closes_the_held_connection(postgres_url, tmp_path, storage):
    instance = instance_from_config(tmp_path, production_storage(postgres_url))
    engine = getattr(instance, storage)._engine
    backend_pids(instance)
    assert engine.pool.checkedin() == 1
    instance.dispose()
    assert engine.pool.checkedin() == 0


def statements_of_one_run(instance: DagsterInstance, window: str) -> list[str]:
    """The statements the run and event log storages sent during one run of agent_job."""
    statements: list[str] = []
    for engine in (instance.run_storage._engine, instance.event_log_storage._engine):
        event.listen(engine, "before_cursor_execute",
                     lambda _c, _cur, statement, *_: statements.append(statement.strip()))
    run(instance, window)
    return statements


def test_each_event_of_a_run_is_one_insert(production_env, postgres_url, tmp_path):
    first, second = window_keys(2)
    with instance_from_config(tmp_path, production_storage(postgres_url)) as instance:
        run(instance, first)
        statements = list(statements_of_one_run(instance, second))
        events = instance.all_logs(instance.get_runs(limit=1)[0].run_id)
        inserts = [s for s in statements if s.startswith("INSERT INTO event_logs")]
        # Dagster's storage follows each insert with a NOTIFY nobody listens to.
        assert len(inserts) == len(events) > 20
        assert not [s for s in statements if s.startswith("NOTIFY")]
        # The run's tags at its creation, then one tag write of the ops (the email's fate):
        # the agent's tag comes with the job. That write reads the run once (in
        # add_run_tags), as do the two run status events: 3 run reads in all, where asking
        # has_run first and tagging the agent separately made 6.
        # (Were AGENT another agent when agent_job was imported, record_run would write the
        # agent's tag too.)
        agent = resources_from_env(os.environ)["agent"].agent
        ops_tag_writes = 1 + (agent_job.tags[AGENT_TAG] != agent)
        inserts = [s for s in statements if s.startswith("INSERT INTO run_tags")]
        assert len(inserts) == 1 + ops_tag_writes
        run_reads = [s for s in statements if s.startswith("SELECT runs.run_body, runs.status")]
        assert len(run_reads) == 2 + ops_tag_writes
        # The job's snapshots, stored by the first run, are not looked for again.
        assert not [s for s in statements if "FROM snapshots" in s]


def test_a_wipe_forgets_the_snapshots_it_deleted(production_env, postgres_url, tmp_path):
    first, second = window_keys(2)
    with instance_from_config(tmp_path, production_storage(postgres_url)) as instance:
        run(instance, first)
        instance.wipe()
        run(instance, second)  # the run's row needs its job snapshot stored again
        snapshot_id = instance.get_runs()[0].job_snapshot_id
        assert PostgresRunStorage.has_job_snapshot(instance.run_storage, snapshot_id)


def test_a_wipe_by_another_process_costs_one_failed_run_creation(
    production_env, postgres_url, tmp_path
):
    """The cache cannot see another process' wipe: the next run's creation fails on the
    runs table's foreign key to its snapshot, and the one after stores the snapshot again."""
    first, second = window_keys(2)
    (tmp_path / "this").mkdir()
    (tmp_path / "other").mkdir()
    storage = production_storage(postgres_url)
    with instance_from_config(tmp_path / "this", storage) as instance, \
            instance_from_config(tmp_path / "other", storage) as other:
        run(instance, first)
        other.wipe()
        with pytest.raises(DagsterRunAlreadyExists):
            run(instance, second)
        run(instance, second)


def test_asset_events_still_get_dagsters_index(postgres_url, tmp_path):
    with instance_from_config(tmp_path, production_storage(postgres_url)) as instance:
        instance.report_runless_asset_event(AssetMaterialization("digest_archive"))
        latest = instance.get_latest_materialization_event(AssetKey("digest_archive"))
        assert latest is not None and latest.asset_materialization.asset_key.path == [
            "digest_archive"
        ]
