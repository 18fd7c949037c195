"""A run's stdout and stderr, kept for the UI's stdout and stderr tabs without starting a
process (both instance files name it).

Dagster's LocalComputeLogManager points the run's stdout and stderr at files and, so that the
output still reaches the terminal or the container's log, starts `tail -F` on each file and a
Python process that watches each tail for orphaning: four processes for every run, about
60 ms of a short run and two interpreters' start on a machine of two cores (and tail, polling
once a second, may miss a run's last lines: dagster-io/dagster#23336). TeeComputeLogManager
writes the same files in the same places the same way: each stream's descriptor points
straight at its file, opened for append, so the kernel puts every byte in the file as it is
written, whatever happens to the run's process after (a SIGKILL loses nothing it had written),
and a write that fails (a full disk) fails in the writer, as with Dagster's: the op's print
raises and Dagster records the failure in the run's event log. Output below Python (a C
library's, a child process') goes to the file the same way. What replaces tail is one thread a
stream that follows the file from where the capture started and copies what is added to where
the descriptor pointed before.

As with Dagster's, the file never waits for the terminal: a reader of the process' output that
stalls or goes away costs the terminal its copy, never the file, and never blocks the run. At
the end of the capture the threads copy what the file held when the descriptors were given
back, for at most DRAIN_SECONDS (both streams together), then stop. A process the run started
that outlives it keeps writing to the file (the kernel's doing, as with Dagster's) and holds
nothing: what it writes after the capture ended is not copied to the terminal."""

from __future__ import annotations

import os
import select
import stat
import sys
import threading
import time
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from typing import Any

from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)
from dagster._utils import ensure_file, touch_file

DRAIN_SECONDS = 5.0
CHUNK_BYTES = 64 * 1024
# How soon a line reaches the terminal: the wait after finding nothing new doubles from the
# first to the second, so an idle capture costs a wake-up a tenth of a second.
FOLLOW_SECONDS = (0.01, 0.1)
# A poll for a writable terminal that does not come back after this long looks again whether
# the copy has been given up.
TERMINAL_POLL_MS = 200

# Each descriptor's captures of this process, oldest first, for a capture that ends before one
# started after it (see _Tee.restore).
_captures: dict[int, list[_Tee]] = {}
_captures_lock = threading.Lock()


class _Follower:
    """Copies what is added to the file after `offset` to `terminal`, until stopped.

    Owns its two descriptors and closes them when it ends. `lock` is held while it reads or
    writes, so that a capture that ends out of order can re-point `terminal` between two
    copies (os.dup2 onto it) and order its own last copies before this one's next."""

    def __init__(self, reader: int, offset: int, terminal: int):
        self.reader, self.offset, self.terminal = reader, offset, terminal
        # A pipe takes a write of PIPE_BUF bytes without blocking once poll calls it writable;
        # so a terminal that stalls holds this thread for one poll, not for good.
        mode = os.fstat(terminal).st_mode
        self.step = CHUNK_BYTES if stat.S_ISREG(mode) else select.PIPE_BUF
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.stop_at: int | None = None
        self.wake = threading.Event()
        self.given_up = threading.Event()
        self.thread = threading.Thread(target=self.run, name="compute log to the terminal",
                                       daemon=True)

    def run(self) -> None:
        try:
            delay = FOLLOW_SECONDS[0]
            while not self.given_up.is_set():
                if self.stopping.is_set() and self.stop_at is None:
                    # The capture's descriptors are given back by now: the file holds all the
                    # run wrote to it.
                    self.stop_at = os.fstat(self.reader).st_size
                stop_at = self.stop_at
                with self.lock:
                    limit = CHUNK_BYTES if stop_at is None else min(CHUNK_BYTES,
                                                                    stop_at - self.offset)
                    chunk = os.pread(self.reader, limit, self.offset) if limit > 0 else b""
                    if chunk:
                        self.offset += len(chunk)
                        if not self.to_terminal(chunk):
                            return
                        delay = FOLLOW_SECONDS[0]
                        continue
                if stop_at is not None:
                    return  # all of it copied (or the file cut short by someone else)
                self.wake.wait(delay)
                delay = min(2 * delay, FOLLOW_SECONDS[1])
        finally:
            with self.lock:
                os.close(self.reader)
                os.close(self.terminal)
                self.terminal = -1

    def to_terminal(self, chunk: bytes) -> bool:
        """The chunk to the terminal; False when the terminal is gone or the copy given up."""
        poller = select.poll()
        poller.register(self.terminal, select.POLLOUT)
        view = memoryview(chunk)
        while view:
            if self.given_up.is_set():
                return False
            try:
                if poller.poll(TERMINAL_POLL_MS):
                    view = view[os.write(self.terminal, view[:self.step]):]
            except BlockingIOError:
                pass  # a terminal left non-blocking by its owner: poll again
            except OSError:
                return False  # the reader went away (EPIPE) or the descriptor broke
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def give_up(self) -> None:
        self.given_up.set()
        self.wake.set()


class _Tee:
    """One stream's capture: its descriptor pointed at the file, a follower to the terminal."""

    def __init__(self, stream: Any, path: str):
        self.stream, self.path = stream, path
        self.fd: int | None = None
        self.original = -1
        self.follower: _Follower | None = None

    def start(self) -> None:
        ensure_file(self.path)  # an empty capture is an empty file, as Dagster's
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return  # a stream with no descriptor (a test runner's): nothing to capture
        self.stream.flush()
        opened: list[int] = []
        try:
            file = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o666)
            opened.append(file)
            reader = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            opened.append(reader)
            self.original = os.dup(fd)
            opened.append(self.original)
            terminal = os.dup(self.original)
            opened.append(terminal)
            info = os.fstat(reader)
            # Only a regular file can be followed: a device (/dev/null, /dev/full) reads as
            # nothing or as zeros for ever.
            follower = (_Follower(reader, info.st_size, terminal)
                        if stat.S_ISREG(info.st_mode) else None)
        except BaseException:
            for descriptor in opened:
                os.close(descriptor)
            self.original = -1
            raise
        if follower is None:
            os.close(reader)
            os.close(terminal)
        with _captures_lock:
            os.dup2(file, fd)
            self.fd = fd
            _captures.setdefault(fd, []).append(self)
        os.close(file)
        if follower is not None:
            try:
                follower.thread.start()
            except BaseException:
                os.close(follower.reader)
                os.close(follower.terminal)
                self.restore(time.monotonic())
                raise
            self.follower = follower

    def restore(self, deadline: float) -> None:
        """The descriptor back where it was, then what the file held by then copied to the
        terminal, until the deadline.

        A capture started after this one and still going took the descriptor over and will
        give it back to this one's file: it is handed this one's former target instead, for
        the descriptor and for its follower, as if this one had never been (the output after
        both still reaches the terminal, and this file holds only this capture's)."""
        if self.fd is None:
            return
        try:
            self.stream.flush()
        finally:
            held: threading.Lock | None = None
            with _captures_lock:
                captures = _captures[self.fd]
                later = captures[captures.index(self) + 1:]
                captures.remove(self)
                if not captures:
                    del _captures[self.fd]
                if not later:
                    os.dup2(self.original, self.fd)
                else:
                    os.dup2(self.original, later[0].original)
                    held = self.hold_follower(later[0], deadline)
                os.close(self.original)
                self.original, self.fd = -1, None
            try:
                self.stop(deadline)
            finally:
                if held is not None:
                    held.release()

    def hold_follower(self, successor: _Tee, deadline: float) -> threading.Lock | None:
        """The successor's follower, which copied into this capture's file until now, pointed
        at this capture's former target, and held (its lock returned) until this capture's own
        copies are out, so that the terminal gets them in order."""
        follower = successor.follower
        if follower is None or not follower.lock.acquire(
                timeout=max(0.0, deadline - time.monotonic())):
            return None
        if follower.terminal >= 0:  # not closed (and its number perhaps reused) by now
            os.dup2(self.original, follower.terminal)
        return follower.lock

    def stop(self, deadline: float) -> None:
        follower = self.follower
        if follower is None:
            return
        follower.stop()
        follower.thread.join(max(0.0, deadline - time.monotonic()))
        follower.give_up()  # past the deadline: a stalled terminal loses the rest


def _restore(tees: Sequence[_Tee]) -> BaseException | None:
    """Every stream given back, whatever fails; the first failure returned."""
    deadline = time.monotonic() + DRAIN_SECONDS
    error: BaseException | None = None
    for tee in reversed(tees):
        try:
            tee.restore(deadline)
        except BaseException as exc:
            error = error or exc
    return error


class TeeComputeLogManager(LocalComputeLogManager):
    """LocalComputeLogManager (same config, same files) whose copy to the terminal is a thread
    a stream, not two processes."""

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
        except BaseException:
            _restore(started)  # the run's own error is the one to tell
            raise
        # A flush that fails at the end (a full disk) is the writer's error, raised as
        # Dagster's raises it (Dagster records it in the run's event log), and the capture is
        # not marked complete.
        error = _restore(started)
        if error is not None:
            raise error
        # As LocalComputeLogManager: the marker that the capture is complete.
        touch_file(self.complete_artifact_path(log_key))
