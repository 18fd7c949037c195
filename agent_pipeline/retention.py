"""Bounded growth: what the daily retention_job deletes and compacts. Plain functions over the
Dagster instance and the agent_runs store; the op only calls apply_retention and reports.

A year of 10-minute windows is 52,560 runs, each with about 40 event-log rows, compute logs
and pickled op outputs, and 52,560 agent_runs rows whose result may hold a megabyte each.
Everything older than its retention goes, in batches, each in its own short transaction, and
within a time budget: a first run on a large backlog stops and leaves the rest for the next
day instead of holding the one run slot."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from agent_pipeline.ranking import compact_result
from agent_pipeline.resources.agent_runs import AgentRunsStore
from agent_pipeline.resources.retention import Retention
from agent_pipeline.schema import naive_utc

# Dagster runs per batch: each is deleted with its events in transactions of its own.
RUN_BATCH = 100
# agent_runs and agent_alerts rows per statement.
ROW_BATCH = 500
# The job stops starting new batches after this long; the rest waits for the next day.
TIME_BUDGET_SECONDS = 300.0
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]


@dataclass
class RetentionReport:
    dagster_runs_deleted: int = 0
    compute_log_folders_deleted: int = 0
    op_output_folders_deleted: int = 0
    results_compacted: int = 0
    agent_runs_deleted: int = 0
    alerts_deleted: int = 0
    # False when the time budget ran out first: the next run goes on.
    finished: bool = True

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


def _drain(step: Callable[[], int], batch: int, deadline: float) -> tuple[int, bool]:
    """Run step (one batch, returning how many it handled) until a batch comes back short or
    the deadline passes; the total, and whether it ran out of time with work left."""
    total = 0
    while time.monotonic() < deadline:
        done = step()
        total += done
        if done < batch:
            return total, False
    return total, True


def delete_dagster_run(instance: DagsterInstance, run_id: str, report: RetentionReport) -> None:
    """One run, its event log, its compute logs and its stored op outputs."""
    instance.delete_run(run_id)
    report.dagster_runs_deleted += 1
    # SQLite storage (make dev) keeps each run's events in a file of its own, left empty.
    shard_path = getattr(instance.event_log_storage, "path_for_shard", None)
    if shard_path:
        for suffix in ("", "-wal", "-shm"):
            path = shard_path(run_id) + suffix
            if os.path.exists(path):
                os.remove(path)
    logs = instance.compute_log_manager
    base_dir = getattr(logs, "_base_dir", None)
    if base_dir and os.path.isdir(os.path.join(base_dir, run_id)):
        logs.delete_logs(prefix=[run_id])
        report.compute_log_folders_deleted += 1
    # The filesystem IO manager's pickled outputs: <storage directory>/<run id>/.
    outputs = os.path.join(instance.storage_directory(), run_id)
    if os.path.isdir(outputs):
        shutil.rmtree(outputs)
        report.op_output_folders_deleted += 1


def apply_retention(
    instance: DagsterInstance,
    store: AgentRunsStore,
    policy: Retention,
    now: datetime,
    time_budget_seconds: float = TIME_BUDGET_SECONDS,
) -> RetentionReport:
    """Delete and compact what is older than the policy keeps, oldest first; what was done.
    `now` is aware UTC."""
    report = RetentionReport()
    deadline = time.monotonic() + time_budget_seconds
    naive_now = naive_utc(now)  # as agent_runs holds times
    cut_short = []

    if policy.dagster_run_days:
        cutoff = now - timedelta(days=policy.dagster_run_days)

        def delete_runs() -> int:
            records = instance.get_run_records(
                filters=RunsFilter(statuses=FINISHED, created_before=cutoff),
                limit=RUN_BATCH,
                ascending=True,
            )
            for record in records:
                delete_dagster_run(instance, record.dagster_run.run_id, report)
            return len(records)

        cut_short.append(_drain(delete_runs, RUN_BATCH, deadline)[1])

    if policy.result_compact_days:
        cutoff = naive_now - timedelta(days=policy.result_compact_days)
        report.results_compacted, short = _drain(
            lambda: store.compact_results(cutoff, ROW_BATCH, compact_result), ROW_BATCH, deadline
        )
        cut_short.append(short)

    if policy.agent_runs_days:
        cutoff = naive_now - timedelta(days=policy.agent_runs_days)
        report.agent_runs_deleted, short = _drain(
            lambda: store.delete_runs_started_before(cutoff, ROW_BATCH), ROW_BATCH, deadline
        )
        cut_short.append(short)
        report.alerts_deleted, short = _drain(
            lambda: store.delete_alerts_created_before(cutoff, ROW_BATCH), ROW_BATCH, deadline
        )
        cut_short.append(short)

    report.finished = not any(cut_short)
    return report
