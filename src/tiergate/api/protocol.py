"""uvicorn's HTTP protocol with a response's head and body sent in one write.

uvicorn writes a response's status line and headers on ``http.response.start`` and the
body on ``http.response.body``: two ``send()`` calls, two TCP segments, and a client
that wakes for the head and again for the body. Here a write is held until the next
write or the end of the event loop's current iteration, whichever comes first; the body
of a small answer follows its head in the same iteration, so head and body leave as one
segment. Nothing else changes: order, flow control and closing are the transport's own
(a held write is sent before ``close``, dropped on ``abort``).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["coalescing_protocol"]


class _CoalescingTransport:
    """A transport proxy that holds one write until the next one or the loop turn's end."""

    __slots__ = ("_flush_handle", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._flush_handle = self._loop.call_soon(self._flush)
            return
        self._held = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._transport.write(held + data)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def _flush(self) -> None:
        self._flush_handle = None
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush_handle = self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's
        return getattr(self._transport, name)


def coalescing_protocol(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol class) writing through :class:`_CoalescingTransport`."""

    class Coalescing(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            loop = asyncio.get_running_loop()
            super().connection_made(_CoalescingTransport(transport, loop))  # type: ignore[arg-type]

    Coalescing.__name__ = Coalescing.__qualname__ = f"Coalescing{base.__name__}"
    return Coalescing


def http_protocol() -> type[asyncio.Protocol]:
    """The protocol class ``tiergate serve`` gives uvicorn: httptools if installed, else h11."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return coalescing_protocol(HttpToolsProtocol)
    except ImportError:  # httptools is an optional extra of uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return coalescing_protocol(H11Protocol)
