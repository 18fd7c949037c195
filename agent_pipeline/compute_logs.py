"""A run's stdout and stderr, kept for the UI's stdout and stderr tabs without starting a
process (both instance files name it).

Dagster's LocalComputeLogManager points the run's stdout and stderr at files and, so that the
output still reaches the terminal or the container's log, starts `tail -F` on each file and a
Python process that watches each tail for orphaning: four processes for every run, about
60 ms of a short run and two interpreters' start on a machine of two cores (and tail, polling
once a second, may miss a run's last lines: dagster-io/dagster#23336). TeeComputeLogManager
writes the same files in the same places: each stream's descriptor points at a pipe, and a
thread copies what comes through to the file and to where the descriptor pointed before.
Output below Python (a C library's, a child process') is copied as well."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)
from dagster._utils import ensure_file, touch_file

# How long the end of a capture waits for the copy to catch up. Longer only when a process
# started during the run still holds the stream open: its later output keeps being copied.
DRAIN_SECONDS = 5.0
CHUNK_BYTES = 64 * 1024


def _copy(read_end: int, path: str, original: int) -> None:
    """Until every writer has closed the pipe: each chunk to the file and to the original
    descriptor; then both descriptors are closed. The pipe is drained whatever fails, or the
    run would block on a full pipe: a failing file (a full disk) or a vanished terminal is
    only given up on."""
    file: IO[bytes] | None
    try:
        file = open(path, "ab")
    except OSError:
        file = None
    mirror = True
    try:
        while chunk := os.read(read_end, CHUNK_BYTES):
            if file is not None:
                try:
                    file.write(chunk)
                    file.flush()
                except OSError:
                    file = None
            while chunk and mirror:
                try:
                    chunk = chunk[os.write(original, chunk):]
                except OSError:
                    mirror = False
    finally:
        if file is not None:
            file.close()
        os.close(read_end)
        os.close(original)


@contextmanager
def tee_to_file(stream: Any, path: str) -> Generator[None, None, None]:
    """While inside: what the process writes to stream's descriptor also goes to path."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None  # a stream with no descriptor (a test runner's): nothing to capture
    if fd is None:
        yield
        return
    ensure_file(path)
    stream.flush()
    original = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    copier = threading.Thread(
        target=_copy, args=(read_end, path, original), name=f"tee {path}", daemon=True
    )
    copier.start()
    try:
        yield
    finally:
        stream.flush()
        # The descriptor back where it was: the pipe loses its writer, the copier its input.
        os.dup2(original, fd)
        copier.join(DRAIN_SECONDS)


class TeeComputeLogManager(LocalComputeLogManager):
    """LocalComputeLogManager (same config, same files) whose capture is a thread, not four
    processes."""

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        stdout_path = self.get_captured_local_path(
            log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT]
        )
        stderr_path = self.get_captured_local_path(
            log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR]
        )
        with tee_to_file(sys.stdout, stdout_path), tee_to_file(sys.stderr, stderr_path):
            yield CapturedLogContext(log_key)
        # As LocalComputeLogManager: the marker that the capture is complete.
        touch_file(self.complete_artifact_path(log_key))
