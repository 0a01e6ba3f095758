"""The HTTP API and the web page over one loaded `Engine` (FastAPI).

    POST /search                 a query by item id (JSON) or uploaded photo (multipart) -> ranked items
    GET  /schema                 attributes and values, the modes this run answers, what the model can do
    GET  /items                  browse / find / draw random catalogue items
    GET  /items/{id}             one item: catalogue attributes and the model's predicted attributes
    GET  /items/{id}/image       its photo
    GET  /items/{id}/explain     activation-map overlay PNG (models with explanation maps)
    POST /explain                the same for an uploaded photo (multipart `image`)
    GET  /understand?text=...    how a free-text request maps onto the attributes (no search)
    PATCH /items/attributes      change items' attributes without re-encoding (only with --allow-writes; else 403)
    GET  /health                 liveness and what is loaded
    GET  /docs, /openapi.json    API documentation (Swagger UI served locally, no CDN)
    GET  /                       the web page (static/, vanilla JS, no external assets)

Every error in the request comes back as a 4xx JSON `{"detail": "..."}` that says what was wrong and what is valid;
uploads are bounded in bytes (checked on the Content-Length header and again while streaming) and in pixels (checked
on the image header before decoding); a body that stalls is answered 408. JSON is parsed strictly and inputs are
echoed bounded (`vestis.errors.echo`); every answer carries nosniff, no-framing and a Content-Security-Policy of
the app's own assets; `allowed_hosts` guards against DNS rebinding. The engine is used under one lock: torch, the
feature cache and the index are shared, and two cores gain nothing from interleaving them. Item-id searches that
arrive while the engine is busy are answered together (`SearchBatcher`), each exactly as it would be alone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from vestis.catalog.splits import SPLITS
from vestis.errors import ECHO_LIMIT, UnknownAttributeError, UnknownValueError, VestisError, echo
from vestis.serve.textquery import TextInterpreter, TextQueryError
from vestis.images import ImageReadError
from vestis.attribute_updates import UnknownItemsError
from vestis.vision.preprocess import image_geometry, input_box_in_photo

STATIC = Path(__file__).parent / "static"
MAX_BATCH = 8  # at most this many item-id searches answered together (`SearchBatcher`; the model runs in blocks)
MAX_UPLOAD_BYTES = 10 * 2**20
MAX_PIXELS = 20_000_000
MAX_K = 200
IMAGE_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}
IMAGE_MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp"}  # what an item's image is served as (and documented)
IMAGE_SUFFIXES = set(IMAGE_MEDIA)
EXPLAIN_CACHE = 64
DOCS_URL = "/docs"
BODY_TIMEOUT = 10.0  # seconds a request body may stall between two chunks
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# only the app's own assets: no inline script or style (on the Swagger page: its inline script by hash, and inline
# style), no other origin, never inside a frame; images also from data: (Swagger's icons), blob: (an upload's preview)
CSP = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
log = logging.getLogger("uvicorn.error")  # one line in the server's log, in its format


class SearchRequest(BaseModel):
    """The body of POST /search (JSON), or the form fields next to an uploaded `image` (multipart, with
    `manipulations` and `filters` as JSON strings)."""

    model_config = ConfigDict(extra="forbid")
    item_id: str | None = Field(None, description="a catalogue item id (or upload an image instead)")
    manipulations: dict[str, str] = Field(default_factory=dict, description="{attribute: new value}")
    text: str | None = Field(None, max_length=500, description='a request in words, e.g. "same but navy blue, for women"')
    mode: str = Field("manipulate", max_length=64, description="manipulate | attribute:<name> | same_item | visual | diverse")
    # strict: `true` or 2.5 is not a number of results (a multipart `k` is converted from its text first)
    k: int = Field(30, ge=1, le=MAX_K, strict=True, description=f"results to return (1-{MAX_K})")
    filters: dict[str, str | list[str]] = Field(default_factory=dict, description="only items with these values")
    labels: Literal["on", "off"] = Field("on", description="on: rank with the catalogue's labels (requested values "
                                         "as constraints, the query's other attributes as preferences); off: vision only")
    crop: Literal["on", "off"] = Field("off", description="an uploaded photo: on: cut to the garment found in it before "
                                       "encoding (the answer's query.upload.crop is the box used); off: the whole photo")


class ErrorBody(BaseModel):
    """Every 4xx answer: `detail` says what was wrong and what is valid; some answers add data (`attribute`,
    `value`, `valid` for an unknown attribute or value)."""

    model_config = ConfigDict(extra="allow")
    detail: str = Field(description="what was wrong, and what is valid")


class FieldError(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    loc: list[str | int]
    msg: str


class ValidationErrorBody(ErrorBody):
    """A 422: the fields that failed validation, in words (`detail`) and as data (`errors`, inputs clipped)."""

    errors: list[FieldError] = Field(default_factory=list)


ANSWERS = {
    400: "a request that cannot be answered: an unknown attribute, value, mode or split, a text request that maps "
         "onto no value, a body that is not valid JSON",
    403: "writes are off: the server was started without --allow-writes",
    404: "an unknown item id, or an item whose image file is missing",
    408: "the request body stalled",
    413: "a body or image over the size or pixel limit",
    415: "a body that is neither application/json nor multipart/form-data",
    422: "fields that fail validation (a wrong type, a number out of range, an unknown field, an unreadable image)",
}


def search_body_schema(engine) -> dict:
    """SearchRequest's JSON schema with what this run accepts spelled out: its modes, and per attribute the values a
    manipulation or filter may name (so a client, or a schema-driven test, sees what is valid)."""
    out = SearchRequest.model_json_schema()
    props = out["properties"]
    props["mode"]["enum"] = engine.modes()
    model_schema, cat_schema = engine.model.schema, engine.catalog.schema
    props["manipulations"].update(additionalProperties=False, properties={
        a: {"enum": list(model_schema.values(a))} for a in model_schema.attributes})
    props["filters"].update(additionalProperties=False, properties={
        a: {"anyOf": [{"enum": list(cat_schema.values(a))},
                      {"type": "array", "minItems": 1, "items": {"enum": list(cat_schema.values(a))}}]}
        for a in cat_schema.attributes})
    return out


def update_body_schema(engine) -> dict:
    """The body of PATCH /items/attributes, with the catalogue's attributes and values spelled out."""
    cs = engine.catalog.schema
    return {"type": "object", "required": ["updates"], "additionalProperties": False, "properties": {"updates": {
        "type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["id", "attributes"], "additionalProperties": False, "properties": {
                "id": {"type": "string", "minLength": 1, "description": "an indexed item id"},
                "attributes": {"type": "object", "minProperties": 1, "additionalProperties": False,
                               "description": "{attribute: new value, or null / \"unspecified\" to clear the label}",
                               "properties": {a: {"anyOf": [{"enum": [*cs.values(a), "unspecified"]}, {"type": "null"}]}
                                              for a in cs.attributes}}}}}}}


def answers(*codes: int) -> dict:
    """The documented 4xx answers of a route (OpenAPI `responses`)."""
    return {c: {"model": ValidationErrorBody if c == 422 else ErrorBody, "description": ANSWERS[c]} for c in codes}


IMAGE_TYPES = {t: {"schema": {"type": "string", "format": "binary"}} for t in dict.fromkeys(IMAGE_MEDIA.values())}
PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}


class BodyTooLarge(Exception):
    pass


def parse_json(raw: bytes | str, what: str = "the body"):
    """Strict JSON: no NaN or Infinity (not JSON, and not answerable), no lone surrogates (not Unicode), nesting
    only as deep as the parser goes without running out of stack; anything else is a 400 that says why."""

    def no_constant(name):
        raise ValueError(f"{name} is not a JSON number")

    try:
        value = json.loads(raw, parse_constant=no_constant)
    except RecursionError:
        raise HTTPException(400, f"{what} is not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError and the constants above
        raise HTTPException(400, f"{what} is not valid JSON: {str(e)[:200]}") from None
    stack = [value]
    while stack:  # iterative: the value may be nested as deep as the parser allowed
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise HTTPException(400, f"{what} has a string with a lone surrogate escape ({echo(v, 40)}), "
                                         f"which is not valid Unicode") from None
    return value


class _Started:
    """An ASGI `send` that remembers whether the response has started: a middleware can still answer an error
    of its own until then."""

    def __init__(self, send):
        self.send, self.started = send, False

    async def __call__(self, msg):
        if msg["type"] == "http.response.start":
            self.started = True
        await self.send(msg)


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, from the Content-Length header before any
    byte is read, or as soon as a streamed (chunked) body passes the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body over the limit of {self.limit} bytes"
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    too_big = int(v) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await JSONResponse({"detail": message}, 413)(scope, receive, send)
        seen, tracked = 0, _Started(send)

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(message)
            return msg

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if not tracked.started:
                await JSONResponse({"detail": message}, 413)(scope, receive, send)


class BodyStalled(Exception):
    pass


class BodyTimeout:
    """ASGI middleware: a request body that stalls for `timeout` seconds between two chunks is answered 408 (the
    server then closes the connection); a client that goes away mid-body is one line in the log, not a
    traceback."""

    def __init__(self, app, timeout: float):
        self.app, self.timeout = app, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body_done, tracked = False, _Started(send)

        async def timed():
            nonlocal body_done
            if body_done:  # after the body, receive() waits for a disconnect: no deadline
                return await receive()
            try:  # asyncio.timeout, not wait_for: wait_for wraps every receive() in a task of its own
                async with asyncio.timeout(self.timeout):
                    msg = await receive()
            except TimeoutError:
                raise BodyStalled() from None
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                body_done = True
            return msg

        where = f"{scope.get('method')} {scope.get('path')} from {_client(scope)}"
        try:
            await self.app(scope, timed, tracked)
        except BodyStalled:
            log.warning("vestis: %s: the request body stalled for %g s; answered 408", where, self.timeout)
            if not tracked.started:
                await JSONResponse({"detail": f"the request body stalled for {self.timeout:g} s"}, 408,
                                   headers={"Connection": "close"})(scope, receive, send)
        except ClientDisconnect:
            log.warning("vestis: %s: the client went away before sending the whole body", where)


def _client(scope) -> str:
    c = scope.get("client")
    return f"{c[0]}:{c[1]}" if c else "?"


class SecurityHeaders:
    """ASGI middleware: nosniff, no framing, no referrer, and a Content-Security-Policy on every answer; on the
    pages in `inline_pages` (FastAPI's Swagger page) the inline scripts are allowed by their sha256."""

    def __init__(self, app, inline_pages=()):
        self.app, self.inline_pages = app, set(inline_pages)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        inline = scope.get("path") in self.inline_pages
        held: list[dict] = []

        def headers(msg, csp):
            extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                     (b"referrer-policy", b"no-referrer"), (b"content-security-policy", csp.encode())]
            names = {k for k, _ in extra}
            return {**msg, "headers": [(k, v) for k, v in msg.get("headers", []) if k.lower() not in names] + extra}

        async def send_with_headers(msg):
            if not inline:
                await send(headers(msg, CSP) if msg["type"] == "http.response.start" else msg)
                return
            held.append(msg)  # a small HTML page: hold it to hash its inline scripts
            if msg["type"] == "http.response.body" and not msg.get("more_body", False):
                body = b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body")
                hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(m).digest()).decode()}'"
                                  for m in re.findall(rb"<script>(.*?)</script>", body, re.S))
                # Swagger UI sets style attributes as it renders; on this page only, inline style is allowed
                csp = CSP + "; style-src 'self' 'unsafe-inline'" + (f"; script-src 'self' {hashes}" if hashes else "")
                await send(headers(held[0], csp))
                await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_with_headers)


class _Replay(Exception):
    """The fast path does not answer this request: the full application does (from the same body)."""


class SearchFastPath:
    """ASGI middleware for the hot route, POST /search with a JSON body: the same parsing (`parse_json`), the same
    validation (`SearchRequest`), the same `Service.search` and the same encoding (`FastJSONResponse`) as the
    route, without FastAPI's routing, dependency and exception-handling layers.

    It answers only what succeeds: any other outcome (invalid JSON, a validation error, an unknown item, an error
    of the engine, another content type) is handed to the application with the body it read, which answers
    exactly as it would have (the search is read-only, so asking again changes nothing)."""

    def __init__(self, app, service: "Service"):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/search" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        ctype = b""
        for k, v in scope.get("headers", ()):
            if k == b"content-type":
                ctype = v
                break
        if not ctype.startswith(b"application/json"):
            return await self.app(scope, receive, send)
        messages = []
        while True:
            msg = await receive()
            messages.append(msg)
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                break
        try:
            if msg["type"] != "http.request":
                raise _Replay()
            answer = await self._answer(b"".join(m.get("body", b"") for m in messages))
        except Exception:  # noqa: BLE001 - whatever it was, the application answers it (or reports it) itself
            return await self.app(scope, self._replay(messages, receive), send)
        await FastJSONResponse(answer)(scope, receive, send)

    async def _answer(self, body: bytes) -> dict:
        fields = parse_json(body)
        if not isinstance(fields, dict):
            raise _Replay()
        req = SearchRequest.model_validate(fields)
        # off the event loop, as the route does: the loop reads and writes other requests meanwhile (torch and FAISS
        # release the GIL); run inline on the loop it cost as much CPU and served fewer answers a second
        return await self.service.search_async(req)

    @staticmethod
    def _replay(messages: list, receive):
        pending = list(messages)

        async def replayed():
            return pending.pop(0) if pending else await receive()

        return replayed


class SearchBatcher:
    """Concurrent item-id searches answered together. A request that arrives while a batch is being computed waits
    for the next one, and every request that waited is answered by one `Service.search_many` call (at most
    `max_batch`; one batch at a time, in a worker thread): one stack of feature maps, one pass of the model and one
    index search per probe instead of one each. Nothing waits for company: a lone request starts at once. Each
    answer is exactly the one-at-a-time answer (`Engine.search_batch`)."""

    def __init__(self, service: "Service", max_batch: int):
        self.service, self.max_batch = service, max_batch
        self._pending: list[tuple] = []  # (request, future, its event loop)
        self._lock = threading.Lock()
        self._running = False
        self.batches = self.searches = 0  # how many batches answered how many requests (tests, logs)

    async def search(self, req: SearchRequest) -> dict:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._pending.append((req, future, loop))
            start, self._running = not self._running, True
        if start:
            loop.run_in_executor(None, self._drain)
        return await future

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
                if not batch:
                    self._running = False
                    return
            try:
                answers = self.service.search_many([req for req, _, _ in batch])
            except BaseException as e:  # noqa: BLE001 - handed to every waiting request, which reports it
                answers = [e] * len(batch)
            self.batches += 1
            self.searches += len(batch)
            for (_, future, loop), answer in zip(batch, answers):
                try:
                    loop.call_soon_threadsafe(_settle, future, answer)
                except RuntimeError:  # the loop has closed (shutdown): nobody waits
                    pass


def _settle(future: asyncio.Future, answer) -> None:
    if future.cancelled():  # the client went away
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)


class Service:
    """What the routes share: the engine, its lock, the text interpreter, and item look-ups."""

    def __init__(self, engine, *, max_upload_bytes: int, max_pixels: int, image_roots, allow_writes: bool = False):
        self.engine = engine
        self.allow_writes = allow_writes
        self.lock = threading.Lock()
        self.schema = engine.model.schema
        self.text = TextInterpreter(self.schema)
        self.max_upload_bytes, self.max_pixels = max_upload_bytes, max_pixels
        self.indexed = set(engine.spaces["main"].ids())
        self.browsable = [it for it in engine.catalog if it.image is not None and Path(it.image).is_file()]
        if image_roots is None:
            p = engine.catalog.path
            image_roots = [Path(p) if Path(p).is_dir() else Path(p).parent] if p else []
        self.image_roots = [Path(r).resolve() for r in image_roots]
        catalog = engine.catalog
        self.splits = sorted({catalog.split_of(it.id) for it in catalog} | set(SPLITS))
        self._explained: OrderedDict[tuple[str, str | None], bytes] = OrderedDict()  # (item, attribute)
        self._cache_lock = threading.Lock()
        self._item_rows: dict[str, tuple] = {}  # item id -> (the Item, its JSON): see item_json
        self._image_paths: dict[str, tuple] = {}  # item id -> (the Item, its checked image path): see image_path
        self.batcher = SearchBatcher(self, MAX_BATCH)

    async def search_async(self, req: SearchRequest, image: bytes | None = None) -> dict:
        """`search` off the event loop: an item-id request through the batcher (answered with the requests that
        arrive with it), an upload in the thread pool."""
        if image is None and req.item_id is not None:
            return await self.batcher.search(req)
        return await run_in_threadpool(self.search, req, image)

    def warm_up(self) -> str | None:
        """Answer one search so the first user does not wait for the feature cache's index to load; returns
        what went wrong, if anything (the server still starts)."""
        ids = [it.id for it in self.browsable[:1]]
        if not ids:
            return "the catalogue has no item with an image file"
        try:
            self.search(SearchRequest(item_id=ids[0], k=1, mode=self.engine.modes()[0]), None)
        except (HTTPException, VestisError) as e:
            return str(getattr(e, "detail", e))
        return None

    def prepare_items(self, limit: int | None = None) -> int:
        """Check the image path and build the answer row of the catalogue's items (the first `limit`; None: all)
        now, as a query or a hit would on first use, so that serving starts with them kept (a forked worker shares
        them). Returns how many have a servable image."""
        n = 0
        for it in self.engine.catalog.items[:limit]:
            self._item_row(it)
            try:
                self.image_path(it)
            except HTTPException:
                continue
            n += 1
        return n

    # --- items -----------------------------------------------------------------------------------
    def item(self, item_id: str):
        it = self.engine.catalog.by_id.get(item_id)
        if it is None:
            raise HTTPException(404, f"unknown item id {echo(item_id)} (GET /items lists the catalogue's "
                                     f"{len(self.engine.catalog)} items)")
        return it

    def image_path(self, item) -> Path:
        """The item's image file, refusing anything that is not an image file inside the catalogue's folder. The
        resolved, checked path is kept per item (resolving walks every folder of the path); whether the file
        exists is asked every time."""
        kept = self._image_paths.get(item.id)
        if kept is not None and kept[0] is item:
            p = kept[1]
            if not p.is_file():
                raise HTTPException(404, f"item {echo(item.id)}: image file {p.name} is missing")
            return p
        p = self._check_image_path(item)
        self._image_paths[item.id] = (item, p)
        return p

    def _check_image_path(self, item) -> Path:
        if item.image is None:
            raise HTTPException(404, f"item {echo(item.id)} has no image")
        p = Path(item.image).resolve()
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise HTTPException(404, f"item {echo(item.id)}: {p.name} is not an image file")
        if self.image_roots and not any(p.is_relative_to(r) for r in self.image_roots):
            raise HTTPException(404, f"item {echo(item.id)}: its image lies outside the catalogue's folder")
        if not p.is_file():
            raise HTTPException(404, f"item {echo(item.id)}: image file {p.name} is missing")
        return p

    def item_json(self, it) -> dict:
        """An item's JSON (a fresh dict: callers add to it). Prepared once per item and kept (`_item_rows`), since
        every answer lists 30 of them; attribute updates clear the kept ones (`update_attributes`)."""
        row = self._item_row(it)
        return {**row, "attributes": dict(row["attributes"])}

    def _item_row(self, it) -> dict:
        """The kept JSON of an item, shared: read it, never change it (`item_json` gives a copy to change)."""
        row = self._item_rows.get(it.id)
        if row is None or row[0] is not it:  # (the catalogue replaces an item whose attributes change)
            iid = quote(it.id, safe="")
            row = self._item_rows[it.id] = (it, {
                "id": it.id, "attributes": dict(it.attributes), "split": self.engine.catalog.split_of(it.id),
                "indexed": it.id in self.indexed, "image_url": f"/items/{iid}/image",
                "explain_url": f"/items/{iid}/explain" if self.engine.model.explains else None})
        return row[1]

    # --- writes ----------------------------------------------------------------------------------
    def update_attributes(self, body) -> dict:
        """PATCH /items/attributes: `vestis.attribute_updates` on the served index, under the engine's lock (the
        spaces and the catalogue are swapped while no search runs), then the item listings refreshed."""
        from vestis.attribute_updates import parse_rows, update_attributes

        if not self.allow_writes:
            raise HTTPException(403, "writes are off: this server was started without --allow-writes, so attributes "
                                     "cannot be changed over HTTP (or use `vestis index --update-attributes FILE`)")
        if not isinstance(body, dict) or set(body) != {"updates"}:
            raise HTTPException(400, 'the body must be {"updates": [{"id": ..., "attributes": {attribute: value or '
                                     'null}}, ...]}')
        changes = parse_rows(body["updates"], where="updates")
        if self.engine.index_dir is None:
            raise HTTPException(400, "this engine was not loaded from an index directory; nothing to update")
        with self.lock:
            result = update_attributes(self.engine, self.engine.index_dir, changes)
            self.browsable = [it for it in self.engine.catalog if it.image is not None and Path(it.image).is_file()]
            for iid in changes:  # (item_json / image_path also notice the replaced Item objects)
                self._item_rows.pop(iid, None)
                self._image_paths.pop(iid, None)
        log.info("vestis: updated the attributes of %d item(s) (generation %s)", result["updated"], result["generation"])
        return result

    # --- uploads ---------------------------------------------------------------------------------
    def check_image(self, data: bytes) -> None:
        """Refuse what is not an image we read, or is too large, from the header alone (no decoding)."""
        from PIL import Image, UnidentifiedImageError

        if not data:
            raise HTTPException(422, "the uploaded image is empty")
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format, im.size
        except Image.DecompressionBombError as e:
            raise HTTPException(413, f"image is over the pixel limit of {self.max_pixels}: {e}") from None
        except UnidentifiedImageError:
            raise HTTPException(422, "the upload is not an image vestis can read; send JPEG, PNG, WebP, GIF or BMP") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise HTTPException(422, f"the uploaded image is corrupt: {e}") from None
        if fmt not in IMAGE_FORMATS:
            raise HTTPException(422, f"image format {fmt} is not accepted; send JPEG, PNG, WebP, GIF or BMP")
        if w * h > self.max_pixels:
            raise HTTPException(413, f"image is {w}x{h} pixels, over the limit of {self.max_pixels}")

    # --- search ----------------------------------------------------------------------------------
    def search(self, req: SearchRequest, image: bytes | None) -> dict:
        """Answer POST /search through `Engine.search`, which checks the request (mode, manipulations, filters,
        k, one query); this adds what is the API's own: the free-text request, the 404 for an unknown item, the
        upload limits, and the per-hit match flags against the target."""
        t0 = time.perf_counter()
        manip, understood, item = self._prepare(req, image)
        with self.lock:
            result = self.engine.search(image=image, item_id=req.item_id, manipulations=manip, k=req.k,
                                        filters=req.filters or None, mode=req.mode, labels=req.labels == "on",
                                        crop=req.crop == "on" and image is not None)
        return self._answer(req, image, manip, understood, item, result, t0)

    def search_many(self, reqs: list[SearchRequest]) -> list:
        """Several item-id requests answered together (`Engine.search_batch`: one model pass and one index search
        per probe for all of them); per request its answer, exactly `search`'s, or the exception `search` raises."""
        t0 = time.perf_counter()
        out: list = [None] * len(reqs)
        ready = []
        for i, req in enumerate(reqs):
            try:
                ready.append((i, req, *self._prepare(req, None)))
            except Exception as e:  # noqa: BLE001 - this request's own failure, reported to it alone
                out[i] = e
        if ready:
            with self.lock:
                results = self.engine.search_batch([
                    {"item_id": req.item_id, "manipulations": manip, "k": req.k, "filters": req.filters or None,
                     "mode": req.mode, "labels": req.labels == "on"} for _, req, manip, _, _ in ready])
            for (i, req, manip, understood, item), result in zip(ready, results):
                try:
                    if isinstance(result, Exception):
                        raise result
                    out[i] = self._answer(req, None, manip, understood, item, result, t0)
                except Exception as e:  # noqa: BLE001 - as above
                    out[i] = e
        return out

    def _prepare(self, req: SearchRequest, image: bytes | None) -> tuple:
        """What a search request asks before the engine runs: (manipulations with the text's, the text's reading,
        the query item); the API's own errors (text against mode, an unknown item, an unreadable upload)."""
        manip = dict(req.manipulations)
        understood = None
        if req.text is not None and req.text.strip():
            if req.mode != "manipulate":
                raise HTTPException(400, f"a text request changes attributes, which only mode 'manipulate' does "
                                         f"(got mode {req.mode!r})")
            understood = self.text.parse(req.text)
            for a, v in understood.manipulations.items():
                if a in manip and manip[a] != v:
                    raise HTTPException(400, f"the text asks for {a}={v} but manipulations set {a}={manip[a]}")
            manip = {**understood.manipulations, **manip}
        item = None
        if req.item_id is not None:
            item = self.item(req.item_id)
            self.image_path(item)
        elif image is not None:
            self.check_image(image)
        return manip, understood, item

    def _answer(self, req: SearchRequest, image, manip, understood, item, result, t0: float) -> dict:
        """The JSON answer to a search request from the engine's `Result`."""
        eng = self.engine
        target = self.target(item, result.predicted, manip, req.mode)
        geometry = None
        if any(g.box is not None for g in result.groups):  # trunk-input pixels -> the query photo's pixels
            geometry = image_geometry(item.image if item else image, eng.spec.resolution)
        groups = [{"label": g.label, "score": g.score,
                   "box": [round(v, 1) for v in input_box_in_photo(g.box, geometry)] if g.box is not None else None,
                   "results": self.hits_json(g.hits, target)} for g in result.groups]
        query = {"item": self.item_json(item) if item else None, "predicted": result.predicted,
                 "upload": None if item else {"bytes": len(image), "crop": result.crop},
                 "size": [geometry.src_w, geometry.src_h] if geometry else None}
        # one group (every flat mode): `results` is that group's list, the same rows (serialised twice, built once)
        results = groups[0]["results"] if len(groups) == 1 else \
            self.hits_json(result.hits, target)
        return {"query": query, "mode": req.mode, "k": req.k, "manipulations": manip, "filters": req.filters,
                "understood": understood.to_json() if understood else None, "target": target,
                "results": results, "groups": groups,
                "labels": result.labels, "note": result.note,
                "took_ms": round((time.perf_counter() - t0) * 1000, 2)}

    def hits_json(self, hits, target: dict) -> list[dict]:
        """The answer's rows of `hits`, ranked from 1: each the item's kept JSON (shared, not copied: an answer is
        encoded, never changed), its rank, score and match flags against `target`. The target's (attribute,
        value) pairs are read once per list, not once per hit."""
        by_id, item_row = self.engine.catalog.by_id, self._item_row
        wanted = [(a, t["value"]) for a, t in target.items()]
        out = []
        for rank, h in enumerate(hits, 1):
            it = by_id.get(h.id)
            attrs = h.attributes
            matches = {a: attrs.get(a) == v for a, v in wanted}
            row = {**(item_row(it) if it else {"id": h.id, "attributes": dict(attrs)}),
                   "rank": rank, "score": round(h.score, 6), "matches": matches, "n_matched": sum(matches.values())}
            if h.part is not None:
                row["part"] = h.part
            out.append(row)
        return out

    def target(self, item, predicted, manip, mode) -> dict:
        """The attribute vector results are compared with: the query's catalogue values (predicted ones where
        the catalogue has none, or for an upload), with the manipulations applied; one attribute in
        attribute:<name> mode."""
        out = {}
        for a in self.schema.attributes:
            if item is not None and a in item.attributes:
                out[a] = {"value": item.attributes[a], "source": "catalogue"}
            elif predicted and a in predicted and predicted[a]["value"] is not None:
                out[a] = {"value": predicted[a]["value"], "source": "predicted"}
        for a, v in manip.items():
            out[a] = {"value": v, "source": "requested"}
        if mode.startswith("attribute:"):
            a = mode.split(":", 1)[1]
            out = {a: out[a]} if a in out else {}
        return out

    def explain_png(self, item=None, image: bytes | None = None, attribute: str | None = None) -> bytes:
        """The activation-map overlay of a catalogue item (cached) or of an uploaded photo, as PNG bytes; with
        `attribute`, that attribute's map alone (what "similar in <attribute>" looked at)."""
        from dataclasses import replace

        from vestis.overlay import render_overlay

        model = self.engine.model
        if not model.explains:
            raise HTTPException(400, f"this run's model ({model.name}) has no explanation maps; FashionSearchNet runs "
                                     f"(attribute activation maps), attribute_baseline runs (class activation "
                                     f"maps) and agmlan / asen / csn runs (attention maps) have them")
        if attribute is not None:
            model.schema.check_attribute(attribute)
        key = (item.id, attribute) if item is not None else None
        if key is not None:
            with self._cache_lock:
                if key in self._explained:
                    self._explained.move_to_end(key)
                    return self._explained[key]
            source = self.image_path(item)
        else:
            self.check_image(image)
            source = image
        with self.lock:
            maps = self.engine.item_maps([item.id]) if item is not None else self.engine.encode_images([image])
            expl = model.explain(maps)[0]
        if attribute is not None:
            if attribute not in expl.names:
                raise HTTPException(400, f"this run's explanations have no map of {echo(attribute)}; they have: "
                                         f"{', '.join(expl.names)}")
            expl = replace(expl, regions=[expl.region(attribute)])
        png = render_overlay(source, expl, self.engine.spec.resolution)
        if key is not None:
            with self._cache_lock:
                self._explained[key] = png
                while len(self._explained) > EXPLAIN_CACHE:
                    self._explained.popitem(last=False)
        return png


class FastJSONResponse(JSONResponse):
    """JSONResponse encoded by orjson (UTF-8, compact, the same values; NaN would become null, and no answer holds
    one); json.dumps where orjson is not installed."""

    def render(self, content) -> bytes:
        try:
            import orjson
        except ImportError:
            return super().render(content)
        return orjson.dumps(content)


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status)


def create_app(engine, *, max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
               image_roots=None, title: str = "vestis", allowed_hosts=None,
               body_timeout: float = BODY_TIMEOUT, allow_writes: bool = False) -> FastAPI:
    """The FastAPI application for a loaded `vestis.engine.Engine`. `allowed_hosts`: the Host header names it
    answers (with the loopback names), against DNS rebinding; None answers any. `allow_writes`: answer
    PATCH /items/attributes (off: 403)."""
    from fastapi_offline import FastAPIOffline

    svc = Service(engine, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, image_roots=image_roots,
                  allow_writes=allow_writes)
    attr_names = list(engine.model.schema.attributes)  # what an explanation may be narrowed to
    app = FastAPIOffline(title=title, version="1", docs_url=DOCS_URL, static_url="/static-docs", redoc_url=None,
                         description="Attribute-aware search over a fashion catalogue: 'like this, but in navy blue'.")
    app.state.service = svc
    app.add_middleware(SearchFastPath, service=svc)  # innermost: inside the body limits, host and header checks
    app.add_middleware(BodyLimit, limit=max_upload_bytes + 64 * 1024)
    app.add_middleware(BodyTimeout, timeout=body_timeout)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*allowed_hosts, *LOOPBACK_HOSTS])
    app.add_middleware(SecurityHeaders, inline_pages=[DOCS_URL, DOCS_URL + "/oauth2-redirect"])  # outermost: on every answer

    @app.exception_handler(UnknownAttributeError)
    async def _unknown_attribute(request, e: UnknownAttributeError):
        return _error(400, str(e), attribute=_clip(e.attribute), valid=e.valid)

    @app.exception_handler(UnknownValueError)
    async def _unknown_value(request, e: UnknownValueError):
        return _error(400, str(e), attribute=_clip(e.attribute), value=_clip(e.value), valid=e.valid)

    @app.exception_handler(ImageReadError)
    async def _bad_image(request, e: ImageReadError):
        return _error(413 if "over the limit" in str(e) else 422, str(e))

    @app.exception_handler(UnknownItemsError)
    async def _unknown_items(request, e: UnknownItemsError):
        return _error(404, str(e))

    @app.exception_handler(TextQueryError)
    async def _bad_text(request, e: TextQueryError):
        return _error(400, str(e))

    @app.exception_handler(VestisError)
    async def _vestis(request, e: VestisError):
        return _error(400, str(e))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request, e: BodyTooLarge):
        return _error(413, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        return _error(422, _describe(e.errors()), errors=_errors_json(e.errors()))

    # --- routes --------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    def health():
        return {"status": "ok", "run_id": engine.info.run_id, "model": engine.model.name,
                "catalogue": engine.catalog.name, "items": len(engine.catalog), "indexed": len(svc.indexed),
                # item-id searches this process answered, and in how many batches (`SearchBatcher`)
                "batched": {"searches": svc.batcher.searches, "batches": svc.batcher.batches}}

    @app.get("/schema")
    def schema():
        cs = engine.catalog.schema
        return {"run_id": engine.info.run_id, "model": engine.model.name,
                "attributes": [{"name": a, "values": list(svc.schema.values(a))} for a in svc.schema.attributes],
                "filters": [{"name": a, "values": list(cs.values(a))} for a in cs.attributes],
                "modes": engine.modes(), "unavailable_modes": engine.unavailable_modes(),
                "supports_manipulation": engine.model.supports_manipulation,
                "predicts_attributes": engine.model.predicts_attributes, "explains": engine.model.explains,
                "max_k": MAX_K, "max_upload_bytes": svc.max_upload_bytes, "max_pixels": svc.max_pixels}

    @app.get("/understand", responses=answers(400, 422))
    def understand(text: str = Query(..., max_length=500, description='e.g. "same but navy blue, for women"')):
        """How a free-text request maps onto this run's attributes (what POST /search would apply)."""
        return svc.text.parse(text).to_json()

    @app.get("/items", responses=answers(400, 422))
    def items(q: str | None = Query(None, max_length=200, description="text in the id or an attribute value"),
              offset: int = Query(0, ge=0), limit: int = Query(48, ge=1, le=500),
              random_: bool = Query(False, alias="random", description="draw `limit` items at random"),
              seed: int | None = Query(None, description="seed for random draws"),
              split: str | None = Query(None, description="only items of this split",
                                        json_schema_extra={"enum": svc.splits})):
        pool = svc.browsable
        if split is not None and split not in svc.splits:
            raise HTTPException(400, f"unknown split {echo(split)}; splits: {', '.join(svc.splits)}")
        if split:
            pool = [it for it in pool if engine.catalog.split_of(it.id) == split]
        if q:
            needle = q.lower()
            pool = [it for it in pool if needle in it.id.lower()
                    or any(needle in v.lower() for v in it.attributes.values())]
        if random_:
            chosen = random.Random(seed).sample(pool, min(limit, len(pool)))
        else:
            chosen = pool[offset:offset + limit]
        return {"total": len(pool), "offset": 0 if random_ else offset, "items": [svc.item_json(it) for it in chosen]}

    @app.patch("/items/attributes", responses=answers(400, 403, 404, 408, 413, 415, 422), openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": update_body_schema(engine)}}}})
    async def update_item_attributes(request: Request):
        """Change indexed items' catalogue attributes without re-encoding images (filters, catalogue-aware ranking
        and the answers' attributes all follow); atomic, and checked first: an unknown id (404), attribute or value
        (400) changes nothing. Only with `vestis serve --allow-writes` (else 403)."""
        if not svc.allow_writes:  # before reading the body
            raise HTTPException(403, "writes are off: this server was started without --allow-writes, so attributes "
                                     "cannot be changed over HTTP (or use `vestis index --update-attributes FILE`)")
        ctype = request.headers.get("content-type", "")
        if ctype and not ctype.startswith("application/json"):
            raise HTTPException(415, f"send application/json, not {ctype}")
        return JSONResponse(await run_in_threadpool(svc.update_attributes, parse_json(await request.body())))

    @app.get("/items/{item_id:path}/image", response_class=Response, responses={
        200: {"content": IMAGE_TYPES, "description": "the item's photo (JPEG for most catalogues)"}, **answers(404)})
    def item_image(item_id: str):
        p = svc.image_path(svc.item(item_id))
        return FileResponse(p, media_type=IMAGE_MEDIA[p.suffix.lower()],
                            headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/items/{item_id:path}/explain", response_class=Response,
             responses={200: {"content": PNG, "description": "the overlay"}, **answers(400, 404)})
    async def item_explain(item_id: str, attribute: str | None = Query(
            None, max_length=200, description="only this attribute's map (e.g. for a `attribute:<name>` search)",
            json_schema_extra={"enum": attr_names})):
        png = await run_in_threadpool(svc.explain_png, svc.item(item_id), None, attribute)
        return Response(png, media_type="image/png")

    @app.post("/explain", response_class=Response,
              responses={200: {"content": PNG, "description": "the overlay"}, **answers(400, 408, 413, 415, 422)},
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["image"], "additionalProperties": False,
                  "properties": {"image": {"type": "string", "format": "binary"},
                                 "attribute": {"type": "string", "enum": attr_names}}}}}}})
    async def explain_upload(request: Request):
        """The activation-map overlay of an uploaded photo (multipart field `image`; `attribute`: only that map)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send the photo as multipart/form-data with a field `image`")
        fields, image = await _read_form(request, svc.max_upload_bytes, ("attribute",))
        if set(fields) - {"attribute"} or image is None:
            raise HTTPException(422, "POST /explain takes the multipart fields `image` and, optionally, `attribute`")
        png = await run_in_threadpool(svc.explain_png, None, image, fields.get("attribute"))
        return Response(png, media_type="image/png")

    @app.get("/items/{item_id:path}", responses=answers(404))
    async def item_detail(item_id: str):
        item = svc.item(item_id)
        svc.image_path(item)

        def predict():
            with svc.lock:
                return engine.predict_attributes(engine.item_maps([item.id]))

        pred = await run_in_threadpool(predict)
        return {**svc.item_json(item), "predicted": pred[0] if pred else None}

    @app.post("/search", responses=answers(400, 404, 408, 413, 415, 422), openapi_extra={"requestBody": {
        "required": True, "content": {
            "application/json": {"schema": search_body_schema(engine)},
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "additionalProperties": False,
                                               "properties": {
                "image": {"type": "string", "format": "binary"},
                "manipulations": {"type": "string", "description": "JSON object {attribute: value}"},
                "filters": {"type": "string", "description": "JSON object {attribute: value or [values]}"},
                "text": {"type": "string", "maxLength": 500}, "mode": {"type": "string", "enum": engine.modes()},
                "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
                "labels": {"type": "string", "enum": ["on", "off"]}}}}}}})
    async def search(request: Request):
        ctype = request.headers.get("content-type", "")
        image = None
        try:
            if ctype.startswith("multipart/form-data"):
                fields, image = await _read_form(request, svc.max_upload_bytes)
            elif ctype.startswith("application/json") or not ctype:
                fields = parse_json(await request.body())
                if not isinstance(fields, dict):
                    raise HTTPException(400, "the JSON body must be an object, e.g. {\"item_id\": \"...\"}")
            else:
                raise HTTPException(415, f"send application/json or multipart/form-data, not {ctype}")
            req = SearchRequest.model_validate(fields)
        except ValidationError as e:
            return _error(422, _describe(e.errors()), errors=_errors_json(e.errors()))
        # plain JSON types only: skip FastAPI's jsonable_encoder (which costs more than the search itself) and
        # encode with orjson, several times faster than json.dumps on an answer of 30 items (same JSON values)
        return FastJSONResponse(await svc.search_async(req, image))

    return app


SEARCH_TEXT_FIELDS = ("text", "mode", "item_id", "labels", "crop")


async def _read_form(request: Request, max_bytes: int, text_fields=SEARCH_TEXT_FIELDS) -> tuple[dict, bytes]:
    """The multipart form's fields (the JSON, integer and `text_fields` ones POST /search takes) and its image."""
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=64 * 1024)
    except (HTTPException, BodyTooLarge, BodyStalled, ClientDisconnect):
        raise
    except Exception as e:  # starlette's multipart errors (malformed bodies)
        raise HTTPException(400, f"cannot read the multipart form: {e}") from None
    fields: dict[str, Any] = {}
    image = None
    for key, value in form.multi_items():
        if key == "image":
            if isinstance(value, str):
                raise HTTPException(422, "`image` must be a file upload")
            data = await value.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise HTTPException(413, f"the uploaded image is over the limit of {max_bytes} bytes")
            image = data
        elif key in ("manipulations", "filters"):
            if value == "":
                continue
            try:
                fields[key] = parse_json(value, "it")
            except HTTPException as e:
                raise HTTPException(400, f"`{key}` must be a JSON object, got {echo(value)}: {e.detail}") from None
        elif key == "k":
            try:  # form fields are text; the model takes strict integers
                fields[key] = int(value)
            except ValueError:
                fields[key] = value
        elif key in text_fields:
            fields[key] = value
        elif text_fields != SEARCH_TEXT_FIELDS:
            raise HTTPException(422, f"unknown form field {echo(key)}; fields: image, {', '.join(text_fields)}")
        else:
            raise HTTPException(422, f"unknown form field {echo(key)}; fields: image, manipulations, text, mode, k, "
                                     f"filters, labels, crop")
    if image is None and "item_id" not in fields:
        raise HTTPException(422, "the multipart form has no `image` file")
    return fields, image


def _clip(value):
    """A user's string sent back as data: cut to a bounded length (the message says how long it was)."""
    return value if not isinstance(value, str) or len(value) <= ECHO_LIMIT else value[:ECHO_LIMIT] + "..."


def _loc(x) -> str:
    return str(x) if len(str(x)) <= ECHO_LIMIT else echo(x)


def _errors_json(errors) -> list[dict]:
    """pydantic's validation errors as bounded JSON: the offending input clipped, context as text."""
    out = []
    for e in errors:
        row = {"type": e.get("type"), "loc": [x if isinstance(x, int) else _loc(x) for x in e.get("loc", ())],
               "msg": e.get("msg")}
        if "input" in e:
            v = e["input"]
            row["input"] = v if v is None or isinstance(v, (bool, int)) else (
                _clip(v) if isinstance(v, str) else echo(v))
        if e.get("ctx"):
            row["ctx"] = {k: v if isinstance(v, (bool, int, str)) else str(v) for k, v in e["ctx"].items()}
        out.append(row)
    return out


def _describe(errors) -> str:
    parts = []
    for e in errors:
        loc = ".".join(_loc(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"
