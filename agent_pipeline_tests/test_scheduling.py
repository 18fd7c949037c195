"""Scheduling with the real daemon (`make dev`): a schedule tick during a backfill runs its
window ahead of the backfill's queued runs, and windows missed while the daemon was down are
caught up.

Real ticks come every 10 minutes. Instead of waiting up to that long, every process of the
stack starts with its clock shifted (shifted_clock/sitecustomize.py: freezegun, time flowing at
its real pace) to a minute before a tick; the second start shifts it an hour on, as after an
hour's outage. The `dagster` CLI runs on the real clock."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunsFilter

from agent_pipeline.partitions import WINDOW_FORMAT, WINDOW_LENGTH
from agent_pipeline_tests.helpers import agent_rows, shifted_clock
from agent_pipeline_tests.topology import BIN, local_dev, wait_for

pytestmark = pytest.mark.slow

# The stack's clock starts this long before a tick: time to start and launch a backfill.
LEAD_SECONDS = 75


def next_tick_after(moment: datetime) -> datetime:
    tick = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return tick + timedelta(minutes=-tick.minute % 10)


def run_records(home: Path):
    """The runs of agent_job, oldest first, from the stack's instance: its dagster.yaml keeps
    them under .dagster_home/ relative to the working directory."""
    cwd = os.getcwd()
    os.chdir(home)
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            return instance.get_run_records(RunsFilter(job_name="agent_job"), ascending=True)
    finally:
        os.chdir(cwd)


def test_a_tick_during_a_backfill_runs_first_and_missed_windows_are_caught_up(tmp_path):
    # Any tick a few days back: its windows exist, and nothing else runs them.
    tick = next_tick_after(datetime.now(UTC) - timedelta(days=3))
    started = tick - timedelta(seconds=LEAD_SECONDS)
    settings = {
        "AGENT_PIPELINE_HOME": str(tmp_path / "agent"),
        "AGENT": "agent_pipeline_tests.sample_agents:slow_keywords",
        # Runs start in a fraction of a second: the agent's own time keeps the backfill going
        # past the tick.
        "SLOW_AGENT_SECONDS": "8",
    }
    ticked_window = (tick - WINDOW_LENGTH).strftime(WINDOW_FORMAT)

    with local_dev(tmp_path, {**settings, **shifted_clock(started)}) as dev:
        # A backfill of 16 windows a day back: over two minutes of runs, across the tick. The
        # CLI runs on the real clock.
        cli_env = {k: v for k, v in dev.env.items() if k != "SHIFTED_CLOCK_START"}
        day_back = tick - timedelta(days=1)
        backfill = subprocess.run(
            [str(BIN / "dagster"), "job", "backfill", "-j", "agent_job",
             "--from", day_back.strftime(WINDOW_FORMAT),
             "--to", (day_back + 15 * WINDOW_LENGTH).strftime(WINDOW_FORMAT), "--noprompt"],
            cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=120,
        )
        assert backfill.returncode == 0, backfill.stderr

        def ticked_window_succeeded():
            rows = [r for r in agent_rows(tmp_path) if r["partition_key"] == ticked_window]
            return rows and rows[0]["status"] == "succeeded"

        wait_for(ticked_window_succeeded, "the tick's window did not run", 300, dev.processes)

    records = run_records(tmp_path)
    (scheduled,) = [r for r in records if "dagster/schedule_name" in r.dagster_run.tags]
    assert scheduled.dagster_run.tags["dagster/partition"] == ticked_window
    backfill_runs = [r for r in records if "dagster/backfill" in r.dagster_run.tags]
    # Queued before the tick's run (stored before it), started after it (or not at all): the
    # tick's run went ahead of them. (Start times come from the workers' own clocks, which are
    # not shifted.)
    overtaken = [
        r for r in backfill_runs
        if r.storage_id < scheduled.storage_id
        and (r.start_time is None or r.start_time > scheduled.start_time)
    ]
    assert overtaken, [(r.storage_id, r.start_time) for r in [scheduled, *backfill_runs]]

    # The daemon is down for an hour: the ticks of five windows pass with no run. Back, the
    # scheduler runs the latest tick's window only (tick + 40 min); the catch-up sensor the
    # four before it, closed over 10 minutes ago (tick + 0 to tick + 30 min).
    expected = [(tick + n * WINDOW_LENGTH).strftime(WINDOW_FORMAT) for n in range(5)]
    with local_dev(tmp_path, {**settings, **shifted_clock(started + timedelta(hours=1))}) as dev:

        def all_ran():
            done = {r["partition_key"] for r in agent_rows(tmp_path) if r["status"] == "succeeded"}
            return set(expected) <= done

        wait_for(all_ran, "the missed windows were not caught up", 300, dev.processes)

    records = {
        r.dagster_run.tags.get("dagster/partition"): r for r in run_records(tmp_path)
        if "dagster/backfill" not in r.dagster_run.tags
    }
    assert "dagster/schedule_name" in records[expected[-1]].dagster_run.tags
    caught_up = [records[window] for window in expected[:-1]]
    assert [r.dagster_run.tags.get("agent_pipeline/catch_up") for r in caught_up] == ["true"] * 4
    starts = [r.start_time for r in caught_up]
    assert starts == sorted(starts)
    # Each window ran once.
    rows = [r for r in agent_rows(tmp_path) if r["partition_key"] in expected]
    assert sorted(r["partition_key"] for r in rows) == expected
