"""Helpers of the dataset tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image(path: Path, seed: int = 0, size=(24, 32), fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


class Server:
    """A loopback HTTP server for download tests: serves ``files`` (a dict the test may change between
    requests) with a strong ``ETag`` and ``Last-Modified`` per content, honouring ``Range`` and ``If-Range``
    as RFC 9110 says. Faults on demand: ``cut_once`` names files whose first full response stops halfway
    (connection closed); ``range_from`` answers every range request with a 206 from that offset instead of
    the one asked; ``no_length`` names files sent without ``Content-Length`` (the end is the connection's
    close); ``pages`` maps a path to ``(status, headers)`` sent instead of a file (a redirect);
    ``ignore_if_range`` sends the range asked for whatever ``If-Range`` says (a non-conforming server)."""

    def __init__(
        self,
        files: dict[str, bytes],
        cut_once=frozenset(),
        *,
        range_from: int | None = None,
        no_length=frozenset(),
        pages: dict | None = None,
        ignore_if_range: bool = False,
    ):
        import hashlib
        import http.server
        import threading

        self.files, self.cut = files if isinstance(files, dict) else dict(files), set(cut_once)
        self.range_from, self.no_length, self.pages = range_from, set(no_length), dict(pages or {})
        self.ignore_if_range = ignore_if_range
        self.ranges: list[str | None] = []
        self.if_ranges: list[str | None] = []
        outer = self

        def etag(data: bytes) -> str:
            return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                if name in outer.pages:
                    status, headers = outer.pages[name]
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if name not in outer.files:
                    self.send_error(404)
                    return
                data = outer.files[name]
                header = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                outer.ranges.append(header)
                outer.if_ranges.append(if_range)
                start = int(header.split("=")[1].split("-")[0]) if header else 0
                if if_range is not None and if_range != etag(data) and not outer.ignore_if_range:
                    start = 0  # the validator names another version: the whole file (RFC 9110 13.1.5)
                if start and outer.range_from is not None:
                    start = outer.range_from
                self.send_response(206 if start else 200)
                self.send_header("ETag", etag(data))
                self.send_header("Last-Modified", "Mon, 07 Dec 2026 10:00:00 GMT")
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                body = data[start:]
                cut = name in outer.cut and not start
                if name in outer.no_length:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if cut:
                    outer.cut.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
