"""The HTTP protocol `vestis serve` runs: uvicorn's own (httptools, else h11), with each small answer sent in one
write. uvicorn writes an answer's status line and headers, then its body: two sends and two TCP segments per
answer on a keep-alive connection (uvicorn sets TCP_NODELAY), and on loopback the receiving client is woken for
each. `OneSendTransport` holds a response head until the next write, which it joins (Starlette sends the body
right after the head), or until the end of the event loop's current turn, whichever comes first."""

from __future__ import annotations

import asyncio


class OneSendTransport:
    """A transport whose writes that begin a response (b"HTTP/...") wait for the next write or the end of this turn
    of the event loop; every other attribute is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop, self._held = transport, loop, None

    def write(self, data) -> None:
        if self._held is not None:
            data, self._held = self._held + bytes(data), None
        elif bytes(data[:5]) == b"HTTP/":
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        if self._held is not None:
            data, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name):
        return getattr(self._transport, name)


def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's automatic HTTP protocol class, writing through `OneSendTransport`."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class OneSendHTTPProtocol(AutoHTTPProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)  # (its flow control keeps the real transport)
            self.transport = OneSendTransport(transport, self.loop)

    return OneSendHTTPProtocol
