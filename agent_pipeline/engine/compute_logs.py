"""A run's stdout and stderr, kept for the UI's stdout and stderr tabs without starting a
process (both instance files name it).

Dagster's LocalComputeLogManager points the run's stdout and stderr at files and, so that the
output still reaches the terminal or the container's log, starts `tail -F` on each file and a
Python process that watches each tail for orphaning: four processes for every run, about
60 ms of a short run and two interpreters' start on a machine of two cores (and tail, polling
once a second, may miss a run's last lines: dagster-io/dagster#23336). TeeComputeLogManager
writes the same files in the same places: each stream's descriptor points at a pipe, a thread
copies what comes through to the file, and a second one passes it on to where the descriptor
pointed before. Output below Python (a C library's, a child process') is copied as well.

As with Dagster's, the file never waits for the terminal: a reader of the process' output that
stalls or goes away costs the terminal its copy (up to QUEUED_CHUNKS chunks wait for it),
never the file, and never blocks the run. A process the run started that outlives it keeps the
pipe open: the capture waits DRAIN_SECONDS for it (both streams together), then lets the
copying go on for as long as the run's process lives."""

from __future__ import annotations

import os
import queue
import select
import sys
import threading
import time
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)
from dagster._utils import ensure_file, touch_file

DRAIN_SECONDS = 5.0
CHUNK_BYTES = 64 * 1024
QUEUED_CHUNKS = 256
_END = b""


def _copy_to_file(read_end: int, path: str, to_terminal: queue.Queue[bytes]) -> None:
    """Until every writer has closed the pipe: each chunk to the file, then offered to the
    terminal's thread (dropped when it is QUEUED_CHUNKS behind). The pipe is drained whatever
    fails, or the run would block on a full pipe: a failing file (a full disk) is given up."""
    file: IO[bytes] | None
    try:
        file = open(path, "ab")
    except OSError:
        file = None
    try:
        while chunk := os.read(read_end, CHUNK_BYTES):
            if file is not None:
                try:
                    file.write(chunk)
                    file.flush()
                except OSError:
                    file.close()
                    file = None
            try:
                to_terminal.put_nowait(chunk)
            except queue.Full:
                pass
    finally:
        if file is not None:
            file.close()
        os.close(read_end)
        try:
            to_terminal.put_nowait(_END)
        except queue.Full:
            pass  # the terminal's thread is stuck: it is a daemon thread, left behind


def _copy_to_terminal(terminal: int, chunks: queue.Queue[bytes]) -> None:
    """Each chunk to the descriptor the stream had before the capture, waiting while it is
    full; a terminal gone for good (a closed pipe) is given up, the queue still emptied."""
    writable = True
    try:
        while (chunk := chunks.get()) != _END:
            while chunk and writable:
                try:
                    chunk = chunk[os.write(terminal, chunk):]
                except BlockingIOError:
                    select.select([], [terminal], [], 1.0)
                except OSError:
                    writable = False
    finally:
        os.close(terminal)


class _Tee:
    """One stream's capture: its descriptor pointed at a pipe, the two copying threads."""

    def __init__(self, stream: Any, path: str):
        self.stream, self.path = stream, path
        self.fd: int | None = None
        self.original = -1
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        ensure_file(self.path)  # an empty capture is an empty file, as Dagster's
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return  # a stream with no descriptor (a test runner's): nothing to capture
        self.stream.flush()
        read_end, write_end = os.pipe()
        try:
            self.original = os.dup(fd)
            terminal = os.dup(self.original)
        except OSError:
            for end in (read_end, write_end, self.original):
                if end >= 0:
                    os.close(end)
            self.original = -1
            raise
        os.dup2(write_end, fd)
        os.close(write_end)
        self.fd = fd
        chunks: queue.Queue[bytes] = queue.Queue(QUEUED_CHUNKS)
        # Each thread closes its descriptor when it ends.
        self.threads = [
            threading.Thread(target=_copy_to_file, args=(read_end, self.path, chunks),
                             name=f"tee to {self.path}", daemon=True),
            threading.Thread(target=_copy_to_terminal, args=(terminal, chunks),
                             name=f"tee of {self.path} to the terminal", daemon=True),
        ]
        try:
            for thread in self.threads:
                thread.start()
        except BaseException:
            self.restore()
            for thread, descriptor in zip(self.threads, (read_end, terminal), strict=True):
                if thread.ident is None:  # never started: its descriptor is still ours
                    os.close(descriptor)
            raise

    def restore(self) -> None:
        """The descriptor back where it was: the pipe loses its writer, the copy its input."""
        if self.fd is None:
            return
        try:
            self.stream.flush()
        finally:
            os.dup2(self.original, self.fd)
            os.close(self.original)
            self.fd = None

    def wait(self, deadline: float) -> None:
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class TeeComputeLogManager(LocalComputeLogManager):
    """LocalComputeLogManager (same config, same files) whose capture is two threads a
    stream, not two processes."""

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        tees = [
            _Tee(sys.stdout, self.get_captured_local_path(
                log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])),
            _Tee(sys.stderr, self.get_captured_local_path(
                log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])),
        ]
        started: list[_Tee] = []
        try:
            for tee in tees:
                tee.start()
                started.append(tee)
            yield CapturedLogContext(log_key)
        finally:
            for tee in reversed(started):
                tee.restore()
            deadline = time.monotonic() + DRAIN_SECONDS
            for tee in started:
                tee.wait(deadline)
        # As LocalComputeLogManager: the marker that the capture is complete.
        touch_file(self.complete_artifact_path(log_key))
