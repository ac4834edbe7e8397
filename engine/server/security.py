"""API keys, scopes, per-key rate limits and the request body limit.

Keys come in `Authorization: Bearer <key>` or `X-API-Key: <key>`. When the database has
no active key the server runs open (every scope) and `shelfwise serve` binds to loopback
only; as soon as one key exists, every API route needs one."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import KeyLookup
from .problems import Problem, problem_response

OPEN = {"id": None, "name": "", "scope": "secret"}  # no keys configured: loopback only
# "testclient" is the in-process ASGI client of the tests (no socket at all)
LOOPBACK_CLIENTS = frozenset({"127.0.0.1", "::1", "localhost", "testclient"})


class KeyRing:
    """Looks keys up through its own read connection (the engine thread stays free);
    answers are remembered for `ttl` seconds, so a revoked key stops working within it."""

    def __init__(self, db_path: str | Path, ttl: float = 2.0):
        self._keys = KeyLookup(db_path)
        self.ttl = ttl
        self._seen: dict[str, tuple[float, dict | None]] = {}
        self._count: tuple[float, int] = (-math.inf, 0)

    def close(self) -> None:
        self._keys.close()

    def active(self) -> int:
        at, count = self._count
        if time.monotonic() - at > self.ttl:
            count = self._keys.active()
            self._count = (time.monotonic(), count)
        return count

    def lookup(self, key: str) -> dict | None:
        found = self._seen.get(key)
        if found is not None and time.monotonic() - found[0] <= self.ttl:
            return found[1]
        info = self._keys.find(key)
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[key] = (time.monotonic(), info)
        return info


@dataclass
class Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets per key (per client address without keys): `per_minute` requests a
    minute on average, bursts up to `burst`."""

    def __init__(self, per_minute: dict[str, int], burst_seconds: float = 10.0):
        self.per_minute = per_minute
        self.burst_seconds = burst_seconds
        self._buckets: dict[object, Bucket] = {}

    def check(self, who: object, scope: str) -> None:
        limit = self.per_minute.get(scope)
        if not limit:
            return
        rate = limit / 60.0
        burst = max(1.0, rate * self.burst_seconds)
        now = time.monotonic()
        b = self._buckets.get(who)
        if b is None:
            b = self._buckets[who] = Bucket(burst, now)
        b.tokens = min(burst, b.tokens + (now - b.at) * rate)
        b.at = now
        if b.tokens < 1.0:
            wait = math.ceil((1.0 - b.tokens) / rate)
            raise Problem(429, "Too many requests",
                          f"Rate limit of {limit} requests a minute for this {scope} key "
                          f"reached; retry in {wait} s.", headers={"Retry-After": str(wait)})
        b.tokens -= 1.0


def require(scope: str):
    """A FastAPI dependency: the caller's key must have `scope` ("public" is allowed for
    both kinds of key, "secret" only for secret keys). Returns the key's info."""

    def check(request: Request) -> dict:
        state = request.app.state
        if state.keys.active() == 0:
            host = request.client.host if request.client else ""
            if host not in LOOPBACK_CLIENTS:  # e.g. the last key was revoked while serving on 0.0.0.0
                raise Problem(401, "API key required",
                              "This server has no API keys, so it answers loopback clients only. "
                              "Create one with \"shelfwise keys create --scope public\".",
                              [{"field": "header.authorization", "message": "no keys configured"}],
                              headers={"WWW-Authenticate": "Bearer"})
            who, info = ("addr", host), OPEN
        else:
            key = request.headers.get("x-api-key", "")
            auth = request.headers.get("authorization", "")
            if not key and auth.lower().startswith("bearer "):
                key = auth[7:].strip()
            if not key:
                raise Problem(401, "API key required",
                              "Send an API key in 'Authorization: Bearer <key>' or 'X-API-Key'. "
                              "Create one with \"shelfwise keys create --scope public\".",
                              [{"field": "header.authorization", "message": "missing"}],
                              headers={"WWW-Authenticate": "Bearer"})
            info = state.keys.lookup(key)
            if info is None:
                raise Problem(401, "Invalid API key", "This API key is unknown or revoked. "
                              "See \"shelfwise keys list\".",
                              [{"field": "header.authorization", "message": "unknown or revoked key"}],
                              headers={"WWW-Authenticate": "Bearer"})
            who = ("key", info["id"])
        if scope == "secret" and info["scope"] != "secret":
            raise Problem(403, "Secret key required",
                          "This needs a secret key; public keys (safe in a web page) may only "
                          "read recommendations and send views, clicks and carts.",
                          [{"field": "header.authorization", "message": "public key"}])
        state.limiter.check(who, info["scope"])
        return info

    return check


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, whether or not they announce their
    length (chunked bodies are counted as they arrive)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = problem_response(
            413, "Request body too large",
            f"The request body is over the limit of {self.max_bytes:,} bytes; send events in "
            f"batches of at most 500.", instance=scope.get("path", ""))
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await too_big(scope, receive, send)
            return await self.app(scope, receive, send)
        # No announced length (chunked): read it here, up to the limit, then hand it on.
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await too_big(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

