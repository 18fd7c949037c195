"""Feeds served over loopback HTTP: paths map to (status, content type, body[, headers]); an
ETag is sent with each 200, and a request carrying it gets a 304. Also a server that sends
its answer one byte at a time."""

from __future__ import annotations

import hashlib
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent_pipeline_tests.raw_server import ScriptedServer
from agent_pipeline_tests.services import serving_thread


class FeedServer:
    def __init__(self, routes: dict[str, tuple], host: str = "127.0.0.1", port: int = 0,
                 keep_alive: bool = False):
        self.routes = routes
        self.requests: list[tuple[str, str | None]] = []  # (path, If-None-Match)
        server = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 keeps each connection open for the next request, as real servers do.
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                condition = self.headers.get("If-None-Match")
                server.requests.append((self.path, condition))
                status, content_type, body, *extra = server.routes.get(
                    self.path, (404, "text/plain", b"not found")
                )
                headers = extra[0] if extra else {}
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                if status == 200 and condition == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if status == 200:
                    self.send_header("ETag", etag)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.host = host
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = serving_thread(self._server)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self._server.server_address[1]}{path}"

    def __enter__(self) -> FeedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class DripServer(ScriptedServer):
    """Answers every connection with a valid document, one byte every `interval` seconds,
    headers first: each byte comes well within any per-read timeout, the whole answer takes
    minutes."""

    def __init__(
        self, body: bytes, interval: float = 0.2, content_type: str = "application/rss+xml"
    ):
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        answer = head.encode() + body

        def drip(server: ScriptedServer, connection: socket.socket) -> None:
            connection.recv(65536)
            for byte in answer:
                server.send(connection, bytes([byte]))
                time.sleep(interval)

        super().__init__(drip)

    def url(self, path: str = "/feed.xml") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


RSS2 = b"""<?xml version="1.0"?>
<rss version="2.0"><channel><title>Data Weekly</title>
<item><title>Dagster adds &lt;b&gt;faster&lt;/b&gt; backfills</title><link>https://example.org/a</link>
<description>&lt;p&gt;Partitioned jobs, now quicker.&lt;/p&gt;</description><guid>a-1</guid>
<pubDate>Wed, 25 Nov 2026 08:00:00 GMT</pubDate></item>
<item><title>Gardening in winter</title><link>https://example.org/b</link>
<description>Bulbs and frost.</description><guid>b-1</guid></item>
</channel></rss>"""

RSS1 = b"""<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/">
<channel rdf:about="https://example.org/"><title>RDF News</title></channel>
<item rdf:about="https://example.org/c"><title>Postgres partial indexes</title>
<link>https://example.org/c</link><description>One writer claims a job.</description></item>
</rdf:RDF>"""

RSS091 = b"""<?xml version="1.0"?><rss version="0.91"><channel><title>Old School</title>
<item><title>Redis streams for queues</title><link>https://example.org/d</link></item>
</channel></rss>"""

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom Daily</title>
<entry><title>LLM agents on a schedule</title><link href="https://example.org/e"/>
<id>urn:e-1</id><updated>2026-11-26T07:00:00Z</updated><summary>Agents that email.</summary></entry>
</feed>"""

JSON_ITEMS = b"""[{"headline": "Data orchestration at scale", "link": "https://example.org/f",
"description": "Many pipelines.", "guid": "f-1", "date": "2026-11-24"}, "not an object"]"""
