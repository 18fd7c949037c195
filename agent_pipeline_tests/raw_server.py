"""A raw TCP server on loopback that plays a misbehaving peer (HTTP, SMTP): a script writes
what it likes to each connection, each in a thread of its own."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class ScriptedServer:
    """script(server, connection) plays each connection; `sent` counts the bytes that got
    out through send() before the client hung up."""

    def __init__(self, script: Callable[[ScriptedServer, socket.socket], None]):
        self.script = script
        self.sent = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def send(self, connection: socket.socket, data: bytes) -> None:
        if self._stopped.is_set():
            raise OSError("the server is stopping")
        connection.sendall(data)
        self.sent += len(data)

    def _serve(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._play, args=(connection,), daemon=True).start()

    def _play(self, connection: socket.socket) -> None:
        with connection:
            try:
                self.script(self, connection)
            except OSError:
                pass  # the client hung up

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        self._thread.join()
        self._listener.close()
