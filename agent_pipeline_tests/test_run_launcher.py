"""ForkServerRunLauncher on a real Dagster instance (SQLite, in a temporary folder): runs
forked from a real fork server, killed, terminated, and a code change picked up. The daemon's
side of it (queue, run monitoring) runs in the local-deployment and production-topology tests,
where the launcher is the one the instance files name."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_pipeline.engine.run_launcher import WORKER_PID_TAG, process_start_ticks

pytestmark = pytest.mark.slow  # they start run processes

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
    from dagster import DagsterInstance, reconstructable
    from dagster._core.test_utils import instance_for_test

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


def test_with_the_fork_server_gone_run_monitoring_still_finds_a_dead_run(launcher_setup):
    from dagster._core.launcher import WorkerStatus

    instance, launch, folder = launcher_setup
    run, pid, server = launch_held(instance, launch, folder)
    run_id = run.run_id
    os.kill(server, signal.SIGKILL)  # nobody left to report the run's death
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: process_start_ticks(pid) is None, "the run's process is gone")
    health = instance.run_launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.FAILED and str(pid) in health.msg
    assert not instance.get_run_by_id(run_id).is_finished  # left to run monitoring to end

    # The launcher starts a new server for the next run.
    (folder / "hold").unlink()
    after = launch()
    wait_for(lambda: finished(instance, after), "the next run ended")
    assert runner_of(folder, int(instance.get_run_by_id(after).tags[WORKER_PID_TAG])) != server


def test_terminate_cancels_the_run(launcher_setup):
    from dagster import DagsterRunStatus

    instance, launch, folder = launcher_setup
    run_id = launch_held(instance, launch, folder)[0].run_id
    assert instance.run_launcher.terminate(run_id)
    run = wait_for(lambda: finished(instance, run_id), "the terminated run ended", 30)
    assert run.status == DagsterRunStatus.CANCELED


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
