"""A run launcher that starts each run in a process forked from a warm one.

Dagster's default launcher asks the code server to start every run in a freshly spawned
interpreter, which imports Python, Dagster and the code location again: about 1.2 s of a run
whose own work takes a few hundred milliseconds. This launcher keeps one warm process, the
fork server, that has already imported them (the instance file lists what, `preload_modules`)
and forks it for each run. The run's process then does what `dagster api execute_run` does.

What the default launcher guarantees stays:
- a run's process that dies is reported at once, with how it died, by the fork server that
  reaps it, as the code server reports it (an engine event, then the run failed);
- if the fork server itself is gone, run monitoring asks `check_run_worker_health`, which
  looks at the process by its id and start time, kept in the run's tags;
- terminating a run sends its process SIGTERM, which Dagster turns into a clean cancel;
- the fork server serves the code as it is on disk: when a module it imported from outside the
  interpreter's own folders changes (an edit, then Reload in the UI), it forks no more (its
  running runs go on to their end) and a fresh one takes the launch.

The fork server is a child of the process that launches runs (the daemon) and forks in its
single thread. When that process goes (its stdin closes) it takes no more launches and exits
once its runs have ended; it also exits after `idle_timeout_seconds` without a launch or a
running run, so an idle stack does not hold its memory. A run's process dies with the fork
server (the kernel's parent-death signal): a fork server killed with its runs in flight leaves
no orphan working on a run that run monitoring then fails and run retries start again, so a
run never has two processes.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import (
    Field,
    IntSource,
    Noneable,
    StringSource,
    deserialize_value,
    serialize_value,
)
from dagster._core.launcher import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._serdes import ConfigurableClass, ConfigurableClassData

WORKER_PID_TAG = "agent_pipeline/worker_pid"
# The process's start time in clock ticks since boot (/proc/<pid>/stat): a pid that the kernel
# gave to another process since is not mistaken for the run's.
WORKER_START_TAG = "agent_pipeline/worker_start"


def process_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None when there is no such
    process, or only a zombie of it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: the fields are after its last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


class ForkServerRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a process forked from a warm fork server (see the module's
    docstring). Local only: the run's process is on the launcher's machine."""

    def __init__(
        self,
        preload_modules: Sequence[str] = (),
        idle_timeout_seconds: int = 300,
        answer_timeout_seconds: int = 120,
        inst_data: ConfigurableClassData | None = None,
    ):
        self._inst_data = inst_data
        self._preload_modules = list(preload_modules)
        self._idle_timeout_seconds = idle_timeout_seconds
        self._answer_timeout_seconds = answer_timeout_seconds
        self._server: subprocess.Popen | None = None
        self._lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "preload_modules": Field(
                Noneable([StringSource]), is_required=False,
                description="Modules the fork server imports once, before any run.",
            ),
            "idle_timeout_seconds": Field(
                IntSource, is_required=False, default_value=300,
                description="The fork server exits after this long without a launch or a "
                "running run.",
            ),
            "answer_timeout_seconds": Field(
                IntSource, is_required=False, default_value=120,
                description="A fork server that has not answered a launch after this long "
                "(its start and imports included) is stopped and the run fails.",
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> ForkServerRunLauncher:
        return cls(
            preload_modules=config_value.get("preload_modules") or (),
            idle_timeout_seconds=config_value["idle_timeout_seconds"],
            answer_timeout_seconds=config_value["answer_timeout_seconds"],
            inst_data=inst_data,
        )

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        request = {"run_id": run.run_id, "instance_ref": serialize_value(self._instance.get_ref())}
        with self._lock:
            answer = self._ask(request)
            if answer.get("stale"):  # the code changed on disk: a fresh server loads it
                self._let_go()
                answer = self._ask(request)
        if "pid" not in answer:
            raise RuntimeError(f"the fork server could not start run {run.run_id}: {answer}")
        self._instance.add_run_tags(
            run.run_id,
            {WORKER_PID_TAG: str(answer["pid"]), WORKER_START_TAG: str(answer["start"])},
        )

    def _ask(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """One request to the fork server, started first when there is none (it exits when
        idle, or when its code is stale)."""
        for _ in range(2):
            if self._server is None or self._server.poll() is not None:
                self._server = self._start_server()
            try:
                self._server.stdin.write(json.dumps(request) + "\n")
                self._server.stdin.flush()
                self._wait_for_answer()
                line = self._server.stdout.readline()
            except (BrokenPipeError, ValueError):
                line = ""
            if line:
                return json.loads(line)
            # It exited between the poll and the request (its idle timeout): once more.
            self._server.wait()
            self._server = None
        raise RuntimeError("the fork server exited without answering; see the daemon's log")

    def _wait_for_answer(self) -> None:
        """Until the server's answer (or its end) can be read; a server stuck past the
        timeout, in its imports or anywhere, is killed, so the queue is never held by it."""
        ready, _, _ = select.select([self._server.stdout], [], [], self._answer_timeout_seconds)
        if not ready:
            self._server.kill()
            self._server.wait()
            self._server = None
            raise RuntimeError(
                f"the fork server did not answer within {self._answer_timeout_seconds} s "
                f"(importing {', '.join(self._preload_modules) or 'Dagster'}?); it was stopped"
            )

    def _start_server(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "agent_pipeline.engine.run_launcher",
             json.dumps({"preload_modules": self._preload_modules,
                         "idle_timeout_seconds": self._idle_timeout_seconds})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid = self._live_worker(run.tags)
        if pid is None:
            self._instance.report_engine_event(
                "The run's process is gone: nothing to terminate.", run, cls=self.__class__
            )
            return False
        os.kill(pid, signal.SIGTERM)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        if self._live_worker(run.tags) is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        fresh = self._instance.get_run_by_id(run.run_id)
        if fresh is not None and fresh.is_finished:
            return CheckRunHealthResult(WorkerStatus.SUCCESS)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"The run's process (pid {run.tags.get(WORKER_PID_TAG)}) is gone.",
        )

    @staticmethod
    def _live_worker(tags: Mapping[str, str]) -> int | None:
        if WORKER_PID_TAG not in tags:
            return None
        pid = int(tags[WORKER_PID_TAG])
        started = process_start_ticks(pid)
        return pid if started is not None and str(started) == tags.get(WORKER_START_TAG) else None

    def _let_go(self) -> None:
        """No more launches for the current server: at the end of its input it exits once its
        runs have ended. Never killed here, which would kill its runs with it."""
        if self._server is not None and self._server.poll() is None:
            self._server.stdin.close()
        self._server = None

    def dispose(self) -> None:
        with self._lock:
            self._let_go()


# ---------------------------------------------------------------------------------------------
# The fork server: `python -m agent_pipeline.engine.run_launcher '<options as JSON>'`.


def _code_files() -> dict[str, float]:
    """The files of the imported modules that are not the interpreter's own (standard library,
    site-packages), with their modification times: the code a reload would change."""
    own = tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and not os.path.realpath(path).startswith(own):
            try:
                files[path] = os.stat(path).st_mtime
            except OSError:
                files[path] = -1.0
    return files


def _code_changed(files: Mapping[str, float]) -> bool:
    for path, mtime in files.items():
        try:
            if os.stat(path).st_mtime != mtime:
                return True
        except OSError:
            if mtime != -1.0:
                return True
    return False


def _execute_run(request: Mapping[str, Any]) -> int:
    """In the forked process: what `dagster api execute_run` does with its arguments."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._cli.utils import get_instance_for_cli
    from dagster._utils.interrupts import capture_interrupts

    with capture_interrupts():
        instance_ref = deserialize_value(request["instance_ref"])
        # As `dagster api execute_run` opens it: with the working directory's .env read now,
        # so a run sees the file as it is, not as it was when the server started.
        with get_instance_for_cli(instance_ref=instance_ref) as instance:
            return _execute_run_command_body(
                request["run_id"], instance, lambda event: None, set_exit_code_on_failure=True
            )


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(server: int) -> None:
    """SIGKILL for this process when the fork server (pid `server`) dies (Linux's
    parent-death signal)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != server:  # the server died before the signal was set: none would come
        os._exit(1)


def _fork_run(request: Mapping[str, Any]) -> int:
    # Read before the fork: a server that dies just after it would leave its child reading
    # the pid of the process that adopted it.
    server = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _die_with_parent(server)
        # The server's stdin and stdout are its pipes to the launcher: the run gets neither.
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(2, 1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = _execute_run(request)
    except BaseException:  # noqa: BLE001 (the process ends here whatever happened)
        traceback.print_exc()
    finally:
        # os._exit skips what a normal exit does; what matters here is the logs' last lines.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _report_exit(request: Mapping[str, Any], pid: int, status: int) -> None:
    """A run's process ended: when its run is not finished, say how it died and fail it, as
    Dagster's code server does for the processes it starts."""
    from dagster import DagsterInstance
    from dagster._utils import get_run_crash_explanation

    exit_code = os.waitstatus_to_exitcode(status)
    with DagsterInstance.from_ref(deserialize_value(request["instance_ref"])) as instance:
        run = instance.get_run_by_id(request["run_id"])
        if run is None or run.is_finished:
            return
        message = get_run_crash_explanation(
            prefix=f"Run execution process for {run.run_id} (pid {pid})", exit_code=exit_code
        )
        instance.report_engine_event(message, run, cls=ForkServerRunLauncher)
        instance.report_run_failed(run)


def serve(preload_modules: Sequence[str], idle_timeout_seconds: float) -> None:
    import importlib

    import dagster._cli.api  # noqa: F401 (what every run's process uses)

    for module in preload_modules:
        importlib.import_module(module)
    code = _code_files()
    running: dict[int, Mapping[str, Any]] = {}
    idle_since = time.monotonic()
    launcher_gone = False
    while True:
        for pid, request in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del running[pid]
                idle_since = time.monotonic()
                try:
                    _report_exit(request, pid, status)
                except Exception:  # noqa: BLE001 (run monitoring is the second line)
                    traceback.print_exc()
        if not running and (
            launcher_gone or time.monotonic() - idle_since > idle_timeout_seconds
        ):
            return
        if launcher_gone:  # its runs die with this process: wait for them to end
            time.sleep(0.2)
            continue
        readable, _, _ = select.select([sys.stdin], [], [], 0.2)
        if not readable:
            continue
        line = sys.stdin.readline()
        if not line:  # the launcher's process is gone (a daemon restart)
            launcher_gone = True
            continue
        request = json.loads(line)
        if _code_changed(code):
            print(json.dumps({"stale": True}), flush=True)
            # Its runs die with this process: it takes no more launches and exits once they
            # have ended (a fresh server takes the next launches meanwhile).
            launcher_gone = True
            continue
        pid = _fork_run(request)
        running[pid] = request
        idle_since = time.monotonic()
        print(json.dumps({"pid": pid, "start": process_start_ticks(pid)}), flush=True)


if __name__ == "__main__":
    options = json.loads(sys.argv[1])
    serve(options["preload_modules"], options["idle_timeout_seconds"])
