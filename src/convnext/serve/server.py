"""Running the app with uvicorn: in the foreground (the CLI, with graceful SIGTERM) or in a thread (tests,
notebooks)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn

from ..errors import UserError


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts, so that port 0 (any free port) can be reported."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host!r} is not an address of this machine ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and without it every
    # response (headers, then body: two small writes) waits ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def http_protocol(read_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol (httptools where installed, else h11: uvicorn's own "auto" choice) with
    a deadline for the request head, which uvicorn lacks. Its ``timeout_keep_alive`` closes a connection
    idle *after* a response; a connection that never sends a request, or stops halfway through its
    headers, was held forever (one socket and file descriptor each: a slowloris needs only many of them).
    Now it is closed after ``read_timeout_s`` without a byte: silently if nothing came (a browser's
    preconnect), with a 408 JSON answer if part of a head did. A stalled *body* is the app's to time out
    (``app._Guard``): only there can the answer go through the app's error handling and metrics."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    body = json.dumps(
        {"error": f"the request head did not arrive within {read_timeout_s:g} s (--read-timeout-s)"}
    ).encode()
    answer = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )

    class HeadTimeoutProtocol(Base):  # type: ignore[misc,valid-type]
        _head_timer: asyncio.TimerHandle | None = None
        _partial_head = False

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            if self._waiting_for_head() and not self.transport.is_closing():
                self._head_timer = self.loop.call_later(read_timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._waiting_for_head() and not self.transport.is_closing():
                if self._partial_head:
                    self.transport.write(answer)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            # bytes that did not complete a head (a new request cycle would have started): part of one
            self._partial_head = self._waiting_for_head() and (cycle is self.cycle or self._partial_head)
            self._arm()

        def on_response_complete(self) -> None:
            self._partial_head = False
            super().on_response_complete()  # uvicorn's keep-alive timer now watches the idle connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadTimeoutProtocol


def _config(
    app: object,
    sock: socket.socket,
    log_level: str,
    access_log: bool,
    graceful_s: float,
    read_timeout_s: float,
) -> uvicorn.Config:
    host, port = sock.getsockname()[:2]
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http_protocol(read_timeout_s),
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=graceful_s,
        timeout_keep_alive=5,  # uvicorn's default, said here: an idle keep-alive connection closes after 5 s
        server_header=False,
    )


def serve_forever(
    app: object,
    sock: socket.socket,
    *,
    log_level: str = "info",
    access_log: bool = True,
    graceful_s: float = 30.0,
    read_timeout_s: float = 30.0,
    on_server: Callable[[uvicorn.Server], None] | None = None,
) -> bool:
    """Serve until SIGTERM or Ctrl-C. On SIGTERM uvicorn stops accepting, lets in-flight requests finish
    (up to ``graceful_s``), runs the app's shutdown and returns: True, so that the caller exits 0. (uvicorn
    re-raises the signal once it is done; the handler installed here absorbs it instead of dying by it.)"""
    server = uvicorn.Server(_config(app, sock, log_level, access_log, graceful_s, read_timeout_s))
    if on_server is not None:
        on_server(server)
    terminated = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    try:
        server.run(sockets=[sock])
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return terminated.is_set()


@dataclass
class ThreadedServer:
    """A real uvicorn server on a loopback port in a background thread: ``url``, then ``stop()``."""

    app: object
    host: str = "127.0.0.1"
    port: int = 0
    log_level: str = "warning"
    read_timeout_s: float = 30.0  # the head's deadline (the body's is the app's ServeSettings.read_timeout_s)
    url: str = ""
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def start(self, timeout: float = 30.0) -> ThreadedServer:
        sock = bind(self.host, self.port)
        self.url = url_of(sock)
        self.server = uvicorn.Server(
            _config(self.app, sock, self.log_level, False, 10.0, self.read_timeout_s)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        for _ in range(int(timeout / 0.02)):
            if self.server.started or not self.thread.is_alive():
                break
            threading.Event().wait(0.02)
        if not self.server.started:
            raise RuntimeError(f"the server on {self.url} did not start")
        return self

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(30)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
