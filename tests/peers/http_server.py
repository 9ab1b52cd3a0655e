"""An HTTP server on loopback for CRL distribution points and an OCSP responder.

Role: serves what certificate-status fetchers download in tests: registered byte
bodies per path (``application/pkix-crl`` for CRLs, RFC 5280 §4.2.1.13 / RFC 2585 §4)
and an OCSP responder (RFC 6960 Appendix A.1) whose answer a test computes. It counts
requests per path and can be told to fail a path (an HTTP status, or ``"timeout"``: the
request is read and never answered) so a test can check "keep the last good CRL" and
"OCSP unavailable" behaviour.

OCSP over HTTP (RFC 6960 A.1): ``POST <responder>`` with body the DER ``OCSPRequest``
and ``Content-Type: application/ocsp-request``, or ``GET <responder>/<url-encoded base64
of the DER OCSPRequest>``; both are answered ``application/ocsp-response`` with the bytes
the handler returns. The handler receives the DER request; building the response (with
``cryptography.x509.ocsp``) is the test's business.

Built on the standard library's ``http.server.ThreadingHTTPServer`` (one thread per
request) in a background thread; ``stop()`` releases the requests held for a
"timeout" and closes the listener. A handler that raises answers 500 and the error is
kept in ``errors``. Test double only: loopback, no TLS, no authentication.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

LOOPBACK = "127.0.0.1"
CRL_CONTENT_TYPE = "application/pkix-crl"
OCSP_REQUEST_TYPE = "application/ocsp-request"
OCSP_RESPONSE_TYPE = "application/ocsp-response"
#: Longest a "timeout" failure holds a request (stop() releases it at once).
HOLD_LIMIT = 60.0
#: Largest request body read (an OCSP request is a few hundred bytes).
MAX_BODY = 1024 * 1024

Failure = int | Literal["timeout"]
OcspHandler = Callable[[bytes], bytes]


class HttpServerError(RuntimeError):
    """The server was configured wrongly (bad path or status)."""


@dataclass(frozen=True)
class _Resource:
    body: bytes
    content_type: str


@dataclass
class _FailureRule:
    failure: Failure
    remaining: int | None  # None: until recover()


def _check_path(path: str) -> str:
    if not path.startswith("/"):
        raise HttpServerError(f"path must start with '/': {path!r}")
    return path


class HttpServer:
    """Static resources + OCSP responder on 127.0.0.1; ``start``/``stop`` or ``with``."""

    def __init__(self) -> None:
        self.host = LOOPBACK
        self.port = 0
        self._lock = threading.Lock()
        self._resources: dict[str, _Resource] = {}
        self._failures: dict[str, _FailureRule] = {}
        self._hits: Counter[str] = Counter()
        self._ocsp_path: str | None = None
        self._ocsp_handler: OcspHandler | None = None
        self._ocsp_requests: list[bytes] = []
        self._errors: list[str] = []
        self._release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- configuration -------------------------------------------------------------

    def serve(self, path: str, body: bytes, content_type: str = CRL_CONTENT_TYPE) -> str:
        """Answer ``GET path`` with ``body``; returns ``url(path)``."""
        with self._lock:
            self._resources[_check_path(path)] = _Resource(body, content_type)
        return self.url(path)

    def set_ocsp_handler(self, handler: OcspHandler, path: str = "/ocsp") -> str:
        """Answer OCSP requests at ``path`` (POST, and GET ``path/<base64>``) with
        ``handler(der_request) -> der_response``; returns the responder URL."""
        with self._lock:
            self._ocsp_path = _check_path(path).rstrip("/") or "/"
            self._ocsp_handler = handler
        return self.url(path)

    def fail(self, path: str, status: Failure, *, count: int | None = None) -> None:
        """Fail requests for ``path``: an HTTP error ``status`` (4xx/5xx) or
        ``"timeout"`` (never answered); for the next ``count`` requests, or until
        ``recover(path)`` when ``count`` is None. For the OCSP responder use its path."""
        if status != "timeout" and not (isinstance(status, int) and 400 <= status <= 599):
            raise HttpServerError(f"failure must be a 4xx/5xx status or 'timeout', not {status!r}")
        with self._lock:
            self._failures[_check_path(path)] = _FailureRule(status, count)

    def recover(self, path: str) -> None:
        """Stop failing ``path``."""
        with self._lock:
            self._failures.pop(path, None)

    # -- observation ---------------------------------------------------------------

    def url(self, path: str) -> str:
        """``http://127.0.0.1:PORT/path`` (valid once started)."""
        return f"http://{self.host}:{self.port}{_check_path(path)}"

    def hits(self, path: str) -> int:
        """Requests received for ``path`` (failed ones too). For the OCSP responder
        path this counts every OCSP request, POST and GET forms alike."""
        with self._lock:
            return self._hits[path]

    @property
    def ocsp_requests(self) -> list[bytes]:
        """DER OCSP requests received, in order."""
        with self._lock:
            return list(self._ocsp_requests)

    @property
    def errors(self) -> list[str]:
        """Exceptions raised by the OCSP handler (each answered 500)."""
        with self._lock:
            return list(self._errors)

    # -- request dispatch (called from handler threads) ------------------------------

    def _count(self, path: str) -> None:
        with self._lock:
            self._hits[path] += 1

    def _failure_for(self, path: str) -> Failure | None:
        with self._lock:
            rule = self._failures.get(path)
            if rule is None:
                return None
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del self._failures[path]
            return rule.failure

    def _resource(self, path: str) -> _Resource | None:
        with self._lock:
            return self._resources.get(path)

    def _ocsp_target(self, path: str) -> tuple[str, OcspHandler] | None:
        """(responder path, handler) when ``path`` is the responder or below it."""
        with self._lock:
            base, handler = self._ocsp_path, self._ocsp_handler
        if base is None or handler is None:
            return None
        if path == base or path.startswith(base.rstrip("/") + "/"):
            return base, handler
        return None

    def _run_ocsp(self, handler: OcspHandler, request: bytes) -> bytes | None:
        with self._lock:
            self._ocsp_requests.append(request)
        try:
            return handler(request)
        except Exception as error:  # noqa: BLE001 - any handler bug must become a 500
            with self._lock:
                self._errors.append(f"{type(error).__name__}: {error}")
            return None

    def _hold(self) -> None:
        self._release.wait(HOLD_LIMIT)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> HttpServer:
        """Bind 127.0.0.1 on a kernel-chosen port and serve in a background thread."""
        server = _Server((self.host, 0), _make_handler(self))
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="http-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release held requests, stop serving, close the socket (idempotent)."""
        self._release.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Server(http.server.ThreadingHTTPServer):
    #: listen() backlog: socketserver's default of 5 drops connections when a test
    #: fetches from many threads at once (concurrent validations of one CRL).
    request_queue_size = 128
    daemon_threads = True


def _make_handler(owner: HttpServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(_RequestHandler):
        server_state = owner

    return Handler


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    server_state: HttpServer
    protocol_version = "HTTP/1.1"
    #: An idle keep-alive connection ends after this (its thread must not live forever).
    timeout = 10.0

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads ``hits``/``errors``, not stderr."""

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int) -> None:
        self._send(status, f"{status}\n".encode("ascii"), "text/plain")

    def _path(self) -> str:
        return urllib.parse.urlsplit(self.path).path

    def _apply_failure(self, counted_path: str) -> bool:
        """True when a configured failure answered (or swallowed) this request."""
        failure = self.server_state._failure_for(counted_path)
        if failure is None:
            return False
        if failure == "timeout":
            self.server_state._hold()
            self.close_connection = True
        else:
            self._send_error(int(failure))
        return True

    def do_GET(self) -> None:
        path = self._path()
        target = self.server_state._ocsp_target(path)
        if target is not None:
            self._ocsp_get(path, *target)
            return
        self.server_state._count(path)
        if self._apply_failure(path):
            return
        resource = self.server_state._resource(path)
        if resource is None:
            self._send_error(404)
            return
        self._send(200, resource.body, resource.content_type)

    def _ocsp_get(self, path: str, base: str, handler: OcspHandler) -> None:
        self.server_state._count(base)
        if self._apply_failure(base):
            return
        encoded = urllib.parse.unquote(path[len(base.rstrip("/")) + 1 :])
        try:
            request = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            self._send_error(400)
            return
        self._ocsp_answer(handler, request)

    def do_POST(self) -> None:
        path = self._path()
        target = self.server_state._ocsp_target(path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send_error(413)
            return
        body = self.rfile.read(length)
        if target is None:
            self.server_state._count(path)
            self._send_error(405)
            return
        base, handler = target
        self.server_state._count(base)
        if self._apply_failure(base):
            return
        if self.headers.get_content_type() != OCSP_REQUEST_TYPE:
            self._send_error(415)
            return
        self._ocsp_answer(handler, body)

    def _ocsp_answer(self, handler: OcspHandler, request: bytes) -> None:
        response = self.server_state._run_ocsp(handler, request)
        if response is None:
            self._send_error(500)
            return
        self._send(200, response, OCSP_RESPONSE_TYPE)
