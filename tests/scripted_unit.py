"""A Unit upstream of a test's own, answering each path with scripted bytes: a Unit that
misbehaves in ways the sandbox never does (tokens where no route table expects them,
answers mitmproxy or a client reads in different ways)."""

from __future__ import annotations

import re
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path

Answer = bytes | Callable[[bytes], bytes]
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class ScriptedUnit:
    """Plain HTTP on loopback: reads a request (its head, and a body of Content-Length),
    answers with the bytes scripted for its path (or a callable of the head), then closes."""

    def __init__(self, answers: dict[str, Answer], org_token: str) -> None:
        self.answers = answers
        self.org_token = org_token
        self.cert_path: Path | None = None
        #: the head of each request, in order
        self.seen: list[bytes] = []
        unit = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := self.request.recv(65536)):
                    head += chunk
                if not head:
                    return
                found = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
                missing = (int(found.group(1)) if found else 0) - len(
                    head.partition(b"\r\n\r\n")[2]
                )
                while missing > 0 and (chunk := self.request.recv(65536)):
                    missing -= len(chunk)
                unit.seen.append(head)
                answer = unit.answers.get(unit.path_of(head), NOT_FOUND)
                self.request.sendall(answer(head) if callable(answer) else answer)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def path_of(head: bytes) -> str:
        return head.split(b"\r\n", 1)[0].split(b" ")[1].decode()

    @property
    def paths(self) -> list[str]:
        """The path of each request, in order."""
        return [self.path_of(head) for head in self.seen]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_answer(
    body: bytes = b"{}",
    *,
    status: str = "200 OK",
    headers: tuple[str, ...] = (),
    content_type: str = "application/vnd.api+json",
    length: bool = True,
) -> bytes:
    """An HTTP/1.1 answer's bytes; ``length``: with a Content-Length."""
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
