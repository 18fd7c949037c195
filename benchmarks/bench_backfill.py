"""A one-day backfill (144 windows, the default agent) through the production topology as
local processes (code server, webserver, daemon on deploy/dagster.yaml with Postgres storage;
runs as subprocesses instead of containers): time until every run succeeded, and runs per
minute, with agent_job's in_process executor and with Dagster's default multiprocess one.

    .venv/bin/python benchmarks/bench_backfill.py [--windows 144] [--executor both]

Postgres and Redis as in bench_pipeline.py (BENCH_POSTGRES_URL, BENCH_REDIS_URL); a scratch
database per executor; the SMTP server is aiosmtpd on loopback.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# The topology helpers live with the tests; make them importable when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2  # noqa: E402
import redis  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402
from dagster import DagsterInstance, DagsterRunStatus  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from agent_pipeline.jobs import agent_job  # noqa: E402
from agent_pipeline_tests.helpers import SmtpCatcher  # noqa: E402
from agent_pipeline_tests.services import free_port  # noqa: E402
from agent_pipeline_tests.topology import BIN, production_topology, wait_until  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGETS = {
    "in_process": (),
    "multiprocess": ("-f", str(HERE / "multiprocess_location.py")),
}


def backfill(executor: str, windows: list[str], admin_url: str, redis_url: str) -> float:
    """Seconds from submitting the backfill until every run has succeeded."""
    database = f"agent_pipeline_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{database}"')
    database_url = make_url(admin_url).set(database=database).render_as_string(False)
    redis.Redis.from_url(redis_url).flushdb()
    handler = SmtpCatcher("127.0.0.1", free_port())
    smtp_port = handler.port
    smtp = Controller(handler, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            settings = {
                "DATABASE_URL": database_url, "REDIS_URL": redis_url,
                "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_port), "SMTP_SECURITY": "none",
                "EMAIL_FROM": "bench@example.com", "EMAIL_TO": "reader@example.com",
                "AGENT_PIPELINE_HOME": os.path.join(workdir, "agent"),
                "EMAIL_ONLY_NEW": "false",  # every window sends, as the count below expects
                "BACKFILL_EMAIL": "each",
            }
            with production_topology(Path(workdir), database_url, settings,
                                     TARGETS[executor]) as topology:
                os.environ.update(
                    {k: v for k, v in topology.env.items() if k.startswith("DAGSTER_")}
                )
                cli = dict(cwd=workdir, env=topology.env, capture_output=True, text=True)
                if executor == "in_process":  # the other location has no schedule
                    # No schedule ticks in the middle of the measurement.
                    subprocess.run([str(BIN / "dagster"), "schedule", "stop", "-w",
                                    "workspace.yaml", "agent_job_schedule"], check=True, **cli)
                started = time.perf_counter()
                subprocess.run(
                    [str(BIN / "dagster"), "job", "backfill", "-j", "agent_job", "-w",
                     "workspace.yaml", "--from", windows[0], "--to", windows[-1], "--noprompt"],
                    check=True, **cli,
                )
                with DagsterInstance.from_config(str(topology.home)) as instance:
                    def all_done():
                        runs = instance.get_runs()
                        statuses = [run.status for run in runs]
                        failed = statuses.count(DagsterRunStatus.FAILURE)
                        if failed:
                            raise SystemExit(f"{failed} runs failed\n{topology.processes.logs()}")
                        return statuses.count(DagsterRunStatus.SUCCESS) == len(windows)

                    wait_until(all_done, "the backfill did not finish", 3 * 3600)
                elapsed = time.perf_counter() - started
        assert len(handler.received) == len(windows), len(handler.received)
        return elapsed
    finally:
        smtp.stop()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=144, help="windows to backfill (144)")
    parser.add_argument("--executor", choices=[*TARGETS, "both"], default="both")
    args = parser.parse_args()
    admin_url = os.environ.get(
        "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    # The day before the last closed window, so that no window is still open.
    windows = agent_job.partitions_def.get_partition_keys()[-args.windows - 1:-1]
    executors = list(TARGETS) if args.executor == "both" else [args.executor]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {len(windows)} windows "
          f"{windows[0]} .. {windows[-1]}", flush=True)
    for executor in executors:
        seconds = backfill(executor, windows, admin_url, redis_url)
        print(f"{executor:13} all {len(windows)} succeeded in {seconds:7.1f} s  "
              f"{len(windows) / seconds * 60:5.1f} runs/min  "
              f"{seconds / len(windows):5.2f} s/run", flush=True)


if __name__ == "__main__":
    main()
