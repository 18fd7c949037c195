"""AgentRunsStore: the one owner of the `agent_runs` and `agent_alerts` tables."""

from __future__ import annotations

import functools
import logging
import threading
import types
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr
from sqlalchemy import create_engine, exists, func, insert, inspect, or_, select, text, update
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from agent_pipeline.errors import (
    ERROR_MESSAGE_LIMIT,
    ConfigurationError,
    DatabaseUnavailableError,
)
from agent_pipeline.retries import (
    DATABASE_ATTEMPTS,
    database_error_line,
    database_retry,
    database_went_away,
)
from agent_pipeline.schema import (
    ALERT_FAILED,
    ALERT_PENDING,
    ALERT_SENDING,
    ALERT_SENT,
    EMAIL_CLAIMING_STATES,
    EMAIL_FAILED,
    EMAIL_NOT_SENT,
    EMAIL_REJECTED,
    EMAIL_SENDING,
    EMAIL_SENT,
    EMAIL_SKIPPED,
    EMAIL_UNKNOWN,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    STREAK_JOB,
    SUCCEEDED,
    VERSION_TABLE,
    agent_alerts,
    agent_runs,
    alert_streaks,
    llm_spend,
    naive_utc,
)
from agent_pipeline.text import storable_text

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"
# Any fixed number: it serialises migrations of concurrent first uses on Postgres.
MIGRATION_LOCK_ID = 7_262_010
DIED_WHILE_SENDING = (
    "the attempt died while sending: the server may or may not have taken the email, so it "
    "is not sent again; check the inbox"
)
# A delivery attempt takes at most about SMTP_TIMEOUT per step; a claim older than this
# belongs to a process that died, and the alert is tried again.
ALERT_CLAIM_TIMEOUT = timedelta(minutes=10)

# Serialises this process's migrations (SQLite has no advisory lock; Postgres takes one too).
_migrate_lock = threading.Lock()
# Set while this thread runs a call of the store that is redone as a whole when the server
# goes away: a call inside it (one method using another) is not redone on its own as well.
_in_unit_of_work = threading.local()
# The methods that are not a unit of work on the database.
_NOT_UNITS_OF_WORK = frozenset(
    {"setup_for_execution", "teardown_after_execution", "open", "close", "describe"}
)
log = logging.getLogger(__name__)


@functools.cache
def head_revision() -> str:
    """The newest migration under alembic/versions/."""
    # Alembic is imported where it is used: loading the definitions does not need it.
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    config = AlembicConfig()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def _ended_row(
    status: str, dagster_run_id: str | None, partition_key: str | None, agent: str, error: str
) -> dict[str, Any]:
    """A row written when its window's run has already ended (failed before its first op) or
    never ran (skipped): started and completed now, with the reason."""
    now = naive_utc()
    return {
        "started_at": now,
        "completed_at": now,
        "status": status,
        "dagster_run_id": dagster_run_id,
        "partition_key": partition_key,
        "agent": agent[:200],
        "error_message": error[:ERROR_MESSAGE_LIMIT],
        "email_status": EMAIL_NOT_SENT,
    }


def parse_database_url(database_url: str) -> URL:
    """The URL SQLAlchemy should use, or a ConfigurationError naming DATABASE_URL."""
    try:
        url = make_url(database_url.strip())
        url.port  # noqa: B018 (a malformed port only raises when read)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(
            "DATABASE_URL",
            "is not a database URL (expected postgresql://user:pass@host:5432/db "
            "or sqlite:///path)",
        ) from exc
    # postgres:// is the scheme many hosts hand out; SQLAlchemy only knows postgresql://.
    if url.drivername == "postgres":
        url = url.set(drivername="postgresql")
    backend = url.get_backend_name()
    if backend not in ("postgresql", "sqlite"):
        raise ConfigurationError(
            "DATABASE_URL", f"unsupported database {backend!r} (use postgresql or sqlite)"
        )
    if backend == "postgresql" and not url.database:
        raise ConfigurationError("DATABASE_URL", "names no database (…/dbname at the end)")
    return url


class AgentRunsStore(ConfigurableResource):
    """The agent_runs table in Postgres (or a local SQLite file): one row per Dagster run."""

    database_url: str = Field(
        description=(
            "SQLAlchemy URL of the database holding agent_runs, from DATABASE_URL: "
            "postgresql://user:pass@host:5432/db, or sqlite:///path for the local default."
        )
    )

    _engine: Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._engine = self.open()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.close()

    # -- lifecycle, usable without Dagster --------------------------------------------------

    def open(self) -> Engine:
        """Connect, apply pending migrations, and return the engine."""
        url = parse_database_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url)
        else:
            engine = create_engine(
                url, pool_pre_ping=True, connect_args={"connect_timeout": 10}
            )
        self._engine = engine
        self._migrate(url)
        return engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("AgentRunsStore is not open")
        return self._engine

    def describe(self) -> str:
        """The database, password hidden: safe for logs and the UI."""
        url = parse_database_url(self.database_url).set(query={})  # may hold a password too
        return url.render_as_string(hide_password=True)

    def _migrate(self, url: URL) -> None:
        """Bring the schema to the newest migration. One query when it is there already, as
        on every open but the first after an upgrade."""
        try:
            database_retry(on_retry=_log_retry)(self._upgrade_schema)
        except OperationalError as exc:
            raise DatabaseUnavailableError(
                f"cannot reach the agent_runs database {self.describe()} (DATABASE_URL): "
                f"{database_error_line(exc)}"
            ) from None

    def _upgrade_schema(self) -> None:
        if self._schema_revision() == head_revision():
            return
        with _migrate_lock, self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID}
                )
            from alembic import command
            from alembic.config import Config as AlembicConfig

            config = AlembicConfig()
            config.set_main_option("script_location", str(ALEMBIC_DIR))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def _schema_revision(self) -> str | None:
        with self.engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None
            return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()

    # -- rows -------------------------------------------------------------------------------

    def get_or_create_row(
        self, dagster_run_id: str, partition_key: str | None, agent: str
    ) -> int:
        """The row of this Dagster run, inserted as running if it is not there yet."""
        with self.engine.begin() as connection:
            existing = connection.execute(
                select(agent_runs.c.id).where(agent_runs.c.dagster_run_id == dagster_run_id)
            ).scalar_one_or_none()
            if existing is not None:
                return existing
            return connection.execute(
                insert(agent_runs)
                .values(
                    started_at=naive_utc(),
                    status=RUNNING,
                    dagster_run_id=dagster_run_id,
                    partition_key=partition_key,
                    agent=agent[:200],
                    email_status=EMAIL_NOT_SENT,
                )
                .returning(agent_runs.c.id)
            ).scalar_one()

    def record_skipped_window(self, partition_key: str, agent: str, reason: str) -> bool:
        """A row saying the schedule skipped this window and why; False (and no second row)
        when the window has one already, as when the daemon evaluates a tick again."""
        with self.engine.begin() as connection:
            if connection.execute(
                select(agent_runs.c.id).where(
                    agent_runs.c.partition_key == partition_key, agent_runs.c.status == SKIPPED
                )
            ).first():
                return False
            connection.execute(
                insert(agent_runs).values(
                    _ended_row(SKIPPED, None, partition_key, agent, storable_text(reason))
                )
            )
            return True

    def complete_run(self, row_id: int, result: Mapping[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(agent_runs)
                .where(agent_runs.c.id == row_id)
                .values(status=SUCCEEDED, completed_at=naive_utc(), result=dict(result))
            )

    def store_result(self, row_id: int, result: Mapping[str, Any]) -> None:
        """The run's result, its row still running: it succeeds once its email is settled."""
        with self.engine.begin() as connection:
            connection.execute(
                update(agent_runs).where(agent_runs.c.id == row_id).values(result=dict(result))
            )

    def succeed_run(self, row_id: int) -> None:
        """The run's work is all done, its email included."""
        with self.engine.begin() as connection:
            connection.execute(
                update(agent_runs)
                .where(agent_runs.c.id == row_id)
                .values(status=SUCCEEDED, completed_at=naive_utc())
            )

    def settle_dead_sending(self) -> list[dict[str, Any]]:
        """Rows whose run ended (failed) while their email was sending: each attempt died
        mid-delivery, and the server may or may not have taken the email. They become
        `unknown`, keeping the window's claim; the rows changed (id, partition_key,
        dagster_run_id)."""
        with self.engine.begin() as connection:
            rows = connection.execute(
                update(agent_runs)
                .where(agent_runs.c.status == FAILED, agent_runs.c.email_status == EMAIL_SENDING)
                .values(email_status=EMAIL_UNKNOWN, email_error=DIED_WHILE_SENDING)
                .returning(agent_runs.c.id, agent_runs.c.partition_key,
                           agent_runs.c.dagster_run_id)
            ).mappings()
            return [dict(row) for row in rows]

    def email_claim(self, row_id: int) -> dict[str, Any] | None:
        """The row of this row's window that holds its email (sending, sent or unknown), if
        any: id, dagster_run_id and email_status."""
        return self._newest_of_window(
            row_id, agent_runs.c.email_status.in_(EMAIL_CLAIMING_STATES),
            agent_runs.c.email_status,
        )

    def _newest_of_window(self, row_id: int, condition: Any, column: Any) -> dict | None:
        """The newest row of this row's window (this row included) that meets condition: its
        id, dagster_run_id and column."""
        window = (
            select(agent_runs.c.partition_key).where(agent_runs.c.id == row_id).scalar_subquery()
        )
        with self.engine.connect() as connection:
            row = connection.execute(
                select(agent_runs.c.id, agent_runs.c.dagster_run_id, column)
                .where(
                    or_(agent_runs.c.id == row_id, agent_runs.c.partition_key == window),
                    condition,
                )
                .order_by(agent_runs.c.id.desc())
                .limit(1)
            ).mappings().first()
            return dict(row) if row is not None else None

    def fail_run(self, dagster_run_id: str, error_message: str) -> bool:
        """Mark the run's row failed; False when the run has no row (it failed before one)."""
        error_message = storable_text(error_message)
        with self.engine.begin() as connection:
            updated = connection.execute(
                update(agent_runs)
                .where(agent_runs.c.dagster_run_id == dagster_run_id)
                .values(
                    status=FAILED,
                    completed_at=naive_utc(),
                    error_message=error_message[:ERROR_MESSAGE_LIMIT],
                )
            )
            return updated.rowcount > 0

    def fail_unfinished_run(
        self, dagster_run_id: str, partition_key: str | None, agent: str, error_message: str
    ) -> bool:
        """Mark the run's row failed if it is still pending or running, or insert it failed if
        the run never wrote one (it failed before record_run). False when the row had already
        ended: the failing op got there first, or the run succeeded."""
        error_message = storable_text(error_message)[:ERROR_MESSAGE_LIMIT]
        now = naive_utc()
        with self.engine.begin() as connection:
            updated = connection.execute(
                update(agent_runs)
                .where(
                    agent_runs.c.dagster_run_id == dagster_run_id,
                    agent_runs.c.status.in_((PENDING, RUNNING)),
                )
                .values(status=FAILED, completed_at=now, error_message=error_message)
            )
            if updated.rowcount:
                return True
            exists = connection.execute(
                select(agent_runs.c.id).where(agent_runs.c.dagster_run_id == dagster_run_id)
            ).first()
            if exists:
                return False
            try:
                with connection.begin_nested():
                    connection.execute(
                        insert(agent_runs).values(
                            _ended_row(FAILED, dagster_run_id, partition_key, agent, error_message)
                        )
                    )
            except IntegrityError:  # the run wrote its row in the meantime
                return False
            return True

    def unfinished_runs(self) -> list[dict[str, Any]]:
        """Rows still pending or running, oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(agent_runs)
                .where(agent_runs.c.status.in_((PENDING, RUNNING)))
                .order_by(agent_runs.c.id)
            ).mappings()
            return [dict(row) for row in rows]

    def get_row(self, row_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(agent_runs).where(agent_runs.c.id == row_id)
            ).mappings().one_or_none()
            return dict(row) if row is not None else None

    def get_row_of_run(self, dagster_run_id: str) -> dict[str, Any] | None:
        """The row of a Dagster run, if it has one."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(agent_runs).where(agent_runs.c.dagster_run_id == dagster_run_id)
            ).mappings().one_or_none()
            return dict(row) if row is not None else None

    def runs_for_window(self, partition_key: str) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(agent_runs)
                .where(agent_runs.c.partition_key == partition_key)
                .order_by(agent_runs.c.id)
            ).mappings()
            return [dict(row) for row in rows]

    # -- email delivery ---------------------------------------------------------------------

    def claim_email(self, row_id: int) -> bool:
        """Take the right to send this row's window's email. False if this row or another row
        of the window already holds it (sending or sent)."""
        try:
            with self.engine.begin() as connection:
                claimed = connection.execute(
                    update(agent_runs)
                    .where(
                        agent_runs.c.id == row_id,
                        or_(
                            agent_runs.c.email_status.is_(None),
                            agent_runs.c.email_status.not_in(EMAIL_CLAIMING_STATES),
                        ),
                    )
                    .values(email_status=EMAIL_SENDING, email_error=None)
                )
        except IntegrityError:
            return False
        if claimed.rowcount == 1:
            return True
        # Made again after the connection dropped: the first try's COMMIT may have taken effect,
        # its answer lost. The row sending is then this claim (nothing else in this process
        # makes its own row sending: a run's claim is released after each attempt).
        return redoing_after_lost_connection() and self._email_status(row_id) == EMAIL_SENDING

    def _email_status(self, row_id: int) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(
                select(agent_runs.c.email_status).where(agent_runs.c.id == row_id)
            ).scalar_one_or_none()

    def sent_top_fives(self, other_than_window: str, days: int = 7) -> list[list[Any]]:
        """The top fives of the emails sent for other windows in the last days."""
        since = naive_utc() - timedelta(days=days)
        with self.engine.connect() as connection:
            tops = connection.execute(
                select(agent_runs.c.result["top_five"]).where(
                    agent_runs.c.email_status == EMAIL_SENT,
                    agent_runs.c.email_sent_at >= since,
                    agent_runs.c.partition_key != other_than_window,
                )
            ).scalars()
            return [top for top in tops if isinstance(top, list)]

    def undelivered_windows(self, limit: int, max_age_hours: int = 24) -> list[dict[str, Any]]:
        """For each window whose email failed in the last max_age_hours, that no row has sent
        or is sending since and whose email the server has not rejected, its newest failed row
        with a top five; oldest windows first, at most limit."""
        # Rejected windows are never tried again, so they must not take redelivery slots.
        # Correlated on the window, so the partition_key index answers it: a NOT IN over every
        # settled row grew with the table (bench_year.py).
        settled = agent_runs.alias("settled")
        settled_since = exists().where(
            settled.c.partition_key == agent_runs.c.partition_key,
            settled.c.email_status.in_((*EMAIL_CLAIMING_STATES, EMAIL_REJECTED)),
        )
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(agent_runs)
                .where(
                    agent_runs.c.email_status == EMAIL_FAILED,
                    agent_runs.c.started_at >= naive_utc() - timedelta(hours=max_age_hours),
                    agent_runs.c.partition_key.is_not(None),
                    ~settled_since,
                )
                .order_by(agent_runs.c.id.desc())
            ).mappings()
            newest: dict[str, dict[str, Any]] = {}
            for row in rows:
                if (row["result"] or {}).get("top_five"):
                    newest.setdefault(row["partition_key"], dict(row))
        return [newest[key] for key in sorted(newest)][:limit]

    def rejected_email(self, row_id: int) -> dict[str, Any] | None:
        """The newest row of this row's window (this row included) whose email the server
        rejected for good: id, dagster_run_id and email_error; None if there is none."""
        return self._newest_of_window(
            row_id, agent_runs.c.email_status == EMAIL_REJECTED, agent_runs.c.email_error
        )

    def record_email_sent(self, row_id: int) -> None:
        self._set_email_state(row_id, EMAIL_SENT, email_sent_at=naive_utc())

    def record_email_failed(self, row_id: int, error: str) -> None:
        # Failed releases the claim, so a later run of the window may deliver it.
        self._set_email_state(row_id, EMAIL_FAILED, email_error=error[:ERROR_MESSAGE_LIMIT])

    def record_email_rejected(self, row_id: int, error: str) -> None:
        # Releases the claim too, but neither redelivery nor a later run of the window takes
        # it up again: the server would refuse it again.
        self._set_email_state(row_id, EMAIL_REJECTED, email_error=error[:ERROR_MESSAGE_LIMIT])

    def record_email_skipped(self, row_id: int, reason: str) -> None:
        self._set_email_state(row_id, EMAIL_SKIPPED, email_error=reason[:ERROR_MESSAGE_LIMIT])

    def _set_email_state(self, row_id: int, state: str, **values: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(agent_runs)
                .where(agent_runs.c.id == row_id)
                .values(email_status=state, **values)
            )

    # -- failure alerts ---------------------------------------------------------------------

    def add_alert(
        self,
        alert_key: str,
        partition_key: str | None,
        dagster_run_id: str,
        error_message: str,
        attempts: int,
    ) -> bool:
        """Queue the failure alert of alert_key; False when it has one already."""
        try:
            with self.engine.begin() as connection:
                self._insert_alert(
                    connection, alert_key, partition_key, dagster_run_id, error_message,
                    attempts, naive_utc(),
                )
        except IntegrityError:
            return False
        return True

    @staticmethod
    def _insert_alert(
        connection: Any,
        alert_key: str,
        partition_key: str | None,
        dagster_run_id: str,
        error_message: str,
        attempts: int,
        created_at: datetime,
        streak_id: int | None = None,
    ) -> None:
        """A pending alert; IntegrityError when alert_key has one (its unique index)."""
        connection.execute(
            insert(agent_alerts).values(
                alert_key=alert_key,
                partition_key=partition_key,
                dagster_run_id=dagster_run_id,
                error_message=storable_text(error_message)[:ERROR_MESSAGE_LIMIT],
                attempts=attempts,
                created_at=created_at,
                status=ALERT_PENDING,
                streak_id=streak_id,
            )
        )

    def pending_alerts(
        self, limit: int, max_age_hours: int = 24, *, ungrouped_only: bool = False
    ) -> list[dict[str, Any]]:
        """Alerts of the last max_age_hours waiting for delivery (pending, or claimed by a
        process that has not finished in ALERT_CLAIM_TIMEOUT), oldest first; ungrouped_only:
        only those sent one by one, in no failure streak."""
        now = naive_utc()
        grouped = [agent_alerts.c.streak_id.is_(None)] if ungrouped_only else []
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(agent_alerts)
                .where(
                    self._alert_claimable(now),
                    agent_alerts.c.created_at >= now - timedelta(hours=max_age_hours),
                    *grouped,
                )
                .order_by(agent_alerts.c.id)
                .limit(limit)
            ).mappings()
            return [dict(row) for row in rows]

    def claim_alert(self, alert_id: int) -> bool:
        """Take an alert for one delivery attempt; False when another process has it."""
        now = naive_utc()
        with self.engine.begin() as connection:
            claimed = connection.execute(
                update(agent_alerts)
                .where(agent_alerts.c.id == alert_id, self._alert_claimable(now))
                .values(status=ALERT_SENDING, claimed_at=now)
            )
        return claimed.rowcount == 1

    @staticmethod
    def _alert_claimable(now: datetime) -> Any:
        return or_(
            agent_alerts.c.status == ALERT_PENDING,
            (agent_alerts.c.status == ALERT_SENDING)
            & (agent_alerts.c.claimed_at < now - ALERT_CLAIM_TIMEOUT),
        )

    def record_alert_sent(self, alert_id: int) -> None:
        self._set_alert(alert_id, status=ALERT_SENT, sent_at=naive_utc(), delivery_error=None)

    def release_alert(self, alert_id: int, error: str) -> None:
        """The attempt failed in a way worth retrying: the alert waits for the next one."""
        self._set_alert(alert_id, status=ALERT_PENDING, delivery_error=error[:ERROR_MESSAGE_LIMIT])

    def record_alert_rejected(self, alert_id: int, error: str) -> None:
        """The server rejected this alert for good: it is not tried again."""
        self._set_alert(alert_id, status=ALERT_FAILED, delivery_error=error[:ERROR_MESSAGE_LIMIT])

    def _set_alert(self, alert_id: int, **values: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(agent_alerts).where(agent_alerts.c.id == alert_id).values(**values)
            )

    # -- failure streaks --------------------------------------------------------------------
    # A window that fails for good joins the open streak; its alert row is the window's claim
    # as above, and goes out in the streak's emails (one per period) instead of on its own.

    def add_failure_alert(
        self,
        alert_key: str,
        partition_key: str | None,
        dagster_run_id: str,
        error_message: str,
        attempts: int,
        now: datetime | None = None,
    ) -> bool:
        """Queue the failure alert of alert_key in the open failure streak, opening one when
        none is open; False when alert_key has an alert already (and nothing changes)."""
        now = now or naive_utc()
        try:
            with self.engine.begin() as connection:
                # When the run failed, as its row says (the sweeper may find a failure late);
                # a run that failed before its row was written failed about now.
                failed_at = connection.execute(
                    select(agent_runs.c.completed_at).where(
                        agent_runs.c.dagster_run_id == dagster_run_id
                    )
                ).scalar_one_or_none() or now
                streak_id = self._join_open_streak(connection, failed_at, now)
                self._insert_alert(
                    connection, alert_key, partition_key, dagster_run_id, error_message,
                    attempts, now, streak_id,
                )
        except IntegrityError:  # the alert key's: the streak change rolls back with it
            return False
        return True

    def _join_open_streak(self, connection: Any, failed_at: datetime, now: datetime) -> int:
        """The open streak's id, its last failure moved up to failed_at; a new streak when
        none is open."""
        for _ in range(2):
            # Locked: a streak being resolved at this moment is not joined after it ended.
            streak = connection.execute(
                select(alert_streaks.c.id, alert_streaks.c.last_failure_at)
                .where(alert_streaks.c.job_name == STREAK_JOB,
                       alert_streaks.c.resolved_at.is_(None))
                .with_for_update()
            ).first()
            if streak is not None:
                if failed_at > streak.last_failure_at:
                    connection.execute(
                        update(alert_streaks)
                        .where(alert_streaks.c.id == streak.id)
                        .values(last_failure_at=failed_at)
                    )
                return streak.id
            try:
                with connection.begin_nested():
                    return connection.execute(
                        insert(alert_streaks)
                        .values(job_name=STREAK_JOB, opened_at=now, last_failure_at=failed_at)
                        .returning(alert_streaks.c.id)
                    ).scalar_one()
            except IntegrityError:
                continue  # another process opened it just now: join that one
        raise RuntimeError("no open failure streak to join")  # pragma: no cover

    def resolve_recovered_streak(self, now: datetime | None = None) -> dict[str, Any] | None:
        """End the open streak when a run succeeded after its last failure: the streak, its
        recovered email pending, or None when none is open or nothing succeeded since."""
        now = now or naive_utc()
        with self.engine.begin() as connection:
            streak = connection.execute(
                select(alert_streaks)
                .where(alert_streaks.c.job_name == STREAK_JOB,
                       alert_streaks.c.resolved_at.is_(None))
                .with_for_update()
            ).mappings().first()
            if streak is None:
                return None
            # The first success after the last failure: the window the streak ended with.
            success = connection.execute(
                select(agent_runs.c.partition_key, agent_runs.c.dagster_run_id,
                       agent_runs.c.completed_at)
                .where(agent_runs.c.completed_at > streak["last_failure_at"],
                       agent_runs.c.status == SUCCEEDED)
                .order_by(agent_runs.c.completed_at)
                .limit(1)
            ).first()
            if success is None:
                return None
            values = {
                "resolved_at": now,
                "resolved_partition_key": success.partition_key,
                "resolved_run_id": success.dagster_run_id,
                "resolved_run_at": success.completed_at,
                "recovered_status": ALERT_PENDING,
            }
            connection.execute(
                update(alert_streaks).where(alert_streaks.c.id == streak["id"]).values(**values)
            )
            return {**streak, **values}

    def streaks_to_deliver(self) -> list[dict[str, Any]]:
        """The open streak, and ended streaks whose recovered email has not gone out yet,
        oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(alert_streaks)
                .where(or_(alert_streaks.c.resolved_at.is_(None),
                           alert_streaks.c.recovered_status.in_((ALERT_PENDING, ALERT_SENDING))))
                .order_by(alert_streaks.c.id)
            ).mappings()
            return [dict(row) for row in rows]

    def claim_streak_notice(self, streak_id: int, repeat: timedelta, now: datetime) -> bool:
        """Take the open streak's failure email for one delivery attempt, and with it the
        streak's pending alerts: False when the period since its last one has not passed,
        another process holds it, or no alert waits."""
        with self.engine.connect() as connection, connection.begin() as transaction:
            claimed = connection.execute(
                update(alert_streaks)
                .where(
                    alert_streaks.c.id == streak_id,
                    alert_streaks.c.resolved_at.is_(None),
                    or_(alert_streaks.c.notified_at.is_(None),
                        alert_streaks.c.notified_at <= now - repeat),
                    or_(alert_streaks.c.notice_claimed_at.is_(None),
                        alert_streaks.c.notice_claimed_at < now - ALERT_CLAIM_TIMEOUT),
                )
                .values(notice_claimed_at=now)
            ).rowcount == 1
            # Rolled back with the claim when no alert waits: nothing to send this time.
            if not claimed or not self._claim_streak_alerts(connection, streak_id, now):
                transaction.rollback()
                return False
            return True

    def claim_recovered_notice(self, streak_id: int, now: datetime) -> bool:
        """Take an ended streak's recovered email for one delivery attempt, with the alerts
        of the streak that no email has carried yet (it tells of them). False while another
        process holds it, or holds a failure email of the streak: that goes out first."""
        failure_email_in_flight = exists().where(
            agent_alerts.c.streak_id == streak_id,
            agent_alerts.c.status == ALERT_SENDING,
            agent_alerts.c.claimed_at >= now - ALERT_CLAIM_TIMEOUT,
        )
        with self.engine.begin() as connection:
            claimed = connection.execute(
                update(alert_streaks)
                .where(
                    alert_streaks.c.id == streak_id,
                    or_(alert_streaks.c.recovered_status == ALERT_PENDING,
                        (alert_streaks.c.recovered_status == ALERT_SENDING)
                        & (alert_streaks.c.recovered_claimed_at < now - ALERT_CLAIM_TIMEOUT)),
                    ~failure_email_in_flight,
                )
                .values(recovered_status=ALERT_SENDING, recovered_claimed_at=now)
            ).rowcount == 1
            if claimed:
                self._claim_streak_alerts(connection, streak_id, now)
            return claimed

    def _claim_streak_alerts(self, connection: Any, streak_id: int, now: datetime) -> int:
        """The streak's alerts waiting for an email become sending: the email being claimed
        carries them. Only one process claims a streak's email at a time."""
        return connection.execute(
            update(agent_alerts)
            .where(agent_alerts.c.streak_id == streak_id, self._alert_claimable(now))
            .values(status=ALERT_SENDING, claimed_at=now)
        ).rowcount

    def streak_alerts_summary(
        self, streak_id: int, only_sending: bool, error_limit: int
    ) -> dict[str, Any]:
        """The streak's alerts (only those an email being sent carries, or all): how many,
        how many have a window, the first and last window, the newest one's run, the
        error_limit most frequent errors with their counts and how many distinct errors
        there are; the alert itself when there is one. Counted in the database: a streak of
        a month is thousands of alerts."""
        where = [agent_alerts.c.streak_id == streak_id]
        if only_sending:
            where.append(agent_alerts.c.status == ALERT_SENDING)
        with self.engine.connect() as connection:
            totals = connection.execute(
                select(
                    func.count().label("count"),
                    func.count(agent_alerts.c.partition_key).label("windows"),
                    func.min(agent_alerts.c.partition_key).label("first_window"),
                    func.max(agent_alerts.c.partition_key).label("last_window"),
                    func.count(agent_alerts.c.error_message.distinct()).label("distinct_errors"),
                ).where(*where)
            ).mappings().one()
            errors = connection.execute(
                select(agent_alerts.c.error_message, func.count().label("count"))
                .where(*where)
                .group_by(agent_alerts.c.error_message)
                .order_by(func.count().desc(), func.min(agent_alerts.c.id))
                .limit(error_limit)
            ).all() if error_limit else []
            newest = connection.execute(
                select(agent_alerts).where(*where).order_by(agent_alerts.c.id.desc()).limit(1)
            ).mappings().first()
        return {
            **totals,
            "errors": [(e.error_message, e.count) for e in errors],
            "last_run_id": newest["dagster_run_id"] if newest else None,
            "only": dict(newest) if totals["count"] == 1 else None,
        }

    def finish_streak_notice(
        self, streak_id: int, outcome: str, error: str | None, now: datetime
    ) -> None:
        """After a failure email's one attempt: ALERT_SENT (the period starts now),
        ALERT_PENDING (worth retrying: the alerts wait for the next tick) or ALERT_FAILED
        (the server refused it for good: not retried, and the period starts too)."""
        values: dict[str, Any] = {"notice_claimed_at": None}
        if outcome != ALERT_PENDING:
            values["notified_at"] = now
        with self.engine.begin() as connection:
            self._settle_streak_alerts(connection, streak_id, outcome, error, now)
            connection.execute(
                update(alert_streaks).where(alert_streaks.c.id == streak_id).values(**values)
            )

    def finish_recovered_notice(
        self, streak_id: int, outcome: str, error: str | None, now: datetime
    ) -> None:
        """After a recovered email's one attempt, as finish_streak_notice."""
        with self.engine.begin() as connection:
            self._settle_streak_alerts(connection, streak_id, outcome, error, now)
            connection.execute(
                update(alert_streaks)
                .where(alert_streaks.c.id == streak_id)
                .values(recovered_status=outcome,
                        recovered_error=error and error[:ERROR_MESSAGE_LIMIT])
            )

    @staticmethod
    def _settle_streak_alerts(
        connection: Any, streak_id: int, outcome: str, error: str | None, now: datetime
    ) -> None:
        values: dict[str, Any] = {
            "status": outcome, "delivery_error": error and error[:ERROR_MESSAGE_LIMIT]
        }
        if outcome == ALERT_SENT:
            values["sent_at"] = now
        connection.execute(
            update(agent_alerts)
            .where(agent_alerts.c.streak_id == streak_id,
                   agent_alerts.c.status == ALERT_SENDING)
            .values(**values)
        )

    # -- retention --------------------------------------------------------------------------
    # Each call handles one batch in its own short transaction: the retention job loops, so no
    # lock is held for long while the schedule's runs write.

    def compact_results(
        self, started_before: datetime, batch: int, compact: Callable[[Any], Any]
    ) -> int:
        """Replace the result of up to `batch` rows started before the cutoff by
        compact(result); how many rows were compacted."""
        with self.engine.begin() as connection:
            rows = connection.execute(
                select(agent_runs.c.id, agent_runs.c.result)
                .where(
                    agent_runs.c.started_at < started_before,
                    agent_runs.c.result.is_not(None),
                    agent_runs.c.result_compacted_at.is_(None),
                )
                .order_by(agent_runs.c.id)
                .limit(batch)
            ).all()
            now = naive_utc()
            for row_id, result in rows:
                connection.execute(
                    update(agent_runs)
                    .where(agent_runs.c.id == row_id)
                    .values(result=compact(result), result_compacted_at=now)
                )
            return len(rows)

    def delete_runs_started_before(self, started_before: datetime, batch: int) -> int:
        """Delete up to `batch` of the oldest rows started before the cutoff; how many."""
        return self._delete_oldest(agent_runs, agent_runs.c.started_at, started_before, batch)

    def delete_alerts_created_before(self, created_before: datetime, batch: int) -> int:
        """Delete up to `batch` of the oldest alerts created before the cutoff, and the failure
        streaks that ended and the LLM spend of the days before it (a row a day); how many
        alerts."""
        deleted = self._delete_oldest(
            agent_alerts, agent_alerts.c.created_at, created_before, batch
        )
        with self.engine.begin() as connection:
            connection.execute(
                alert_streaks.delete().where(alert_streaks.c.resolved_at < created_before)
            )
            connection.execute(llm_spend.delete().where(llm_spend.c.day < created_before.date()))
        return deleted

    def _delete_oldest(self, table: Any, column: Any, before: datetime, batch: int) -> int:
        with self.engine.begin() as connection:
            ids = select(table.c.id).where(column < before).order_by(table.c.id).limit(batch)
            return connection.execute(
                table.delete().where(table.c.id.in_(ids.scalar_subquery()))
            ).rowcount

    # -- the LLM's spend per UTC day: the ledger LLM_DAILY_BUDGET is checked against ----------

    def llm_spend_on(self, day: date) -> tuple[int, float]:
        """(calls, cost) counted for the UTC day."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(llm_spend.c.calls, llm_spend.c.cost).where(llm_spend.c.day == day)
            ).first()
        return (row.calls, row.cost) if row else (0, 0.0)

    def add_llm_spend(
        self, day: date, calls: int, prompt_tokens: int, completion_tokens: int, cost: float
    ) -> None:
        """Count calls for the UTC day. An increment in the database, not a total written
        back: runs counting at the same time lose none of each other's calls."""
        increment = {
            "calls": llm_spend.c.calls + calls,
            "prompt_tokens": llm_spend.c.prompt_tokens + prompt_tokens,
            "completion_tokens": llm_spend.c.completion_tokens + completion_tokens,
            "cost": llm_spend.c.cost + cost,
        }
        for _ in range(2):  # the day's first call may race another run's
            with self.engine.begin() as connection:
                if connection.execute(
                    update(llm_spend).where(llm_spend.c.day == day).values(**increment)
                ).rowcount:
                    return
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(llm_spend).values(
                        day=day, calls=calls, prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens, cost=cost,
                    ))
                return
            except IntegrityError:
                continue


def _log_retry(error: BaseException, seconds: float) -> None:
    log.warning(
        f"agent_runs database went away ({database_error_line(error)}); again in {seconds:.1f}s"
    )


def _redone_when_the_server_went_away(method: Callable[..., Any]) -> Callable[..., Any]:
    """The call as one unit of work: when the server drops the connection or is restarting,
    its transaction is rolled back (the server did so already) and the whole call is made
    again from its start on a new connection, as the retry policy says; what it read before
    is read again. A server still away after that is a DatabaseUnavailableError."""

    @functools.wraps(method)
    def unit_of_work(self: AgentRunsStore, *args: Any, **kwargs: Any) -> Any:
        if getattr(_in_unit_of_work, "active", False):
            return method(self, *args, **kwargs)
        _in_unit_of_work.active = True
        _in_unit_of_work.redoing = False

        def attempt() -> Any:
            try:
                return method(self, *args, **kwargs)
            finally:
                _in_unit_of_work.redoing = True

        try:
            return database_retry(on_retry=_log_retry)(attempt)
        except Exception as exc:
            if not database_went_away(exc):
                raise
            raise DatabaseUnavailableError(
                f"lost the agent_runs database {self.describe()} (DATABASE_URL) and could not "
                f"reach it again in {DATABASE_ATTEMPTS} tries: {database_error_line(exc)}"
            ) from exc
        finally:
            _in_unit_of_work.active = _in_unit_of_work.redoing = False

    return unit_of_work


def redoing_after_lost_connection() -> bool:
    """Whether this thread's call of the store is being made again because the server dropped
    the connection during an earlier try: what that try wrote may have been committed."""
    return getattr(_in_unit_of_work, "redoing", False)


# Every read and write of the tables, in one place rather than method by method: a method added
# later is a unit of work too. Safe to redo because each method is one transaction (or a few,
# each safe to repeat), and because a transaction cut off before its COMMIT reached the server
# has no effect. A COMMIT that took effect just as the connection dropped, its answer lost, is
# redone too: claim_email then finds its own row sending and knows the claim is its own (see
# there); the alert claims find theirs taken and say False, so an alert waits for its claim to
# time out (ALERT_CLAIM_TIMEOUT) and goes then, never twice; an LLM spend is counted twice,
# more than was spent rather than less.
for _name, _method in list(vars(AgentRunsStore).items()):
    if isinstance(_method, types.FunctionType) and not _name.startswith("_") \
            and _name not in _NOT_UNITS_OF_WORK:
        setattr(AgentRunsStore, _name, _redone_when_the_server_went_away(_method))
