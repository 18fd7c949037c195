"""The `agent_runs` table, as the migrations leave it. The migrations under alembic/versions/
create and upgrade the real table; this module is what the code reads and writes through."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()


def naive_utc(moment: datetime | None = None) -> datetime:
    """moment (aware; now by default) as the tables hold times: naive UTC, as the seed's
    TIMESTAMP columns have no zone."""
    return (moment or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)

# Where Alembic keeps the schema's migration revision: Dagster's own storage keeps an
# `alembic_version` table in the same database in production; ours must not collide with it.
VERSION_TABLE = "agent_runs_alembic_version"

# JSONB on Postgres (the seed schema's type, indexable); plain JSON text on SQLite.
JsonDocument = JSON().with_variant(JSONB(), "postgresql")

# Run statuses, in the order a row moves through them.
PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"
# A window the schedule did not run at its tick (OVERLAP_POLICY=skip): the row has no Dagster
# run, says why in error_message, and the catch-up sensor launches the window later.
SKIPPED = "skipped"

# Email delivery states. A row holding SENDING, SENT or UNKNOWN owns its window's email: the
# partial unique index below lets only one row per window hold one, so two runs of one window
# cannot both send.
EMAIL_NOT_SENT, EMAIL_SENDING, EMAIL_SENT, EMAIL_FAILED, EMAIL_SKIPPED = (
    "not_sent",
    "sending",
    "sent",
    "failed",
    "skipped",
)
# An attempt died while sending (the sweeper found it so): the server may or may not have
# taken the email. It keeps the window's claim: nothing sends it again on its own.
EMAIL_UNKNOWN = "unknown"
EMAIL_CLAIMING_STATES = (EMAIL_SENDING, EMAIL_SENT, EMAIL_UNKNOWN)
# The server refused the message for good (a 5xx reply): the window is never tried again,
# neither by redelivery nor by a later run of it. It claims nothing in the unique index, so a
# person who has fixed the cause can set the row back to failed and launch the window.
EMAIL_REJECTED = "rejected"

# Failure alerts: PENDING until a sensor claims one (SENDING) for a delivery attempt; then
# SENT, or back to PENDING after a failure worth retrying, or FAILED when the server
# rejected the message for good.
ALERT_PENDING, ALERT_SENDING, ALERT_SENT, ALERT_FAILED = "pending", "sending", "sent", "failed"

agent_runs = Table(
    "agent_runs",
    metadata,
    # The seed columns: names and types stay as they are so existing queries keep working.
    Column("id", Integer, primary_key=True),
    # Timestamps are naive UTC (the seed's TIMESTAMP has no zone); the code always writes UTC.
    Column("started_at", DateTime, nullable=False, server_default=func.now()),
    Column("completed_at", DateTime),
    Column("status", String(20), nullable=False),
    # Bounded: the top five, the valid outcomes up to a cap, and the drop reasons up to a cap.
    Column("result", JsonDocument),
    # The exception's message, never a traceback.
    Column("error_message", Text),
    # Added by 0002: which Dagster run and window the row belongs to.
    Column("dagster_run_id", String(64)),
    Column("partition_key", String(32)),
    Column("agent", String(200)),
    Column("email_status", String(20)),
    Column("email_sent_at", DateTime),
    Column("email_error", Text),
    # Added by 0006: when the retention job cut `result` down to the top five and the counts.
    Column("result_compacted_at", DateTime),
)

# One row per Dagster run: a retried record_run op finds its row instead of adding one.
Index("agent_runs_dagster_run_id", agent_runs.c.dagster_run_id, unique=True)
Index("agent_runs_partition_key", agent_runs.c.partition_key)
# Added by 0006: the retention job's range scans by age.
Index("agent_runs_started_at", agent_runs.c.started_at)
# Added by 0005: whether a run succeeded after a failure streak's last failure is one short
# range scan, however many rows the table holds.
Index("agent_runs_completed_at", agent_runs.c.completed_at)
# Added by 0007: the only-new lookup (emails sent in the last days) and the sweeper (rows still
# running, emails left sending) read a few rows, not the year of rows the table holds.
Index("agent_runs_email_sent", agent_runs.c.email_status, agent_runs.c.email_sent_at)
Index("agent_runs_status", agent_runs.c.status, agent_runs.c.email_status)
_claims_email = text("email_status IN ('sending', 'sent', 'unknown')")
Index(
    "agent_runs_one_email_per_window",
    agent_runs.c.partition_key,
    unique=True,
    postgresql_where=_claims_email,
    sqlite_where=_claims_email,
)

# One failure alert per window (or per run, for a run launched without one): the unique
# alert_key is the claim, so a failed retry of a window already alerted adds nothing.
agent_alerts = Table(
    "agent_alerts",
    metadata,
    Column("id", Integer, primary_key=True),
    # The window's partition key, or "run:<run id>" for a run without a window.
    Column("alert_key", String(100), nullable=False),
    Column("partition_key", String(32)),
    # The run whose failure raised the alert: the last attempt of the window.
    Column("dagster_run_id", String(64), nullable=False),
    Column("error_message", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("status", String(20), nullable=False),
    # When a sensor took it for a delivery attempt: a claim older than the claim timeout is
    # taken as lost with its process.
    Column("claimed_at", DateTime),
    Column("sent_at", DateTime),
    # Why the last delivery failed.
    Column("delivery_error", Text),
    # Added by 0005: the failure streak this window's failure belongs to. Its alerts go out
    # grouped (see alert_streaks); NULL for alerts sent one by one: an email that may not
    # have gone out, and rows queued before 0005.
    Column("streak_id", Integer),
)
Index("agent_alerts_one_per_key", agent_alerts.c.alert_key, unique=True)
Index("agent_alerts_status", agent_alerts.c.status)
Index("agent_alerts_created_at", agent_alerts.c.created_at)
Index("agent_alerts_streak", agent_alerts.c.streak_id, agent_alerts.c.status)

# The job whose failures are grouped into streaks; a column so that each job could have its
# own open streak.
STREAK_JOB = "agent_job"

# Failure streaks (added by 0005), after Alertmanager's alert groups: failed windows in a row
# form one streak, open until a run succeeds after its last failure. Its first failure is
# emailed at once, later ones at most once per ALERT_REPEAT_MINUTES in a summary, and its end
# in one "recovered" email. The state is here, not in a sensor's memory, so that it survives
# restarts and two sensors share it.
alert_streaks = Table(
    "alert_streaks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_name", String(100), nullable=False),
    Column("opened_at", DateTime, nullable=False),
    # When its newest failure happened (the failed row's completed_at): only a run that
    # succeeds after it ends the streak.
    Column("last_failure_at", DateTime, nullable=False),
    # The period's one failure email: a sensor claims it (notice_claimed_at) for a delivery
    # attempt; notified_at is when the last one went out, so the next waits for the period.
    Column("notice_claimed_at", DateTime),
    Column("notified_at", DateTime),
    # Set when a succeeded run ended the streak, with the window and run that succeeded.
    Column("resolved_at", DateTime),
    Column("resolved_partition_key", String(32)),
    Column("resolved_run_id", String(64)),
    Column("resolved_run_at", DateTime),
    # The "recovered" email: pending once resolved, then as an alert's status (sending, sent,
    # failed).
    Column("recovered_status", String(20)),
    Column("recovered_claimed_at", DateTime),
    Column("recovered_error", Text),
)
# At most one open streak per job: two sensors adding failures at once join one streak.
_open_streak = text("resolved_at IS NULL")
Index(
    "alert_streaks_one_open_per_job",
    alert_streaks.c.job_name,
    unique=True,
    postgresql_where=_open_streak,
    sqlite_where=_open_streak,
)
Index("alert_streaks_recovered_status", alert_streaks.c.recovered_status)


# What the LLM cost per UTC day, counted call by call by every run (LLM_DAILY_BUDGET is checked
# against it): here, not in Redis, so that an emptied cache forgets nothing of the day's spend.
llm_spend = Table(
    "llm_spend",
    metadata,
    Column("day", Date, primary_key=True),
    Column("calls", Integer, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cost", Float, nullable=False),
)
