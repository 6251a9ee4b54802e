"""A loopback HTTP proxy that counts the requests a client makes, for benchmarks.

``bench/scale.py`` points one ``neuronova backup`` at it (``[internal] orthanc_port``) to
count the REST calls the backup makes to Orthanc from outside the backup's own code. It
forwards each request as it is (method, path, headers, body) to the real port and sends
the answer back; it adds a little time per request, so time the client without it.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
MAX_BODY = 1 << 30


class CountingProxy:
    """Forward loopback HTTP from :attr:`port` to ``target_port``, counting requests.

    Use as a context manager; :attr:`counts` maps (method, first path segment) to a count.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, method: str, path: str) -> None:
        segment = path.split("?", 1)[0].strip("/").split("/", 1)[0]
        with self._lock:
            self.counts[method, "/" + segment] += 1

    def summary(self) -> dict[str, Any]:
        """Total and per (method, first path segment) counts, for a results file."""
        return {
            "total": self.total,
            "by_path": {f"{m} {p}": n for (m, p), n in sorted(self.counts.items())},
        }

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_for(proxy: CountingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            proxy.record(self.command, self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_BODY:
                self.send_error(413)
                return
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream = http.client.HTTPConnection(LOOPBACK, proxy.target_port, timeout=120)
            try:
                upstream.request(self.command, self.path, body, headers)
                answer = upstream.getresponse()
                data = answer.read()
            finally:
                upstream.close()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_BY_HOP | {"content-length"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the counts are the record."""

    return Handler
