"""A real HTTP server on loopback that speaks the OpenAI chat-completions protocol, with
scripted answers: latency, 429 with Retry-After, 500s, malformed JSON, hanging connections."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent_pipeline_tests.services import serving_thread


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # the model's message; None: a score from the title
    body: str | None = None  # the raw HTTP body, instead of a completion
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # A reply of this many bytes, streamed in chunks with no Content-Length, instead of a
    # completion: what a broken or hostile API may send.
    huge_bytes: int = 0


def title_of(request: dict[str, Any]) -> str:
    prompt = request["messages"][-1]["content"]
    found = re.search(r"^Title: (.*)$", prompt, re.MULTILINE)
    return found.group(1) if found else ""


def default_score(title: str) -> int:
    """Deterministic: the same title always gets the same score."""
    return sum(title.encode()) % 101


class LoopbackLlm:
    """script(request, call_number) -> Reply; call_number counts calls per title from 1."""

    def __init__(self, script: Callable[[dict[str, Any], int], Reply] | None = None):
        self.script = script or (lambda request, n: Reply())
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.calls_per_title: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.huge_bytes_sent = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = serving_thread(self._server)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> LoopbackLlm:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        llm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                title = title_of(request)
                with llm._lock:
                    llm.requests.append(request)
                    llm.headers.append(dict(self.headers))
                    llm.calls_per_title[title] = llm.calls_per_title.get(title, 0) + 1
                    call = llm.calls_per_title[title]
                    llm.in_flight += 1
                    llm.max_in_flight = max(llm.max_in_flight, llm.in_flight)
                try:
                    reply = llm.script(request, call)
                    time.sleep(reply.delay)
                finally:
                    # Counted out before the answer goes back: the client can only send its
                    # next request once it has the answer, so it is never counted twice.
                    with llm._lock:
                        llm.in_flight -= 1
                if reply.huge_bytes:
                    self._send_huge(reply.huge_bytes)
                    return
                if reply.body is not None:
                    body = reply.body
                elif reply.status != 200:
                    body = json.dumps({"error": {"message": f"status {reply.status}"}})
                else:
                    content = reply.content
                    if content is None:
                        content = json.dumps(
                            {"score": default_score(title), "reason": f"About {title}."}
                        )
                    body = json.dumps({
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "model": request.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": 50, "completion_tokens": 10,
                                  "total_tokens": 60},
                    })
                data = body.encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _send_huge(self, size: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b'{"choices": [{"message": {"content": "' + b"x" * 65_000
                sent = 0
                try:
                    while sent < size:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        with llm._lock:
                            llm.huge_bytes_sent += len(chunk)
                except OSError:
                    pass  # the client stopped reading and hung up
                self.close_connection = True

        return Handler
