"""Replay the hardening issue's hostile inputs against a running `vestis serve` (not a test client): every answer
must be below 500, and /health must still answer afterwards.

    .venv/bin/python benchmarks/replay_hostile.py http://127.0.0.1:8000 ITEM_ID

Prints one line per request (status, what was sent) and a summary; exits 1 if any answer was a 5xx or the server
stopped answering.
"""

import io
import json
import sys

import httpx
from PIL import Image

base, item = sys.argv[1].rstrip("/"), sys.argv[2]
c = httpx.Client(base_url=base, timeout=30)


def jpeg(size=(64, 80), orientation=None) -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    im.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


raw_bodies = {
    "NaN k": b'{"item_id": "%s", "k": NaN}' % item.encode(),
    "Infinity in manipulations": b'{"item_id": "%s", "manipulations": {"colour": Infinity}}' % item.encode(),
    "NaN filter": b'{"item_id": "%s", "filters": {"colour": NaN}}' % item.encode(),
    "NaN item id": b'{"item_id": NaN}',
    "lone surrogate text": b'{"item_id": "%s", "text": "\\ud800"}' % item.encode(),
    "lone surrogate manipulation key": b'{"item_id": "%s", "manipulations": {"\\ud800": "red"}}' % item.encode(),
    "lone surrogate extra key": b'{"item_id": "%s", "\\udfff": 1}' % item.encode(),
    "100,000 brackets": b"[" * 100_000,
    "100 kB id": json.dumps({"item_id": "x" * 100_000}).encode(),
    "k true": b'{"item_id": "%s", "k": true}' % item.encode(),
    "empty filter list": b'{"item_id": "%s", "filters": {"colour": []}}' % item.encode(),
    "not red": json.dumps({"item_id": item, "text": "not red"}).encode(),
    "accented words": json.dumps({"item_id": item, "text": "même chose en rouge"}).encode(),
    "not JSON": b"\xff\xfe\x00",
    "a JSON string": b'"hello"',
    "unknown mode": json.dumps({"item_id": item, "mode": "psychic" * 100}).encode(),
    "labels maybe": json.dumps({"item_id": item, "labels": "maybe"}).encode(),
}
answers = []
for what, body in raw_bodies.items():
    r = c.post("/search", content=body, headers={"content-type": "application/json"})
    answers.append((r.status_code, what))
forms = {
    "multipart NaN k": {"data": {"k": "NaN"}, "files": {"image": ("q.jpg", jpeg(), "image/jpeg")}},
    "multipart NaN manipulations": {"data": {"manipulations": '{"colour": NaN}'}, "files": {"image": ("q.jpg", jpeg(), "image/jpeg")}},
    "multipart surrogate text": {"data": {"text": "\udcff".encode("utf-8", "surrogatepass").decode("latin-1")},
                                 "files": {"image": ("q.jpg", jpeg(), "image/jpeg")}},
    "multipart undeclared field": {"data": {"evil": "1"}, "files": {"image": ("q.jpg", jpeg(), "image/jpeg")}},
    "not an image": {"files": {"image": ("q.jpg", b"GIF89a garbage", "image/jpeg")}},
    "truncated JPEG": {"files": {"image": ("q.jpg", jpeg()[:200], "image/jpeg")}},
    "EXIF orientation 6": {"files": {"image": ("q.jpg", jpeg((80, 64), orientation=6), "image/jpeg")}},
}
for what, kw in forms.items():
    r = c.post("/search", **kw)
    answers.append((r.status_code, what))
for path in ["/items?split=nope", "/items/%ED%A0%80", "/items/" + "x" * 5000, "/understand?text=not%20red",
             "/items?offset=NaN", "/items?limit=Infinity", "/explain"]:
    r = c.get(path) if path != "/explain" else c.post(path, files={"image": ("q.jpg", b"x", "image/jpeg")})
    answers.append((r.status_code, path[:60]))
health = c.get("/health").status_code
for status, what in answers:
    print(f"{status}  {what}")
bad = [a for a in answers if a[0] >= 500]
print(f"\n{len(answers)} requests: {len(bad)} answered 5xx; /health afterwards: {health}")
sys.exit(1 if bad or health != 200 else 0)
