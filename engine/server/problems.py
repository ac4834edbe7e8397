"""Errors as RFC 9457 problem+json: type, title, status, detail, and `errors` naming the
field at fault ({"field": "events.3.kind", "message": ...}). `ok: false` and `error` (the
detail) are there too, the shape the CLI and TUI boundaries share."""

from __future__ import annotations

import logging
import uuid
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import ArtifactError, EngineError, NotTrainedError, UnknownComponentError

log = logging.getLogger("shelfwise.server")

MEDIA_TYPE = "application/problem+json"
UNION_TAGS = {"float", "int", "str", "bool", "datetime", "none"}

# EngineError titles the engine uses for conditions with their own HTTP status.
STATUS_BY_TITLE = {"Conflict": 409, "Unknown item": 404, "Unknown key": 404, "Unknown rule": 404,
                   "Unknown experiment": 404}


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str,
                 errors: Sequence[dict[str, str]] = (), headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.headers = list(errors), headers


def problem_response(status: int, title: str, detail: str, errors: Sequence[dict] = (),
                     instance: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://shelfwise.dev/problems/{title.lower().replace(' ', '-')}",
        "title": title, "status": status, "detail": detail, "instance": instance,
        "errors": list(errors), "ok": False, "error": detail,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def _field(loc: Sequence[Any]) -> str:
    # pydantic names the union member that failed ("timestamp.float"); the field is enough
    parts = [str(p) for p in loc if str(p) not in UNION_TAGS and "[" not in str(p)]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if parts[0] == "body" else parts
    return ".".join(parts)


def _message(error: dict) -> str:
    """pydantic's message, with a pattern said in words rather than as a regular expression."""
    from .schemas import PATTERN_WORDS

    pattern = (error.get("ctx") or {}).get("pattern")
    if error.get("type") == "string_pattern_mismatch" and pattern in PATTERN_WORDS:
        return f"{error.get('input')!r} is not {PATTERN_WORDS[pattern]}"
    return error.get("msg", "invalid")


def allowed_methods(request: Request) -> set[str]:
    """The methods some route of the app answers at this request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return methods


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return problem_response(exc.status, exc.title, exc.detail, exc.errors,
                                request.url.path, exc.headers)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError):
        if isinstance(exc, (NotTrainedError, ArtifactError)):
            status = 503
        elif isinstance(exc, UnknownComponentError):
            status = 400
        else:
            status = STATUS_BY_TITLE.get(exc.title, 400)
        return problem_response(status, exc.title, str(exc), instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = [{"field": _field(e.get("loc", ())), "message": _message(e)} for e in exc.errors()]
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        detail = f"{first['field']}: {first['message']}" + (
            f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        return problem_response(422, "Invalid request", detail, errors, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # A bug or a resource problem (e.g. the database locked for 30 s): still problem+json,
        # with the details (paths, SQL) in the server log only, found by the error id.
        error_id = uuid.uuid4().hex[:12]
        log.error("error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
        return problem_response(500, "Internal error", f"An unexpected error ({type(exc).__name__}); "
                                f"the request may be retried. The server log has the details under "
                                f"error id {error_id}.", instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 405:  # Allow lists every method of the path, not the first route's
            allow = ", ".join(sorted(allowed_methods(request) | {"OPTIONS"}))
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": allow})
            exc.headers = {**(exc.headers or {}), "Allow": allow}
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        return problem_response(exc.status_code, title, str(exc.detail), instance=request.url.path,
                                headers=getattr(exc, "headers", None))
