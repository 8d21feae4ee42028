"""The coalescing transport behind `tiergate serve`: head and body of an answer in one write.

The transport under the proxy records its calls (the proxy's logic is what is tested; the
real uvicorn protocol with it is exercised by every HTTP test that starts `tiergate serve`).
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import uvicorn

from tiergate.api.protocol import _CoalescingTransport, http_protocol


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))

    def abort(self) -> None:
        self.calls.append(("abort", b""))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


async def turn() -> None:
    await asyncio.sleep(0)


async def test_two_writes_in_one_turn_leave_as_one_and_a_lone_write_at_the_turns_end() -> None:
    rec = Recorder()
    t = _CoalescingTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert rec.calls == [] and t.get_write_buffer_size() == 19  # held, still counted
    t.write(b"{}")
    assert rec.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\n{}")]
    await turn()
    assert len(rec.calls) == 1  # the cancelled flush writes nothing more
    t.write(b"alone")
    await turn()
    assert rec.calls[-1] == ("write", b"alone")
    assert t.is_closing() is False  # everything else is the transport's own


async def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    rec = Recorder()
    t = _CoalescingTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"last words")
    t.close()
    assert rec.calls == [("write", b"last words"), ("close", b"")]
    rec2 = Recorder()
    t2 = _CoalescingTransport(rec2, asyncio.get_running_loop())  # type: ignore[arg-type]
    t2.write(b"never sent")
    t2.abort()
    await turn()
    assert rec2.calls == [("abort", b"")]


@pytest.mark.parametrize("n", [1, 3])
async def test_a_real_server_with_the_protocol_answers_keep_alive_requests(n: int) -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, http=http_protocol(), log_level="warning",
                                           lifespan="off"))  # fmt: skip
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for i in range(n):  # one kept-alive connection
                r = await client.post("/", content=b"x" * (i + 1) * 1000)
                assert r.status_code == 200 and r.content == b"x" * (i + 1) * 1000
    finally:
        server.should_exit = True
        await task
