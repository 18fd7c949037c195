"""TeeComputeLogManager: a run's stdout and stderr go to the files the UI's stdout and stderr
tabs read and, as before, to the process's own output; copied by a thread, with no process
started, and drained whatever the output's reader does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from agent_pipeline.compute_logs import TeeComputeLogManager

LOG_KEY = ["run-1", "compute_logs", "abcdefgh"]

# A process capturing its own output as a run's process does; it reports the processes it
# had started while capturing (none but the one its code asked for) in argv[2]; argv[3] lines
# of bulk output; argv[4] the log key.
CAPTURING_PROCESS = textwrap.dedent("""
    import os, subprocess, sys
    from agent_pipeline.compute_logs import TeeComputeLogManager

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
