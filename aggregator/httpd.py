"""The web server: waitress serving a WSGI app from listening sockets bound once, in this process or in
several forked ones that share them (the kernel hands each connection to one), stopped by SIGTERM.

Three changes to how waitress serves, each measured with bench/serve.py:
- a response without a body (304, 204) keeps the connection open: waitress 3 closes it because such a
  response has no Content-Length, so every 304 used to cost a new TCP connection;
- a body of bytes the app hands over as ``environ["aggregator.body"](body)`` is sent from a view of
  them, not copied into waitress's output buffer first;
- a request the app can answer from memory (``Inline``) runs in the event-loop thread, without the hop
  to a worker thread and back (two thread switches and a wake-up pipe per request); anything else, and
  everything that may read the store, still runs in the worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.buffers import ReadOnlyFileBasedBuffer
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ThreadedTaskDispatcher, WSGITask

from aggregator.errors import AggregatorError

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger(__name__)

Inline = Callable[[str, str, str], bool]  # (method, path, query) -> answered from memory, no store read
STOP_GRACE = 2.0  # seconds requests in flight get to finish once a process is told to stop
SIGNALS = {signal.SIGINT, signal.SIGTERM}  # stop the server (in every process)
RESTART_AFTER = 5.0  # a web process that dies sooner after its start is not restarted: `serve` stops


@dataclass(frozen=True)
class Options:
    """How each process serves (waitress's settings of the same names)."""

    threads: int = 8  # worker threads per process (requests that may read the store)
    backlog: int = 1024  # listen() queue
    connection_limit: int = 1000  # open client connections per process
    channel_timeout: int = 120  # seconds an idle keep-alive connection is kept
    send_bytes: int = 1  # a task sends what it writes at once, instead of leaving it to the loop


def listen(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bind and listen on every address ``host`` resolves to, as waitress would; OSError as it fails."""
    sockets: list[socket.socket] = []
    try:
        for family, socktype, proto, address in Adjustments(host=host, port=port).listen:
            sock = socket.socket(family, socktype, proto)
            sockets.append(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Task(WSGITask):  # type: ignore[misc]
    """Keep-alive for HTTP/1.1 responses without a body: waitress closes the connection after a 304
    (no Content-Length, so it cannot tell where the response ends, though a 304 never has a body).
    And ``environ["aggregator.body"]``: bytes sent without a copy (``_Body``)."""

    _bodiless = False

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        environ["aggregator.body"] = _Body
        return environ

    def build_response_header(self) -> bytes:
        asked_close = self.request.headers.get("CONNECTION", "").lower() == "close"
        self._bodiless = not self.has_body and self.version == "1.1" and not asked_close
        try:
            return super().build_response_header()  # type: ignore[no-any-return]
        finally:
            self._bodiless = False

    def set_close_on_finish(self) -> None:
        if not self._bodiless:
            super().set_close_on_finish()


class _Body(ReadOnlyFileBasedBuffer):  # type: ignore[misc]
    """A response body in memory that waitress sends from a view of the bytes, without copying them into
    its output buffer (a WSGI app gets it as ``environ["aggregator.body"]``)."""

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.pos = 0
        self.remain = len(data)

    def prepare(self, size: int | None = None) -> int:
        left = len(self.view) - self.pos
        self.remain = left if size is None else min(left, size)
        return self.remain

    def get(self, numbytes: int = -1, skip: bool = False) -> memoryview:
        if numbytes < 0 or numbytes > self.remain:
            numbytes = self.remain
        chunk = self.view[self.pos : self.pos + numbytes]
        if skip:
            self.skip(numbytes)
        return chunk

    def skip(self, numbytes: int, allow_prune: int = 0) -> None:
        if numbytes > self.remain:
            raise ValueError(f"cannot skip {numbytes} bytes of {self.remain}")
        self.pos += numbytes
        self.remain -= numbytes

    def close(self) -> None:
        self.remain = 0

    def __iter__(self) -> Iterator[bytes]:
        yield bytes(self.view[self.pos : self.pos + self.remain])


class _Channel(HTTPChannel):  # type: ignore[misc]
    task_class = _Task


class _Dispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
    """Requests ``inline`` accepts wait in ``ready`` for the event loop (it runs them once the current
    poll's events are handled: waitress adds a task while holding the channel's lock); the rest go to
    the worker threads."""

    def __init__(self, inline: Inline | None) -> None:
        super().__init__()
        self.inline = inline
        self.ready: deque[Any] = deque()

    def add_task(self, task: Any) -> None:
        requests = getattr(task, "requests", None)
        request = requests[0] if requests else None
        if (
            self.inline is not None
            and request is not None
            and not request.error
            and self.inline(request.command, request.path, request.query)
        ):
            self.ready.append(task)
        else:
            super().add_task(task)

    def run_ready(self) -> None:
        """Run the requests waiting for the loop (each sends its response as it writes it)."""
        while self.ready:
            self.ready.popleft().service()


class Server:
    """One process's waitress server on the shared listening sockets."""

    def __init__(
        self, app: WSGIApplication, sockets: Sequence[socket.socket], options: Options, inline: Inline | None
    ) -> None:
        self.dispatcher = _Dispatcher(inline)
        self.dispatcher.set_thread_count(options.threads)
        self.map: dict[int, Any] = {}  # waitress's socket map: the listening sockets, then connections
        create_server(
            app,
            map=self.map,
            _dispatcher=self.dispatcher,
            sockets=list(sockets),
            threads=options.threads,
            backlog=options.backlog,
            connection_limit=options.connection_limit,
            channel_timeout=options.channel_timeout,
            send_bytes=options.send_bytes,
        )
        self.listeners = [d for d in self.map.values() if isinstance(d, BaseWSGIServer)]
        for listener in self.listeners:
            listener.channel_class = _Channel

    def wake(self) -> None:
        """Interrupt the event loop's wait (safe from a signal handler: it only writes to a pipe)."""
        self.listeners[0].pull_trigger()

    def run_until(self, stop: threading.Event, parent: int | None = None) -> None:
        """Serve until ``stop`` is set (or the ``parent`` process is gone); then let requests in flight
        finish (STOP_GRACE seconds at most) and close the listening sockets and every connection."""
        try:
            while not stop.is_set():
                wasyncore.loop(timeout=1.0, map=self.map, use_poll=True, count=1)
                self.dispatcher.run_ready()
                if parent is not None and os.getppid() != parent:
                    log.warning("web process %d: its parent %d is gone; stopping", os.getpid(), parent)
                    break
        finally:
            self.dispatcher.shutdown(timeout=STOP_GRACE)
            wasyncore.close_all(self.map, ignore_all=True)


def serve_processes(
    make_app: Callable[[], tuple[WSGIApplication, Inline | None]],
    sockets: Sequence[socket.socket],
    options: Options,
    processes: int,
) -> int:
    """Fork ``processes`` web processes serving ``sockets`` and supervise them until SIGINT or SIGTERM:
    then stop them all (SIGTERM, SIGKILL after STOP_GRACE + 3 s) and return 0. A process that dies is
    replaced, unless it died within RESTART_AFTER seconds of its start (1 is returned: it cannot serve).
    Call it before any thread is started: children are forked."""
    stop = threading.Event()
    parent = os.getpid()
    children: dict[int, float] = {}  # pid -> start (monotonic)

    def start_child() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # until the child has its own handlers
        pid = os.fork()
        if pid == 0:  # the child: serve, then leave without running the parent's cleanup
            code = 1
            try:
                code = _child(make_app, sockets, options, parent)
            except AggregatorError as e:
                print(f"error: web process {os.getpid()}: {e}", file=sys.stderr)
            except BaseException:
                log.exception("web process %d failed", os.getpid())
            finally:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        children[pid] = time.monotonic()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
    failed = 0
    try:
        for _ in range(processes):
            start_child()
        while not stop.wait(0.2):
            for pid, started in list(children.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
                del children[pid]
                code = os.waitstatus_to_exitcode(status)
                if time.monotonic() - started < RESTART_AFTER:
                    log.error("web process %d exited (%d) right after its start; stopping", pid, code)
                    failed = 1
                    stop.set()
                    break
                log.warning("web process %d exited (%d); starting another", pid, code)
                start_child()
    finally:
        _stop_children(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in sockets:
            sock.close()
    return failed


def _child(
    make_app: Callable[[], tuple[WSGIApplication, Inline | None]],
    sockets: Sequence[socket.socket],
    options: Options,
    parent: int,
) -> int:
    stop = threading.Event()
    app, inline = make_app()
    server = Server(app, sockets, options, inline)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()  # only flag and wake the loop (see cli.serve_forever)
        server.wake()

    for sig in SIGNALS:
        signal.signal(sig, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    server.run_until(stop, parent=parent)
    return 0


def _stop_children(children: dict[int, float]) -> None:
    """SIGTERM every child, wait for them, SIGKILL those still running after the grace period."""
    for pid in children:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE + 3
    while children and time.monotonic() < deadline:
        for pid in list(children):
            if os.waitpid(pid, os.WNOHANG)[0]:
                del children[pid]
        time.sleep(0.05)
    for pid in children:
        log.warning("web process %d did not stop within %.0f s; killed", pid, STOP_GRACE + 3)
        _kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    children.clear()


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
