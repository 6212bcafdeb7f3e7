"""A tiny HTTP file server on 127.0.0.1 for download tests: Range requests, dropped connections."""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


class FileServer:
    """Serves ``files[path] = bytes`` in a background thread.

    ``requests`` records ``(path, headers)`` of every GET. ``drop_after[path] = n`` makes the next
    response to ``path`` send only ``n`` body bytes (while announcing the full length) and then close
    the connection (one-shot). ``ignore_range = True`` answers every request with the whole file.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.drop_after: dict[str, int] = {}
        self.ignore_range = False
        self.body_bytes_sent = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _handler(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers.items())))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "not found")
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if match is not None and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                drop: Optional[int] = server.drop_after.pop(self.path, None)
                if drop is not None:
                    self.wfile.write(body[:drop])
                    self.wfile.flush()
                    server.body_bytes_sent += min(drop, len(body))
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)
                server.body_bytes_sent += len(body)

        return Handler

    def url(self, path: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def start(self) -> "FileServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def closed_port_url(path: str = "/model.pth") -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
