"""TeeComputeLogManager: a run's stdout and stderr go to the files the UI's stdout and stderr
tabs read, written there by the kernel (a SIGKILL loses nothing, a full disk fails the writer),
and, as before, to the process's own output, copied by a thread, with no process started,
whatever the output's reader does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent_pipeline.engine.compute_logs import DRAIN_SECONDS, TeeComputeLogManager

LOG_KEY = ["run-1", "compute_logs", "abcdefgh"]

# A process capturing its own output as a run's process does; it reports the processes it
# had started while capturing (none but the one its code asked for) in argv[2]; argv[3] lines
# of bulk output; argv[4] the log key.
CAPTURING_PROCESS = textwrap.dedent("""
    import os, subprocess, sys
    from agent_pipeline.engine.compute_logs import TeeComputeLogManager

    def children():
        found = []
        for stat in os.listdir("/proc"):
            if stat.isdigit():
                try:
                    fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == os.getpid():
                    found.append(stat)
        return found

    manager = TeeComputeLogManager(base_dir=sys.argv[1])
    with manager.capture_logs(sys.argv[4].split("/")):
        print("python line", flush=True)
        os.write(1, b"descriptor line\\n")
        subprocess.run(["echo", "child line"], check=True)
        print("error line", file=sys.stderr, flush=True)
        lines = int(sys.argv[3])
        for n in range(lines):
            print(f"bulk line {n:07d}")
        open(sys.argv[2], "w").write(str(len(children())))
    if lines == 0:
        print("after the capture", flush=True)
""")


def captured(base_dir: Path, extension: str) -> str:
    manager = TeeComputeLogManager(base_dir=str(base_dir))
    return Path(manager.get_captured_local_path(LOG_KEY, extension)).read_text()


def run_capturing_process(tmp_path: Path, bulk_lines: int, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CAPTURING_PROCESS, str(tmp_path / "logs"),
         str(tmp_path / "children"), str(bulk_lines), "/".join(LOG_KEY)],
        **options,
    )


def test_the_output_goes_to_the_files_and_to_the_process_output(tmp_path):
    process = run_capturing_process(tmp_path, 0, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert stdout == "python line\ndescriptor line\nchild line\nafter the capture\n"
    assert stderr == "error line\n"
    assert captured(tmp_path / "logs", "out") == "python line\ndescriptor line\nchild line\n"
    assert captured(tmp_path / "logs", "err") == "error line\n"
    assert TeeComputeLogManager(base_dir=str(tmp_path / "logs")).is_capture_complete(LOG_KEY)
    assert (tmp_path / "children").read_text() == "0"  # no tail, no watcher process


def test_output_past_a_pipes_buffer_is_copied_whole(tmp_path):
    process = run_capturing_process(tmp_path, 100_000, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    in_file = captured(tmp_path / "logs", "out").splitlines()
    assert len(in_file) == 3 + 100_000 and in_file[-1] == "bulk line 0099999"
    assert stdout.splitlines() == in_file


def test_a_vanished_reader_of_the_output_loses_nothing_in_the_file(tmp_path):
    """The terminal or log collector reading the process' output goes away: the file still
    gets every line, and the run does not block on a full pipe."""
    process = run_capturing_process(tmp_path, 100_000, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
    process.stdout.close()  # nobody reads the process' output any more
    process.wait(timeout=120)
    in_file = captured(tmp_path / "logs", "out").splitlines()
    assert len(in_file) == 3 + 100_000 and in_file[-1] == "bulk line 0099999"


# Over two seconds: the capture waits out its drain deadline.
@pytest.mark.slow
def test_a_stalled_reader_of_the_output_does_not_block_the_run(tmp_path):
    """The terminal's reader stops reading without going away: the run still ends, and the
    file has every line (the terminal's copy waits, then is dropped)."""
    process = run_capturing_process(tmp_path, 100_000, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
    try:
        assert process.wait(timeout=60) == 0  # nobody reads process.stdout meanwhile
    finally:
        process.stdout.close()
    in_file = captured(tmp_path / "logs", "out").splitlines()
    assert len(in_file) == 3 + 100_000 and in_file[-1] == "bulk line 0099999"


OVERLAPPING_CAPTURES = textwrap.dedent("""
    import os, sys, time
    from agent_pipeline.engine.compute_logs import TeeComputeLogManager

    manager = TeeComputeLogManager(base_dir=sys.argv[1])
    first, second = manager.capture_logs(["first"]), manager.capture_logs(["second"])
    first.__enter__()
    print("while the first", flush=True)
    second.__enter__()
    print("while both", flush=True)
    first.__exit__(None, None, None)  # the first ends first, as a thread's run might
    print("while the second", flush=True)
    second.__exit__(None, None, None)
    # Files opened now get any descriptor number a capture freed too early.
    opened = [open(os.path.join(sys.argv[1], f"opened-{n}"), "w") for n in range(5)]
    print("after both", flush=True)
    for file in opened:
        file.close()
""")


def test_captures_that_end_out_of_order_keep_the_output_flowing(tmp_path):
    """The second capture took over a descriptor the first had pointed at its pipe; the
    first ends first, and hands the second what the descriptor pointed at before it (where
    Dagster's own capture would give the descriptor back to the first's file). The output
    after both reaches the process' output, and never a file opened meanwhile (as when a
    capture closed the descriptor it restores from and the number was reused)."""
    process = subprocess.run(
        [sys.executable, "-c", OVERLAPPING_CAPTURES, str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=60,
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.splitlines() == [
        "while the first", "while both", "while the second", "after both"]
    assert all(path.read_text() == "" for path in (tmp_path / "logs").glob("opened-*"))
    manager = TeeComputeLogManager(base_dir=str(tmp_path / "logs"))
    assert Path(manager.get_captured_local_path(["first"], "out")).read_text().startswith(
        "while the first\n")
    # The second's follower copied it into the first's file or, once the first had ended,
    # to the terminal.
    assert "while both" in Path(manager.get_captured_local_path(["second"], "out")).read_text()


def test_a_process_the_run_started_that_outlives_it_does_not_hold_the_run(tmp_path):
    """It keeps the run's stdout open and writes to it after the run: the run ends at once,
    and the later line still reaches the file, written by the kernel, as with Dagster's."""
    script = textwrap.dedent("""
        import subprocess, sys, time
        from agent_pipeline.engine.compute_logs import TeeComputeLogManager
        with TeeComputeLogManager(base_dir=sys.argv[1]).capture_logs(["run"]):
            subprocess.Popen(["sh", "-c", "sleep 0.5; echo the late line; sleep 120"])
            print("the run's line", flush=True)
            started = time.monotonic()
        print(time.monotonic() - started, file=sys.stderr)
    """)
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "logs")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert float(stderr) < DRAIN_SECONDS / 5  # the capture did not wait for the process
    manager = TeeComputeLogManager(base_dir=str(tmp_path / "logs"))
    assert manager.is_capture_complete(["run"])
    path = Path(manager.get_captured_local_path(["run"], "out"))
    give_up = time.monotonic() + 30
    while "the late line" not in path.read_text() and time.monotonic() < give_up:
        time.sleep(0.05)
    assert path.read_text() == "the run's line\nthe late line\n"


# A run under the capture that prints numbered lines to stdout and stderr, each written to the
# descriptor before the next (as a program flushing its lines does), and tells argv[4] (a pipe)
# when it has written line argv[3]; the test kills it then, in the middle of its burst.
BURST_UNDER_CAPTURE = textwrap.dedent("""
    import importlib, os, sys
    module, name = sys.argv[1].rsplit(".", 1)
    manager = getattr(importlib.import_module(module), name)(base_dir=sys.argv[2])
    report_at, report = int(sys.argv[3]), int(sys.argv[4])
    with manager.capture_logs(["run", "burst"]):
        for n in range(1, 20_001):
            print(f"line {n:05d}", flush=True)
            print(f"line {n:05d}", file=sys.stderr, flush=True)
            if n == report_at:
                os.write(report, b"%d\\n" % n)
""")


# Ours, and Dagster's as deploy/stock-parts.yaml names it.
MANAGERS = {
    "tee": "agent_pipeline.engine.compute_logs.TeeComputeLogManager",
    "stock": "dagster._core.storage.local_compute_log_manager.LocalComputeLogManager",
}


# Over two seconds, and Dagster's manager starts its tail and watcher processes.
@pytest.mark.slow
@pytest.mark.parametrize("manager", MANAGERS)
def test_a_run_killed_mid_burst_keeps_every_line_it_wrote(tmp_path, manager):
    """SIGKILL at line 5,000 of 20,000: every line written by then is in both files, with our
    manager as with Dagster's (the kernel wrote them there; nothing was in flight in the
    killed process)."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-c", BURST_UNDER_CAPTURE, MANAGERS[manager],
         str(tmp_path / "logs"), "5000", str(write_end)],
        pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    try:
        with os.fdopen(read_end) as reports:
            last = int(reports.readline())
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    manager = TeeComputeLogManager(base_dir=str(tmp_path / "logs"))  # the same files
    for extension in ("out", "err"):
        lines = Path(manager.get_captured_local_path(["run", "burst"], extension)).read_text(
        ).splitlines()
        assert lines[:last] == [f"line {n:05d}" for n in range(1, last + 1)], extension
        assert not manager.is_capture_complete(["run", "burst"])


@pytest.fixture
def full_disk(tmp_path):
    """A tmpfs of 16 KiB, mounted for the test (root only)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


WRITES_TO_A_FULL_DISK = textwrap.dedent("""
    import errno, json, os, sys
    from agent_pipeline.engine.compute_logs import TeeComputeLogManager

    def error_of(write):
        try:
            write()
        except OSError as exc:
            return errno.errorcode[exc.errno]
        return None

    manager = TeeComputeLogManager(base_dir=sys.argv[1])
    seen = {}
    capture = manager.capture_logs(["run", "unflushed"])
    capture.__enter__()
    print("a line left in Python's buffer")
    seen["end of the capture"] = error_of(lambda: capture.__exit__(None, None, None))
    seen["complete"] = manager.is_capture_complete(["run", "unflushed"])
    sys.stdout.flush()  # the capture has ended: the line goes to the process' output
    capture = manager.capture_logs(["run", "full"])
    capture.__enter__()
    seen["print"] = error_of(lambda: print("a line", flush=True))
    seen["descriptor"] = error_of(lambda: os.write(2, b"a line\\n"))
    error_of(lambda: capture.__exit__(None, None, None))  # the print's line is still buffered
    print(json.dumps(seen), file=sys.stderr)
""")


def test_a_write_to_a_full_disk_fails_in_the_writer(tmp_path, full_disk):
    """The disk of the capture files is full: a print, an os.write and the flush at the end
    of the capture each raise ENOSPC, rather than losing the output silently; a capture whose
    end failed is not marked complete."""
    logs = full_disk / "logs"
    logs.mkdir()
    with open(full_disk / "filler", "wb", buffering=0) as filler, pytest.raises(
            OSError, match="No space left"):
        while True:
            filler.write(bytes(4096))
    buffered = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    process = subprocess.run([sys.executable, "-c", WRITES_TO_A_FULL_DISK, str(logs)],
                             capture_output=True, text=True, timeout=60, env=buffered)
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stderr.splitlines()[-1]) == {
        "end of the capture": "ENOSPC", "complete": False, "print": "ENOSPC",
        "descriptor": "ENOSPC"}
    # Python keeps what it could not write: it reaches the process' output once restored.
    assert process.stdout == "a line left in Python's buffer\na line\n"


OP_ON_A_FULL_DISK = textwrap.dedent("""
    import json, sys
    from dagster import DagsterInstance, job, op

    @op
    def chatty():
        print(("x" * 99 + "\\n") * 2000, flush=True)  # more than the disk holds

    @job
    def chatty_job():
        chatty()

    compute_logs = {"module": "agent_pipeline.engine.compute_logs",
                    "class": "TeeComputeLogManager", "config": {"base_dir": sys.argv[2]}}
    with DagsterInstance.local_temp(sys.argv[1], overrides={"compute_logs": compute_logs}) as (
            instance):
        result = chatty_job.execute_in_process(instance=instance, raise_on_error=False)
        failures = [entry.dagster_event.step_failure_data.error.to_string()
                    for entry in instance.all_logs(result.run_id)
                    if entry.dagster_event and entry.dagster_event.event_type_value
                    == "STEP_FAILURE"]
        with open(sys.argv[3], "w") as outcome:
            json.dump({"success": result.success, "failures": failures}, outcome)
""")


# Runs a Dagster job.
@pytest.mark.slow
def test_an_op_whose_output_fills_the_disk_fails_in_the_runs_event_log(tmp_path, full_disk):
    """An op's print on a disk that fills up raises ENOSPC in the op: the run fails, and its
    event log says why."""
    home = tmp_path / "home"
    home.mkdir()
    process = subprocess.run(
        [sys.executable, "-c", OP_ON_A_FULL_DISK, str(home), str(full_disk / "compute_logs"),
         str(tmp_path / "outcome.json")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert outcome["success"] is False
    assert len(outcome["failures"]) == 1
    assert "No space left on device" in outcome["failures"][0]
