"""ForkServerRunLauncher on a real Dagster instance (SQLite, in a temporary folder): runs
forked from a real fork server, killed, terminated, the fork server killed or left by its
daemon, and a code change picked up; in the fast tier, the worker health and terminate
answers, which need no fork server. The daemon's side of it (queue, run monitoring) runs in
the local-deployment and production-topology tests, where the launcher is the one the
instance files name, and here for the fork server killed under a running `make dev`."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_pipeline.engine.run_launcher import (
    WORKER_PID_TAG,
    WORKER_START_TAG,
    ForkServerRunLauncher,
    process_start_ticks,
)

JOB_MODULE = '''
import os, time
from pathlib import Path
from dagster import in_process_executor, job, op

@op
def note_and_wait():
    folder = Path(os.environ["LAUNCHER_TEST_DIR"])
    # Which process ran the run, and which process forked it.
    (folder / f"ran-{os.getpid()}").write_text(str(os.getppid()))
    while (folder / "hold").exists():
        time.sleep(0.05)

@job(executor_def=in_process_executor)
def sample_job():
    note_and_wait()
'''


@pytest.fixture
def launcher_setup(tmp_path, monkeypatch):
    """An instance whose launcher is the fork server's, and a job in a module of the test's
    own (so that a test may change it); yields (instance, launch, folder)."""
    yield from launcher_instance(tmp_path, monkeypatch, {"preload_modules": ["launcher_sample_job"],
                                                         "idle_timeout_seconds": 60})


def launcher_instance(tmp_path, monkeypatch, config):
    from dagster import DagsterInstance, instance_for_test, reconstructable

    code = tmp_path / "code"
    code.mkdir()
    (code / "launcher_sample_job.py").write_text(JOB_MODULE)
    # A module that never finishes importing, for a fork server stuck in its preload.
    (code / "launcher_stuck_import.py").write_text("import time\ntime.sleep(600)\n")
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(code), *sys.path]))
    monkeypatch.setenv("LAUNCHER_TEST_DIR", str(tmp_path))
    module = importlib.import_module("launcher_sample_job")
    overrides = {"run_launcher": {
        "module": "agent_pipeline.engine.run_launcher", "class": "ForkServerRunLauncher",
        "config": config,
    }}
    (tmp_path / "home").mkdir()
    with instance_for_test(overrides=overrides, temp_dir=str(tmp_path / "home")) as instance:
        assert isinstance(instance, DagsterInstance)
        origin = reconstructable(module.sample_job).get_python_origin()

        def launch() -> str:
            run = instance.create_run_for_job(module.sample_job, job_code_origin=origin)
            instance.launch_run(run.run_id, workspace=None)
            return run.run_id

        yield instance, launch, tmp_path
        instance.run_launcher.dispose()
    sys.modules.pop("launcher_sample_job", None)


def wait_for(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout} s")


def finished(instance, run_id: str):
    run = instance.get_run_by_id(run_id)
    return run if run.is_finished else None


def runner_of(folder: Path, pid: int) -> int:
    """The pid of the process that forked the run's process (from the run's own note)."""
    note = wait_for(lambda: (folder / f"ran-{pid}").exists() and folder / f"ran-{pid}",
                    "the run wrote its note")
    return int(note.read_text())


def launch_held(instance, launch, folder: Path):
    """A run launched to wait in its op (until the test removes the hold file): its run, the
    pid of its process and that of the fork server that forked it."""
    (folder / "hold").touch()
    run = instance.get_run_by_id(launch())
    pid = int(run.tags[WORKER_PID_TAG])
    return run, pid, runner_of(folder, pid)


@pytest.mark.slow  # it starts a fork server and runs
def test_runs_are_forked_from_one_warm_server_and_succeed(launcher_setup):
    from dagster import DagsterRunStatus
    from dagster._core.launcher import WorkerStatus

    instance, launch, folder = launcher_setup
    run, pid, server = launch_held(instance, launch, folder)
    first = run.run_id
    assert pid != os.getpid()
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    (folder / "hold").unlink()
    assert wait_for(lambda: finished(instance, first), "the run ended").status == (
        DagsterRunStatus.SUCCESS
    )
    # Once its process has exited too (it writes its last events after the run's end).
    wait_for(lambda: instance.run_launcher.check_run_worker_health(run).status
             == WorkerStatus.SUCCESS, "the worker's health said SUCCESS")

    second = launch()
    assert wait_for(lambda: finished(instance, second), "the run ended").status == (
        DagsterRunStatus.SUCCESS
    )
    second_pid = int(instance.get_run_by_id(second).tags[WORKER_PID_TAG])
    assert second_pid != pid
    assert runner_of(folder, second_pid) == server  # the same warm server forked both


@pytest.mark.slow  # it starts a fork server and runs
def test_a_killed_run_process_fails_its_run_saying_how_it_died(launcher_setup):
    from dagster import DagsterEventType, DagsterRunStatus

    instance, launch, folder = launcher_setup
    run, pid, _ = launch_held(instance, launch, folder)
    run_id = run.run_id
    os.kill(pid, signal.SIGKILL)
    run = wait_for(lambda: finished(instance, run_id), "the killed run was failed", 30)
    assert run.status == DagsterRunStatus.FAILURE
    engine = [e.message for e in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)]
    assert any(f"(pid {pid}) was terminated by signal 9" in message for message in engine)


@pytest.mark.slow  # it starts a fork server and runs
def test_with_the_fork_server_gone_run_monitoring_still_finds_a_dead_run(launcher_setup):
    from dagster._core.launcher import WorkerStatus

    instance, launch, folder = launcher_setup
    run, pid, server = launch_held(instance, launch, folder)
    run_id = run.run_id
    os.kill(server, signal.SIGKILL)  # nobody left to report the run's death
    # The run's process dies with its server, by itself: no orphan goes on with the run.
    wait_for(lambda: process_start_ticks(pid) is None, "the run's process is gone", 10)
    health = instance.run_launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED and str(pid) in health.msg
    assert not instance.get_run_by_id(run_id).is_finished  # left to run monitoring to end

    # The launcher starts a new server for the next run.
    (folder / "hold").unlink()
    after = launch()
    wait_for(lambda: finished(instance, after), "the next run ended")
    assert runner_of(folder, int(instance.get_run_by_id(after).tags[WORKER_PID_TAG])) != server


@pytest.mark.slow  # it starts a fork server and runs
def test_terminate_cancels_the_run(launcher_setup):
    from dagster import DagsterRunStatus

    instance, launch, folder = launcher_setup
    run_id = launch_held(instance, launch, folder)[0].run_id
    assert instance.run_launcher.terminate(run_id)
    run = wait_for(lambda: finished(instance, run_id), "the terminated run ended", 30)
    assert run.status == DagsterRunStatus.CANCELED


@pytest.mark.slow  # it starts a fork server and runs
def test_a_changed_module_is_loaded_by_a_fresh_server(launcher_setup):
    instance, launch, folder = launcher_setup
    first = launch()
    wait_for(lambda: finished(instance, first), "the run ended")
    server = runner_of(folder, int(instance.get_run_by_id(first).tags[WORKER_PID_TAG]))

    module_file = folder / "code" / "launcher_sample_job.py"
    module_file.write_text(module_file.read_text().replace("ran-", "edited-ran-"))
    later = time.time() + 5  # a modification time the old one cannot equal
    os.utime(module_file, (later, later))
    second = launch()
    wait_for(lambda: finished(instance, second), "the run ended")
    pid = int(instance.get_run_by_id(second).tags[WORKER_PID_TAG])
    note = folder / f"edited-ran-{pid}"  # the run ran the edited code
    assert wait_for(note.exists, "the edited run wrote its note")
    assert int(note.read_text()) != server


def test_the_process_start_time_tells_a_live_process_from_a_gone_one():
    assert process_start_ticks(os.getpid()) is not None
    child = os.fork()
    if child == 0:
        os._exit(0)
    wait_for(lambda: process_start_ticks(child) is None, "the exited child reads as gone")
    os.waitpid(child, 0)  # a zombie until now: gone all the same
    assert process_start_ticks(child) is None


@pytest.mark.slow  # it starts a fork server and runs
def test_a_fork_server_stuck_in_its_imports_is_stopped_and_the_run_fails(tmp_path, monkeypatch):
    from dagster import DagsterRunStatus

    config = {"preload_modules": ["launcher_stuck_import"], "answer_timeout_seconds": 2}
    setup = launcher_instance(tmp_path, monkeypatch, config)
    instance, launch, _ = next(setup)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="did not answer within 2 s"):
            launch()
        assert time.monotonic() - started < 30
        # Killed, not left behind.
        stuck = subprocess.run(["pgrep", "-f", "launcher_stuck_import"], capture_output=True)
        assert stuck.stdout == b""
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.FAILURE
    finally:
        setup.close()


@pytest.mark.slow  # it starts a fork server and runs
def test_a_code_change_with_a_run_in_flight_lets_that_run_finish(launcher_setup):
    """The stale server forks no more but lives on until its run ends: its run's process would
    die with it."""
    from dagster import DagsterRunStatus

    instance, launch, folder = launcher_setup
    held, pid, server = launch_held(instance, launch, folder)
    module_file = folder / "code" / "launcher_sample_job.py"
    later = time.time() + 5
    os.utime(module_file, (later, later))
    second = launch()  # held too, until both are let go
    assert runner_of(folder, int(instance.get_run_by_id(second).tags[WORKER_PID_TAG])) != server
    assert process_start_ticks(pid) is not None  # the first run is still going
    (folder / "hold").unlink()
    for run_id in (held.run_id, second):
        assert wait_for(lambda run_id=run_id: finished(instance, run_id), "the run ended").status \
            == DagsterRunStatus.SUCCESS
    wait_for(lambda: process_start_ticks(server) is None, "the stale server exited after its run")


@pytest.mark.slow  # it starts a fork server and runs
def test_a_daemon_that_goes_leaves_its_running_run_to_finish(launcher_setup):
    """The launcher's process going (a daemon restart closes the server's stdin) ends no run:
    the server takes no more launches, reaps the run, then exits."""
    from dagster import DagsterRunStatus

    instance, launch, folder = launcher_setup
    run, pid, server = launch_held(instance, launch, folder)
    instance.run_launcher.dispose()  # as the daemon's instance does when it exits
    time.sleep(1)
    assert process_start_ticks(pid) is not None and process_start_ticks(server) is not None
    (folder / "hold").unlink()
    assert wait_for(lambda: finished(instance, run.run_id), "the run ended").status == (
        DagsterRunStatus.SUCCESS
    )
    wait_for(lambda: process_start_ticks(server) is None, "the server exited after its run")


@pytest.fixture
def bare_launcher(tmp_path):
    """ForkServerRunLauncher on a real SQLite instance, no fork server started: what it
    answers from a run's tags alone."""
    from dagster import instance_for_test

    overrides = {"run_launcher": {"module": "agent_pipeline.engine.run_launcher",
                                  "class": "ForkServerRunLauncher"}}
    with instance_for_test(overrides=overrides, temp_dir=str(tmp_path)) as instance:
        assert isinstance(instance.run_launcher, ForkServerRunLauncher)
        yield instance


def run_tagged(instance, pid: int, start: int | None):
    from dagster._core.test_utils import create_run_for_test

    tags = {WORKER_PID_TAG: str(pid), WORKER_START_TAG: str(start)}
    run = create_run_for_test(instance, job_name="sample_job", tags=tags)
    return run


def test_worker_health_is_read_from_the_pid_and_start_time_of_the_run(bare_launcher):
    from dagster._core.launcher import WorkerStatus

    launcher = bare_launcher.run_launcher
    me = os.getpid()
    alive = run_tagged(bare_launcher, me, process_start_ticks(me))
    assert launcher.check_run_worker_health(alive).status == WorkerStatus.RUNNING
    # The same pid with another start time: the kernel gave the run's pid to another process.
    reused = run_tagged(bare_launcher, me, process_start_ticks(me) - 1)
    health = launcher.check_run_worker_health(reused)
    assert health.status == WorkerStatus.FAILED and f"pid {me}" in health.msg
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = run_tagged(bare_launcher, gone.pid, 1)
    assert launcher.check_run_worker_health(dead).status == WorkerStatus.FAILED


def test_terminating_a_run_whose_process_is_gone_says_so(bare_launcher):
    from dagster import DagsterEventType, DagsterRunStatus

    gone = subprocess.Popen(["true"])
    gone.wait()
    run = run_tagged(bare_launcher, gone.pid, 1)
    assert bare_launcher.run_launcher.terminate(run.run_id) is False
    assert bare_launcher.get_run_by_id(run.run_id).status == DagsterRunStatus.CANCELING
    engine = [e.message for e in bare_launcher.all_logs(
        run.run_id, of_type=DagsterEventType.ENGINE_EVENT)]
    assert engine == ["[ForkServerRunLauncher] The run's process is gone: nothing to terminate."]


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


@pytest.mark.slow  # make dev's stack
def test_the_fork_server_killed_under_make_dev_fails_its_run_and_the_next_launch_works(
    tmp_path, monkeypatch
):
    """Run monitoring (every 30 s in dagster.yaml) fails the run whose fork server was killed,
    the run-failure sensor its row; the run's process is gone at once, so the window's next
    run is its only process."""
    from agent_pipeline_tests.helpers import (
        RUN_SECONDS,
        agent_rows,
        hanging_window,
        rerun_succeeds_after,
        run_worker_pid,
    )
    from agent_pipeline_tests.topology import (
        ENGINE_PARTS_VARIABLE,
        launch_window,
        local_dev,
        run_status,
    )
    from agent_pipeline_tests.topology import wait_for as wait_for_stack

    monkeypatch.setenv(ENGINE_PARTS_VARIABLE, "ours")  # the fork server is what is tested
    flag, window, settings = hanging_window(tmp_path)
    with local_dev(tmp_path, settings) as dev:
        port = dev.web_port
        run_id = launch_window(port, window)
        pid = wait_for_stack(lambda: run_worker_pid(port, run_id), "the run did not start",
                             RUN_SECONDS, dev.processes)
        os.kill(parent_of(pid), signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: process_start_ticks(pid) is None, "the run's process died with it", 10)

        def row_failed():
            rows = [r for r in agent_rows(tmp_path) if r["dagster_run_id"] == run_id]
            return rows and rows[0]["status"] == "failed" and rows[0]

        row = wait_for_stack(row_failed, "the row was not failed", 150, dev.processes)
        seconds = time.monotonic() - killed_at
        print(f"run and row failed {seconds:.1f} s after the fork server's kill")
        assert run_status(port, run_id) == "FAILURE"
        assert seconds < 120 and row["completed_at"] is not None

        rerun_succeeds_after(dev, flag, window, run_id)
