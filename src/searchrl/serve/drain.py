"""Graceful shutdown for ``searchrl serve``: SIGTERM drains the requests in flight, then the process exits 0.

Uvicorn's own shutdown closes the listening socket at once, so a load balancer's health check
meets a refused connection rather than a "draining" answer, its graceful timeout cancels what is
left, and afterwards it re-raises the signal, so the process dies of it (exit -15). Here the first
SIGTERM or Ctrl+C only starts a drain (:class:`Drain`):

- the server keeps listening; ``GET /healthz`` answers 503 ``{"status": "draining"}``, so a load
  balancer stops sending; a new request gets 503 at once with a message that says so; every
  response carries ``Connection: close``, so keep-alive clients reconnect elsewhere;
- requests already in flight (waiting in the micro-batcher's queue, being scored, reading their
  body) run to the end and get their full responses;
- when none is left, or after ``drain_timeout_s``, uvicorn's shutdown runs (with nothing left to
  wait for) and the process exits 0. A second signal ends the drain early; a third SIGINT forces.

Simplifies: one process; the drain counts requests, not connections (an idle keep-alive
connection does not hold it up); ``/healthz`` is not counted.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

import uvicorn

from searchrl.serve.timeouts import CLOSE, send_error

DRAINING = "server is shutting down (draining): it takes no new requests; retry on another instance"


class Drain:
    """Requests in flight, and whether (since when) the server is draining."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s  # longest the drain waits for requests in flight
        self.in_flight = 0  # requests inside the app now (not /healthz)
        self.started: float | None = None  # time.monotonic() when the drain began; None while serving

    @property
    def draining(self) -> bool:
        return self.started is not None

    def begin(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def done(self) -> bool:
        """Draining, and nothing is left in flight or the drain has run out of time."""
        return self.draining and (self.in_flight == 0 or time.monotonic() - self.started >= self.timeout_s)


class DrainMiddleware:
    """Counts requests in flight; while draining, answers new ones 503 and closes connections after each response."""

    def __init__(self, app, drain: Drain, exempt: tuple[str, ...] = ("/healthz",)):
        self.app, self.drain, self.exempt = app, drain, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        if self.drain.draining:
            return await send_error(send, 503, DRAINING, close=True, headers=((b"retry-after", b"1"),))

        async def send_closing(message):
            if message["type"] == "http.response.start" and self.drain.draining:
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send_closing)
        finally:
            self.drain.in_flight -= 1


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT starts a :class:`Drain` instead of shutting down."""

    def __init__(self, config: uvicorn.Config, drain: Drain):
        super().__init__(config)
        self.drain = drain
        self.announced = False

    def handle_exit(self, sig, frame) -> None:
        if self.drain.draining:  # a second signal: shut down now (uvicorn: a third SIGINT forces)
            super().handle_exit(sig, frame)
        else:
            self.drain.begin()  # no print here: this runs inside a signal handler

    async def on_tick(self, counter: int) -> bool:  # uvicorn calls this every 0.1 s
        if self.drain.draining and not self.announced:
            self.announced = True
            print(f"serve: draining {self.drain.in_flight} request(s) in flight "
                  f"(at most {self.drain.timeout_s:g} s), then exiting", flush=True)
        if self.drain.done():
            self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn's version re-raises the signal after shutdown, so the process dies of SIGTERM (-15);
        # after a drain the shutdown is a clean one: return, and the process exits 0
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
