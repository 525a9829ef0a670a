"""Bounded waits for ``searchrl serve``: no client holds a connection or a request open for long.

asyncio serves every connection on one event loop, so a slow client never holds a thread; what
it can hold is a connection (a file descriptor, its buffers) and a request in flight (which would
also hold up a SIGTERM drain, drain.py). Every wait that a client controls has a deadline, each a
:class:`~searchrl.serve.server.ServerConfig` field:

==========================================================  ======================  ===================
a client that ...                                           bound                   answer
==========================================================  ======================  ===================
connects and sends nothing, or idles between requests       ``keep_alive_s``        connection closed
trickles its request line and headers                       ``header_timeout_s``    408, closed
sends headers larger than ``max_header_bytes``              (h11's limit)           400, closed
trickles its body, or never finishes it                     ``body_timeout_s``      408, closed
sends a body larger than ``max_body_bytes``                 ``body_timeout_s``      413, closed
stops reading its responses                                 ``write_timeout_s``     connection aborted
==========================================================  ======================  ===================

Uvicorn arms its keep-alive timer only after a response and cancels it on any byte received, and
has no header or write deadline; :func:`bounded_h11_protocol` adds those three to its h11
protocol. The body is read by :class:`BodyLimitMiddleware` under one deadline for the whole body
(a per-chunk timeout would let a 1 byte/s client through). Waiting for the scorer is bounded in
server.py (``queue_timeout_s``).

Simplifies: HTTP/1.1 over h11 only (no httptools, no HTTP/2); the deadlines are per request, not a
minimum transfer rate; the protocol subclass leans on uvicorn's H11Protocol attributes (tested).
"""

from __future__ import annotations

import asyncio
import json

import h11

CLOSE = (b"connection", b"close")


async def send_error(send, status: int, detail: str, close: bool = False, headers: tuple = ()) -> None:
    """A JSON ``{"detail": ...}`` error response, FastAPI's shape, from plain ASGI."""
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head + ([CLOSE] if close else [])})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Reads each request's whole body under a deadline and a size limit, then hands it to the app.

    Too slow -> 408; too large -> 413 (announced by Content-Length: answered after the body has been
    read and dropped, so the client sees the 413 rather than a reset connection). Both close the
    connection, since the rest of the body may still be on its way.
    """

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        too_large = declared.isdigit() and int(declared) > self.max_bytes
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # the client went away: nobody to answer
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    too_large = too_large or size > self.max_bytes
                    if not too_large:
                        chunks.append(chunk)
                    else:
                        chunks.clear()  # keep reading to the end, but hold none of it
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            if not too_large:
                return await send_error(send, 408, f"request body not received within {self.timeout_s:g} s "
                                                   f"({size} bytes arrived)", close=True)
        if too_large:
            return await send_error(send, 413, f"request body of {int(declared) if declared.isdigit() else size} "
                                               f"bytes; the limit is {self.max_bytes}", close=True)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnect, as the server says

        await self.app(scope, replay, send)


def bounded_h11_protocol(header_timeout_s: float, write_timeout_s: float) -> type:
    """Uvicorn's h11 protocol with a keep-alive timer from the first byte, a header deadline and a write deadline.

    Pass the class as ``uvicorn.Config(http=...)``; ``timeout_keep_alive`` comes from that config.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.header_timer = self.write_timer = None
            # uvicorn arms the keep-alive timer only after a response: a connection that never sends a byte
            # would otherwise stay open for good
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

        def data_received(self, data: bytes) -> None:
            # the first byte of a request head starts its deadline (uvicorn's own keep-alive timer stops at any byte)
            if self.header_timer is None and self.conn.their_state is h11.IDLE:
                self.header_timer = self.loop.call_later(header_timeout_s, self.header_timeout)
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            if self.header_timer is not None and self.conn.their_state is not h11.IDLE:  # the head is complete
                self.header_timer.cancel()
                self.header_timer = None

        def header_timeout(self) -> None:
            self.header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            msg = f"request headers not received within {header_timeout_s:g} s".encode()
            # no request was parsed, so h11 cannot frame an answer: this is the whole response, written as is
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(msg), msg))
            self.transport.close()

        def pause_writing(self) -> None:  # the send buffer is full: the client is not reading
            super().pause_writing()
            if self.write_timer is None:
                self.write_timer = self.loop.call_later(write_timeout_s, self.write_timeout)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self.write_timer is not None:
                self.write_timer.cancel()
                self.write_timer = None

        def write_timeout(self) -> None:
            self.write_timer = None
            # abort, not close: close would wait for the buffer to flush, which is what is not happening.
            # connection_lost then marks the request disconnected and wakes its blocked send.
            self.transport.abort()

        def connection_lost(self, exc) -> None:
            for timer in (self.header_timer, self.write_timer):
                if timer is not None:
                    timer.cancel()
            self.header_timer = self.write_timer = None
            super().connection_lost(exc)

    return BoundedH11Protocol
