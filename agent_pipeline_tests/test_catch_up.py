"""The catch-up sensor against a real Dagster instance whose recent windows have no runs: as
after a daemon outage or ticks skipped under OVERLAP_POLICY=skip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, build_sensor_context
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteInstigatorOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    InstigatorType,
    ScheduleInstigatorData,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from agent_pipeline.definitions import defs
from agent_pipeline.errors import ConfigurationError
from agent_pipeline.partitions import WINDOW_FORMAT
from agent_pipeline.schedules import build_catch_up_sensor, windows_without_runs
from agent_pipeline.settings import catch_up_hours

# Three minutes into a window, two hours before the test runs: inside the partitions.
NOW = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
NOW = NOW.replace(minute=NOW.minute - NOW.minute % 10 + 3)


def window(minutes_before_now: int) -> str:
    """The key of the window that starts this many minutes (a multiple of 10, plus 3) before
    NOW."""
    return (NOW - timedelta(minutes=minutes_before_now)).strftime(WINDOW_FORMAT)


def window_started_before(now: datetime, minutes: int) -> str:
    start = now - timedelta(minutes=minutes)
    return start.replace(minute=start.minute - start.minute % 10).strftime(WINDOW_FORMAT)


def add_run(instance: DagsterInstance, key: str, status=DagsterRunStatus.SUCCESS, **tags):
    instance.add_run(DagsterRun(
        job_name="agent_job", status=status, tags={"dagster/partition": key, **tags},
    ))


@pytest.fixture
def instance(tmp_path):
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        yield instance


def test_windows_without_a_run_since_the_schedule_first_ran_oldest_first(instance):
    # The schedule's first run was for the window 63 minutes before NOW (9:00 for 10:03).
    add_run(instance, window(63), **{"dagster/schedule_name": "agent_job_schedule"})
    add_run(instance, window(53), DagsterRunStatus.FAILURE)  # failed: it had its run
    add_run(instance, window(33), DagsterRunStatus.STARTED, **{"dagster/backfill": "abc"})
    # A run of an older window, before the schedule first ran, is no reason to reach back.
    add_run(instance, window(123))
    assert windows_without_runs(instance, NOW, hours=24) == [
        window(43), window(23),
        # window(13) ends 3 minutes before NOW: left to its own tick for now.
    ]
    assert windows_without_runs(instance, NOW + timedelta(minutes=7), hours=24)[-1] == window(13)


def test_only_the_last_catch_up_hours_are_caught_up(instance):
    add_run(instance, window(30 * 60 + 3), **{"dagster/schedule_name": "agent_job_schedule"})
    missing = windows_without_runs(instance, NOW, hours=1)
    assert missing == [window(53), window(43), window(33), window(23)]


def test_a_fresh_install_catches_nothing_up(instance):
    # Runs launched by hand, but the schedule never ran: nothing to catch up.
    add_run(instance, window(63))
    assert windows_without_runs(instance, NOW, hours=24) == []
    result = build_catch_up_sensor(24).evaluate_tick(
        build_sensor_context(instance=instance, repository_def=defs.get_repository_def())
    )
    assert result.run_requests == []
    assert "has a run" in result.skip_message


def evaluate(sensor, instance):
    return sensor.evaluate_tick(
        build_sensor_context(instance=instance, repository_def=defs.get_repository_def())
    )


def test_the_sensor_requests_the_missing_windows_behind_the_live_ones(instance):
    now = datetime.now(UTC)
    add_run(instance, window_started_before(now, 45),
            **{"dagster/schedule_name": "agent_job_schedule"})
    expected = windows_without_runs(instance, now, hours=24)
    assert expected  # at least two windows closed over ten minutes ago have no run

    requests = evaluate(build_catch_up_sensor(24), instance).run_requests
    assert [r.partition_key for r in requests] == expected
    assert [r.run_key for r in requests] == expected
    for request in requests:
        # Behind scheduled runs (priority 2), ahead of backfills (0).
        assert request.tags["dagster/priority"] == "1"
        assert request.tags["agent_pipeline/catch_up"] == "true"

    assert evaluate(build_catch_up_sensor(0), instance).skip_message == (
        "catch-up is off (CATCH_UP_HOURS=0)"
    )


def test_nothing_is_caught_up_while_the_schedule_is_stopped(instance):
    now = datetime.now(UTC)
    add_run(instance, window_started_before(now, 45),
            **{"dagster/schedule_name": "agent_job_schedule"})
    origin = RemoteInstigatorOrigin(
        RemoteRepositoryOrigin(
            InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="agent_pipeline")),
            "__repository__",
        ),
        "agent_job_schedule",
    )
    instance.add_instigator_state(InstigatorState(
        origin, InstigatorType.SCHEDULE, InstigatorStatus.STOPPED,
        ScheduleInstigatorData("*/10 * * * *"),
    ))
    result = evaluate(build_catch_up_sensor(24), instance)
    assert result.run_requests == []
    assert result.skip_message == "agent_job_schedule is stopped: no window is caught up"


def test_catch_up_hours_reach_no_further_than_the_windows():
    assert catch_up_hours({}) == 24
    assert catch_up_hours({"CATCH_UP_HOURS": "0"}) == 0
    assert catch_up_hours({"CATCH_UP_HOURS": "72", "WINDOW_HISTORY_DAYS": "3"}) == 72
    with pytest.raises(ConfigurationError, match="CATCH_UP_HOURS.*at most 72"):
        catch_up_hours({"CATCH_UP_HOURS": "73", "WINDOW_HISTORY_DAYS": "3"})
    with pytest.raises(ConfigurationError, match="CATCH_UP_HOURS.*whole number"):
        catch_up_hours({"CATCH_UP_HOURS": "a day"})
