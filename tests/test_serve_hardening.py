"""Hostile inputs to the HTTP API (issue 16): every one answered by a 4xx whose message is bounded and printable,
never a 500; inputs that used to be taken silently (k = true, an empty filter list, an unknown split) refused."""

import json

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from vestis.errors import ECHO_LIMIT, UnknownValueError, echo  # noqa: E402
from vestis.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(engine):
    return TestClient(create_app(engine), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def item_id(engine):
    return next(iter(engine.spaces["main"].ids()))


def _post_json(client, raw: bytes):
    return client.post("/search", content=raw, headers={"content-type": "application/json"})


@pytest.mark.parametrize("template, message", [
    (b'{"item_id": "%s", "k": NaN}', "NaN is not a JSON number"),
    (b'{"item_id": "%s", "k": Infinity}', "Infinity is not a JSON number"),
    (b'{"item_id": "%s", "k": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"item_id": "%s", "manipulations": {"colour": NaN}}', "NaN is not a JSON number"),
    (b'{"item_id": "%s", "filters": {"colour": [NaN]}}', "NaN is not a JSON number"),
    (b'{"item_id": NaN, "x": "%s"}', "NaN is not a JSON number"),
    (b'{"item_id": "%s", "text": "red \\ud800"}', "lone surrogate"),
    (b'{"item_id": "%s", "manipulations": {"\\ud800": "red"}}', "lone surrogate"),
    (b'{"item_id": "%s", "\\udfff": 1}', "lone surrogate"),
])
def test_non_json_numbers_and_lone_surrogates_are_400(client, item_id, template, message):
    r = _post_json(client, template % item_id.encode())
    assert r.status_code == 400, r.text
    assert message in r.json()["detail"]


def test_deeply_nested_json_is_400(client):
    r = _post_json(client, b"[" * 100_000 + b"]" * 100_000)
    assert r.status_code == 400 and "nested too deeply" in r.json()["detail"]
    r = _post_json(client, b'{"item_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert r.status_code == 400 and "nested too deeply" in r.json()["detail"]


@pytest.mark.parametrize("field, value", [("manipulations", '{"colour": NaN}'), ("filters", '{"colour": [Infinity]}'),
                                          ("manipulations", '{"\\ud800": "red"}')])
def test_multipart_json_fields_are_strict_too(client, field, value):
    r = client.post("/search", files={"image": ("q.png", b"\x89PNG", "image/png")}, data={field: value})
    assert r.status_code == 400, r.text
    assert f"`{field}`" in r.json()["detail"]


def test_multipart_k_is_an_integer(client, item_id):
    r = client.post("/search", data={"item_id": item_id, "k": "NaN"}, files={"image": ("q.png", b"x", "image/png")})
    assert r.status_code == 422 and "k: Input should be a valid integer" in r.json()["detail"]


@pytest.mark.parametrize("k", [True, False, 2.0, "5"])
def test_k_must_be_a_json_integer(client, item_id, k):
    r = client.post("/search", json={"item_id": item_id, "k": k})
    assert r.status_code == 422, r.text
    assert "k: Input should be a valid integer" in r.json()["detail"]


def test_long_inputs_are_echoed_cut_short(client, item_id):
    long_id = "x" * 100_000
    r = client.post("/search", json={"item_id": long_id})
    assert r.status_code == 404 and len(r.text) < 1000 and "(100000 characters)" in r.json()["detail"]
    r = client.get(f"/items/{'y' * 20_000}")
    assert r.status_code == 404 and len(r.text) < 1000
    r = client.post("/search", json={"item_id": item_id, "manipulations": {"colour": "z" * 100_000}})
    assert r.status_code == 400 and len(r.text) < 2000, len(r.text)
    assert r.json()["value"].startswith("zzz") and len(r.json()["value"]) <= ECHO_LIMIT + 3
    r = client.post("/search", json={"item_id": item_id, "q" * 100_000: 1})
    assert r.status_code == 422 and len(r.text) < 2000, len(r.text)
    r = client.post("/search", json={"item_id": item_id, "text": "w" * 100_000})
    assert r.status_code == 422 and len(r.text) < 2000, len(r.text)


def test_echo_is_bounded_and_printable():
    assert echo("abc") == "'abc'"
    assert echo("\ud800") == "'\\ud800'"
    echo("\ud800").encode("utf-8")  # printable / sendable
    assert echo("a" * 1000) == "'" + "a" * (ECHO_LIMIT - 1) + "... (1000 characters)"
    msg = str(UnknownValueError("colour", "v" * 10_000, ["red"]))
    assert len(msg) < 200 and "(10000 characters)" in msg


def test_an_empty_filter_list_is_refused(client, item_id):
    r = client.post("/search", json={"item_id": item_id, "filters": {"colour": []}})
    assert r.status_code == 400
    assert "filter 'colour' has an empty list of values" in r.json()["detail"] and "black" in r.json()["detail"]


def test_an_unknown_split_is_refused(client):
    r = client.get("/items", params={"split": "nope"})
    assert r.status_code == 400 and r.json()["detail"] == "unknown split 'nope'; splits: gallery, query, train"
    assert client.get("/items", params={"split": "gallery"}).json()["total"] > 0


def test_a_negated_text_request_is_400(client, item_id):
    r = client.post("/search", json={"item_id": item_id, "text": "same but not red"})
    assert r.status_code == 400 and "negation is not supported" in r.json()["detail"]


def test_replayed_hostile_inputs_get_no_5xx(client, item_id):
    """A replay of the cases above and a few more through every body-reading route: no answer is a 5xx."""
    bodies = [b'{"k": NaN}', b'{"item_id": "\\ud800"}', b"[" * 50_000, b"\xff\xfe", b'"just a string"', b"null",
              json.dumps({"item_id": item_id, "mode": "\ud800"}, ensure_ascii=True).encode(),
              json.dumps({"item_id": item_id, "filters": {"colour": {"a": 1}}}).encode()]
    for raw in bodies:
        assert _post_json(client, raw).status_code < 500, raw[:40]
    assert client.post("/search", files={"image": ("q.png", b"x", "image/png")},
                       data={"text": b"\xed\xa0\x80".decode("latin-1")}).status_code < 500
    for path in ["/items/%ED%A0%80", "/items?split=%ED%A0%80", "/understand?text=not%20red", "/understand?text=%00",
                 "/items?offset=NaN", "/items?limit=Infinity"]:
        assert client.get(path).status_code < 500, path


# --- headers, hosts, stalled bodies --------------------------------------------------------------
def test_security_headers_on_every_answer(client):
    for path in ["/", "/health", "/items/nope", "/static/app.js", "/openapi.json"]:
        h = client.get(path).headers
        assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY", path
        csp = h["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
    docs = client.get("/docs")
    # the Swagger page's one inline script is allowed by its hash, and only it
    import base64
    import hashlib
    import re
    script = re.search(r"<script>(.*?)</script>", docs.text, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}'" in docs.headers["content-security-policy"]


def test_allowed_hosts_refuse_other_host_headers(engine):
    c = TestClient(create_app(engine, allowed_hosts=["shop.example"]))
    assert c.get("/health", headers={"host": "shop.example"}).status_code == 200
    assert c.get("/health", headers={"host": "localhost:8000"}).status_code == 200
    r = c.get("/health", headers={"host": "rebound.attacker.example"})
    assert r.status_code == 400 and r.headers["x-frame-options"] == "DENY"


@pytest.fixture
def live_server(engine):
    """A real uvicorn server (TestClient cannot send half a body) with a 0.5 s body timeout; its base port."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(engine, body_timeout=0.5), host="127.0.0.1", port=port,
                                        log_level="warning", log_config=None))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline
        time.sleep(0.05)
    yield port
    srv.should_exit = True
    t.join(timeout=10)


def _half_sent(port: int, ctype: str = "application/json", part: bytes = b'{"item_id"'):
    import socket

    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"POST /search HTTP/1.1\r\nHost: localhost\r\nContent-Type: " + ctype.encode()
              + b"\r\nContent-Length: 1000\r\n\r\n" + part)
    return c


def test_stalled_bodies_are_answered_408_and_closed(live_server, caplog):
    import time

    socks = [_half_sent(live_server) for _ in range(10)]
    t0 = time.time()
    for c in socks:
        c.settimeout(10)
        data = b""
        while chunk := c.recv(65536):  # the server closes the connection after its answer
            data += chunk
        c.close()
        assert data.startswith(b"HTTP/1.1 408 ") and b"stalled for 0.5 s" in data
    assert time.time() - t0 < 5
    gone = _half_sent(live_server)
    gone.close()
    form = _half_sent(live_server, "multipart/form-data; boundary=xx",
                      b'--xx\r\nContent-Disposition: form-data; name="text"\r\n\r\nred')
    form.close()
    time.sleep(1.0)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("stalled for 0.5 s; answered 408" in m for m in lines) == 10
    assert sum("went away before sending the whole body" in m for m in lines) == 2, lines
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_serve_prints_the_address_it_bound(tiny_pipeline):
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    root, cat, run, idx, cache = tiny_pipeline
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "vestis.cli", "serve", "--run", str(run), "--index", str(idx),
                             "--host", "0.0.0.0", "--port", "0", "--cache", str(cache)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()
        m = re.search(r"at http://0\.0\.0\.0:(\d+)/ \(all interfaces; on this machine http://127\.0\.0\.1:(\d+)/\)", first)
        assert m and m.group(1) == m.group(2) and int(m.group(1)) > 0, first
        assert "--allowed-host" in second, second
        assert httpx.get(f"http://127.0.0.1:{m.group(1)}/health", timeout=30).json()["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- the API contract ----------------------------------------------------------------------------
def test_openapi_documents_the_answers_the_api_gives(client, engine):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    search = paths["/search"]["post"]
    assert {"200", "400", "404", "408", "413", "415", "422"} <= set(search["responses"])
    body = search["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["additionalProperties"] is False
    assert body["application/json"]["schema"]["properties"]["mode"]["enum"] == engine.modes()
    manip = body["application/json"]["schema"]["properties"]["manipulations"]
    assert manip["properties"]["colour"]["enum"] == list(engine.model.schema.values("colour"))
    # the 422 body is documented as it is sent: `detail` text plus the `errors` list
    ref = search["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert spec["components"]["schemas"][ref]["properties"]["detail"]["type"] == "string"
    r = client.post("/search", json={"k": 0})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str) and r.json()["errors"][0]["loc"] == ["k"]
    image = paths["/items/{item_id}/image"]["get"]["responses"]
    assert "image/jpeg" in image["200"]["content"] and "application/json" not in image["200"]["content"]
    assert "404" in image
    split = next(x for x in paths["/items"]["get"]["parameters"] if x["name"] == "split")
    assert split["schema"]["enum"] == ["gallery", "query", "train"]


def test_a_long_mode_or_text_is_not_echoed_whole(client, item_id):
    r = client.post("/search", json={"item_id": item_id, "mode": "m" * 100_000})
    assert r.status_code == 422 and len(r.text) < 2000
    r = client.get("/understand", params={"text": "zq " * 160})
    assert r.status_code == 400 and len(r.json()["detail"].split("; words not understood")[0]) < 260
