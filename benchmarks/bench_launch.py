"""Trigger to row succeeded, through the daemon: the local stack (`dg dev` on the repository's
dagster.yaml) and the production topology (deploy/dagster.yaml: Postgres storage, the queued
coordinator; runs as local processes instead of containers), each launched as the Launchpad
does, one after another; with where each run's seconds went, read from its event log.

    .venv/bin/python benchmarks/bench_launch.py [--launches 10] [--topology both]

Postgres and Redis as in bench_pipeline.py (BENCH_POSTGRES_URL, BENCH_REDIS_URL); the SMTP
server is aiosmtpd on loopback.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The topology helpers live with the tests; make them importable when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402

from agent_pipeline_tests.helpers import (
    SmtpCatcher,  # noqa: E402
    window_keys,  # noqa: E402
)
from agent_pipeline_tests.services import free_port  # noqa: E402
from agent_pipeline_tests.topology import (  # noqa: E402
    graphql,
    launch_window,
    local_dev,
    production_topology,
    run_status,
    wait_until,
)
from benchmarks.scratch import REDIS_URL, scratch_database  # noqa: E402

STOP_SCHEDULE = """
mutation Stop($id: String!) { stopRunningSchedule(id: $id) { __typename } }
"""
SCHEDULE_ID = """
query { schedulesOrError(repositorySelector: {repositoryLocationName: "agent_pipeline",
  repositoryName: "__repository__"}) { ... on Schedules { results {
    scheduleState { id status } } } } }
"""
# The moments of a run, in its event log, that the breakdown is taken between.
MILESTONES = (
    ("queued", "RUN_ENQUEUED"),
    ("launched", "RUN_STARTING"),
    ("worker up", "RUN_START"),
    ("first op starts", "STEP_START"),
    ("run succeeded", "RUN_SUCCESS"),
)


IDLE_SECONDS = 30


def tree_rss_mb(root: int) -> tuple[float, int]:
    """The resident memory of a process and all its descendants (MB), and how many there are."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    total, count, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        rss = [line for line in status.splitlines() if line.startswith("VmRSS:")]
        total += int(rss[0].split()[1]) if rss else 0
        count += 1
        todo.extend(children.get(pid, []))
    return total / 1024, count


def row_status(database_url: str, run_id: str) -> str | None:
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT status FROM agent_runs WHERE dagster_run_id = %s", (run_id,))
        row = cursor.fetchone()
    connection.close()
    return row[0] if row else None


def stop_schedule(port: int) -> None:
    """No schedule tick in the middle of the measurement."""
    for schedule in graphql(port, SCHEDULE_ID)["schedulesOrError"]["results"]:
        state = schedule["scheduleState"]
        if state["status"] == "RUNNING":
            graphql(port, STOP_SCHEDULE, {"id": state["id"]})


def launch_to_row(port: int, database_url: str, window: str) -> tuple[float, str, float]:
    """Seconds from the launch request to the window's row succeeded; the run's id; when the
    request was made (epoch seconds). Waits for the run itself to end too, so that the next
    launch finds the one run slot free."""
    requested_at = time.time()
    started = time.perf_counter()
    run_id = launch_window(port, window)
    while (status := row_status(database_url, run_id)) != "succeeded":
        if status == "failed":
            raise RuntimeError(f"run {run_id} of {window} failed")
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    wait_until(lambda: run_status(port, run_id) == "SUCCESS", f"run {run_id} ended", 60)
    return elapsed, run_id, requested_at


def breakdown(home: Path, runs: list[tuple[str, float]]) -> dict[str, float]:
    """Median seconds between consecutive milestones of the runs (id, when requested), from
    the instance's event log (the DAGSTER_* variables of the topology must be set for a
    Postgres instance)."""
    from dagster import DagsterInstance

    gaps: dict[str, list[float]] = {}
    os.chdir(home)  # the local instance's storage folders are relative to it
    with DagsterInstance.from_config(str(home)) as instance:
        for run_id, requested_at in runs:
            moments = {"REQUEST": requested_at}
            for record in instance.all_logs(run_id):
                event = record.dagster_event
                if event is not None and event.event_type.name not in moments:
                    moments[event.event_type.name] = record.timestamp
            for (before, first), (after, second) in itertools.pairwise(
                (("launch request", "REQUEST"), *MILESTONES)
            ):
                if first in moments and second in moments:
                    gaps.setdefault(f"{before} → {after}", []).append(
                        moments[second] - moments[first])
    return {name: statistics.median(values) for name, values in gaps.items()}


def measure(topology_name: str, launches: int, workdir: Path, database_url: str,
            smtp_port: int) -> dict:
    settings = {
        "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_port), "SMTP_SECURITY": "none",
        "EMAIL_FROM": "bench@example.com", "EMAIL_TO": "reader@example.com",
        "AGENT_PIPELINE_HOME": str(workdir / "agent"),
    }
    if topology_name == "local":
        stack = local_dev(workdir, settings)
    else:
        stack = production_topology(workdir, database_url, settings)
    with stack as topology:
        root = topology.processes.started[0][1].pid
        time.sleep(IDLE_SECONDS)  # settled: the daemon's and the sensors' first ticks are done
        idle = tree_rss_mb(root) if topology_name == "local" else None
        if topology_name == "production":
            os.environ.update({k: v for k, v in topology.env.items() if k.startswith("DAGSTER_")})
        stop_schedule(topology.web_port)
        windows = window_keys(launches + 1)[:-1]
        # The first launch starts the fork server (it also starts after 15 idle minutes).
        first, _, _ = launch_to_row(topology.web_port, database_url,
                                    window_keys(launches + 2)[-2])
        results = []
        for window in windows:
            # A launch at a random moment of the daemon's one-second look at the queue, as a
            # person's click or a schedule tick comes: the wait for it is then what it is on
            # average, not what one phase of it happens to be.
            time.sleep(random.uniform(0, 1))
            results.append(launch_to_row(topology.web_port, database_url, window))
        times = [seconds for seconds, _, _ in results]
        busy = tree_rss_mb(root) if topology_name == "local" else None
        return {
            "idle": idle, "busy": busy,
            "median": statistics.median(times), "min": min(times), "max": max(times),
            "first": first,
            "breakdown": breakdown(topology.home, [(run_id, at) for _, run_id, at in results]),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=10)
    parser.add_argument("--topology", choices=("local", "production", "both"), default="both")
    args = parser.parse_args()
    names = ("local", "production") if args.topology == "both" else (args.topology,)
    handler = SmtpCatcher("127.0.0.1", free_port())
    smtp = Controller(handler, hostname="127.0.0.1", port=handler.port)
    smtp.start()
    figures = {}
    try:
        for name in names:
            with scratch_database() as database_url, tempfile.TemporaryDirectory() as folder:
                figures[name] = measure(name, args.launches, Path(folder), database_url,
                                        handler.port)
    finally:
        smtp.stop()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; {args.launches} launches each, one after another")
    print("| topology | trigger to row succeeded, median (min, max) | first launch (cold) |")
    print("| --- | --- | --- |")
    for name, figure in figures.items():
        print(f"| {name} | {figure['median']:.2f} s ({figure['min']:.2f} s, "
              f"{figure['max']:.2f} s) | {figure['first']:.2f} s |")
    if "local" in figures:
        (idle, idle_count), (busy, busy_count) = figures["local"]["idle"], figures["local"]["busy"]
        print(f"\nlocal stack (`make dev`'s command), resident memory of all its processes: "
              f"{idle:.0f} MB over {idle_count} idle (no run yet, {IDLE_SECONDS} s after start); "
              f"{busy:.0f} MB over {busy_count} right after the launches (the fork server warm)")
    for name, figure in figures.items():
        print(f"\nwhere a {name} run's seconds go (medians):")
        for gap, seconds in figure["breakdown"].items():
            print(f"  {gap}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
