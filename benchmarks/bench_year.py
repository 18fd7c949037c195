"""A year in a benchmark: what a tick costs after a year of 10-minute windows, with the default
retention and without any, against a new install and a week-old one.

    .venv/bin/python benchmarks/bench_year.py [--repeats 7] [--scale 1.0]

Each state is a scratch database of its own on the Postgres server of benchmarks/scratch.py
(BENCH_POSTGRES_URL), holding Dagster's storage (runs, event logs, schedules) and agent_runs
together, as deploy/dagster.yaml does in production:

- fresh: a new install after its first window: one real run of agent_job and its row;
- week: 7 days of windows (1,008 runs and rows, full results, 7 retention runs), the baseline
  the goal is judged against: every lookback a tick uses (the only-new lookup's 7 days, the
  catch-up's and the sweeper's 24 hours) is full, and nothing has accumulated beyond it;
- steady: what the default retention leaves after a year: 30 days of Dagster runs of agent_job
  (4,320) and the daily retention_job runs, 365 days of agent_runs rows (52,560; those older
  than 30 days compacted as compact_result does, result_compacted_at set), one failure a day
  with its alert and resolved streak. Seeded with one more day on each side (the runs and
  results that turned 30 days old, the rows that turned 365) and measured after apply_retention
  has removed that day, which is the retention figure;
- year: no retention: 52,560 Dagster runs with their events and tags and 52,560 rows with full
  results.

In every state but fresh, the windows are the last closed ones up to now, and two windows of
the last day failed to send their email (the redelivery lookup then has work). Seeding runs the
real agent_job and retention_job once (execute_in_process on a Postgres instance), then clones
their rows with INSERT ... SELECT: the run id, the window, the scheduled time and the event
timestamps are replaced inside the serialized run and event JSON, so Dagster and its UI read the
copies as runs of their own (checked: a copy deserializes, with its events). The copies are all
of the one successful run; failures exist in agent_runs and agent_alerts only.

Measured per state, median of --repeats after one warm-up, in ms: the schedule's evaluation and
Dagster's own run-key lookup for a tick, each sensor's evaluation (the run-status sensors with
the cursor after the latest event, as the daemon keeps it), the run's own queries, and the UI's
runs page and agent_job's partitions page through a real dagster-webserver, with the GraphQL
queries the UI sends. --scale 0.1 seeds a tenth of each period for a quick try.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import psycopg2.extras
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Read when the code location loads: alerts on (as in the compose stack), mail to an outbox.
_HOME = tempfile.mkdtemp(prefix="bench_year_")
os.environ.update(
    AGENT_PIPELINE_HOME=_HOME,
    EMAIL_TO="reader@example.com",
    DATABASE_URL="postgresql://unused@127.0.0.1/unused",  # set per state below
)
warnings.filterwarnings("ignore")
for _variable in ("LOG_LEVEL", "LOG_FILE", "REDIS_URL", "SMTP_HOST", "AGENT",
                  "WINDOW_HISTORY_DAYS", "CATCH_UP_HOURS"):
    os.environ.pop(_variable, None)

from dagster import (  # noqa: E402
    DagsterInstance,
    RunsFilter,
    build_schedule_context,
    build_sensor_context,
)
from dagster._core.definitions.run_status_sensor_definition import (  # noqa: E402
    RunStatusSensorCursor,
)

from agent_pipeline.definitions import defs  # noqa: E402
from agent_pipeline.jobs import agent_job, retention_job  # noqa: E402
from agent_pipeline.partitions import WINDOW_FORMAT, last_closed_window  # noqa: E402
from agent_pipeline.ranking import compact_result, sent_item_keys  # noqa: E402
from agent_pipeline.resources import AgentRunsStore, Retention  # noqa: E402
from agent_pipeline.retention import apply_retention  # noqa: E402
from agent_pipeline.settings import resources_from_env  # noqa: E402
from agent_pipeline_tests.services import free_port  # noqa: E402
from benchmarks.scratch import ADMIN_URL  # noqa: E402

WINDOWS_PER_DAY = 144
BIN = Path(sys.executable).parent
LOCATION = "agent_pipeline.definitions"
REPOSITORY_LABEL = f"__repository__@{LOCATION}"
# The tags a scheduled run of agent_job carries (the scheduler adds the same ones).
SCHEDULED_TAGS = {
    "dagster/schedule_name": "agent_job_schedule",
    "dagster/priority": "2",
    "dagster/partition_set": "agent_job_partition_set",
    ".dagster/repository": REPOSITORY_LABEL,
}
RUN_STATUS_SENSORS = ("agent_runs_on_run_failure", "agent_job_failure_alert",
                      "agent_job_recovery_alert")


@dataclass
class State:
    name: str
    dagster_days: int  # days of agent_job runs in Dagster's storage
    row_days: int  # days of agent_runs rows
    compact_after_days: int | None  # rows older than this have compacted results
    retention_runs: int  # daily retention_job runs
    expired_day: bool = False  # one more day on each side, removed by apply_retention


def days(count: int, scale: float) -> int:
    return max(1, round(count * scale))


def states(scale: float) -> list[State]:
    week, month, year = days(7, scale), days(30, scale), days(365, scale)
    return [
        State("fresh", 0, 0, None, 0),
        State("week", week, week, None, week),
        State("steady", month, year, month, month + 1, expired_day=True),
        State("year", year, year, None, 0),
    ]


# -- databases ------------------------------------------------------------------------------


def database_url(name: str) -> str:
    return make_url(ADMIN_URL).set(database=name).render_as_string(False)


def admin(sql: str) -> None:
    connection = psycopg2.connect(ADMIN_URL)
    connection.autocommit = True
    try:
        connection.cursor().execute(sql)
    finally:
        connection.close()


@contextmanager
def database(name: str, template: str | None = None) -> Iterator[str]:
    """A database of the benchmark's own (a copy of template), dropped at the end."""
    admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield database_url(name)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def instance_home(url: str) -> str:
    home = tempfile.mkdtemp(prefix="dagster_home_", dir=_HOME)
    with open(os.path.join(home, "dagster.yaml"), "w") as config:
        config.write(f"storage:\n  postgres:\n    postgres_url: {url}\n")
        config.write(f"local_artifact_storage:\n  module: dagster._core.storage.root\n"
                     f"  class: LocalArtifactStorage\n  config:\n    base_dir: {home}/storage\n")
        config.write("telemetry:\n  enabled: false\n")
    return home


@contextmanager
def quiet(path: str) -> Iterator[None]:
    """The process's stdout and stderr (the runs' JSON and console logs) to a file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def make_template(url: str) -> dict:
    """One real run of agent_job for the last closed window and one of retention_job; what
    the clones need to know about them."""
    os.environ["DATABASE_URL"] = url
    resources = resources_from_env(os.environ)
    window, window_start = last_closed_window(datetime.now(UTC))
    end = window_start + timedelta(minutes=10)
    scheduled = end.isoformat()
    with DagsterInstance.from_config(instance_home(url)) as instance:
        run = agent_job.execute_in_process(
            partition_key=window, resources=resources, instance=instance,
            tags={**SCHEDULED_TAGS, "dagster/run_key": window,
                  "dagster/scheduled_execution_time": scheduled},
        )
        assert run.success
        retention = retention_job.execute_in_process(resources=resources, instance=instance)
        assert retention.success
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT event FROM event_logs WHERE run_id IN (%s, %s)",
                       (run.run_id, retention.run_id))
        seconds = sorted({int(s) for (event,) in cursor.fetchall()
                          for s in re.findall(r'"timestamp": (\d+)\.', event)})
        cursor.execute("SELECT id, result FROM agent_runs WHERE dagster_run_id = %s",
                       (run.run_id,))
        row_id, result = cursor.fetchone()
    return {
        "run_id": run.run_id, "retention_run_id": retention.run_id, "window": window,
        "window_start": window_start, "scheduled": scheduled, "seconds": seconds,
        "row_id": row_id, "compacted": json.dumps(compact_result(result)),
    }


# -- seeding --------------------------------------------------------------------------------


def event_json(seconds: list[int]) -> str:
    """The SQL expression of a cloned event's JSON: run id, window, scheduled time and each
    event timestamp (whole seconds of the template run) replaced."""
    expression = (
        "replace(replace(replace(e.event, %(run_id)s, c.run_id), %(window)s, c.win),"
        " %(scheduled)s, c.scheduled)"
    )
    for second in seconds:
        expression = (
            f"replace({expression}, '\"timestamp\": {second}.', "
            f"'\"timestamp\": ' || ({second} + c.off) || '.')"
        )
    return expression


def clone_runs(cursor, template_run_id: str, template: dict, clones: list[tuple]) -> None:
    """Copies of a Dagster run, one per (order, run_id, window, offset seconds, scheduled
    time): runs, run_tags and event_logs rows, oldest first."""
    cursor.execute("DROP TABLE IF EXISTS clones")
    cursor.execute("CREATE TEMP TABLE clones (g int, run_id text, win text, off bigint,"
                   " scheduled text)")
    psycopg2.extras.execute_values(cursor, "INSERT INTO clones VALUES %s", clones,
                                   page_size=5000)
    params = {"template": template_run_id, "run_id": template_run_id,
              "window": template["window"], "scheduled": template["scheduled"]}
    body = event_json([]).replace("e.event", "r.run_body")
    cursor.execute(
        f"""INSERT INTO runs (run_id, snapshot_id, pipeline_name, mode, status, run_body,
               partition, partition_set, create_timestamp, update_timestamp, start_time,
               end_time, backfill_id)
            SELECT c.run_id, r.snapshot_id, r.pipeline_name, r.mode, r.status, {body},
                   CASE WHEN r.partition IS NULL THEN NULL ELSE c.win END, r.partition_set,
                   r.create_timestamp + c.off * interval '1 second',
                   r.update_timestamp + c.off * interval '1 second',
                   r.start_time + c.off, r.end_time + c.off, r.backfill_id
            FROM runs r, clones c WHERE r.run_id = %(template)s ORDER BY c.g DESC""",
        params,
    )
    cursor.execute(
        """INSERT INTO run_tags (run_id, key, value)
           SELECT c.run_id, t.key, CASE WHEN t.key = 'dagster/scheduled_execution_time'
                  THEN c.scheduled ELSE replace(t.value, %(window)s, c.win) END
           FROM run_tags t, clones c WHERE t.run_id = %(template)s ORDER BY c.g DESC, t.id""",
        params,
    )
    cursor.execute(
        f"""INSERT INTO event_logs (run_id, event, dagster_event_type, timestamp, step_key,
               asset_key, partition)
            SELECT c.run_id, {event_json(template["seconds"])}, e.dagster_event_type,
                   e.timestamp + c.off * interval '1 second', e.step_key, e.asset_key,
                   e.partition
            FROM event_logs e, clones c WHERE e.run_id = %(template)s ORDER BY c.g DESC, e.id""",
        params,
    )


def delete_run_rows(cursor, run_id: str) -> None:
    for table in ("event_logs", "run_tags", "runs"):
        cursor.execute(f"DELETE FROM {table} WHERE run_id = %s", (run_id,))


def seed(url: str, state: State, template: dict) -> str | None:
    """The state's rows, cloned from the template's; a cloned run id to check, if any."""
    if state.name == "fresh":
        with psycopg2.connect(url) as connection, connection.cursor() as cursor:
            delete_run_rows(cursor, template["retention_run_id"])
        return None
    newest_window, newest_start = last_closed_window(datetime.now(UTC))
    shift = int((newest_start - template["window_start"]).total_seconds())
    extra = WINDOWS_PER_DAY if state.expired_day else 0
    dagster_windows = state.dagster_days * WINDOWS_PER_DAY + extra
    row_windows = state.row_days * WINDOWS_PER_DAY + extra
    windows = []  # (g, run id, window, offset, scheduled time)
    for g in range(max(dagster_windows, row_windows)):
        start = newest_start - timedelta(minutes=10 * g)
        windows.append((g, str(uuid.uuid4()), start.strftime(WINDOW_FORMAT), shift - 600 * g,
                        (start + timedelta(minutes=10)).isoformat()))
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        clone_runs(cursor, template["run_id"], template, windows[:dagster_windows])
        # Daily retention runs at 03:17 UTC, the newest one today or yesterday.
        now = datetime.now(UTC)
        last = now.replace(hour=3, minute=17, second=0, microsecond=0)
        if last > now:
            last -= timedelta(days=1)
        cursor.execute("SELECT create_timestamp FROM runs WHERE run_id = %s",
                       (template["retention_run_id"],))
        created = cursor.fetchone()[0].replace(tzinfo=UTC)
        clone_runs(cursor, template["retention_run_id"], template, [
            (d, str(uuid.uuid4()), "", int((last - created).total_seconds()) - 86_400 * d, "")
            for d in range(state.retention_runs)
        ])
        delete_run_rows(cursor, template["run_id"])
        delete_run_rows(cursor, template["retention_run_id"])

        # agent_runs: one row per window, the same run ids as the Dagster copies.
        compact_from = (state.compact_after_days * WINDOWS_PER_DAY + extra
                        if state.compact_after_days is not None else None)
        rows = []
        for g, run_id, window, offset, _ in windows[:row_windows]:
            failed_run = g % WINDOWS_PER_DAY == WINDOWS_PER_DAY // 2  # one a day, mid-day
            failed_email = g in (3, 4)  # two windows of the last day: SMTP was down
            compacted = compact_from is not None and g >= compact_from and not failed_run
            rows.append((g, run_id, window, offset, failed_run, failed_email, compacted))
        # The template row goes first: it holds its window's email claim.
        cursor.execute("CREATE TEMP TABLE template_row AS SELECT * FROM agent_runs WHERE id = %s",
                       (template["row_id"],))
        cursor.execute("DELETE FROM agent_runs WHERE id = %s", (template["row_id"],))
        cursor.execute("CREATE TEMP TABLE row_clones (g int, run_id text, win text,"
                       " off bigint, failed_run bool, failed_email bool, compacted bool)")
        psycopg2.extras.execute_values(cursor, "INSERT INTO row_clones VALUES %s", rows,
                                       page_size=5000)
        cursor.execute(
            """INSERT INTO agent_runs (started_at, completed_at, status, result, error_message,
                   dagster_run_id, partition_key, agent, email_status, email_sent_at,
                   email_error, result_compacted_at)
               SELECT a.started_at + c.off * interval '1 second',
                      a.completed_at + c.off * interval '1 second',
                      CASE WHEN c.failed_run OR c.failed_email THEN 'failed' ELSE a.status END,
                      CASE WHEN c.failed_run THEN NULL WHEN c.compacted THEN %(compacted)s::jsonb
                           ELSE a.result END,
                      CASE WHEN c.failed_run THEN 'op run_agent failed: RuntimeError: the feed'
                           ' answered 503' WHEN c.failed_email THEN 'SMTPServerDisconnected:'
                           ' Connection unexpectedly closed' END,
                      c.run_id, c.win, a.agent,
                      CASE WHEN c.failed_run THEN 'not_sent' WHEN c.failed_email THEN 'failed'
                           ELSE a.email_status END,
                      CASE WHEN c.failed_run OR c.failed_email THEN NULL
                           ELSE a.email_sent_at + c.off * interval '1 second' END,
                      CASE WHEN c.failed_email THEN 'SMTPServerDisconnected: Connection'
                           ' unexpectedly closed' END,
                      CASE WHEN c.compacted THEN a.started_at + c.off * interval '1 second'
                           + %(compact_days)s * interval '1 day' END
               FROM template_row a, row_clones c ORDER BY c.g DESC""",
            {"compacted": template["compacted"], "compact_days": state.compact_after_days or 0},
        )
        # Each failed window: its alert, sent, in a streak that a success ended.
        cursor.execute(
            """WITH failed AS (
                   SELECT partition_key AS win, completed_at, dagster_run_id,
                          row_number() OVER (ORDER BY completed_at) AS n
                   FROM agent_runs WHERE status = 'failed' AND email_status = 'not_sent'),
               streaks AS (
                   INSERT INTO alert_streaks (id, job_name, opened_at, last_failure_at,
                       notified_at, resolved_at, resolved_partition_key, resolved_run_id,
                       resolved_run_at, recovered_status)
                   SELECT n, 'agent_job', completed_at, completed_at, completed_at,
                          completed_at + interval '10 minutes', win, dagster_run_id,
                          completed_at + interval '10 minutes', 'sent'
                   FROM failed RETURNING id)
               INSERT INTO agent_alerts (alert_key, partition_key, dagster_run_id,
                   error_message, attempts, created_at, status, claimed_at, sent_at, streak_id)
               SELECT win, win, dagster_run_id, 'op run_agent failed: RuntimeError: the'
                      ' feed answered 503', 3, completed_at, 'sent', completed_at,
                      completed_at, n
               FROM failed""",
        )
        cursor.execute("SELECT setval(pg_get_serial_sequence('alert_streaks', 'id'),"
                       " coalesce(max(id), 0) + 1, false) FROM alert_streaks")
    return windows[min(dagster_windows, len(windows)) // 2][1] if dagster_windows else None


def vacuum(url: str) -> None:
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        connection.cursor().execute("VACUUM ANALYZE")
    finally:
        connection.close()


def check_clone(instance: DagsterInstance, run_id: str) -> None:
    """A copy reads back as a run of its own, with its events in its window."""
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.run_id == run_id and run.is_success, run
    window = run.tags["dagster/partition"]
    logs = instance.all_logs(run_id)
    assert len(logs) >= 25 and all(log.run_id == run_id for log in logs), len(logs)
    start = datetime.strptime(window, WINDOW_FORMAT).replace(tzinfo=UTC).timestamp()
    assert all(0 < log.timestamp - start < 3600 for log in logs), (window, logs[0].timestamp)


# -- measures -------------------------------------------------------------------------------


def sensor_call(name: str, instance: DagsterInstance, cursor: str | None) -> Callable:
    repository = defs.get_repository_def()
    sensor_def = repository.get_sensor_def(name)

    def evaluate() -> None:
        context = build_sensor_context(instance=instance, cursor=cursor,
                                       repository_def=repository, sensor_name=name,
                                       resources=defs.resources)
        with context:
            sensor_def.evaluate_tick(context)

    return evaluate


RUNS_PAGE = """
query RunsFeedRootQuery($limit: Int!, $view: RunsFeedView!) {
  runsFeedOrError(limit: $limit, view: $view) {
    ... on RunsFeedConnection { cursor hasMore results {
      __typename id runStatus creationTime startTime endTime tags { key value } jobName
      ... on Run { repositoryOrigin { id repositoryLocationName repositoryName }
                   assetSelectionCount assetCheckSelectionCount canTerminate
                   hasReExecutePermission pipelineName pipelineSnapshotId status } } }
    ... on PythonError { message }
  }
}"""
# The UI's PartitionsStatusQuery (dagster-webserver's OpJobPartitionSet fragment).
PARTITIONS_PAGE = """
query PartitionsStatusQuery($partitionSetName: String!,
                            $repositorySelector: RepositorySelector!) {
  partitionSetOrError(repositorySelector: $repositorySelector,
                      partitionSetName: $partitionSetName) {
    ... on PartitionSet { id name pipelineName
      partitionsOrError { ... on Partitions { results { name } } ... on PythonError { message } }
      partitionStatusesOrError {
        ... on PartitionStatuses { results { id partitionName runStatus runDuration } }
        ... on PythonError { message } }
      hasLaunchBackfillPermission }
    ... on PartitionSetNotFoundError { message }
    ... on PythonError { message }
  }
}"""


def graphql(port: int, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body["errors"]
    return body["data"]


@contextmanager
def webserver(home: str, url: str) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": home, "DATABASE_URL": url,
           "PYTHONPATH": str(REPO)}
    log = open(os.path.join(home, "webserver.log"), "w")
    process = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-m", LOCATION, "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(open(log.name).read()[-3000:]) from None
                time.sleep(0.5)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def prepare(url: str, state: State, clone: str | None, scale: float) -> dict:
    """Check a copy; at steady, the retention of the day that has just expired (timed once:
    it deletes what it measures); the figures so far."""
    figures: dict[str, object] = {}
    os.environ["DATABASE_URL"] = url
    with DagsterInstance.from_config(instance_home(url)) as instance:
        if clone:
            check_clone(instance, clone)
        if state.name != "year":  # the first run over a year would be a 5-minute backlog
            store = AgentRunsStore(database_url=url)
            store.open()
            try:
                month = days(30, scale)
                policy = Retention(dagster_run_days=month, result_compact_days=month,
                                   agent_runs_days=days(365, scale))
                started = time.perf_counter()
                report = apply_retention(instance, store, policy, datetime.now(UTC))
                figures["retention"] = (time.perf_counter() - started) * 1000
                figures["retention_report"] = report.as_dict()
            finally:
                store.close()
    vacuum(url)
    return figures


def probes(url: str, instance: DagsterInstance, store: AgentRunsStore) -> dict[str, Callable]:
    """What a tick does, as calls against one state's database."""
    window, window_start = last_closed_window(datetime.now(UTC))
    tick = window_start + timedelta(minutes=20)  # the next tick
    next_window = (window_start + timedelta(minutes=10)).strftime(WINDOW_FORMAT)
    repository = defs.get_repository_def()
    schedule_def = repository.get_schedule_def("agent_job_schedule")

    def schedule_tick() -> None:
        with build_schedule_context(instance=instance, scheduled_execution_time=tick,
                                    repository_def=repository) as context:
            schedule_def.evaluate_tick(context)

    run_key_tags = {"dagster/schedule_name": "agent_job_schedule",
                    "dagster/scheduled_execution_time": tick.isoformat(),
                    "dagster/run_key": next_window}
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), -1) FROM event_logs")
        latest = cursor.fetchone()[0]
    after_latest = RunStatusSensorCursor(record_id=latest).to_json()
    calls = {
        "schedule": schedule_tick,
        "schedule run key": lambda: instance.get_runs(RunsFilter(tags=run_key_tags)),
        **{
            name: sensor_call(name, instance, after_latest if name in RUN_STATUS_SENSORS
                              else None)
            for name in ("agent_job_catch_up", "agent_runs_sweeper", *RUN_STATUS_SENSORS)
        },
        "sent_item_keys": lambda: sent_item_keys(store.sent_top_fives(other_than_window=window)),
        "undelivered_windows": lambda: store.undelivered_windows(10, 24),
        "record_run insert": lambda: store.get_or_create_row(f"bench-{uuid.uuid4()}", next_window,
                                                     "keywords"),
    }

    def in_state(call: Callable) -> Callable:
        def run() -> object:
            os.environ["DATABASE_URL"] = url  # the sensors' resources read it
            return call()
        return run

    return {key: in_state(call) for key, call in calls.items()}


def interleaved(calls: dict[str, dict[str, Callable]], repeats: int) -> dict[str, dict]:
    """Median ms of each call in each state, the states taken in turn within each repeat, so
    that a busy moment of the machine falls on all of them alike."""
    figures: dict[str, dict] = {name: {} for name in calls}
    keys = next(iter(calls.values())).keys()
    for key in keys:
        durations: dict[str, list[float]] = {name: [] for name in calls}
        for repeat in range(repeats + 1):  # the first is a warm-up
            for name, state_calls in calls.items():
                started = time.perf_counter()
                state_calls[key]()
                if repeat:
                    durations[name].append((time.perf_counter() - started) * 1000)
        for name in calls:
            figures[name][key] = statistics.median(durations[name])
    return figures


def database_figures(url: str) -> dict:
    figures = {}
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("DELETE FROM agent_runs WHERE dagster_run_id LIKE 'bench-%%'")
        cursor.execute("SELECT pg_database_size(current_database())")
        figures["size MB"] = cursor.fetchone()[0] / 1e6
        for table in ("runs", "run_tags", "event_logs", "agent_runs", "agent_alerts"):
            cursor.execute(f"SELECT count(*) FROM {table}")
            figures[f"{table} rows"] = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM agent_runs WHERE result_compacted_at IS NOT NULL")
        figures["compacted rows"] = cursor.fetchone()[0]
    return figures


def measure(urls: dict[str, str], repeats: int) -> dict[str, dict]:
    """Every state's tick, then its UI, interleaved."""
    with ExitStack() as stack:
        calls = {}
        for name, url in urls.items():
            instance = stack.enter_context(DagsterInstance.from_config(instance_home(url)))
            os.environ["DATABASE_URL"] = url
            store = AgentRunsStore(database_url=url)
            store.open()
            stack.callback(store.close)
            calls[name] = probes(url, instance, store)
        figures = interleaved(calls, repeats)

    with ExitStack() as stack:
        selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
        partitions = {"partitionSetName": "agent_job_partition_set",
                      "repositorySelector": selector}
        calls = {}
        for name, url in urls.items():
            port = stack.enter_context(webserver(instance_home(url), url))
            statuses = graphql(port, PARTITIONS_PAGE, partitions)["partitionSetOrError"][
                "partitionStatusesOrError"]["results"]
            figures[name]["partitions with a run"] = sum(1 for s in statuses if s["runStatus"])
            calls[name] = {
                "runs page": lambda p=port: graphql(p, RUNS_PAGE, {"limit": 25, "view": "RUNS"}),
                "partitions page": lambda p=port: graphql(p, PARTITIONS_PAGE, partitions),
            }
        for name, ui in interleaved(calls, repeats).items():
            figures[name].update(ui)
    for name, url in urls.items():
        figures[name].update(database_figures(url))
    return figures


MEASURES = [
    ("schedule", "agent_job_schedule evaluation"),
    ("schedule run key", "the tick's run-key lookup (Dagster's)"),
    ("agent_job_catch_up", "agent_job_catch_up"),
    ("agent_runs_sweeper", "agent_runs_sweeper"),
    ("agent_runs_on_run_failure", "agent_runs_on_run_failure"),
    ("agent_job_failure_alert", "agent_job_failure_alert"),
    ("agent_job_recovery_alert", "agent_job_recovery_alert"),
    ("sent_item_keys", "only-new lookup (sent_item_keys)"),
    ("undelivered_windows", "redelivery lookup (undelivered_windows)"),
    ("record_run insert", "record_run's row insert (get_or_create_row)"),
    ("runs page", "UI runs page (runsFeed, 25)"),
    ("partitions page", "UI partitions page (PartitionsStatusQuery)"),
    ("retention", "apply_retention (steady: one expired day)"),
]
COUNTS = ["size MB", "runs rows", "run_tags rows", "event_logs rows", "agent_runs rows",
          "compacted rows", "agent_alerts rows", "partitions with a run"]


def ratio(value: float | None, baseline: float | None) -> str:
    return f"{value / baseline:.2f}x" if value is not None and baseline else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (default 7)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of each period to seed, for a quick try (default 1)")
    args = parser.parse_args()

    prefix = f"agent_pipeline_bench_{uuid.uuid4().hex[:8]}"
    results: dict[str, dict] = {}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, _HOME, ignore_errors=True)
        stack.enter_context(database(f"{prefix}_template"))
        with quiet(os.path.join(_HOME, "template_runs.log")):
            template = make_template(database_url(f"{prefix}_template"))
        urls = {}
        for state in states(args.scale):
            started = time.perf_counter()
            url = stack.enter_context(database(f"{prefix}_{state.name}", f"{prefix}_template"))
            clone = seed(url, state, template)
            vacuum(url)
            seeded = time.perf_counter() - started
            results[state.name] = prepare(url, state, clone, args.scale)
            urls[state.name] = url
            print(f"{state.name}: seeded in {seeded:.0f} s", flush=True)
        started = time.perf_counter()
        for name, figures in measure(urls, args.repeats).items():
            results[name].update(figures)
        print(f"measured in {time.perf_counter() - started:.0f} s", flush=True)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; scale {args.scale}, "
          f"median of {args.repeats}, ms")
    names = list(results)
    print(f"{'':44}" + "".join(f"{name:>10}" for name in names)
          + f"{'steady/week':>13}{'year/week':>11}")
    for key, label in MEASURES:
        values = [results[name].get(key) for name in names]
        week, steady, year = (results[n].get(key) for n in ("week", "steady", "year"))
        print(f"{label:44}" + "".join(f"{v:10.1f}" if v is not None else f"{'-':>10}"
                                      for v in values)
              + f"{ratio(steady, week):>13}{ratio(year, week):>11}")
    for key in COUNTS:
        print(f"{key:44}" + "".join(f"{results[name][key]:10,.0f}" for name in names))
    print(f"retention at steady: {results['steady']['retention_report']}")
    print("goal: steady within 1.2x of the baseline (week)")


if __name__ == "__main__":
    main()
