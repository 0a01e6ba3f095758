"""`vestis serve`'s HTTP protocol (vestis.serve.protocol): a response head waits for its body and leaves with it in
one write; nothing is lost, reordered or held past the event loop's turn; and a real uvicorn server with it answers
exactly as the application does through TestClient (JSON, a streamed file, errors, keep-alive)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
import httpx  # noqa: E402

from vestis.serve.protocol import OneSendTransport, http_protocol  # noqa: E402


class FakeTransport:
    def __init__(self):
        self.writes, self.closed = [], False

    def write(self, data):
        self.writes.append(bytes(data))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default


def test_head_and_body_leave_in_one_write():
    loop = asyncio.new_event_loop()
    try:
        raw = FakeTransport()
        t = OneSendTransport(raw, loop)
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert raw.writes == []  # held
        t.write(b"{}")
        assert raw.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        t.write(b"more body")  # not a head: straight through
        assert raw.writes[-1] == b"more body"
        t.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # a head with nothing after it: sent at the end of the turn
        assert len(raw.writes) == 2
        loop.run_until_complete(asyncio.sleep(0))
        assert raw.writes[-1] == b"HTTP/1.1 100 Continue\r\n\r\n"
        t.write(memoryview(b"HTTP/1.1 204 No Content\r\n\r\n"))
        t.close()  # close sends what is held first
        assert raw.writes[-1] == b"HTTP/1.1 204 No Content\r\n\r\n" and raw.closed
        assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # everything else is the transport's
        loop.run_until_complete(asyncio.sleep(0))  # the pending flush finds nothing held
        assert len(raw.writes) == 4
    finally:
        loop.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_answers_as_the_app(engine):
    import uvicorn
    from fastapi.testclient import TestClient

    from vestis.serve.app import create_app

    app = create_app(engine)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           http=http_protocol()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 60
        while not server.started:
            assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        local = TestClient(app)
        items = sorted(engine.spaces["main"].ids())[:4]
        colours = engine.model.schema.values("colour")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:  # one keep-alive connection
            for i, item in enumerate(items):
                body = {"item_id": item, "k": 6, "manipulations": {"colour": colours[i % len(colours)]}}
                got, want = c.post("/search", json=body), local.post("/search", json=body)
                assert got.status_code == 200 and got.headers["content-type"] == "application/json"
                a, b = got.json(), want.json()
                a.pop("took_ms"), b.pop("took_ms")
                assert a == b
                img = c.get(f"/items/{item}/image")  # a streamed file answer
                assert img.status_code == 200 and img.content == local.get(f"/items/{item}/image").content
            bad = c.post("/search", json={"item_id": "no-such-item"})
            assert bad.status_code == 404 and bad.json() == local.post("/search", json={"item_id": "no-such-item"}).json()
            assert c.get("/health").json() == local.get("/health").json()
    finally:
        server.should_exit = True
        thread.join(30)
