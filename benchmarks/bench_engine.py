"""The production stack on a real Docker engine: the project image's size, each service's idle
memory, and a launch's time from the webserver's GraphQL call to its agent_runs row succeeded,
run container start included.

    .venv/bin/python benchmarks/bench_engine.py [--launches 5]

As the engine test runs it (agent_pipeline_tests/engine.py): the engine that answers, or a
dockerd started for the benchmark (root); the official images, or stand-ins built from Debian
packages where no registry answers; a compose project of its own, taken down at the end.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The engine helpers live with the tests; make them importable when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_pipeline_tests.engine import USER_CODE_IMAGE, compose_stack, docker  # noqa: E402
from agent_pipeline_tests.helpers import window_keys  # noqa: E402
from agent_pipeline_tests.topology import launch_window  # noqa: E402

SERVICES = ("postgres", "redis", "mailpit", "user_code", "webserver", "daemon")
IDLE_SECONDS = 30


def launch_to_row(stack, window: str) -> float:
    """Seconds from the launch to the window's row succeeded."""
    started = time.perf_counter()
    run_id = launch_window(stack.web_port, window)
    while True:
        row = next((r for r in stack.rows() if r["dagster_run_id"] == run_id), None)
        if row and row["status"] == "succeeded":
            return time.perf_counter() - started
        if row and row["status"] == "failed":
            raise RuntimeError(f"run {run_id} failed: {row['error_message']}")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, \
            compose_stack(Path(folder), "agent_pipeline_engine_bench") as stack:
        size = int(docker("image", "inspect", "-f", "{{.Size}}", USER_CODE_IMAGE).stdout)
        time.sleep(IDLE_SECONDS)  # settled: the daemon's first ticks are done
        memory = {}
        for service in SERVICES:
            usage = docker("stats", "--no-stream", "--format", "{{.MemUsage}}",
                           stack.container(service)).stdout
            memory[service] = usage.split("/")[0].strip()
        times = [launch_to_row(stack, window) for window in window_keys(args.launches + 1)[:-1]]
        base = stack.variables.get("PYTHON_IMAGE", "python:3.11-slim")
    print(f"{platform.machine()}, {platform.python_version()}; the image built on {base}")
    print(f"image {USER_CODE_IMAGE}: {size / 1e6:.0f} MB")
    for service, used in memory.items():
        print(f"idle memory  {service:<10} {used}")
    print(f"launch to row succeeded, {len(times)} launches one after another: median "
          f"{statistics.median(times):.2f} s, min {min(times):.2f} s, max {max(times):.2f} s")


if __name__ == "__main__":
    main()
