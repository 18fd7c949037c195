"""Dagster's Postgres run and event log storages, keeping their connection between queries
(deploy/dagster.yaml names them).

Dagster's own open a new connection for every query (SQLAlchemy's NullPool), so that a
process that creates many instances holds no connection. A run's process has one instance,
and one run of agent_job made about 35 event writes and 25 run queries: at about 3 ms for a
connection on loopback (more across a network), that was 200 of a run's 450 ms
(benchmarks/bench_pipeline.py). These keep one connection per storage, checked before use
once it has been idle a second and renewed hourly. A statement that finds its connection
dropped (Postgres restarted, within a second of the connection's last use or during the
statement) is sent again on a new one, waiting for a restarting server as dagster-postgres
waits to connect: a restart costs a reconnect, not a failed query or a lost event (but for a
statement whose COMMIT took effect just as the connection dropped: sent again, it is stored
twice, or, where a unique key forbids that, fails as a duplicate, e.g. DagsterRunAlreadyExists
for a run's creation, which the caller sees as any failed write).
Concurrent callers (the daemon's threads, which share its instance; a run's threads logging
at once) get up to 10 more for the moment, closed when returned. Each process with an
instance open holds one connection per storage: the webserver, the daemon and each run."""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Mapping
from typing import Any

from dagster._core.errors import DagsterRunAlreadyExists
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError

from agent_pipeline.retries import database_error_line, database_retry, database_went_away

# The insert of any event: one statement, compiled once, the values passed as parameters.
_INSERT_EVENT = SqlEventLogStorageTable.insert()
POOL_OPTIONS = {"pool_size": 1, "max_overflow": 10, "pool_recycle": 3600}
log = logging.getLogger(__name__)
# A connection is checked (SELECT 1) before use once it has sat unused this long. SQLAlchemy's
# pool_pre_ping checks before every use: 55 round trips a run, 10 ms of its 130, for the
# events written milliseconds apart. A connection Postgres drops within this second of its
# last use fails its next statement, which _ReconnectingConnection sends again.
PING_AFTER_IDLE_SECONDS = 1.0

# A forked child (each run the fork server starts) must not talk on its parent's connections:
# it drops them, unclosed (closing would end the parent's), and opens its own.
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
os.register_at_fork(
    after_in_child=lambda: [engine.dispose(close=False) for engine in list(_ENGINES)]
)


def _pooled_engine(postgres_url: str, token_provider: Any) -> Engine:
    engine = create_pg_engine(
        postgres_url, token_provider, isolation_level="AUTOCOMMIT", **POOL_OPTIONS
    )
    event.listen(engine, "connect", _note_last_use)
    event.listen(engine, "checkin", _note_last_use)
    event.listen(engine, "checkout", _ping_if_idle)
    # SQLAlchemy's Engine.connect() makes its connections of this class: every statement of
    # Dagster's own methods (through _connect(), connect(), index_connection(), ...) and of
    # store_event below goes through _ReconnectingConnection.execute.
    engine._connection_cls = _ReconnectingConnection
    _ENGINES.add(engine)
    return engine


class _ReconnectingConnection(Connection):
    """A connection that sends a statement again on a new connection when the server dropped
    this one. Safe here because the engine is AUTOCOMMIT: each statement is its own unit of
    work, and one cut off by a dropped connection did not take effect (a COMMIT's answer lost
    in the same instant is the one exception: a statement sent twice, e.g. an event stored
    twice, rather than an event lost). Only statements outside a transaction the caller began
    are sent again (Dagster's index writes, and its table creation, begin one)."""

    _autobegun: Any = None

    def execute(self, statement: Any, parameters: Any = None, *, execution_options: Any = None):
        outside_callers_transaction = self.get_transaction() in (None, self._autobegun)
        try:
            result = super().execute(statement, parameters, execution_options=execution_options)
        except DBAPIError as error:
            if not (database_went_away(error) and outside_callers_transaction):
                raise
            return database_retry(on_retry=_log_retry)(
                self._execute_again, statement, parameters, execution_options
            )
        if outside_callers_transaction:
            self._autobegun = self.get_transaction()
        return result

    def _execute_again(self, statement: Any, parameters: Any, execution_options: Any) -> Any:
        # SQLAlchemy reconnects an invalidated connection once its (nominal, AUTOCOMMIT)
        # transaction is rolled back; each try that fails to connect leaves one behind too.
        if self.in_transaction():
            self.rollback()
        result = super().execute(statement, parameters, execution_options=execution_options)
        self._autobegun = self.get_transaction()
        return result


def _log_retry(error: BaseException, seconds: float) -> None:
    # A restart the storage rode out still leaves a line in the process' log.
    log.warning(f"Dagster's Postgres storage lost its connection "
                f"({database_error_line(error)}); "
                f"sending the statement again in {seconds:.1f}s")


def _note_last_use(_dbapi_connection: Any, connection_record: Any) -> None:
    connection_record.info["last_used"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, connection_record: Any, _proxy: Any) -> None:
    """Pessimistic disconnect handling, as SQLAlchemy's pool events recipe has it, for a
    connection idle long enough that Postgres may have dropped it (a restart, an idle
    timeout): the pool replaces one that fails the check."""
    if time.monotonic() - connection_record.info.get("last_used", 0.0) < PING_AFTER_IDLE_SECONDS:
        return
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:
        raise DisconnectionError(f"connection dropped while idle: {error}") from error


def _storage_args(
    inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
) -> dict[str, Any]:
    """The arguments Dagster's Postgres storages take from their config."""
    return {
        "inst_data": inst_data,
        "postgres_url": pg_url_from_config(config_value),
        "should_autocreate_tables": config_value.get("should_autocreate_tables", True),
        "token_provider": get_token_provider_from_config(config_value),
    }


class _KeepsItsConnection:
    """Over a Dagster Postgres storage: the same config and tables, a pooled engine."""

    _engine: Engine

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._engine.dispose()
        self._engine = _pooled_engine(self.postgres_url, self._token_provider)

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(**_storage_args(inst_data, config_value))

    def optimize_for_webserver(self, *args: Any, **kwargs: Any) -> None:
        engine = self._engine  # the webserver's own pool replaces this one
        super().optimize_for_webserver(*args, **kwargs)
        engine.dispose()

    def dispose(self) -> None:
        super().dispose()
        self._engine.dispose()


class PooledPostgresRunStorage(_KeepsItsConnection, PostgresRunStorage):
    """PostgresRunStorage keeping its connection, and the answers of its schema and snapshot
    checks once they are true. Dagster's read the table's columns, several queries each time
    (has_run_stats_index_cols on each of a run's five status events); once true they stay
    true, as Dagster's migrations add and never drop. Each new run asks three times whether
    its job's and execution plan's snapshots are stored (the plan's by reading and
    deserializing its whole body); snapshots are stored once under their content's hash and
    only a wipe deletes them."""

    def __init__(self, *args: Any, **kwargs: Any):
        self._schema_found: set[str] = set()
        self._snapshots_stored: set[str] = set()
        super().__init__(*args, **kwargs)

    def has_job_snapshot(self, job_snapshot_id: str) -> bool:
        return self._snapshot_stored(job_snapshot_id, PostgresRunStorage.has_job_snapshot)

    def has_execution_plan_snapshot(self, execution_plan_snapshot_id: str) -> bool:
        return self._snapshot_stored(
            execution_plan_snapshot_id, PostgresRunStorage.has_execution_plan_snapshot
        )

    def _snapshot_stored(self, snapshot_id: str, ask: Any) -> bool:
        if snapshot_id not in self._snapshots_stored and ask(self, snapshot_id):
            self._snapshots_stored.add(snapshot_id)
        return snapshot_id in self._snapshots_stored

    def _add_snapshot(self, snapshot_id: str, snapshot_obj: Any, snapshot_type: Any) -> str:
        stored = super()._add_snapshot(snapshot_id, snapshot_obj, snapshot_type)
        self._snapshots_stored.add(stored)
        return stored

    def add_run(self, dagster_run: DagsterRun) -> DagsterRun:
        try:
            return super().add_run(dagster_run)
        except DagsterRunAlreadyExists:
            # Also what a snapshot gone since it was cached gives (the runs table's foreign
            # key), wiped by another process: the next run asks again and stores it again.
            self._snapshots_stored.clear()
            raise

    def wipe(self) -> None:
        super().wipe()
        self._snapshots_stored.clear()

    def _schema_has(self, check: str) -> bool:
        if check not in self._schema_found and getattr(PostgresRunStorage, check)(self):
            self._schema_found.add(check)
        return check in self._schema_found

    def has_run_stats_index_cols(self) -> bool:
        return self._schema_has("has_run_stats_index_cols")

    def has_backfill_id_column(self) -> bool:
        return self._schema_has("has_backfill_id_column")

    def has_bulk_actions_selector_cols(self) -> bool:
        return self._schema_has("has_bulk_actions_selector_cols")

    def has_bulk_action_job_name_column(self) -> bool:
        return self._schema_has("has_bulk_action_job_name_column")

    def has_backfill_tags_table(self) -> bool:
        return self._schema_has("has_backfill_tags_table")


class PooledPostgresEventLogStorage(_KeepsItsConnection, PostgresEventLogStorage):
    """PostgresEventLogStorage keeping its connection, and writing a run's events in one
    statement each. Dagster's follows each insert with a NOTIFY that nothing listens to any
    more (its event watchers poll; the NOTIFY stays for older Dagster versions reading the
    same database, which this deployment, pinned to one version, does not have): a second
    round trip for each of a run's 27 events. Asset and asset check events, which need
    Dagster's index writes too, go to Dagster's own store_event."""

    def store_event(self, event: EventLogEntry) -> None:
        dagster_event = event.dagster_event
        if dagster_event is not None and (
            dagster_event.event_type in ASSET_EVENTS
            or dagster_event.event_type in ASSET_CHECK_EVENTS
        ):
            super().store_event(event)
            return
        with self._connect() as connection:
            connection.execute(_INSERT_EVENT, self._event_to_row(event))
