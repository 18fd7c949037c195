"""The real services the tests talk to: the running ones when they answer, else throwaway
ones started from the installed binaries, else a clear stop naming what is missing."""

from __future__ import annotations

import os
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import redis


class ServiceMissing(Exception):
    """A service the tests need is neither running nor startable here."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the service is still starting
            last_error = exc
        time.sleep(0.2)
    raise ServiceMissing(f"{what} did not come up within {timeout:.0f}s: {last_error}")


def postgres_answers(dsn: str) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
    except psycopg2.OperationalError:
        return False
    return True


# The data folder of each throwaway PostgreSQL server by its URL, for restart_postgres.
_THROWAWAY_POSTGRES: dict[str, Path] = {}


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL server in a temporary folder; yields the DSN of its `postgres` db."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        raise ServiceMissing(
            "PostgreSQL is not running on 127.0.0.1:5432 and initdb/pg_ctl are not on PATH; "
            "start PostgreSQL or set TEST_POSTGRES_URL"
        )
    # PostgreSQL refuses to run as root: run it as the `postgres` system user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="agent-pipeline-pg-"))
    if as_user:
        shutil.chown(data, "postgres")
    port = free_port()
    run = dict(check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    subprocess.run(
        [*as_user, initdb, "-D", str(data / "db"), "-U", "postgres", "-A", "trust"], **run
    )
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data / "db"), "-l", str(data / "log"), "-w", "start",
         "-o", f"-p {port} -k {data} -h 127.0.0.1"],
        **run,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    _THROWAWAY_POSTGRES[url] = data
    try:
        yield url
    finally:
        _THROWAWAY_POSTGRES.pop(url, None)
        subprocess.run([*as_user, pg_ctl, "-D", str(data / "db"), "-m", "immediate", "stop"],
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(data, ignore_errors=True)


def restart_postgres(url: str, wait: bool = True) -> subprocess.Popen | None:
    """Restart the throwaway PostgreSQL server at url (never a server this did not start) as
    an operator would: `pg_ctl restart -m fast`, which ends every session at once. wait:
    return once it takes connections again, else at once with the pg_ctl process."""
    data = _THROWAWAY_POSTGRES[make_url_base(url)]
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    command = [*as_user, shutil.which("pg_ctl") or "pg_ctl", "-D", str(data / "db"),
               "-l", str(data / "log"), "-m", "fast", "restart"]
    if wait:
        subprocess.run([*command, "-w"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
        return None
    return subprocess.Popen([*command, "-w"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def make_url_base(url: str) -> str:
    """url with the database name of throwaway_postgres' URL (tests use other databases)."""
    return url.rsplit("/", 1)[0] + "/postgres"


def serving_thread(server: socketserver.BaseServer) -> threading.Thread:
    """A daemon thread to run server.serve_forever in. It looks at its stop flag every 50 ms:
    shutdown() waits for that look, 0.5 s by default, paid by every test that stops a server."""
    return threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


@contextmanager
def throwaway_redis(*options: str) -> Iterator[str]:
    """A redis-server on a free port, keeping nothing on disk, with any further options
    (e.g. "--maxmemory", "2mb"); yields its URL."""
    binary = shutil.which("redis-server")
    if not binary:
        raise ServiceMissing(
            "Redis is not running on 127.0.0.1:6379 and redis-server is not on PATH; "
            "start Redis or set TEST_REDIS_URL"
        )
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_until(lambda: redis_answers(url), "throwaway redis-server")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


class TcpProxy:
    """Forwards 127.0.0.1:listen_port to 127.0.0.1:target_port until closed: a service that
    "comes back" on a port where nothing answered before, or, armed with cut_after, a
    connection dropped between a statement reaching the server and its answer coming back."""

    def __init__(self, listen_port: int, target_port: int):
        self.target_port = target_port
        self._server = socket.create_server(("127.0.0.1", listen_port), reuse_port=False)
        self._closed = threading.Event()
        self._cut_marker: bytes | None = None
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, marker: bytes) -> threading.Event:
        """The next client message holding marker reaches the server; then its connection is
        cut before the server's answer gets back. The event returned is set once the message
        is on its way to the server, with no way back for the answer."""
        self.cut = threading.Event()
        self._cut_marker = marker
        return self.cut

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            answers_dropped = threading.Event()
            threading.Thread(target=self._to_server, args=(client, upstream, answers_dropped),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, answers_dropped),
                             daemon=True).start()

    def _to_server(self, client: socket.socket, upstream: socket.socket,
                   answers_dropped: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                marker = self._cut_marker
                if marker is not None and marker in data:
                    self._cut_marker = None
                    answers_dropped.set()  # before the server can answer
                    upstream.sendall(data)
                    self.cut.set()
                    time.sleep(0.2)  # the server acts on it
                    break
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._shut(client, upstream)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket,
              answers_dropped: threading.Event) -> None:
        try:
            while (data := source.recv(65536)) and not answers_dropped.is_set():
                sink.sendall(data)
        except OSError:
            pass
        finally:
            TcpProxy._shut(source, sink)

    @staticmethod
    def _shut(*ends: socket.socket) -> None:
        for end in ends:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop listening: new connections are refused (existing ones go on)."""
        self._closed.set()
        try:
            # Wakes the thread blocked in accept(); close() alone leaves it accepting.
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
