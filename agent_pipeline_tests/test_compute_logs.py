"""TeeComputeLogManager: a run's stdout and stderr go to the files the UI's stdout and stderr
tabs read and, as before, to the process's own output; copied by a thread, with no process
started, and drained whatever the output's reader does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent_pipeline.engine.compute_logs import TeeComputeLogManager

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
    time.sleep(0.5)  # the first's copying threads, still running, pass the line on
""")


# Over two seconds: the capture waits out its drain deadline.
@pytest.mark.slow
def test_captures_that_end_out_of_order_keep_the_output_flowing(tmp_path):
    """The second capture took over a descriptor the first had pointed at its pipe; the
    first ends first, so the second gives the descriptor back to the first's pipe, as
    Dagster's own capture would to the first's file. The output after both still reaches
    the process' output through the first's threads, and never a file opened meanwhile (as
    when a capture's thread closed the descriptor it restores from and the number was
    reused)."""
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
    # The second saw what went to the descriptor it took over: the first's pipe, then the
    # terminal's copy of it once the first had given the descriptor back.
    assert "while both" in Path(manager.get_captured_local_path(["second"], "out")).read_text()


# Over two seconds: the capture waits out its drain deadline.
@pytest.mark.slow
def test_a_process_the_run_started_that_outlives_it_does_not_hold_the_run(tmp_path):
    script = textwrap.dedent("""
        import subprocess, sys
        from agent_pipeline.engine.compute_logs import TeeComputeLogManager
        with TeeComputeLogManager(base_dir=sys.argv[1]).capture_logs(["run"]):
            subprocess.Popen(["sleep", "120"])  # keeps the run's stdout and stderr open
            print("the run's line", flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "logs")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert process.wait(timeout=60) == 0
    manager = TeeComputeLogManager(base_dir=str(tmp_path / "logs"))
    assert Path(manager.get_captured_local_path(["run"], "out")).read_text() == (
        "the run's line\n")
    assert manager.is_capture_complete(["run"])
