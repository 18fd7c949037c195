from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultScheduleStatus,
    build_schedule_context,
)

from agent_pipeline.definitions import defs
from agent_pipeline.partitions import window_bounds, window_partitions
from agent_pipeline.resources import AgentResource, AgentRunsStore
from agent_pipeline.schedules import build_agent_job_schedule
from agent_pipeline.settings import window_history_days


def test_defs_resolve_the_job_its_ops_and_resources():
    job = defs.resolve_job_def("agent_job")
    assert [node.name for node in job.nodes_in_topological_order] == [
        "record_run", "run_agent", "rank_top_five", "send_email",
    ]
    assert job.executor_def.name == "in_process"
    assert {"agent_runs", "redis", "smtp", "digest", "agent"} <= set(job.resource_defs)
    assert job.description


def test_everything_the_ui_lists_says_what_it_is():
    """The UI shows these descriptions to a newcomer: none may be missing or a stub."""
    repository = defs.get_repository_def()
    jobs = [repository.get_job(name) for name in ("agent_job", "retention_job")]
    described = {
        **{f"job {job.name}": job.description for job in jobs},
        **{f"op {node.name}": node.definition.description for job in jobs for node in job.nodes},
        **{f"schedule {s.name}": s.description for s in repository.schedule_defs},
        **{f"sensor {s.name}": s.description for s in repository.sensor_defs},
        **{
            f"resource {key}": resource.description
            for key, resource in repository.get_top_level_resources().items()
        },
    }
    short = {name: text for name, text in described.items() if len(text or "") < 40}
    assert short == {}


def test_the_partitions_are_ten_minute_utc_windows():
    partitions = defs.resolve_job_def("agent_job").partitions_def
    assert partitions.cron_schedule == "*/10 * * * *"
    assert partitions.timezone == "UTC"
    assert partitions.fmt == "%Y-%m-%d-%H:%M"
    keys = partitions.get_partition_keys()
    assert len(keys) >= window_history_days() * 144  # the history days, all closed windows
    # Under the 1,000 above which Dagster's partitions view stops drawing them.
    assert len(keys) < 1000
    first, second = (datetime.strptime(k, "%Y-%m-%d-%H:%M") for k in keys[:2])
    assert second - first == timedelta(minutes=10)
    assert first.hour == first.minute == 0


def test_the_window_start_rolls_with_the_history_setting():
    now = datetime(2026, 11, 26, 9, 47, tzinfo=UTC)
    partitions = window_partitions(3, now=now)
    keys = partitions.get_partition_keys(current_time=now)
    assert keys[0] == "2026-11-23-00:00"
    assert keys[-1] == "2026-11-26-09:30"  # the last window that has closed
    assert len(keys) == 3 * 144 + 9 * 6 + 4


def _evaluate(schedule, instance, tick, **resources):
    with build_schedule_context(
        instance=instance, scheduled_execution_time=tick, resources=resources or None,
        repository_def=defs.get_repository_def(),
    ) as context:
        return schedule.evaluate_tick(context)


def _an_hour_ago_tick() -> tuple[datetime, str]:
    tick = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    tick = tick.replace(minute=tick.minute - tick.minute % 10)
    return tick, (tick - timedelta(minutes=10)).strftime("%Y-%m-%d-%H:%M")


def test_the_schedule_runs_the_window_that_just_closed_whatever_is_running(tmp_path):
    schedule = defs.resolve_schedule_def("agent_job_schedule")
    assert schedule.cron_schedule == "*/10 * * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "agent_job"

    tick, window = _an_hour_ago_tick()
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        (request,) = _evaluate(schedule, instance, tick).run_requests
        assert request.partition_key == window and request.run_key == window
        # Ahead of backfill runs (priority 0) in the run queue.
        assert request.tags["dagster/priority"] == "2"

        # A run in progress (a backfill's): OVERLAP_POLICY=buffer still requests the window;
        # the queue runs it once the slot frees.
        instance.add_run(DagsterRun(job_name="agent_job", status=DagsterRunStatus.STARTED))
        (request,) = _evaluate(schedule, instance, tick).run_requests
    assert request.partition_key == window


def test_the_skip_policy_records_the_skipped_window(tmp_path, sqlite_url):
    schedule = build_agent_job_schedule("skip")
    store = AgentRunsStore(database_url=sqlite_url)
    agent = AgentResource(agent="keywords")
    tick, window = _an_hour_ago_tick()
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        (request,) = _evaluate(schedule, instance, tick, agent_runs=store, agent=agent).run_requests
        assert request.partition_key == window

        busy = instance.add_run(DagsterRun(job_name="agent_job", status=DagsterRunStatus.STARTED))
        for _ in range(2):  # the daemon may evaluate a tick again: still one row
            data = _evaluate(schedule, instance, tick, agent_runs=store, agent=agent)
            assert data.run_requests == []
    reason = (
        f"run {busy.run_id} of agent_job was still started at the tick (OVERLAP_POLICY=skip); "
        "the catch-up sensor runs this window later"
    )
    assert data.skip_message == f"window {window} skipped: {reason}"
    store.open()
    try:
        (row,) = store.runs_for_window(window)
    finally:
        store.close()
    assert (row["status"], row["error_message"], row["dagster_run_id"]) == (
        "skipped", reason, None
    )


def test_the_schedule_skips_before_the_first_window_closes():
    schedule = defs.resolve_schedule_def("agent_job_schedule")
    first = datetime.strptime(
        defs.resolve_job_def("agent_job").partitions_def.get_first_partition_key(),
        "%Y-%m-%d-%H:%M",
    ).replace(tzinfo=UTC)
    with DagsterInstance.ephemeral() as instance, build_schedule_context(
        instance=instance, scheduled_execution_time=first
    ) as context:
        data = schedule.evaluate_tick(context)
    assert data.run_requests == [] and data.skip_message == "no window has closed yet"


@pytest.mark.parametrize(
    "key, bounds",
    [
        ("2026-11-26-09:30", ("2026-11-26 09:30", "2026-11-26 09:40")),
        ("2026-11-26-23:50", ("2026-11-26 23:50", "2026-11-27 00:00")),
    ],
)
def test_window_bounds(key, bounds):
    start, end = window_bounds(key)
    assert (f"{start:%Y-%m-%d %H:%M}", f"{end:%Y-%m-%d %H:%M}") == bounds
    assert start.tzinfo is UTC


@pytest.mark.parametrize("key", ["2026-11-26", "2026-11-26-09:35", "yesterday"])
def test_window_bounds_rejects_bad_keys(key):
    with pytest.raises(ValueError, match="window"):
        window_bounds(key)
