"""`make dev`: the code server, the Dagster webserver and the daemon on this machine, as
`dagster dev` starts them, without its supervising process (about 140 MB of Dagster imported
only to start and stop three others).

    DAGSTER_HOME=$PWD .venv/bin/python deploy/dev.py [--port 3000] [--host 127.0.0.1]

Run from the folder holding dagster.yaml (the instance) and, if any, .env (read into the three
processes' environment, as `dagster dev` does; DAGSTER_WEBSERVER_URL, unless set, becomes the
UI's address here, for the emails' links). The code server is Dagster's own
(`dagster code-server start`, which the UI's "Reload" restarts), on a free local port that the
webserver and the daemon find through a workspace file written under .dagster_home/. Ctrl-C
stops all three; so does any of them exiting.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dotenv import dotenv_values

BIN = Path(sys.executable).parent
LOCATION = "agent_pipeline"
STARTUP_SECONDS = 180
STOP_SECONDS = 30
# Run in a process of its own: this one stays up while the stack runs, so it imports nothing
# of the project (the settings import Dagster).
CHECK_SETTINGS = """
import sys
from agent_pipeline.errors import ConfigurationError
from agent_pipeline.settings import code_location_settings
try:
    code_location_settings()
except ConfigurationError as error:
    print(error, file=sys.stderr)
    sys.exit(2)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def workspace_file(code_port: int) -> Path:
    path = Path(".dagster_home") / "dev_workspace.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        "# Written by deploy/dev.py on each start: the code server it started.\n"
        "load_from:\n"
        "  - grpc_server:\n"
        "      host: 127.0.0.1\n"
        f"      port: {code_port}\n"
        f"      location_name: {LOCATION}\n"
    )
    return path


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3000, help="the webserver's port (3000)")
    parser.add_argument("--host", default="127.0.0.1", help="the webserver's host (127.0.0.1)")
    args = parser.parse_args()
    if not Path("dagster.yaml").exists():
        print("deploy/dev.py: run it from the folder holding dagster.yaml", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if Path(".env").exists():
        env.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
    # The emails' "this run in Dagster" links point at the UI this command serves, unless the
    # environment or .env says where readers reach it.
    shown_host = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    env.setdefault("DAGSTER_WEBSERVER_URL", f"http://{shown_host}:{args.port}")
    # One line per event in this terminal: Dagster's console logger prints each of a run's
    # events; the same event as a JSON line on stdout is for containers' collectors.
    env.setdefault("LOG_STDOUT", "false")
    # A bad variable stops here, named on the first line, before three processes start and
    # the code server buries it in a stack trace.
    check = subprocess.run([sys.executable, "-c", CHECK_SETTINGS], env=env,
                           capture_output=True, text=True)
    if check.returncode == 2:  # a variable's value: its line alone (the last: after warnings)
        problem = check.stderr.strip().splitlines()[-1]
        print(f"deploy/dev.py: {problem} (set in .env or the environment)", file=sys.stderr)
        return 2
    if check.returncode:  # anything else (an agent that does not import): all of it
        print(f"deploy/dev.py: the code location does not load:\n{check.stderr}",
              file=sys.stderr)
        return 1

    processes: list[subprocess.Popen] = []
    # Ctrl-C reaches every process of the terminal's group; the handler stops the rest in order.
    stopping = []
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        code_port = free_port()
        processes.append(subprocess.Popen(
            [str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1",
             "-p", str(code_port), "-m", "agent_pipeline.definitions",
             "--location-name", LOCATION], env=env,
        ))
        deadline = time.monotonic() + STARTUP_SECONDS
        while not answers(code_port):
            if stopping or processes[0].poll() is not None or time.monotonic() > deadline:
                print("deploy/dev.py: the code server did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        workspace = str(workspace_file(code_port))
        processes.append(subprocess.Popen(
            [str(BIN / "dagster-webserver"), "-h", args.host, "-p", str(args.port),
             "-w", workspace], env=env,
        ))
        processes.append(subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", workspace], env=env,
        ))
        print(f"deploy/dev.py: the Dagster UI is at http://{args.host}:{args.port}", flush=True)
        while not stopping:
            exited = [p for p in processes if p.poll() is not None]
            if exited:
                print(f"deploy/dev.py: {exited[0].args[0]} exited ({exited[0].returncode}); "
                      "stopping the others", file=sys.stderr)
                return exited[0].returncode or 1
            time.sleep(0.5)
        return 0
    finally:
        stop(processes)


if __name__ == "__main__":
    sys.exit(main())
