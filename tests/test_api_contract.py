"""The HTTP API keeps its own OpenAPI contract: schemathesis generates requests from
/openapi.json (valid ones and invalid ones) for every operation and checks each answer:
no server error, only documented status codes and media types, answers matching their
schemas, schema-valid requests accepted and invalid ones refused. Real app, real SQLite,
real MiniLM and HNSW (search and similar items answer), bounded to a few minutes."""

from __future__ import annotations

import os
import time

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extra")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from jsonschema_rs import Draft202012Validator  # noqa: E402  (schemathesis's validator)
from pydantic import ValidationError  # noqa: E402

from engine.server import create_app  # noqa: E402
from engine.server.schemas import EventIn  # noqa: E402

from .server_support import SEMANTIC_PLUGINS, copy_db  # noqa: E402

# per operation and mode: ~1,200 requests in about a minute (SHELFWISE_FUZZ_EXAMPLES for more)
EXAMPLES = int(os.environ.get("SHELFWISE_FUZZ_EXAMPLES", "60"))
# POST /train starts a full retrain in a child process per call; test_server covers it.
SKIPPED = {("POST", "/train")}
# operations without parameters or a body: there is no invalid request to make of them
NO_INPUT = {"GET /status", "GET /healthz", "GET /readyz", "GET /experiments"}


def _in_window(timestamp) -> bool:
    try:
        EventIn(event_id="e", user_id="u", item_id="i", kind="view", timestamp=timestamp)
    except ValidationError as exc:
        return not any(e["loc"] and e["loc"][0] == "timestamp" for e in exc.errors())
    return True


def events_in_window(case):
    """The one rule the schema cannot state: an event happened between 1990 and a day ahead of
    the server's clock (a static schema cannot say "now"). Valid requests keep to it;
    test_server checks that the API refuses times outside it."""
    if case.operation.path == "/events" and isinstance(case.body, dict):
        for event in case.body.get("events") or []:
            if isinstance(event, dict) and "timestamp" in event and not _in_window(event["timestamp"]):
                event["timestamp"] = time.time() - 3600
    return case


def body_validators(app) -> dict[tuple[str, str], Draft202012Validator]:
    """(method, path) -> a validator of the operation's JSON body, against /openapi.json."""
    doc = app.openapi()
    out = {}
    for path, methods in doc["paths"].items():
        for method, spec in methods.items():
            body = (spec.get("requestBody") or {}).get("content", {}).get("application/json", {})
            if "schema" in body:
                out[(method.upper(), path)] = Draft202012Validator({**body["schema"],
                                                                    "components": doc["components"]})
    return out


def valid_negative_body(case, validators) -> bool:
    """A case schemathesis generated as invalid in its body whose body the schema accepts:
    it asserts nothing about the API. Schemathesis 4.32 makes some (a mutation of one branch
    of the rules' oneOf that leaves the body valid for it, e.g. a boost rule it calls a
    violation of that branch's `kind` enum), and reports the API's 201 as "schema-violating
    request accepted"."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return False
    location = getattr(meta.phase.data, "parameter_location", None)
    validator = validators.get((case.operation.method.upper(), case.operation.path))
    if getattr(location, "name", None) != "BODY" or validator is None or \
            isinstance(case.body, (bytes, bytearray)):  # not JSON at all: invalid indeed
        return False
    try:
        return validator.is_valid(case.body)
    except (TypeError, ValueError):  # a value JSON cannot carry
        return False


@pytest.mark.slow
def test_every_operation_keeps_the_openapi_contract(semantic_shop_db, tmp_path, monkeypatch):
    monkeypatch.setenv("SHELFWISE_LOAD_PLUGINS", SEMANTIC_PLUGINS)
    app = create_app(copy_db(semantic_shop_db, tmp_path), rate_limits={})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    validators = body_validators(app)
    failures, tried, nothing_invalid, sent = {}, [], set(), []
    # schemathesis runs the app's lifespan (the engine thread) itself
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in SKIPPED:
            continue
        for mode in schemathesis.GenerationMode:
            strategy = op.as_strategy(generation_mode=mode)
            if mode is schemathesis.GenerationMode.POSITIVE:
                strategy = strategy.map(events_in_window)

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def check(case):
                assume(not valid_negative_body(case, validators))
                sent.append(case.call_and_validate().status_code)

            name = f"{op.method.upper()} {op.path} ({mode.value})"
            tried.append(name)
            started = time.perf_counter()
            try:
                check()
            except Unsatisfiable:
                nothing_invalid.add(f"{op.method.upper()} {op.path}")
            except BaseException as exc:  # schemathesis reports with its own exception group
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures[name] = str(exc)[:2000]
            print(f"{name}: {time.perf_counter() - started:.1f} s")
    assert len(tried) >= 24, tried
    assert nothing_invalid <= NO_INPUT, nothing_invalid
    print(f"{len(sent)} requests: " + ", ".join(f"{code} x{sent.count(code)}" for code in sorted(set(sent))))
    assert len(sent) > 500 and sum(200 <= c < 300 for c in sent) > 100, "the fuzzing reached the handlers"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
