"""Each of our engine parts (agent_pipeline/engine/) against Dagster's stock one, in one run.

agent_job in process on the production Postgres instance with one part at a time swapped for
the stock one (deploy/stock-parts.yaml), the variants taking turns run by run; then launch to
row succeeded through the daemon on two local stacks up side by side, ours and the stock one,
taking turns launch by launch; then what each gain comes to for a 10-minute schedule, a
one-day backfill and 100 agents.

    .venv/bin/python benchmarks/bench_parts.py [--runs 20] [--launches 10] \
        [--only inprocess|daemon]

Postgres and Redis as benchmarks/scratch.py says (BENCH_POSTGRES_URL, BENCH_REDIS_URL; the
Redis database is flushed); the SMTP server is aiosmtpd on loopback.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

# The topology helpers live with the tests; make them importable when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402
import yaml  # noqa: E402
from dagster import DagsterInstance  # noqa: E402

from agent_pipeline.jobs import agent_job  # noqa: E402
from agent_pipeline.settings import resources_from_env  # noqa: E402
from agent_pipeline_tests.topology import (  # noqa: E402
    ENGINE_PARTS_VARIABLE,
    instance_from_config,
    local_dev,
    with_engine_parts,
)
from benchmarks.bench_launch import (  # noqa: E402
    IDLE_SECONDS,
    breakdown,
    launch_to_row,
    stop_schedule,
    tree_rss_mb,
)
from benchmarks.bench_pipeline import Runs, dagster_run, instance_in, timed_in_turn  # noqa: E402
from benchmarks.scratch import (  # noqa: E402
    REDIS_URL,
    pipeline_settings,
    scratch_database,
    smtp_catcher,
)

STORAGES = ("run_storage", "event_log_storage")
# Each in-process variant: the instance sections given Dagster's stock part. One part at a time
# against all ours, and all of them at once.
VARIANTS: dict[str, tuple[str, ...]] = {
    "all ours": (),
    "stock storages": STORAGES,
    "stock compute log manager": ("compute_logs",),
    "all stock": (*STORAGES, "compute_logs"),
}
WARMUP = 2  # runs of each variant not counted: the first pay for imports and snapshots
SETTLE_SECONDS = 3  # after the last launch: the last run's process exits and is reaped

# What a user runs, for the derived figures.
SCHEDULE_RUNS_A_DAY = 144  # every 10 minutes
BACKFILL_WINDOWS = 144  # a day of 10-minute windows, one at a time
AGENTS = 100  # each every 10 minutes
CORE_SECONDS_AN_HOUR = 2 * 3600  # this machine's two cores

# Where the figures go: the benchmark's stdout, which main() keeps for them alone.
figures_out: TextIO = sys.stdout


def say(*text: object) -> None:
    print(*text, file=figures_out, flush=True)


def parts_instance(home: str, database_url: str, stock: Sequence[str]) -> DagsterInstance:
    """The production instance as bench_pipeline's instance_in makes it (deploy/dagster.yaml's
    storages, our compute log manager), with the sections in `stock` given Dagster's part."""
    with instance_in(home, "production", database_url):
        # instance_in makes the instance from a file it writes in home: start from that file,
        # so that "all ours" here is exactly bench_pipeline's production instance.
        config = yaml.safe_load(Path(home, "dagster.yaml").read_text())
    swapped = with_engine_parts({section: config[section] for section in stock}, "stock")
    return instance_from_config(home, {**config, **swapped})


def cpu_seconds() -> float:
    """CPU time of this process and of its children waited for: the stock compute log
    manager's cost is mostly in its tail and watcher processes, which it waits for."""
    own, children = (resource.getrusage(who)
                     for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def variant_run(instance: DagsterInstance, resources: dict,
                cpu: list[float]) -> Callable[[str], None]:
    """One run of agent_job on instance, its CPU time appended to cpu."""
    def run(window: str) -> None:
        before = cpu_seconds()
        dagster_run(window, resources, instance)
        cpu.append(cpu_seconds() - before)
    return run


def spread(values: Sequence[float]) -> str:
    """Median and interquartile range, in ms."""
    low, median, high = statistics.quantiles(values, n=4)
    return f"{median * 1000:6.1f} ms ({low * 1000:.1f} to {high * 1000:.1f})"


def paired_gain(stock: Sequence[float], ours: Sequence[float]) -> float:
    """Median of the turn-by-turn differences: both ran within a second of each other, so
    the machine's drift (and colleagues' load) cancels out of each difference."""
    return statistics.median(s - o for s, o in zip(stock, ours, strict=True))


def in_process(runs: int, windows: list[list[str]]) -> dict[str, dict[str, float]]:
    """agent_job in process, each variant in turn; per part its gain in wall and CPU time."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    with scratch_database() as database_url, smtp_catcher() as catcher, ExitStack() as stack:
        os.environ.update(pipeline_settings(database_url, catcher.port))
        resources = resources_from_env(os.environ)
        cpu: dict[str, list[float]] = {label: [] for label in VARIANTS}
        turns: Runs = {}
        for (label, stock), its_windows in zip(VARIANTS.items(), windows, strict=True):
            home = stack.enter_context(tempfile.TemporaryDirectory())
            instance = stack.enter_context(parts_instance(home, database_url, stock))
            turns[label] = (its_windows, variant_run(instance, resources, cpu[label]))
        wall = timed_in_turn(turns)
        assert len(catcher.received) == len(VARIANTS) * (runs + WARMUP), len(catcher.received)

    wall = {label: durations[WARMUP:] for label, durations in wall.items()}
    cpu = {label: seconds[WARMUP:] for label, seconds in cpu.items()}
    ours = "all ours"
    say(f"\n## In process: agent_job on the production Postgres instance, {runs} runs of each "
        f"variant in turn (after {WARMUP} not counted)\n")
    say("| variant | wall per run, median (quartiles) | CPU per run, median (quartiles) "
        "| wall vs all ours | CPU vs all ours |")
    say("| --- | --- | --- | --- | --- |")
    for label in VARIANTS:
        gains = ("" if label == ours else
                 f"{paired_gain(wall[label], wall[ours]) * 1000:+.1f} ms",
                 "" if label == ours else
                 f"{paired_gain(cpu[label], cpu[ours]) * 1000:+.1f} ms")
        say(f"| {label} | {spread(wall[label])} | {spread(cpu[label])} | {gains[0]} "
            f"| {gains[1]} |")
    parts = {"pooled storages": "stock storages",
             "tee compute log manager": "stock compute log manager", "both": "all stock"}
    return {part: {"wall": paired_gain(wall[variant], wall[ours]),
                   "cpu": paired_gain(cpu[variant], cpu[ours])}
            for part, variant in parts.items()}


def stack_cpu_seconds(root: int) -> float:
    """CPU time of a process and its descendants, with the children each has waited for (a
    run's process once the code server or the fork server has reaped it). Every thread's
    children: the daemon and the code server start processes from threads of their own."""
    ticks, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:  # gone meanwhile
            continue
        ticks += sum(int(value) for value in stat[stat.rindex(")") + 2:].split()[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def through_daemon(launches: int, windows: dict[str, list[str]]) -> dict[str, dict]:
    """Both local stacks up side by side, ours and the stock one; their launches in turn."""
    figures: dict[str, dict] = {parts: {} for parts in windows}
    before = os.environ.get(ENGINE_PARTS_VARIABLE)
    redis.Redis.from_url(REDIS_URL).flushdb()
    with smtp_catcher() as catcher, ExitStack() as stack:
        stacks = {}
        for parts in windows:
            database_url = stack.enter_context(scratch_database())
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            settings = {**pipeline_settings(database_url, catcher.port),
                        "AGENT_PIPELINE_HOME": str(workdir / "agent")}
            # local_dev writes the stack's instance file with the parts this variable names.
            os.environ[ENGINE_PARTS_VARIABLE] = parts
            topology = stack.enter_context(local_dev(workdir, settings))
            stacks[parts] = (topology, topology.processes.started[0][1].pid, database_url)
        if before is None:
            os.environ.pop(ENGINE_PARTS_VARIABLE)
        else:
            os.environ[ENGINE_PARTS_VARIABLE] = before

        # At rest for IDLE_SECONDS, as bench_launch measures a stack's idle memory: also the
        # CPU a stack burns without runs (the daemon's look at the queue every second, the
        # sensors), taken off its CPU over the launches below.
        idle_cpu = {parts: stack_cpu_seconds(root) for parts, (_, root, _) in stacks.items()}
        time.sleep(IDLE_SECONDS)
        for parts, (topology, root, _) in stacks.items():
            figures[parts]["idle cpu rate"] = (
                stack_cpu_seconds(root) - idle_cpu[parts]) / IDLE_SECONDS
            figures[parts]["idle"] = tree_rss_mb(root)
            stop_schedule(topology.web_port)

        # The first launch of each: ours starts its fork server then.
        for parts, (topology, _, database_url) in stacks.items():
            figures[parts]["first"], _, _ = launch_to_row(
                topology.web_port, database_url, windows[parts][-1])

        started = time.perf_counter()
        cpu_before = {parts: stack_cpu_seconds(root) for parts, (_, root, _) in stacks.items()}
        results: dict[str, list] = {parts: [] for parts in stacks}
        for turn in range(launches):
            for parts, (topology, _, database_url) in stacks.items():
                # At a random moment of the daemon's one-second look at the queue, as a click
                # or a schedule tick comes (as bench_launch.py launches).
                time.sleep(random.uniform(0, 1))
                results[parts].append(
                    launch_to_row(topology.web_port, database_url, windows[parts][turn]))
        time.sleep(SETTLE_SECONDS)
        elapsed = time.perf_counter() - started
        for parts, (topology, root, _) in stacks.items():
            figure = figures[parts]
            figure["times"] = [seconds for seconds, _, _ in results[parts]]
            # The stack's CPU over the launches, less what it burns idle over the same time.
            figure["cpu per run"] = (stack_cpu_seconds(root) - cpu_before[parts]
                                     - figure["idle cpu rate"] * elapsed) / launches
            figure["busy"] = tree_rss_mb(root)
            cwd = os.getcwd()
            try:
                figure["breakdown"] = breakdown(
                    topology.home, [(run_id, at) for _, run_id, at in results[parts]])
            finally:
                os.chdir(cwd)  # breakdown moves into the stack's folder, removed at the end

    say(f"\n## Through the daemon: the local stack (`make dev`'s command), {launches} launches "
        "each, the two stacks taking turns\n")
    say("Our stack: ForkServerRunLauncher and TeeComputeLogManager. The stock stack "
        f"({ENGINE_PARTS_VARIABLE}=stock): the code server's DefaultRunLauncher and "
        "LocalComputeLogManager, two stock parts at once, as a stock deployment has them.\n")
    say("| stack | launch to row succeeded, median (min, max) | first launch "
        "| CPU per run | memory idle | memory after the launches |")
    say("| --- | --- | --- | --- | --- | --- |")
    for parts, figure in figures.items():
        times, (idle, idle_count), (busy, busy_count) = (
            figure["times"], figure["idle"], figure["busy"])
        say(f"| {parts} | {statistics.median(times):.2f} s ({min(times):.2f} s, "
            f"{max(times):.2f} s) | {figure['first']:.2f} s | {figure['cpu per run']:.2f} s "
            f"| {idle:.0f} MB, {idle_count} processes | {busy:.0f} MB, {busy_count} processes |")
    say("\nwhere a run's seconds go (medians) | ours | stock")
    for gap in figures["ours"]["breakdown"]:
        say(f"  {gap}: {figures['ours']['breakdown'][gap]:.2f} s | "
            f"{figures['stock']['breakdown'].get(gap, float('nan')):.2f} s")
    say(f"idle CPU: ours {figures['ours']['idle cpu rate'] * 100:.1f}%, stock "
        f"{figures['stock']['idle cpu rate'] * 100:.1f}% of a core")
    return figures


def user_figures(gains: dict[str, dict[str, float]], per_run: dict[str, float]) -> None:
    """What each part's gain per run comes to for what users run; per_run: each stack's
    launch to row succeeded through the daemon, if measured."""
    runs_an_hour = AGENTS * 6
    say("\n## What a user gains (per part: seconds of wall time and of CPU per run saved)\n")
    say(f"| part | per run | 10-minute schedule ({SCHEDULE_RUNS_A_DAY} runs a day) "
        f"| one-day backfill ({BACKFILL_WINDOWS} windows, one at a time) "
        f"| {AGENTS} agents every 10 minutes ({runs_an_hour} runs an hour) |")
    say("| --- | --- | --- | --- | --- |")
    for part, gain in gains.items():
        wall, cpu = gain["wall"], gain["cpu"]
        cpu_an_hour = cpu * runs_an_hour
        say(f"| {part} | {wall:.3f} s, {cpu:.3f} CPU-s "
            f"| each email {wall:.2f} s sooner; {cpu * SCHEDULE_RUNS_A_DAY:.0f} CPU-s a day "
            f"| {wall * BACKFILL_WINDOWS:.0f} s sooner "
            f"| {cpu_an_hour:.0f} CPU-s an hour, {cpu_an_hour / CORE_SECONDS_AN_HOUR:.1%} "
            f"of 2 cores; {wall * runs_an_hour / 60:.1f} min of the queue's hour |")
    if per_run:
        # One run at a time (max_concurrent_runs: 1): an hour's runs must fit in the hour.
        say(f"\n{AGENTS} agents every 10 minutes, one run at a time: minutes of each hour the "
            "queue is busy: " + ", ".join(f"{parts} {seconds * runs_an_hour / 60:.0f}"
                                          for parts, seconds in per_run.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20,
                        help="in-process runs of each variant (default 20)")
    parser.add_argument("--launches", type=int, default=10,
                        help="launches through the daemon on each stack (default 10)")
    parser.add_argument("--only", choices=("inprocess", "daemon"))
    args = parser.parse_args()
    # The runs in process log to stdout, and both compute log managers copy what a run writes
    # there: that goes to stderr, with Dagster's own log lines, and stdout carries the figures.
    global figures_out
    sys.stdout.flush()
    figures_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    # Disjoint windows for every run, so that each sends its email and none finds another's
    # cache: the latest for the daemon, the ones before for the in-process variants.
    keys = agent_job.partitions_def.get_partition_keys()
    per_stack, per_variant = args.launches + 1, args.runs + WARMUP
    daemon_windows = {"ours": keys[-per_stack:], "stock": keys[-2 * per_stack:-per_stack]}
    first = len(keys) - 2 * per_stack
    variant_windows = [keys[first - (n + 1) * per_variant:first - n * per_variant]
                       for n in range(len(VARIANTS))]

    say(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}; load average before: "
        f"{' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    gains, per_run = {}, {}
    if args.only != "daemon":
        gains = in_process(args.runs, variant_windows)
    if args.only != "inprocess":
        figures = through_daemon(args.launches, daemon_windows)
        per_run = {parts: statistics.median(figure["times"]) for parts, figure in figures.items()}
        wall = per_run["stock"] - per_run["ours"]
        cpu = figures["stock"]["cpu per run"] - figures["ours"]["cpu per run"]
        gains["fork-server launcher + tee log manager (daemon)"] = {"wall": wall, "cpu": cpu}
        if "tee compute log manager" in gains:
            # The log manager's own share, measured in process, taken off the stack's gain.
            tee = gains["tee compute log manager"]
            gains["fork-server launcher alone (estimate)"] = {
                "wall": wall - tee["wall"], "cpu": cpu - tee["cpu"]}
    user_figures(gains, per_run)
    say(f"\nload average after: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
