"""A CRL/OCSP server that answers garbage gives ``FetchError`` ("no answer"), never an
``http.client`` exception that would escape the validator (review finding)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from gateway.smime.fetch import FetchError, HttpFetcher


@pytest.fixture
def garbage_server() -> Iterator[str]:
    """Answers every connection with a line that is not an HTTP status line."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            with client:
                client.recv(4096)
                client.sendall(b"NOT-HTTP garbage\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/ca.crl"
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_a_malformed_http_answer_is_a_fetch_error(garbage_server: str) -> None:
    with pytest.raises(FetchError):
        HttpFetcher(timeout=2).get(garbage_server, max_bytes=1024)
